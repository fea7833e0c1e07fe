"""Roll xdp-ip-counter out to two Debian 12 VMs with ansible/site.yml, and check what it does.

The tests run in order against the same two VMs (a module-scoped fixture): the first deploys,
the later ones change the configuration and re-run the playbook. fleet1 is the watched host;
fleet2 sends it traffic over their private link (10.55.0.0/24, fd00:55::/64 on eth1).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
from ansible_fleet import (
    SERVICE,
    Fleet,
    PlaybookRun,
    active_users,
    metric_value,
    send_from,
    service_properties,
    source_list,
    wait_for,
)
from qemu_vm import VirtualMachine

pytestmark = [pytest.mark.root, pytest.mark.fleet]

FIRST_PORTS = [22, 7001, "7100-7102"]
ADDED_PORT = 7200
LIST_TIMEOUT_SECONDS = 60  # a few refreshes (refresh_interval 2 s), with slow VMs

ROLE_VARS: dict[str, Any] = {
    "xdp_ip_counter_interfaces": ["eth0", "eth1"],
    "xdp_ip_counter_ports": FIRST_PORTS,
    # long enough that nothing leaves the window while the playbook re-runs
    "xdp_ip_counter_window": 600,
    "xdp_ip_counter_listen_address": "0.0.0.0",
    "xdp_ip_counter_serve_ip_list": True,
    "xdp_ip_counter_extra_settings": {"refresh_interval": 2},
}


def entries_from(fleet: Fleet, source: str, port: int) -> list[dict[str, Any]]:
    return [
        entry
        for entry in source_list(fleet.watched)
        if entry["ip"] == source and entry["port"] == port
    ]


def peer_entries_complete(fleet: Fleet, port: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The watched VM's /list entries for the peer's eth1 addresses and port, by (ip, proto),
    once all four (v4/v6 x tcp/udp) are there; {} before."""
    entries = {
        (entry["ip"], entry["proto"]): entry
        for source in (fleet.peer.eth1_ipv4, fleet.peer.eth1_ipv6)
        for entry in entries_from(fleet, source, port)
    }
    return entries if len(entries) == 4 else {}


@pytest.fixture(scope="module")
def first_run(fleet: Fleet) -> PlaybookRun:
    run = fleet.deploy(xdp_ip_counter_deb=str(fleet.deb), **ROLE_VARS)
    fleet.check(run)
    return run


def test_first_run_installs_and_the_service_is_ready(fleet: Fleet, first_run: PlaybookRun) -> None:
    for machine in fleet.machines:
        assert first_run.changed(machine.name) > 0, first_run.describe()
        # the image has every dependency: installed without refreshing apt's lists (if this
        # fails, see package_dependencies() in debian_image.py)
        assert first_run.recap[machine.name]["rescued"] == 0, first_run.describe()
        # the role started the service with the new package and configuration: no handler had
        # anything left to do
        for handler in ("Restart xdp-ip-counter", "Reload xdp-ip-counter"):
            assert first_run.handler_outcomes(handler).get(machine.name) in {None, "skipping"}, (
                first_run.describe()
            )
        properties = service_properties(machine)
        # Type=notify: "active" only once the daemon sent READY=1
        assert properties["ActiveState"] == "active", (machine.name, properties)
        assert properties["SubState"] == "running", (machine.name, properties)
        assert properties["StatusText"], (machine.name, properties)
        assert properties["NRestarts"] == "0", (machine.name, properties)
        assert machine.ssh("systemctl is-enabled xdp-ip-counter").stdout.strip() == "enabled"
        config = machine.ssh("cat /etc/xdp-ip-counter/config.toml").stdout
        assert 'interfaces = ["eth0", "eth1"]' in config, config
        assert 'ports = [22, 7001, "7100-7102"]' in config, config


def test_metrics_answer_with_the_configured_ports(fleet: Fleet, first_run: PlaybookRun) -> None:
    for machine in fleet.machines:
        samples = active_users(machine)
        ports = {port for (_, _, port) in samples}
        assert ports == {"22", "7001", "7100", "7101", "7102"}, (machine.name, sorted(samples))
        assert metric_value(machine, "xdp_ip_counter_window_seconds") == 600


def test_traffic_from_the_peer_shows_in_the_list(fleet: Fleet, first_run: PlaybookRun) -> None:
    def peer_seen() -> dict[tuple[str, str], dict[str, Any]]:
        send_from(fleet.peer, fleet.watched, [7001, 7101, 9999])
        return peer_entries_complete(fleet, 7001) and peer_entries_complete(fleet, 7101)

    wait_for(peer_seen, LIST_TIMEOUT_SECONDS, "the peer's packets in fleet1's /list", step=2)
    for entry in peer_entries_complete(fleet, 7001).values():
        assert entry["interfaces"] == ["eth1"], entry
    # 9999 is not watched: nothing recorded for it
    assert entries_from(fleet, fleet.peer.eth1_ipv4, 9999) == []
    # the Ansible controller's SSH connections arrive on eth0 (from qemu's gateway 10.0.2.2)
    ssh_sources = [e for e in source_list(fleet.watched) if e["port"] == 22 and e["proto"] == "tcp"]
    assert any(e["interfaces"] == ["eth0"] and e["ip"] == "10.0.2.2" for e in ssh_sources), (
        ssh_sources
    )
    samples = active_users(fleet.watched)
    for ip_version in ("v4", "v6"):
        for proto in ("tcp", "udp"):
            assert samples[(ip_version, proto, "7001")] >= 1, sorted(samples.items())
    # the peer watches too, but nobody sent it anything on 7001
    assert active_users(fleet.peer)[("v4", "tcp", "7001")] == 0


def test_changing_ports_reloads_and_keeps_sources(fleet: Fleet, first_run: PlaybookRun) -> None:
    send_from(fleet.peer, fleet.watched, [7001])
    before = wait_for(
        lambda: peer_entries_complete(fleet, 7001), LIST_TIMEOUT_SECONDS, "the peer on 7001"
    )
    pids_before = {m.name: service_properties(m)["MainPID"] for m in fleet.machines}

    run = fleet.deploy(xdp_ip_counter_ports=[*FIRST_PORTS, ADDED_PORT])
    fleet.check(run)
    every_vm = {machine.name for machine in fleet.machines}
    assert run.handler_outcomes("Reload xdp-ip-counter") == dict.fromkeys(every_vm, "changed"), (
        run.describe()
    )
    assert run.handler_outcomes("Restart xdp-ip-counter") == {}, run.describe()

    for machine in fleet.machines:
        # the reload is asynchronous (SIGHUP): wait for the new port in /metrics
        wait_for(
            lambda machine=machine: ("v4", "tcp", str(ADDED_PORT)) in active_users(machine),
            LIST_TIMEOUT_SECONDS,
            f"port {ADDED_PORT} in {machine.name}'s /metrics",
        )
        properties = service_properties(machine)
        assert properties["MainPID"] == pids_before[machine.name], (machine.name, properties)
        assert properties["ActiveState"] == "active", (machine.name, properties)
        assert metric_value(machine, "xdp_ip_counter_config_last_reload_successful") == 1

    # the sources seen before the reload are still there, the same entries (nothing re-sent)
    after = peer_entries_complete(fleet, 7001)
    assert after.keys() == before.keys(), (before, after)
    for key, entry in before.items():
        assert after[key]["first_seen"] == entry["first_seen"], (entry, after[key])

    # and the new port is counted
    def peer_on_added_port() -> dict[tuple[str, str], dict[str, Any]]:
        send_from(fleet.peer, fleet.watched, [ADDED_PORT])
        return peer_entries_complete(fleet, ADDED_PORT)

    wait_for(peer_on_added_port, LIST_TIMEOUT_SECONDS, f"the peer on port {ADDED_PORT}", step=2)


def test_an_invalid_configuration_is_refused_and_changes_nothing(
    fleet: Fleet, first_run: PlaybookRun
) -> None:
    config_before = {
        m.name: m.ssh("cat /etc/xdp-ip-counter/config.toml").stdout for m in fleet.machines
    }
    pids_before = {m.name: service_properties(m)["MainPID"] for m in fleet.machines}
    interfaces = fleet.role_vars["xdp_ip_counter_interfaces"]
    try:
        run = fleet.deploy(xdp_ip_counter_interfaces=[*interfaces, "nosuch0"])
    finally:
        fleet.role_vars["xdp_ip_counter_interfaces"] = interfaces
    for machine in fleet.machines:
        assert run.recap[machine.name]["failed"] == 1, run.describe()
    # the daemon's own check, run on the host, refused it naming the interface
    assert "failed to validate" in run.output, run.describe()
    assert "'nosuch0'" in run.output, run.describe()
    assert run.handler_outcomes("Reload xdp-ip-counter") == {}, run.describe()
    for machine in fleet.machines:
        config = machine.ssh("cat /etc/xdp-ip-counter/config.toml").stdout
        assert config == config_before[machine.name]
        properties = service_properties(machine)
        assert properties["MainPID"] == pids_before[machine.name], (machine.name, properties)
        assert properties["ActiveState"] == "active", (machine.name, properties)


CONFIG_PATH = "/etc/xdp-ip-counter/config.toml"
WINDOW_ERROR = f"{CONFIG_PATH}: key 'window': must be a positive multiple of 10 (seconds), got 15"
STATUS_REJECTED = re.compile(
    r"reload rejected at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: "
    + re.escape(WINDOW_ERROR)
    + r"; serving the previous configuration: watching eth0,eth1 ports \S+: \d+ sources in "
    r"the last 600s"
)
STATUS_SERVING = re.compile(r"watching eth0,eth1 ports \S+: \d+ sources in the last 600s")


def journal_cursor(machine: VirtualMachine) -> str:
    output = machine.ssh(f"journalctl -n 0 --show-cursor -u {SERVICE}").stdout
    cursors = [line for line in output.splitlines() if line.startswith("-- cursor: ")]
    assert cursors, output
    return cursors[-1].removeprefix("-- cursor: ")


def journal_since(machine: VirtualMachine, cursor: str) -> str:
    return machine.ssh(
        f"journalctl --no-pager -o cat -u {SERVICE} --after-cursor={shlex.quote(cursor)}"
    ).stdout


def test_reloading_an_invalid_file_fails_and_the_old_configuration_serves(
    fleet: Fleet, first_run: PlaybookRun
) -> None:
    """Written by hand, not by the role (which checks before it writes): `systemctl reload`
    fails naming the reason; a SIGHUP sent past the check is refused by the daemon, and
    STATUS= says so until a good reload."""
    machine = fleet.watched
    backup = "/root/config.toml.good"
    machine.ssh(f"cp -p {CONFIG_PATH} {backup}")
    before = service_properties(machine)
    assert STATUS_SERVING.fullmatch(before["StatusText"]), before
    try:
        machine.ssh(f"sed -i 's/^window = 600$/window = 15/' {CONFIG_PATH}")
        assert "\nwindow = 15\n" in machine.ssh(f"cat {CONFIG_PATH}").stdout
        cursor = journal_cursor(machine)

        # ExecReload='s check fails, so the reload fails, before the daemon hears of it
        reload = machine.ssh(f"systemctl reload {SERVICE}", check=False)
        assert reload.returncode != 0, (reload.stdout, reload.stderr)
        assert f"Job for {SERVICE}.service failed" in reload.stderr, reload.stderr
        wait_for(
            lambda: f"xdp-ip-counter: error: {WINDOW_ERROR}" in journal_since(machine, cursor),
            LIST_TIMEOUT_SECONDS,
            "the check's reason in the journal",
        )
        status = machine.ssh(f"systemctl status --no-pager -n 20 {SERVICE}", check=False).stdout
        assert f"xdp-ip-counter: error: {WINDOW_ERROR}" in status, status
        assert "ExecReload=/usr/bin/xdp-ip-counter --check-config (code=exited, status=2" in (
            status
        ), status
        # the role's reload handler (state: reloaded) fails the play: the same module, run here
        handler = fleet.run_module(
            machine.name, "ansible.builtin.systemd", f"name={SERVICE} state=reloaded"
        )
        assert handler.returncode != 0, handler.stdout + handler.stderr
        assert f"Unable to reload service {SERVICE}" in handler.stdout, handler.stdout
        after = service_properties(machine)
        assert after["ActiveState"] == "active", after
        assert after["SubState"] == "running", after
        assert after["MainPID"] == before["MainPID"], (before, after)
        assert "reload rejected" not in after["StatusText"], after  # no SIGHUP reached it
        assert metric_value(machine, "xdp_ip_counter_window_seconds") == 600
        assert metric_value(machine, "xdp_ip_counter_config_last_reload_successful") == 1

        # a SIGHUP past the check (sent by hand, or the file changed between the check and the
        # signal): the daemon refuses the file, keeps serving, and STATUS= names the refusal
        machine.ssh(f"systemctl kill --kill-who=main --signal=HUP {SERVICE}")
        wait_for(
            lambda: STATUS_REJECTED.fullmatch(service_properties(machine)["StatusText"]),
            LIST_TIMEOUT_SECONDS,
            "the rejected reload in StatusText",
        )
        wait_for(
            lambda: metric_value(machine, "xdp_ip_counter_config_last_reload_successful") == 0,
            LIST_TIMEOUT_SECONDS,
            "xdp_ip_counter_config_last_reload_successful 0",
        )
        # still named after the next refreshes (refresh_interval 2 s)
        refreshed = metric_value(machine, "xdp_ip_counter_last_refresh_timestamp_seconds")
        wait_for(
            lambda: (
                metric_value(machine, "xdp_ip_counter_last_refresh_timestamp_seconds") != refreshed
            ),
            LIST_TIMEOUT_SECONDS,
            "a refresh after the rejected reload",
        )
        after = service_properties(machine)
        assert STATUS_REJECTED.fullmatch(after["StatusText"]), after
        assert after["MainPID"] == before["MainPID"], (before, after)
        assert metric_value(machine, "xdp_ip_counter_window_seconds") == 600
    finally:
        machine.ssh(f"cp -p {backup} {CONFIG_PATH}")

    reload = machine.ssh(f"systemctl reload {SERVICE}", check=False)
    assert reload.returncode == 0, (reload.stdout, reload.stderr, fleet.diagnostics())
    wait_for(
        lambda: STATUS_SERVING.fullmatch(service_properties(machine)["StatusText"]),
        LIST_TIMEOUT_SECONDS,
        "StatusText without the rejected reload",
    )
    wait_for(
        lambda: metric_value(machine, "xdp_ip_counter_config_last_reload_successful") == 1,
        LIST_TIMEOUT_SECONDS,
        "xdp_ip_counter_config_last_reload_successful 1",
    )
    assert service_properties(machine)["MainPID"] == before["MainPID"]


def test_changing_a_restart_only_setting_restarts(fleet: Fleet, first_run: PlaybookRun) -> None:
    pids_before = {m.name: service_properties(m)["MainPID"] for m in fleet.machines}

    run = fleet.deploy(xdp_ip_counter_max_entries=65536)
    fleet.check(run)
    every_vm = {machine.name for machine in fleet.machines}
    assert run.handler_outcomes("Restart xdp-ip-counter") == dict.fromkeys(every_vm, "changed"), (
        run.describe()
    )
    # notified by the configuration change, but the restart applied it
    assert run.handler_outcomes("Reload xdp-ip-counter") == dict.fromkeys(every_vm, "skipping"), (
        run.describe()
    )

    for machine in fleet.machines:
        properties = service_properties(machine)  # the restart waited for READY
        assert properties["ActiveState"] == "active", (machine.name, properties)
        assert properties["MainPID"] != pids_before[machine.name], (machine.name, properties)
        wait_for(
            lambda machine=machine: metric_value(machine, "xdp_ip_counter_map_capacity") == 65536,
            LIST_TIMEOUT_SECONDS,
            f"the new map capacity in {machine.name}'s /metrics",
        )


def test_a_second_run_changes_nothing(fleet: Fleet, first_run: PlaybookRun) -> None:
    run = fleet.deploy()
    fleet.check(run)
    for machine in fleet.machines:
        assert run.changed(machine.name) == 0, run.describe()
    assert "RUNNING HANDLER" not in run.output, run.describe()
