"""Part 2: packets per second through a veth pair, with each contender on the receiving end.

The sender, trafgen (netsniff-ng), blasts 64-byte UDP frames from one namespace into the veth;
the receiving end is in a second namespace; both namespaces are made here and removed whatever
happens. Received packets are counted by the receiving namespace's UDP counters
(/proc/net/snmp: InDatagrams + NoPorts + InErrors), behind every contender: a UDP socket bound
to the destination port and never read keeps the kernel from answering with ICMP (its buffer
fills at once and every later datagram is counted as RcvbufErrors, part of InErrors). The
veth's own RX counter would not do: it counts frames handed to the receiving side before XDP
and the stack ran, so it shows what the sender managed, not what the receiver processed.

Arrangement on this 2-CPU machine: trafgen runs one sending process, which trafgen pins to the
first CPU; a veth delivers on the CPU that transmits, so the receive path (XDP in skb or native
mode, netfilter, IP, UDP) runs in softirq on that same CPU. Every frame therefore costs sending
plus receiving on one CPU, and the rate is 1 / (send + receive): the figures show how much each
contender adds to that. The harness only sleeps on the other CPU while it measures.

trafgen runs without stopping for one source mode, and the contenders take turns under it (A B
C ... then again in another order), so a slow spell of the shared machine hits all of them.
Contenders: no program; the empty XDP program, the product and the first version
(bench/programs/first_version.c, an LRU hash) in skb and in native mode, all ports watched;
the nftables dynamic set an nftables user would write instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.netns import VethLab, inside, veth_lab
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.config import PortFilter

from . import contenders as programs
from .stats import ratios, summary

PORT = 5353
FIXED_SOURCES = 64
NFT_TABLE = "xicbench"


@dataclass(frozen=True)
class Config:
    seconds: float  # measured per contender per round
    settle: float  # after switching contenders, before measuring
    rounds: int
    capacity: int  # of the product's table, the first version's LRU hash, the nftables sets


FULL = Config(seconds=2.0, settle=0.3, rounds=3, capacity=262144)
SMOKE = Config(seconds=0.4, settle=0.1, rounds=1, capacity=4096)

BUDGET = 1000  # new sources per second and CPU of the budgeted product (new_source_budget)
BUDGETED = f"project with new_source_budget {BUDGET}"
CONTENDERS = (
    "no program",
    "empty XDP, skb",
    "project, skb",
    f"{BUDGETED}, skb",
    "first version, skb",
    "empty XDP, native",
    "project, native",
    f"{BUDGETED}, native",
    "first version, native",
    "nftables set",
)


def _bytes(mac: str) -> str:
    return ", ".join(f"0x{part}" for part in mac.split(":"))


def trafgen_config(lab: VethLab, random_sources: bool) -> str:
    """64-byte IPv4/UDP frames to the receiver; sources 10.202.0.1-64 in turn, or a random
    10.x.y.z in every frame (a new source each time: the cost of a flood)."""
    source = "10, drnd(3)" if random_sources else f"10, 202, 0, dinc(1, {FIXED_SOURCES})"
    return f"""{{
  {_bytes(lab.receiver_mac)}, {_bytes(lab.sender_mac)}, c16(0x0800),
  0x45, 0x00, c16(46), c16(0), c16(0x4000), 64, 17, csumip(14, 33),
  {source}, 10, 201, 0, 1,
  c16(40000), c16({PORT}), c16(26), c16(0),
  fill(0x41, 18),
}}
"""


def nft_ruleset(capacity: int) -> str:
    """What an nftables user would write for the same job: every (source, protocol, port) of
    TCP/UDP into a dynamic set whose elements time out after the window."""
    return f"""table inet {NFT_TABLE} {{
  set seen4 {{
    type ipv4_addr . inet_proto . inet_service; flags dynamic, timeout; timeout 60s;
    size {capacity};
  }}
  set seen6 {{
    type ipv6_addr . inet_proto . inet_service; flags dynamic, timeout; timeout 60s;
    size {capacity};
  }}
  chain prerouting {{
    type filter hook prerouting priority raw; policy accept;
    meta nfproto ipv4 meta l4proto {{ tcp, udp }} \\
      update @seen4 {{ ip saddr . meta l4proto . th dport }}
    meta nfproto ipv6 meta l4proto {{ tcp, udp }} \\
      update @seen6 {{ ip6 saddr . meta l4proto . th dport }}
  }}
}}
"""


def _netns_exec(namespace: str, *command: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, *command],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} in {namespace}: {result.stderr.strip()}")
    return result.stdout


def udp_received(lab: VethLab) -> int:
    """Datagrams that reached UDP in the receiving namespace."""

    def read() -> int:
        lines = Path("/proc/thread-self/net/snmp").read_text().splitlines()
        names, values = (line.split()[1:] for line in lines if line.startswith("Udp:"))
        counters = dict(zip(names, map(int, values), strict=True))
        return counters["InDatagrams"] + counters["NoPorts"] + counters["InErrors"]

    return inside(lab.receiver, read)


@contextmanager
def sink(lab: VethLab) -> Iterator[socket.socket]:
    """The never-read UDP socket on the receiver's port."""

    def bind() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((lab.receiver_v4, PORT))
        return sock

    sock = inside(lab.receiver, bind)
    try:
        yield sock
    finally:
        sock.close()


class TrafgenDied(RuntimeError):
    """trafgen exited while it should have been sending; the message has its last words."""


class Trafgen:
    """trafgen sending from the sender namespace, (re)started on demand."""

    def __init__(self, lab: VethLab, random_sources: bool) -> None:
        self.lab = lab
        self.random_sources = random_sources
        self.deaths: list[str] = []  # why trafgen had to be started again
        self._process: subprocess.Popen | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="xic-trafgen-")
        self._config = Path(self._scratch.name) / "frames.cfg"
        self._config.write_text(trafgen_config(lab, random_sources))
        self._errors = Path(self._scratch.name) / "stderr"

    def start(self) -> None:
        with self._errors.open("wb") as errors:
            # -P 1: one sending process; --no-sock-mem and -Q: leave the host's socket memory
            # sysctls and IRQ affinities alone; -C: no CPU statistics at exit.
            self._process = subprocess.Popen(
                [
                    *("ip", "netns", "exec", self.lab.sender, "trafgen", "-i", str(self._config)),
                    *("-o", self.lab.sender_if, "-P", "1", "--no-sock-mem", "-Q", "-C"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        first = udp_received(self.lab)
        while udp_received(self.lab) == first:
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError("trafgen started but no datagram arrived in 10 s")
            time.sleep(0.02)

    def check(self) -> None:
        """Raise TrafgenDied if trafgen is not running any more."""
        if self._process is not None and self._process.poll() is not None:
            words = self._errors.read_text(errors="replace").strip().splitlines()[-3:]
            raise TrafgenDied(f"trafgen exited ({self._process.returncode}): {' / '.join(words)}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self._scratch.cleanup()


class Contenders:
    """Puts one contender at a time on the receiving end, and takes it off again."""

    def __init__(self, lab: VethLab, capacity: int) -> None:
        self.lab = lab
        self.capacity = capacity
        self._empty = programs.empty()
        self.project = programs.product(capacity, PortFilter.all())
        self.budgeted = programs.product(capacity, PortFilter.all(), new_source_budget=BUDGET)
        self.first_version = programs.FirstVersion(capacity, PortFilter.all())
        self.ifindex = lab.receiver_ifindex()

    def close(self) -> None:
        self.project.close()
        self.budgeted.close()
        self.first_version.close()
        self._empty.close()

    @contextmanager
    def on(self, name: str) -> Iterator[None]:
        if name == "no program":
            yield
            return
        if name == "nftables set":
            _netns_exec(self.lab.receiver, "nft", "-f", "-", stdin=nft_ruleset(self.capacity))
            try:
                yield
            finally:
                _netns_exec(self.lab.receiver, "nft", "delete", "table", "inet", NFT_TABLE)
            return
        program, mode = (part.strip() for part in name.split(","))
        fd = {
            "empty XDP": self._empty.fd,
            "project": self.project.prog_fd,
            BUDGETED: self.budgeted.prog_fd,
            "first version": self.first_version.fd,
        }[program]
        link = inside(
            self.lab.receiver, lambda: bpf_syscall.link_create_xdp(fd, self.ifindex, mode)
        )
        try:
            yield
        finally:
            os.close(link)


def run(config: Config, log: Callable[[str], None] = print) -> dict:
    result: dict = {"config": config.__dict__, "modes": {}}
    with veth_lab(str(os.getpid() % 100000)) as lab, sink(lab):
        contenders = Contenders(lab, config.capacity)
        try:
            for mode, random_sources in (("fixed sources", False), ("random sources", True)):
                log(f"throughput: {mode}")
                result["modes"][mode] = _measure_mode(lab, contenders, random_sources, config)
            stats = contenders.project.read_stats()
            result["project_frames_recorded"] = stats["recorded"] + stats["recorded_new"]
            result["project_new_sources"] = stats["recorded_new"]
            result["project_evicted"] = contenders.project.read_events()["evicted"]
            result["first_version_frames_recorded"] = sum(contenders.first_version.stats()[:2])
        finally:
            contenders.close()
    return result


def _measure_mode(
    lab: VethLab, contenders: Contenders, random_sources: bool, config: Config
) -> dict:
    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    sender = Trafgen(lab, random_sources)
    try:
        sender.start()
        for round_number in range(config.rounds):
            shift = round_number % len(CONTENDERS)
            for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
                rates[name].append(_window(lab, contenders, name, sender, config))
    finally:
        sender.close()
    figures: dict = {}
    for name, series in rates.items():
        mode = name.split(", ")[1] if ", " in name else None
        entry = {
            "pps": summary(series),
            "vs_no_program": summary(ratios(series, rates["no program"])),
        }
        if mode:
            entry["vs_empty_same_mode"] = summary(ratios(series, rates[f"empty XDP, {mode}"]))
        entry["vs_nftables"] = summary(ratios(series, rates["nftables set"]))
        figures[name] = entry
    return {"contenders": figures, "trafgen_deaths": sender.deaths}


def _window(
    lab: VethLab, contenders: Contenders, name: str, sender: Trafgen, config: Config
) -> float:
    """Datagrams per second with one contender on, over config.seconds. trafgen sometimes
    gives up (a send fails while the receiver switches XDP modes) or stalls: it is started
    again and the window measured again. A window in which nothing arrived three times over
    is reported as 0 (no contender here drops anything, so that would be a bug)."""
    rate = 0.0
    for _ in range(3):
        with contenders.on(name):
            time.sleep(config.settle)
            start_count, start = udp_received(lab), time.monotonic()
            time.sleep(config.seconds)
            end_count, end = udp_received(lab), time.monotonic()
        rate = (end_count - start_count) / (end - start)
        try:
            sender.check()
        except TrafgenDied as exc:
            sender.deaths.append(f"{name}: {exc}")
            sender.restart()
            continue
        if end_count == start_count:
            sender.deaths.append(f"{name}: nothing arrived in {config.seconds} s")
            sender.restart()
            continue
        return rate
    return rate
