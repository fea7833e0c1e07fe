"""Distinct sources across a fleet (issue 12): two real daemons, each attached to its own veth in
a namespace of its own, see overlapping sets of spoofed IPv4 sources on a fleet port; a real
Prometheus, in a third namespace with the other veth ends, scrapes both and evaluates
packaging/prometheus/xdp-ip-counter.rules.yml.

    client namespace: the sender, Prometheus     host namespaces a, b: one daemon each
    10.212.1.2 xfc<tag>a  <---- veth ---->  xfh<tag>a 10.212.1.1  (daemon a on :3031)
    10.212.2.2 xfc<tag>b  <---- veth ---->  xfh<tag>b 10.212.2.1  (daemon b on :3031)

Each daemon gets 40,000 distinct sources to UDP port 53 (watched and a fleet port), 20,000 of
them shared: 60,000 in all. The frames are made here (tests.support.frames) and sent from the
client namespace through a packet socket, each once, to a MAC address that is not the host's:
the host drops them right after XDP saw them. fleet:active_users:union must be within 5 % of
60,000 (and equal the classic estimate of the register-wise max of what the two daemons
export), where the sum of the daemons' active_users is 80,000.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import frames
from tests.support.daemon import ServingDaemon, get_metrics, serving_daemon
from tests.support.netns import inside, ip, namespace
from tests.unit.test_fleet_rules import UNION, prometheus, settled_union
from xdp_ip_counter import sketch

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
PORT = 53  # UDP, watched and a fleet port on both daemons
SHARED = 20_000  # sources both daemons see
OWN = 20_000  # sources only one daemon sees, each
TRUE_UNION = SHARED + 2 * OWN
TOLERANCE = 0.05
SERVER_PORT = 3031  # each daemon in its own namespace
# A table with room to spare: 40,000 one-packet sources in 8-way sets of a 2^19-slot table
# overflow a set about once in a thousand runs (the count would then be the sketch's).
MAX_ENTRIES = 1 << 19
DEADLINE_S = 60


@dataclass(frozen=True)
class Host:
    ns: str
    host_if: str  # the daemon's end
    client_if: str  # the sender's end, in the client namespace
    address: str  # of host_if: the daemon serves /metrics there

    @property
    def target(self) -> str:
        return f"{self.address}:{SERVER_PORT}"


@dataclass(frozen=True)
class FleetLab:
    client: str
    hosts: tuple[Host, Host]


@contextmanager
def fleet_lab() -> Iterator[FleetLab]:
    """Three namespaces made here (client, a, b) and two veth pairs between them; deleted
    whatever happens (the veths go with the namespaces)."""
    tag = os.getpid() % 10000
    with ExitStack() as made:
        client = made.enter_context(namespace(f"xic-fl{tag}-c")).name
        hosts = []
        for number, side in enumerate("ab", start=1):
            ns = made.enter_context(namespace(f"xic-fl{tag}-{side}")).name
            host = Host(ns, f"xfh{tag}{side}", f"xfc{tag}{side}", f"10.212.{number}.1")
            ip("-n", client, "link", "add", host.client_if, "type", "veth",
               "peer", "name", host.host_if, "netns", ns)  # fmt: skip
            ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", host.host_if)
            ip("-n", client, "addr", "add", f"10.212.{number}.2/24", "dev", host.client_if)
            ip("-n", ns, "link", "set", host.host_if, "up")
            ip("-n", client, "link", "set", host.client_if, "up")
            hosts.append(host)
        yield FleetLab(client, (hosts[0], hosts[1]))


def source_sets() -> tuple[np.ndarray, np.ndarray]:
    """Host-order IPv4 addresses: a's and b's, SHARED of them in both, all distinct."""
    wanted = SHARED + 2 * OWN
    rng = np.random.default_rng(12)
    drawn = np.unique(rng.integers(1 << 24, 224 << 24, size=wanted + wanted // 10, dtype=np.uint32))
    drawn = rng.permutation(drawn)[:wanted]
    assert len(drawn) == wanted
    return drawn[: SHARED + OWN], np.concatenate([drawn[:SHARED], drawn[SHARED + OWN :]])


def send(ns: str, ifname: str, host: Host, sources: np.ndarray) -> None:
    """One UDP frame to host:PORT from each source, through a packet socket on ifname in ns."""
    data = [
        frames.v4_udp(str(ipaddress.IPv4Address(int(src))), PORT, dst=host.address).data
        for src in sources
    ]

    def transmit() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            for frame in data:
                for _ in range(1000):
                    try:
                        sock.send(frame)
                        break
                    except OSError as exc:  # a full queue refused this frame: send it again
                        if exc.errno != errno.ENOBUFS:
                            raise
                else:
                    raise AssertionError(f"{ifname}: ENOBUFS 1000 times in a row")

    inside(ns, transmit)


@dataclass
class Exposition:
    """What one /metrics answer says about PORT."""

    frames_recorded: int  # frames to a watched port, recorded or not
    last_refresh: float
    active_users: float
    exact: float
    registers: np.ndarray | None = field(repr=False)  # v4/udp/PORT's, None if not exported
    register_labels: set[tuple[str, str, str]]  # (ip, proto, port) with registers


def read(host: Host) -> Exposition | None:
    answer = get_metrics(host.ns, SERVER_PORT)
    if answer.returncode != 0:
        return None
    recorded, refresh, users, exact = 0, 0.0, -1.0, -1.0
    registers = np.zeros(1 << sketch.FLEET_P, np.int64)
    seen = 0
    labels = set()
    wanted = ("v4", "udp", str(PORT))
    for family in text_string_to_metric_families(answer.stdout):
        for sample in family.samples:
            key = tuple(sample.labels.get(n, "") for n in ("ip", "proto", "port"))
            if sample.name == "xdp_ip_counter_frames_total" and sample.labels["outcome"] in (
                "recorded",
                "recorded_new",
                "insert_failed",
            ):
                recorded += int(sample.value)
            elif sample.name == "xdp_ip_counter_last_refresh_timestamp_seconds":
                refresh = sample.value
            elif sample.name == "active_users" and key == wanted:
                users = sample.value
            elif sample.name == "active_users_exact" and key == wanted:
                exact = sample.value
            elif sample.name == "active_users_hll_register":
                labels.add(key)
                if key == wanted:
                    registers[int(sample.labels["register"])] = int(sample.value)
                    seen += 1
    return Exposition(recorded, refresh, users, exact, registers if seen else None, labels)


def wait_for(
    what: str,
    condition: Callable[[], object],
    timeout: float = DEADLINE_S,
    daemons: Sequence[ServingDaemon] = (),
    progress: Callable[[], object] = lambda: None,
) -> object:
    """condition()'s first truthy answer; fails after timeout s naming what, with progress()
    and the daemons' logs (and at once when a daemon exits)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for daemon in daemons:
            assert daemon.process.poll() is None, f"a daemon exited:\n{daemon.log()}"
        last = condition()
        if last:
            return last
        time.sleep(0.2)
    logs = "\n".join(d.log()[-2000:] for d in daemons)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what} (last: {last!r}, {progress()!r})\n{logs}"
    )


def settled(host: Host, daemon: ServingDaemon, sent: int) -> Exposition:
    """The daemon's /metrics once it has seen every frame sent to it and refreshed after that
    (so that its registers hold every source)."""
    latest: list[Exposition | None] = [None]

    def now() -> Exposition | None:
        latest[0] = read(host)
        return latest[0]

    full = wait_for(
        f"{host.ns}'s daemon to see the {sent} frames",
        lambda: (e := now()) is not None and e.frames_recorded >= sent and e,
        daemons=[daemon],
        progress=lambda: latest[0],
    )
    assert full.frames_recorded == sent, full  # nothing else goes to a watched port
    return wait_for(
        f"{host.ns}'s daemon to refresh once more",
        lambda: (e := now()) is not None and e.last_refresh > full.last_refresh and e,
        daemons=[daemon],
        progress=lambda: latest[0],
    )


def test_prometheus_counts_the_union_of_two_daemons_sources(tmp_path: Path) -> None:
    sources = source_sets()
    config = tmp_path / "config.toml"
    config.write_text("")  # everything on the command line; not /etc's file
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = str(REPO)
    started = time.monotonic()
    with fleet_lab() as lab, ExitStack() as running:
        daemons = []
        for host in lab.hosts:
            command = [
                PYTHON, "-m", "xdp_ip_counter", "-c", str(config),
                "--iface", host.host_if, "--ports", str(PORT), "--fleet-ports", str(PORT),
                "--window", "300", "--refresh-interval", "1", "--max-entries", str(MAX_ENTRIES),
                "--listen-address", "0.0.0.0", "--server-port", str(SERVER_PORT),
            ]  # fmt: skip
            log_path = tmp_path / f"daemon-{host.ns}.log"
            daemons.append(
                running.enter_context(
                    serving_daemon(
                        command,
                        netns=host.ns,
                        port=SERVER_PORT,
                        log_path=log_path,
                        env=env,
                        cwd=REPO,
                    )
                )
            )
        up_at = time.monotonic()
        for host, own in zip(lab.hosts, sources, strict=True):
            send(lab.client, host.client_if, host, own)
        sent_at = time.monotonic()
        seen = [
            settled(host, daemon, len(own))
            for host, daemon, own in zip(lab.hosts, daemons, sources, strict=True)
        ]
        for exposition in seen:
            assert exposition.registers is not None, "no active_users_hll_register for port 53"
            # One family, protocol and port had sources: only its sketch is exported.
            assert exposition.register_labels == {("v4", "udp", str(PORT))}
        exported_union = np.maximum(seen[0].registers, seen[1].registers)
        expected = sketch.estimate_classic(exported_union)

        with prometheus([h.target for h in lab.hosts], tmp_path, netns=lab.client) as server:
            union = settled_union(server, {str(PORT)})
            labels = server.query(f"{UNION}")
            total = server.query(
                f'sum by (ip, proto, port) (active_users{{ip="v4",proto="udp",port="{PORT}"}})'
            )
        queried_at = time.monotonic()
        for daemon in daemons:
            assert daemon.stop() == 0, daemon.log()

    value = union[str(PORT)]
    summed = float(total[0]["value"][1])
    a, b = sources
    print(
        f"\nunion {value:.0f} (true {TRUE_UNION}, the daemons' registers give {expected:.0f}); "
        f"sum of active_users {summed:.0f} ({seen[0].active_users:.0f} + "
        f"{seen[1].active_users:.0f}, exact: {seen[0].exact:.0f}, {seen[1].exact:.0f}); "
        f"registers as sketch.py's: "
        f"{np.array_equal(seen[0].registers, sketch.ipv4_sketch(a, p=sketch.FLEET_P))}, "
        f"{np.array_equal(seen[1].registers, sketch.ipv4_sketch(b, p=sketch.FLEET_P))}; "
        f"daemons up {up_at - started:.1f} s, sent {sent_at - up_at:.1f} s, "
        f"union queried {queried_at - sent_at:.1f} s later"
    )
    assert [r["metric"] for r in labels] == [
        {"__name__": UNION, "ip": "v4", "proto": "udp", "port": str(PORT)}
    ]
    assert abs(value / expected - 1) < 1e-9, (value, expected)
    assert abs(value / TRUE_UNION - 1) < TOLERANCE, (value, TRUE_UNION)
    # The daemons' own counts added up: each shared source twice, 80,000 for 60,000.
    assert summed >= 1.3 * TRUE_UNION, (summed, TRUE_UNION)
