"""Part 1: the program's cost per frame, with BPF_PROG_TEST_RUN, against an empty XDP_PASS
program loaded in the same run.

Every figure is a ratio to the empty program measured in the same round (A B A B ...), so that
the noise of a shared machine mostly cancels; each is the median of several rounds, with the
smallest and largest round as its spread. The process is pinned to one CPU while it measures:
BPF_PROG_TEST_RUN runs the program on the calling CPU, and the per-CPU cache and (with
BPF_F_NO_COMMON_LRU) the per-CPU LRU lists are then those of one CPU, as for one RX queue.

Steps (hot path, IPv4): empty program; parsing + port filter + outcome counter; + an LRU-hash
lookup and update per frame with the coarse clock (the program's first version, the baseline);
+ the per-CPU cache, still calling the coarse clock per frame; the project's program (the cache,
stamped with jiffies). Every step is bpf/xdp_ip_counter.c itself, built with the -D switches of
its "benchmark steps" (STEPS below), so the steps parse with the program's own code.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from tests.support import frames
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.bpf import BPF_F_NO_COMMON_LRU, DataPath, source_dir
from xdp_ip_counter.clock import kernel_clock
from xdp_ip_counter.config import PortFilter

from . import fill
from .stats import chunk_medians, ratios, summary

XDP_PASS = 2
WATCHED = frozenset({22, 53, 443})
EMPTY_SOURCE = b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }"
# The steps before the project's program: the -D switches bpf/xdp_ip_counter.c builds them with.
STEPS = {
    "parse + port filter + counter": {"PARSE_ONLY": "1"},
    "LRU hash per frame (first version)": {"NO_CACHE": "1", "COARSE_CLOCK": "1"},
    "cache + coarse clock helper": {"COARSE_CLOCK": "1"},
}

CASES = {
    "hot path IPv4": frames.small_v4("10.1.0.2", 53),
    "hot path IPv6": frames.small_v6("fd00:1::2", 53),
    "port filtered out": frames.small_v4("10.1.0.3", 8080),
    "not IP (ARP)": frames.arp_frame(),
    "IPv6, 3 extension headers": frames.small_v6(
        "fd00:1::3",
        53,
        (frames.hop_by_hop(), frames.routing(segments=0), frames.destination_options()),
    ),
    "QinQ IPv4": frames.small_qinq_v4("10.1.0.4", 53),
}
HOT = "hot path IPv4"


@dataclass(frozen=True)
class Config:
    repeat: int  # frames per BPF_PROG_TEST_RUN
    rounds: int
    capacity: int  # of the sources maps that get filled (>= the largest fill + 1)
    fills: tuple[int, ...]  # other entries in the map for the hot-path-at-scale rows
    insert_frames: int  # new sources per insert measurement
    cpu: int  # the CPU the measurements run on


FULL = Config(
    repeat=1_000_000,
    rounds=9,
    capacity=1_100_000,
    fills=(100_000, 1_000_000),
    insert_frames=20_000,
    cpu=-1,
)
SMOKE = Config(
    repeat=20_000, rounds=3, capacity=4096, fills=(1000, 3000), insert_frames=300, cpu=-1
)


@dataclass
class Program:
    name: str
    fd: int
    sources_fd: int | None = None  # its sources map, when it has one


def _bcc_program(defines: dict[str, str], keep: list) -> tuple[int, int]:
    """bpf/xdp_ip_counter.c built with defines: (program fd, sources map fd)."""
    from bcc import BPF  # noqa: PLC0415 - bcc only where it is needed

    cflags = [f"-I{source_dir()}", "-Wno-unused-function"]
    cflags += [f"-D{name}={value}" for name, value in defines.items()]
    bpf = BPF(src_file=str(source_dir() / "xdp_ip_counter.c").encode(), cflags=cflags)
    fd = bpf.load_func(b"xdp_ip_counter", BPF.XDP).fd
    leaf = bpf[b"port_filter"].Leaf()
    for port in WATCHED:
        leaf.bits[port >> 6] |= 1 << (port & 63)
    bpf[b"port_filter"][ctypes.c_int(0)] = leaf
    keep.append(bpf)
    return fd, bpf[b"sources"].get_fd()


@contextmanager
def _pinned(cpu: int) -> Iterator[int]:
    previous = os.sched_getaffinity(0)
    chosen = cpu if cpu >= 0 else max(previous)
    os.sched_setaffinity(0, {chosen})
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, previous)


def _run(fd: int, frame: bytes, repeat: int) -> int:
    result = bpf_syscall.prog_test_run(fd, frame, repeat=repeat)
    if result.retval != XDP_PASS:
        raise RuntimeError(f"program fd {fd} returned {result.retval}, not XDP_PASS")
    return result.duration_ns


def _compare(
    empty: int, contenders: list[Program], frame: bytes, config: Config
) -> dict[str, dict]:
    """Empty, contender, empty, contender ... for every round; per contender its ns, the empty
    program's ns of the same rounds and the ratios."""
    for program in contenders:  # warm up: the first frame of a source inserts it
        _run(program.fd, frame, 1000)
    times: dict[str, tuple[list[float], list[float]]] = {p.name: ([], []) for p in contenders}
    for _ in range(config.rounds):
        for program in contenders:
            times[program.name][1].append(_run(empty, frame, config.repeat))
            times[program.name][0].append(_run(program.fd, frame, config.repeat))
    return {
        name: {
            "ns": summary(own),
            "empty_ns": summary(base),
            "ratio": summary(ratios(own, base)),
        }
        for name, (own, base) in times.items()
    }


def _insert_costs(
    empty: int, contenders: list[Program], new_frames: list[bytes], rounds: int
) -> dict[str, dict]:
    """A new source in every frame: one BPF_PROG_TEST_RUN per frame (repeat 1, so the figures
    include the syscall's timer overhead, which the empty program shows), the empty program on
    the same frame just before each. Rounds are consecutive slices of the frames."""
    own: dict[str, list[float]] = {p.name: [] for p in contenders}
    base: dict[str, list[float]] = {p.name: [] for p in contenders}
    for number, frame in enumerate(new_frames):
        first = number % len(contenders)  # each goes first in turn: no order bias
        for program in contenders[first:] + contenders[:first]:
            base[program.name].append(_run(empty, frame, 1))
            own[program.name].append(_run(program.fd, frame, 1))
    result = {}
    for name, series in own.items():
        mine, theirs = chunk_medians(series, rounds), chunk_medians(base[name], rounds)
        result[name] = {
            "ns": summary(mine),
            "empty_ns": summary(theirs),
            "ratio": summary(ratios(mine, theirs)),
        }
    return result


def _entries(map_fd: int, capacity: int) -> int:
    return bpf_syscall.map_lookup_batch(map_fd, 24, 32, capacity)[2]


def run(config: Config, log: Callable[[str], None] = print) -> dict:
    from bcc import BPF  # noqa: PLC0415

    keep: list = []
    clock = kernel_clock()
    defines = {
        "MAX_ENTRIES": str(config.capacity),
        "LRU_FLAGS": "0",
        "CLOCK_JIFFY_ZERO": f"{clock.jiffy_zero}ULL",
        "CLOCK_TICK_NS": f"{clock.tick_ns}ULL",
    }
    datapaths: list[DataPath] = []
    result: dict = {"config": config.__dict__ | {"fills": list(config.fills)}}
    with _pinned(config.cpu) as cpu:
        result["cpu"] = cpu
        log(f"kernel: compiling the contenders (capacity {config.capacity})")
        empty_bpf = BPF(text=EMPTY_SOURCE)
        keep.append(empty_bpf)
        empty = empty_bpf.load_func(b"xdp_pass", BPF.XDP).fd

        project = DataPath(config.capacity)
        datapaths.append(project)
        project.set_ports(PortFilter(all_ports=False, ports=WATCHED))
        no_common = DataPath(config.capacity, lru_flags=BPF_F_NO_COMMON_LRU)
        datapaths.append(no_common)
        no_common.set_ports(PortFilter(all_ports=False, ports=WATCHED))
        programs = {
            name: Program(name, *_bcc_program(defines | switches, keep))
            for name, switches in STEPS.items()
        }
        try:
            programs |= {
                "project": Program("project", project.prog_fd, project.sources_fd),
                "project, BPF_F_NO_COMMON_LRU": Program(
                    "project, BPF_F_NO_COMMON_LRU", no_common.prog_fd, no_common.sources_fd
                ),
            }
            result["rows"], result["project_counts"] = _measure_all(
                empty, programs, project, config, log
            )
            result["entries_kept_from_one_cpu"] = _one_cpu_capacity(project, no_common, config, log)
        finally:
            for datapath in datapaths:
                datapath.close()
            for bpf in keep:
                bpf.cleanup()
    return result


def _measure_all(
    empty: int, programs: dict[str, Program], project: DataPath, config: Config, log
) -> tuple[list[dict], dict[str, dict[str, int]]]:
    rows: list[dict] = []

    def add(case: str, entries: str, measured: dict[str, dict]) -> None:
        for name, figures in measured.items():
            rows.append({"case": case, "entries": entries, "program": name, **figures})

    log("kernel: steps of the hot path")
    steps = [programs[name] for name in programs]
    add(HOT, "1", _compare(empty, steps, CASES[HOT], config))
    for case, frame in CASES.items():
        if case == HOT:
            continue
        log(f"kernel: {case}")
        add(case, "1", _compare(empty, [programs["project"]], frame, config))

    log("kernel: new source every frame, map with room")
    inserters = [
        programs["LRU hash per frame (first version)"],
        programs["project"],
        programs["project, BPF_F_NO_COMMON_LRU"],
    ]
    new = frames.distinct_v4(config.insert_frames * 2, first="10.128.0.0")
    add(
        "new source every frame",
        "room",
        _insert_costs(empty, inserters, new[: config.insert_frames], config.rounds),
    )

    at_scale = [programs["LRU hash per frame (first version)"], programs["project"]]
    filled = 0
    for target in config.fills:
        log(f"kernel: hot path with {target} other entries")
        for program in at_scale:
            assert program.sources_fd is not None
            fill.fill(program.sources_fd, target - filled, start=filled)
        filled = target
        add(HOT, f"{target} others", _compare(empty, at_scale, CASES[HOT], config))

    counts = _project_counts(project, config)

    log("kernel: new source every frame, full map (the LRU evicts)")
    for program in [*at_scale, programs["project, BPF_F_NO_COMMON_LRU"]]:
        assert program.sources_fd is not None
        # Past capacity, from keys no fill used yet: the LRU has to evict.
        present = _entries(program.sources_fd, config.capacity)
        top_up = config.capacity + config.capacity // 8 - present
        fill.fill(program.sources_fd, top_up, start=2 * config.capacity)
        entries = _entries(program.sources_fd, config.capacity)
        if entries < config.capacity // 4:
            raise RuntimeError(f"{program.name}: only {entries} entries after filling")
    add(
        "new source every frame",
        "full",
        _insert_costs(empty, inserters, new[config.insert_frames :], config.rounds),
    )
    return rows, counts


# The source of each recorded case, and how many of its frames went to the project's program.
_SOURCES = {
    HOT: ("10.1.0.2", 4),
    "hot path IPv6": ("fd00:1::2", 6),
    "IPv6, 3 extension headers": ("fd00:1::3", 6),
    "QinQ IPv4": ("10.1.0.4", 4),
}


def _project_counts(project: DataPath, config: Config) -> dict[str, dict[str, int]]:
    """Packets the project's program recorded per source (read as the daemon reads them:
    map plus cache) against the frames it was given: they must be equal."""
    keys, values, _ = project.read_sources()
    per_run = 1000 + config.rounds * config.repeat  # warm-up and rounds of one comparison
    counts = {}
    for case, (source, family) in _SOURCES.items():
        address = ipaddress.ip_address(source)
        packed = address.packed if family == 6 else bytes(10) + b"\xff\xff" + address.packed
        match = np.flatnonzero((keys["addr"] == np.void(packed)) & (keys["port"] == 53))
        counted = int(values["packets"][match].sum())
        runs = 1 + len(config.fills) if case == HOT else 1
        counts[case] = {"sent": runs * per_run, "counted": counted}
    return counts


def _one_cpu_capacity(project: DataPath, no_common: DataPath, config: Config, log) -> dict:
    """Entries the map keeps when every insert comes from one CPU (as one RX queue would):
    the per-CPU LRU gives each CPU capacity / CPUs."""
    log("kernel: entries kept from one CPU's inserts")
    return {
        "capacity": config.capacity,
        "cpus": os.cpu_count(),
        "common_lru": _entries(project.sources_fd, config.capacity),
        "no_common_lru": _entries(no_common.sources_fd, config.capacity),
    }
