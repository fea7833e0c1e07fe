"""The real daemon on real veth interfaces, with real packets from known sources.

Each test builds its own lab (client namespace + two veth pairs) and daemon; the window is 10 s
and the refresh 1 s so that the window's edges can be watched within a test's time.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import DaemonProcess, Lab, active_users, ip, wait_for

pytestmark = pytest.mark.root

FAST = {"window": 10, "refresh_interval": 1, "serve_ip_list": True}
STUCK_REFRESH = Path(__file__).with_name("stuck_refresh.py")


def xdp_attached(ifname: str) -> bool:
    out = ip("-d", "link", "show", "dev", ifname).stdout
    return "prog/xdp" in out or " xdp" in out.split("\n", 1)[0]


def listed(daemon: DaemonProcess) -> set[tuple[str, str, int, str, tuple[str, ...]]]:
    return {
        (e["ip"], e["type"], e["port"], e["proto"], tuple(e["interfaces"])) for e in daemon.list()
    }


def test_exact_counts_and_sources(lab: Lab, start_daemon) -> None:
    a, b = lab.links
    daemon = start_daemon(interfaces=[a.host_if, b.host_if], ports=[22, 53], **FAST)
    for src in a.client_v4:
        lab.send("tcp", src, a.host_v4, 22)
    lab.send("tcp", a.client_v4[0], a.host_v4, 22, count=3)  # repeats: still one source
    for src in b.client_v6[:2]:
        lab.send("tcp", src, b.host_v6, 22)
    for src in b.client_v4[:2]:
        lab.send("udp", src, b.host_v4, 53)
    lab.send("udp", a.client_v4[0], a.host_v4, 53)  # same source, second port: counted twice
    lab.send("tcp", a.client_v4[1], a.host_v4, 8080)  # not watched
    lab.send("udp", b.client_v6[2], b.host_v6, 5353)  # not watched

    expected = {
        (fam, proto, port): 0.0
        for fam in ("v4", "v6")
        for proto in ("tcp", "udp")
        for port in ("22", "53")
    }
    expected.update({("v4", "tcp", "22"): 3, ("v6", "tcp", "22"): 2, ("v4", "udp", "53"): 3})
    wait_for(lambda: active_users(daemon.metrics()) == expected, 15, "exact active_users")

    want = {(s, "v4", 22, "tcp", (a.host_if,)) for s in a.client_v4}
    want |= {(s, "v6", 22, "tcp", (b.host_if,)) for s in b.client_v6[:2]}
    want |= {(s, "v4", 53, "udp", (b.host_if,)) for s in b.client_v4[:2]}
    want.add((a.client_v4[0], "v4", 53, "udp", (a.host_if,)))
    assert listed(daemon) == want

    entries = {(e["ip"], e["port"]): e for e in daemon.list()}
    repeated = entries[(a.client_v4[0], 22)]
    assert repeated["packets"] >= 4  # 4 connection attempts, each maybe with SYN retries
    assert repeated["first_seen"] <= repeated["last_seen"]
    assert repeated["first_seen"].endswith("Z")
    only_udp = daemon.list("?proto=udp&type=v4")
    assert {(e["ip"], e["port"]) for e in only_udp} == {
        (s, 53) for s in [*b.client_v4[:2], a.client_v4[0]]
    }
    assert daemon.get("/list?port=banana")[0] == 400


def test_source_leaves_after_the_window(lab: Lab, start_daemon) -> None:
    a, _ = lab.links
    daemon = start_daemon(interfaces=[a.host_if], ports=[22], **FAST)
    sent = time.monotonic()
    lab.send("udp", a.client_v4[0], a.host_v4, 22)
    wait_for(lambda: active_users(daemon.metrics())[("v4", "udp", "22")] == 1, 10, "the source")
    wait_for(lambda: active_users(daemon.metrics())[("v4", "udp", "22")] == 0, 30, "it to leave")
    gone_after = time.monotonic() - sent
    assert gone_after >= FAST["window"] - 1, f"left after {gone_after:.1f}s, window is 10 s"
    assert daemon.list() == []
    # and it was expired from the kernel map, not only hidden
    wait_for(
        lambda: "xdp_ip_counter_map_entries 0.0" in daemon.metrics(), 10, "the map to be empty"
    )


def test_sighup_changes_ports_and_interfaces_keeping_sources(lab: Lab, start_daemon) -> None:
    a, b = lab.links
    daemon = start_daemon(interfaces=[a.host_if, b.host_if], ports=[22], **FAST)
    lab.send("tcp", a.client_v4[0], a.host_v4, 22)
    lab.send("tcp", b.client_v4[0], b.host_v4, 22)
    wait_for(lambda: len(daemon.list()) == 2, 10, "two sources before the reload")
    pid = daemon.proc.pid

    daemon.write_config(interfaces=[a.host_if], ports=[80], **FAST)
    daemon.reload()
    assert daemon.proc.pid == pid and daemon.proc.poll() is None
    assert not xdp_attached(b.host_if)
    assert xdp_attached(a.host_if)

    lab.send("tcp", a.client_v4[1], a.host_v4, 80)  # new port, kept interface: counted
    lab.send("tcp", b.client_v4[1], b.host_v4, 80)  # dropped interface: not seen
    lab.send("tcp", a.client_v4[2], a.host_v4, 22)  # old port: filtered now
    wait_for(
        lambda: (a.client_v4[1], "v4", 80, "tcp", (a.host_if,)) in listed(daemon),
        10,
        "the new port",
    )
    got = listed(daemon)
    assert (a.client_v4[0], "v4", 22, "tcp", (a.host_if,)) in got  # seen before: kept
    assert (b.client_v4[0], "v4", 22, "tcp", (b.host_if,)) in got
    assert not any(e[0] in (b.client_v4[1], a.client_v4[2]) for e in got)
    metrics = active_users(daemon.metrics())
    assert metrics[("v4", "tcp", "80")] == 1
    assert "xdp_ip_counter_config_last_reload_successful 1.0" in daemon.metrics()


def test_bad_config_on_sighup_is_rejected_whole(lab: Lab, start_daemon) -> None:
    a, b = lab.links
    daemon = start_daemon(interfaces=[a.host_if], ports=[22], **FAST)
    # a port change and an interface change along with an invalid window: none may apply
    daemon.write_config(
        interfaces=[a.host_if, b.host_if],
        ports=[80],
        window=15,
        refresh_interval=1,
        serve_ip_list=True,
    )
    daemon.reload()
    assert daemon.proc.poll() is None
    wait_for(
        lambda: "xdp_ip_counter_config_last_reload_successful 0.0" in daemon.metrics(),
        5,
        "the failed reload to show",
    )
    assert "window" in daemon.log()
    assert not xdp_attached(b.host_if)
    lab.send("tcp", a.client_v4[0], a.host_v4, 22)
    lab.send("tcp", a.client_v4[1], a.host_v4, 80)
    wait_for(lambda: len(daemon.list()) >= 1, 10, "traffic under the old configuration")
    assert {(e["ip"], e["port"]) for e in daemon.list()} == {(a.client_v4[0], 22)}


def test_sigterm_detaches_and_exits_zero(lab: Lab, start_daemon) -> None:
    a, b = lab.links
    daemon = start_daemon(interfaces=[a.host_if, b.host_if], ports=[22], **FAST)
    assert xdp_attached(a.host_if) and xdp_attached(b.host_if)
    assert daemon.stop(signal.SIGTERM) == 0
    assert "STOPPING=1" in "".join(daemon.read_notifications())
    assert not xdp_attached(a.host_if) and not xdp_attached(b.host_if)


def test_sigkill_leaves_nothing_attached(lab: Lab, start_daemon) -> None:
    a, b = lab.links
    daemon = start_daemon(interfaces=[a.host_if, b.host_if], ports=[22], **FAST)
    daemon.stop(signal.SIGKILL)
    wait_for(
        lambda: not xdp_attached(a.host_if) and not xdp_attached(b.host_if),
        10,
        "the links to go with the process",
    )


def test_bad_start_exits_2_with_nothing_attached(lab: Lab, start_daemon) -> None:
    a, _ = lab.links
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = start_daemon(
            interfaces=[a.host_if], ports=[22], server_port=port, wait_ready=False, **FAST
        )
        assert daemon.proc.wait(60) == 2
    assert f"127.0.0.1:{port}" in daemon.log()
    assert not xdp_attached(a.host_if)

    missing = start_daemon(
        interfaces=[a.host_if, "xic-no-such0"], ports=[22], wait_ready=False, **FAST
    )
    assert missing.proc.wait(60) == 2
    assert "xic-no-such0" in missing.log()
    assert not xdp_attached(a.host_if)


def test_prometheus_scrapes_it(lab: Lab, start_daemon, tmp_path) -> None:
    from .conftest import free_port  # noqa: PLC0415

    a, _ = lab.links
    daemon = start_daemon(interfaces=[a.host_if], ports=[22], **FAST)
    for src in a.client_v4[:2]:
        lab.send("tcp", src, a.host_v4, 22)
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: xdp-ip-counter\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{daemon.port}']\n"
    )
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import json  # noqa: PLC0415
        import urllib.parse  # noqa: PLC0415
        import urllib.request  # noqa: PLC0415

        def query(q: str) -> list:
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?query=" + urllib.parse.quote(q)
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return json.load(resp)["data"]["result"]
            except OSError:
                return []

        def value(q: str) -> float | None:
            result = query(q)
            return float(result[0]["value"][1]) if result else None

        wait_for(lambda: value('up{job="xdp-ip-counter"}') == 1, 60, "up == 1")
        wait_for(
            lambda: value('active_users{ip="v4",proto="tcp",port="22"}') == 2,
            30,
            "Prometheus to see 2 active users",
        )
    finally:
        prom.terminate()
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(10)


def test_systemd_notifications(lab: Lab, start_daemon) -> None:
    """READY once working, WATCHDOG at half WATCHDOG_USEC from the refresh loop, RELOADING with
    MONOTONIC_USEC then READY around a SIGHUP, STOPPING on the way out."""
    a, _ = lab.links
    daemon = start_daemon(
        interfaces=[a.host_if], ports=[22], env={"WATCHDOG_USEC": 2_000_000}, **FAST
    )
    ready = daemon.wait_notification("READY=1", 5)
    assert "STATUS=" in "".join(daemon.messages[: ready + 1])
    first = daemon.wait_notification("WATCHDOG=1", 5, ready)
    started = time.monotonic()
    # half of 2 s: about one ping a second
    wait_for(
        lambda: sum("WATCHDOG=1" in m for m in daemon.read_notifications()[first:]) >= 5,
        10,
        "five more watchdog pings",
    )
    elapsed = time.monotonic() - started
    pings = sum("WATCHDOG=1" in m for m in daemon.messages[first:])
    assert 0.5 <= elapsed / (pings - 1) <= 1.5, f"{pings} pings in {elapsed:.1f}s"

    before = len(daemon.read_notifications())
    daemon.reload()
    reloading = next(m for m in daemon.messages[before:] if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in reloading
    assert daemon.stop() == 0
    assert any("STOPPING=1" in m for m in daemon.read_notifications()[before:])


def test_a_stuck_refresh_loop_stops_the_watchdog(lab: Lab, start_daemon, tmp_path) -> None:
    """The pings come from the loop that does the work: while a refresh hangs they stop (so
    systemd would restart the service), though the HTTP server still answers. The daemon runs
    with a data path whose reads block while a file exists (a stuck collaborator, handed in
    through daemon.run by tests/e2e/stuck_refresh.py)."""
    a, _ = lab.links
    hang = tmp_path / "hang"
    daemon = start_daemon(
        interfaces=[a.host_if],
        ports=[22],
        env={"WATCHDOG_USEC": 1_000_000},
        prefix=(str(STUCK_REFRESH), str(hang), "--"),
        **FAST,
    )
    daemon.wait_notification("WATCHDOG=1", 5)
    hang.touch()
    seen = {"count": -1, "at": time.monotonic()}

    def silent_for_four_intervals() -> bool:
        assert daemon.get("/metrics")[0] == 200  # the server is not what is stuck
        pings = sum("WATCHDOG=1" in m for m in daemon.read_notifications())
        if pings != seen["count"]:
            seen.update(count=pings, at=time.monotonic())
        return time.monotonic() - seen["at"] >= 2.0

    wait_for(silent_for_four_intervals, 10, "the watchdog pings to stop", step=0.2)
    after = len(daemon.read_notifications())
    hang.unlink()
    daemon.wait_notification("WATCHDOG=1", 5, after)


def test_capabilities_are_dropped_after_start_and_a_reload_can_still_attach(
    lab: Lab, start_daemon
) -> None:
    a, b = lab.links
    daemon = start_daemon(interfaces=[a.host_if], ports=[22], **FAST)
    status = {}
    for task in Path(f"/proc/{daemon.proc.pid}/task").iterdir():
        fields = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines())
        status[task.name] = (int(fields["CapEff"], 16), int(fields["CapPrm"], 16))
    kept = 1 << 39 | 1 << 12  # CAP_BPF, CAP_NET_ADMIN
    assert set(status.values()) == {(kept, kept)}, status  # every thread, not only the main one

    daemon.write_config(interfaces=[a.host_if, b.host_if], ports=[22], **FAST)
    daemon.reload()
    assert "xdp_ip_counter_config_last_reload_successful 1.0" in daemon.metrics()
    assert xdp_attached(b.host_if)
    lab.send("tcp", b.client_v4[0], b.host_v4, 22)
    wait_for(lambda: len(daemon.list()) == 1, 10, "traffic on the interface the reload added")
