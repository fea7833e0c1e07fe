"""Toward issue 12: what a new source costs in a set-associative table of our own
(bench/prototypes/set_assoc.c) against the LRU hash, with BPF_PROG_TEST_RUN, in one run.

    sudo /usr/bin/python3 -m bench.prototype_cost            full sizes (a few minutes)
    sudo /usr/bin/python3 -m bench.prototype_cost --smoke    seconds (tests/bench runs this)

Contenders, each measured right after the empty program on the same frame, A B A B ... and each
going first in turn (kernel_cost's method and helpers): the empty program; the program's first
version (an LRU-hash lookup per frame, insert when new: kernel_cost.STEPS' baseline); the
project's program; the prototype with 4 and 8 ways of 64-byte slots (each with its tag), with 8
ways and the set's tags in one cache line ahead of its slots (TAG_LINE), and each 8-way layout
plus a per-CPU admission check (a budget of new keys per tick, set high enough that every key
is admitted: the check's cost alone). Figures: ns per frame, and the added cost (contender -
empty) / (baseline - empty), round by round (issue 12's goal 2 asks for <= 0.4).

Cases: a new source in every frame with the tables empty ("room") and full (the LRU maps filled
past capacity with BPF_MAP_UPDATE_BATCH, every slot of the prototype's table written through
mmap as a live entry); and the hot path (one source repeated).

Checks, on both 8-way layouts: exactness (M distinct sources sent from two CPUs at once, read
back through mmap with duplicates merged: exactly M keys, packets summing to the frames sent,
each source's own count exact) and protection (K sources sent twice, then a flood of one-packet
sources several times the table's size: how many of the K are still there, with the prototype's
replacement rule and with plain oldest-first for contrast). At full size also: reading
1,000,000 entries through mmap (with the merge) against the daemon's batch read of an LRU hash
of 1,000,000."""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.support import frames
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.bpf import DataPath, source_dir
from xdp_ip_counter.clock import kernel_clock, kernel_clock_ns
from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.layout import KEY_DTYPE

from . import fill, kernel_cost
from .stats import chunk_medians, ratios, summary

SOURCE = Path(__file__).resolve().parent / "prototypes" / "set_assoc.c"
WRAPPER = SOURCE.with_name("set_assoc_varying_source.c")
EMPTY_WRAPPED = "static __always_inline int wrapped_main(struct xdp_md *ctx) { return XDP_PASS; }"
BASELINE = "LRU hash per frame (first version)"
WINDOW_NS = 60_000_000_000
# One slot of the prototype's table, as set_assoc.c lays it out (64 bytes, one cache line).
SLOT_DTYPE = np.dtype(
    [
        ("tag", "<u8"),
        ("first_seen", "<u8"),
        ("last_seen", "<u8"),
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("key", KEY_DTYPE),
    ]
)
assert SLOT_DTYPE.itemsize == 64
# With -DTAG_LINE: a set is its tag words (hash << 32 | ESTABLISHED | stamp) in one cache
# line, then its slots (64 bytes each, no tag).
LINE_SLOT_DTYPE = np.dtype(
    [
        ("first_seen", "<u8"),
        ("last_seen", "<u8"),
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("key", KEY_DTYPE),
        ("unused", "<u8"),
    ]
)
STAMP_SHIFT, ESTABLISHED = 30, 1 << 31
# The prototype's variants: name -> (ways, extra -D switches).
VARIANTS = {
    "set-assoc, 8 ways": (8, {}),
    "set-assoc, 4 ways": (4, {}),
    "set-assoc, 8 ways + admission check": (8, {"ADMISSION_BUDGET": "1000000000"}),
    "set-assoc, 8 ways, tag line": (8, {"TAG_LINE": "1"}),
    "set-assoc, 8 ways, tag line + admission check": (
        8,
        {"TAG_LINE": "1", "ADMISSION_BUDGET": "1000000000"},
    ),
}
# The layouts the checks run on.
LAYOUTS = {"64-byte slots": {}, "tag line": {"TAG_LINE": "1"}}
# Outcome counters of set_assoc.c (enum P_*).
OUTCOMES = ("recorded", "new", "other", "evicted", "not_admitted", "lost")


@dataclass(frozen=True)
class Config:
    capacities: tuple[int, ...]  # slots (= LRU capacity) of the tables of each scenario
    insert_frames: int  # new sources per new-source measurement
    rounds: int
    repeat: int  # frames per BPF_PROG_TEST_RUN on the hot path
    exact_sources: int  # M of the exactness check
    exact_capacity: int
    protect_capacity: int  # table of the protection check
    protected: int  # K
    flood: int  # one-packet sources after them
    read_entries: int  # mmap vs batch read (0: not measured)
    flood_full_repeat: int  # new sources per test run of the flood run, table full
    cpu: int = -1


FULL = Config(
    capacities=(65536, 262144),
    insert_frames=20_000,
    rounds=9,
    repeat=1_000_000,
    exact_sources=20_000,
    exact_capacity=65536,
    protect_capacity=65536,
    protected=8192,
    flood=262_144,
    read_entries=1_000_000,
    flood_full_repeat=100_000,
)
SMOKE = Config(
    capacities=(4096,),
    insert_frames=300,
    rounds=3,
    repeat=20_000,
    exact_sources=500,
    exact_capacity=4096,
    protect_capacity=4096,
    protected=512,
    flood=16_384,
    read_entries=0,
    flood_full_repeat=2000,
)


class SetAssocTable:
    """set_assoc.c compiled with `ways` ways and `capacity` slots, its port filter set, and its
    table mapped (BPF_F_MMAPABLE) as a numpy array (of SLOT_DTYPE, or with TAG_LINE of sets)."""

    def __init__(
        self,
        capacity: int,
        ways: int,
        defines: dict[str, str] | None = None,
        *,
        varying: bool = False,
    ) -> None:
        sets = capacity // ways
        if sets & (sets - 1) or sets * ways != capacity:
            raise ValueError(f"capacity {capacity} is not a power of two sets of {ways} ways")
        clock = kernel_clock()
        switches = {
            "SET_BITS": str(sets.bit_length() - 1),
            "WAYS": str(ways),
            "WINDOW_NS": f"{WINDOW_NS}ULL",
            "CLOCK_JIFFY_ZERO": f"{clock.jiffy_zero}ULL",
            "CLOCK_TICK_NS": f"{clock.tick_ns}ULL",
        } | (defines or {})
        self.bpf, self.fd = _compile(SOURCE, "set_assoc", switches, varying=varying)
        self.capacity, self.ways = capacity, ways
        self.tag_line = "TAG_LINE" in switches
        if self.tag_line:
            dtype = np.dtype([("tag", "<u8", (ways,)), ("way", LINE_SLOT_DTYPE, (ways,))])
            count = sets
        else:
            dtype, count = SLOT_DTYPE, capacity
        size = count * dtype.itemsize
        size += -size % mmap.PAGESIZE
        self._map = mmap.mmap(self.bpf[b"table"].get_fd(), size, mmap.MAP_SHARED)
        self.slots = np.frombuffer(self._map, dtype, count)

    def rows(self) -> np.ndarray:
        """A copy of every slot as SLOT_DTYPE (with TAG_LINE: the tag is the hash part)."""
        if not self.tag_line:
            return self.slots.copy()
        ways = self.slots["way"].reshape(-1)
        rows = np.zeros(len(ways), SLOT_DTYPE)
        rows["tag"] = self.slots["tag"].reshape(-1) >> np.uint64(32)
        for field in ("first_seen", "last_seen", "packets", "bytes", "key"):
            rows[field] = ways[field]
        return rows

    def fill_full(self, start: int, live: int | None = None) -> None:
        """The first `live` slots (default: all) live entries seen now, of keys no frame uses
        (from fill.source_keys), half of them one-packet and half established, with tags no
        frame's key has; the other slots empty."""
        live = self.capacity if live is None else live
        rows = np.zeros(self.capacity, SLOT_DTYPE)
        rows["tag"][:live] = (np.arange(live, dtype=np.uint64) << np.uint64(1)) | 1
        rows["key"][:live] = fill.source_keys(live, start)
        now = kernel_clock_ns()
        rows["first_seen"][:live] = now
        rows["last_seen"][:live] = now
        rows["packets"][:live] = 1 + np.arange(live) % 2
        rows["bytes"][:live] = 46
        if not self.tag_line:
            self.slots[:] = rows
            return
        words = rows["tag"] << np.uint64(32)
        words |= np.where(rows["packets"] >= 2, np.uint64(ESTABLISHED), np.uint64(0))
        words |= np.uint64((now >> STAMP_SHIFT) & 0x7FFFFFFF)
        words[live:] = 0
        self.slots["tag"] = words.reshape(-1, self.ways)
        ways = np.zeros(self.capacity, LINE_SLOT_DTYPE)
        for field in ("first_seen", "last_seen", "packets", "bytes", "key"):
            ways[field] = rows[field]
        self.slots["way"] = ways.reshape(-1, self.ways)

    def stats(self) -> dict[str, int]:
        table = self.bpf[b"stats"]
        return {name: int(sum(table[index])) for index, name in enumerate(OUTCOMES)}

    def close(self) -> None:
        del self.slots
        self._map.close()
        self.bpf.cleanup()


def _compile(
    source: Path | None, entry: str, switches: dict[str, str], *, varying: bool = False
) -> tuple[object, int]:
    """(BPF object, program fd) of an XDP program built by bcc from source (None: the empty
    program) with the -D switches, its port filter set when it has one. varying: wrapped in
    set_assoc_varying_source.c (a new source in every run), its entry renamed wrapped_main."""
    from bcc import BPF  # noqa: PLC0415 - bcc only where it is needed

    cflags = [f"-I{source_dir()}", "-Wno-unused-function"]
    cflags += [f"-D{name}={value}" for name, value in switches.items()]
    if not varying:
        assert source is not None
        bpf = BPF(src_file=str(source).encode(), cflags=cflags)
        fd = bpf.load_func(entry.encode(), BPF.XDP).fd
    else:
        text = "#include <uapi/linux/bpf.h>\n"
        text += "static __always_inline int wrapped_main(struct xdp_md *ctx);\n"
        if source is None:
            text += EMPTY_WRAPPED + "\n"
        else:
            text += f"#define {entry} wrapped_main\n{source.read_text()}\n#undef {entry}\n"
        bpf = BPF(text=(text + WRAPPER.read_text()).encode(), cflags=cflags)
        fd = bpf.load_func(b"varying_source", BPF.XDP).fd
    if source is not None:
        leaf = bpf[b"port_filter"].Leaf()
        for port in kernel_cost.WATCHED:
            leaf.bits[port >> 6] |= 1 << (port & 63)
        bpf[b"port_filter"][ctypes.c_int(0)] = leaf
    return bpf, fd


def read_table(rows: np.ndarray, ways: int, now_ns: int) -> tuple[np.ndarray, int]:
    """The live entries of a table's rows (SetAssocTable.rows(), copied once out of the
    mapping), duplicates merged: (entries, duplicates).

    Two slots can hold the
    same key only in the same set with the same tag (two CPUs claimed it at once), so
    duplicates are found by sorting each set's tags, and only the rare sets with a repeated tag
    compare keys; a duplicate's counts are added to the first slot of its key."""
    live = (rows["tag"] != 0) & (rows["last_seen"] + np.uint64(WINDOW_NS) >= np.uint64(now_ns))
    tags = np.where(live, rows["tag"], 0).reshape(-1, ways)
    ordered = np.sort(tags, axis=1)
    repeated = np.flatnonzero(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != 0)).any(1))
    duplicates = 0
    for number in repeated:
        base = number * ways
        first: dict[bytes, int] = {}
        for index in range(base, base + ways):
            if not live[index]:
                continue
            key = rows["key"][index].tobytes()
            if key in first:
                keep = first[key]
                rows["packets"][keep] += rows["packets"][index]
                rows["bytes"][keep] += rows["bytes"][index]
                rows["first_seen"][keep] = min(rows["first_seen"][keep], rows["first_seen"][index])
                rows["last_seen"][keep] = max(rows["last_seen"][keep], rows["last_seen"][index])
                live[index] = False
                duplicates += 1
            else:
                first[key] = index
    return rows[live], duplicates


def _series(
    empty: int, contenders: list[kernel_cost.Program], frame_list: list[bytes], repeat: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per frame: each contender (in rotated order) right after the empty program."""
    own: dict[str, list[float]] = {p.name: [] for p in contenders}
    base: dict[str, list[float]] = {p.name: [] for p in contenders}
    for number, frame in enumerate(frame_list):
        first = number % len(contenders)
        for program in contenders[first:] + contenders[:first]:
            base[program.name].append(kernel_cost._run(empty, frame, repeat))
            own[program.name].append(kernel_cost._run(program.fd, frame, repeat))
    return own, base


def _figures(own: dict[str, list[float]], base: dict[str, list[float]]) -> dict[str, dict]:
    """ns, empty ns, ratio to empty and added cost relative to the baseline's, round by round
    (the lists are already one value per round)."""
    added = {name: [o - b for o, b in zip(own[name], base[name], strict=True)] for name in own}
    return {
        name: {
            "ns": summary(own[name]),
            "empty_ns": summary(base[name]),
            "ratio": summary(ratios(own[name], base[name])),
            "added_vs_baseline": summary(ratios(added[name], added[BASELINE])),
        }
        for name in own
    }


def _new_sources(empty, contenders, frame_list, rounds) -> dict[str, dict]:
    own, base = _series(empty, contenders, frame_list, 1)
    return _figures(
        {n: chunk_medians(v, rounds) for n, v in own.items()},
        {n: chunk_medians(v, rounds) for n, v in base.items()},
    )


def _hot(empty, contenders, config: Config) -> dict[str, dict]:
    frame = kernel_cost.CASES[kernel_cost.HOT]
    for program in contenders:  # the first frame inserts the source
        kernel_cost._run(program.fd, frame, 1000)
    return _figures(*_series(empty, contenders, [frame] * config.rounds, config.repeat))


def _scenario(empty: int, capacity: int, config: Config, log, keep: list) -> list[dict]:
    """Room, then full, then the hot path, for tables of `capacity` entries."""
    clock = kernel_clock()
    defines = {
        "MAX_ENTRIES": str(capacity),
        "LRU_FLAGS": "0",
        "CLOCK_JIFFY_ZERO": f"{clock.jiffy_zero}ULL",
        "CLOCK_TICK_NS": f"{clock.tick_ns}ULL",
    }
    log(f"prototype: compiling the contenders (capacity {capacity})")
    baseline = kernel_cost.Program(
        BASELINE, *kernel_cost._bcc_program(defines | kernel_cost.STEPS[BASELINE], keep)
    )
    project = DataPath(capacity)
    project.set_ports(PortFilter(all_ports=False, ports=kernel_cost.WATCHED))
    tables = {
        name: SetAssocTable(capacity, ways, switches) for name, (ways, switches) in VARIANTS.items()
    }
    try:
        contenders = [
            baseline,
            kernel_cost.Program("project", project.prog_fd, project.sources_fd),
            *(kernel_cost.Program(name, table.fd) for name, table in tables.items()),
        ]
        new = frames.distinct_v4(2 * config.insert_frames, first="10.128.0.0")
        rows = []

        def add(case: str, measured: dict[str, dict]) -> None:
            for name, figures in measured.items():
                rows.append({"case": case, "capacity": capacity, "program": name, **figures})

        log("prototype: new source every frame, room")
        add(
            "new source, room",
            _new_sources(empty, contenders, new[: config.insert_frames], config.rounds),
        )
        log("prototype: new source every frame, full")
        for fd in (baseline.sources_fd, project.sources_fd):
            fill.fill(fd, capacity + capacity // 8, start=2 * capacity)
        for table in tables.values():
            table.fill_full(start=2 * capacity)
        add(
            "new source, full",
            _new_sources(empty, contenders, new[config.insert_frames :], config.rounds),
        )
        log("prototype: hot path")
        add("hot path", _hot(empty, contenders, config))
        for row in rows:
            if row["program"] in tables:
                row["outcomes"] = tables[row["program"]].stats()
        return rows
    finally:
        project.close()
        for table in tables.values():
            table.close()


def _ipv4(entries: np.ndarray) -> np.ndarray:
    """The IPv4 address (as an integer) of every entry's IPv4-mapped source."""
    addresses = np.frombuffer(entries["key"]["addr"].tobytes(), np.uint8).reshape(-1, 16)
    return np.ascontiguousarray(addresses[:, 12:16]).view(">u4").ravel().astype(np.uint32)


def _flood_run(capacity: int, config: Config, log, keep: list) -> list[dict]:
    """A new source in every run of one BPF_PROG_TEST_RUN (set_assoc_varying_source.c): the
    program's code warm, its table cold, as in a flood at line rate. Room: rounds of
    capacity / (2 * rounds) new sources each, so that the table stays half full at most; full:
    rounds of flood_full_repeat new sources after the tables were filled."""
    clock = kernel_clock()
    defines = {
        "MAX_ENTRIES": str(capacity),
        "LRU_FLAGS": "0",
        "CLOCK_JIFFY_ZERO": f"{clock.jiffy_zero}ULL",
        "CLOCK_TICK_NS": f"{clock.tick_ns}ULL",
    }
    log(f"prototype: compiling the flood-run contenders (capacity {capacity})")
    product = source_dir() / "xdp_ip_counter.c"
    empty_bpf, empty = _compile(None, "", defines, varying=True)
    keep.append(empty_bpf)
    lru_fds = {}
    contenders = []
    for name, switches in ((BASELINE, kernel_cost.STEPS[BASELINE]), ("project", {})):
        bpf, fd = _compile(product, "xdp_ip_counter", defines | switches, varying=True)
        keep.append(bpf)
        lru_fds[name] = bpf[b"sources"].get_fd()
        contenders.append(kernel_cost.Program(name, fd))
    tables = {
        name: SetAssocTable(capacity, ways, switches, varying=True)
        for name, (ways, switches) in VARIANTS.items()
    }
    try:
        contenders += [kernel_cost.Program(name, table.fd) for name, table in tables.items()]
        frame = kernel_cost.CASES[kernel_cost.HOT]
        rows = []
        log("prototype: flood run, room")
        room = _figures(
            *_series(empty, contenders, [frame] * config.rounds, capacity // (2 * config.rounds))
        )
        log("prototype: flood run, full")
        for fd in lru_fds.values():
            fill.fill(fd, capacity + capacity // 8, start=2 * capacity)
        for table in tables.values():
            table.fill_full(start=2 * capacity)
        full = _figures(
            *_series(empty, contenders, [frame] * config.rounds, config.flood_full_repeat)
        )
        for case, measured in (("flood run, room", room), ("flood run, full", full)):
            for name, figures in measured.items():
                rows.append({"case": case, "capacity": capacity, "program": name, **figures})
        return rows
    finally:
        for table in tables.values():
            table.close()


def _send_from(cpu: int, fd: int, sends: list[tuple[bytes, int]]) -> None:
    os.sched_setaffinity(0, {cpu})  # this thread only
    for frame, times in sends:
        for _ in range(times):  # repeat 1: a repeat above 1 waits for an RCU grace period
            kernel_cost._run(fd, frame, 1)


def exactness(config: Config, defines: dict[str, str]) -> dict:
    """M distinct sources, source i sent 1 + i % 5 times by every CPU (two threads pinned to
    two CPUs, in the same order, so that they often claim the same new key at once), read back
    through mmap with duplicates merged."""
    table = SetAssocTable(config.exact_capacity, 8, defines)
    try:
        sources = frames.distinct_v4(config.exact_sources, first="10.200.0.0")
        sends = [(frame, 1 + number % 5) for number, frame in enumerate(sources)]
        cpus = sorted(os.sched_getaffinity(0))[:2]
        threads = [threading.Thread(target=_send_from, args=(cpu, table.fd, sends)) for cpu in cpus]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        entries, duplicates = read_table(table.rows(), table.ways, kernel_clock_ns())
        expected = np.array([repeat for _, repeat in sends], np.uint64) * len(threads)
        # Source i is 10.200.0.0 + i: its count must be exactly what was sent of it.
        number = _ipv4(entries).astype(np.int64) - 0x0AC80000
        each_exact = bool(
            np.array_equal(np.sort(number), np.arange(len(sends)))
            and np.array_equal(entries["packets"], expected[number])
        )
        return {
            "cpus": len(threads),
            "sources": len(sends),
            "frames": int(expected.sum()),
            "keys_read": len(entries),
            "packets_read": int(entries["packets"].sum()),
            "duplicates_merged": duplicates,
            "each_source_exact": each_exact,
            "outcomes": table.stats(),
        }
    finally:
        table.close()


def protection(config: Config, defines: dict[str, str] | None = None) -> dict:
    """K sources sent twice each, then a flood of one-packet sources: how many of the K keep
    their slot (with both their packets: not evicted and inserted again)."""
    table = SetAssocTable(config.protect_capacity, 8, defines)
    try:
        kept_sources = frames.distinct_v4(config.protected, first="10.201.0.0")
        for frame in kept_sources + kept_sources:
            kernel_cost._run(table.fd, frame, 1)
        for frame in frames.distinct_v4(config.flood, first="10.202.0.0"):
            kernel_cost._run(table.fd, frame, 1)
        entries, _ = read_table(table.rows(), table.ways, kernel_clock_ns())
        mine = ((_ipv4(entries) >> 16) == 0x0AC9) & (entries["packets"] == 2)
        return {
            "capacity": config.protect_capacity,
            "protected": config.protected,
            "flood": config.flood,
            "still_present": int(mine.sum()),
            "entries": len(entries),
            "outcomes": table.stats(),
        }
    finally:
        table.close()


def read_costs(entries: int, keep: list) -> dict:
    """Reading `entries` live entries: a prototype table (each layout) through mmap, with the
    merge, against BPF_MAP_LOOKUP_BATCH of an LRU hash of as many entries (as the daemon reads
    today)."""
    capacity = 1 << (entries - 1).bit_length()
    result: dict = {"entries": entries, "capacity": capacity}
    for layout, defines in LAYOUTS.items():
        table = SetAssocTable(capacity, 8, defines)
        try:
            table.fill_full(start=0, live=entries)
            started = time.perf_counter()
            rows, _ = read_table(table.rows(), table.ways, kernel_clock_ns())
            result[f"mmap_s, {layout}"] = time.perf_counter() - started
            assert len(rows) == entries
        finally:
            table.close()
    clock = kernel_clock()
    defines = {
        "MAX_ENTRIES": str(entries + entries // 10),
        "LRU_FLAGS": "0",
        "CLOCK_JIFFY_ZERO": f"{clock.jiffy_zero}ULL",
        "CLOCK_TICK_NS": f"{clock.tick_ns}ULL",
    } | kernel_cost.STEPS[BASELINE]
    _, fd = kernel_cost._bcc_program(defines, keep)
    fill.fill(fd, entries, mixed=True)
    started = time.perf_counter()
    _, _, count = bpf_syscall.map_lookup_batch(fd, 24, 32, entries + entries // 10, chunk=16384)
    batch_s = time.perf_counter() - started
    assert count == entries
    return result | {"batch_s": batch_s}


def run(config: Config, log: Callable[[str], None] = print) -> dict:
    from bcc import BPF  # noqa: PLC0415

    keep: list = []
    result: dict = {"config": config.__dict__ | {"capacities": list(config.capacities)}}
    try:
        with kernel_cost._pinned(config.cpu) as cpu:
            result["cpu"] = cpu
            empty_bpf = BPF(text=kernel_cost.EMPTY_SOURCE)
            keep.append(empty_bpf)
            empty = empty_bpf.load_func(b"xdp_pass", BPF.XDP).fd
            result["rows"] = []
            for capacity in config.capacities:
                result["rows"] += _scenario(empty, capacity, config, log, keep)
                result["rows"] += _flood_run(capacity, config, log, keep)
        log("prototype: exactness from two CPUs")
        result["exactness"] = {name: exactness(config, d) for name, d in LAYOUTS.items()}
        log("prototype: protection against a flood of one-packet sources")
        result["protection"] = {}
        for name, defines in LAYOUTS.items():
            result["protection"][name] = {
                "one-packet first, then oldest": protection(config, defines),
                "oldest first": protection(config, defines | {"EVICT_OLDEST": "1"}),
            }
        if config.read_entries:
            log(f"prototype: reading {config.read_entries} entries, mmap vs batch")
            result["read"] = read_costs(config.read_entries, keep)
    finally:
        for bpf in keep:
            bpf.cleanup()
    return result


def _cell(figure: dict, digits: int = 2) -> str:
    median, low, high = (round(figure[k], digits) for k in ("median", "min", "max"))
    return f"{median} [{low}-{high}]" if low != high else f"{median}"


def markdown(result: dict) -> str:
    lines = [
        "| case | capacity | program | ns/frame | empty ns | added cost vs LRU baseline |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['case']} | {row['capacity']} | {row['program']} | {_cell(row['ns'], 0)} "
            f"| {_cell(row['empty_ns'], 0)} | {_cell(row['added_vs_baseline'])} |"
        )
    lines.append("")
    for layout, exact in result["exactness"].items():
        lines.append(
            f"Exactness, {layout} ({exact['cpus']} CPUs at once): {exact['sources']} sources, "
            f"{exact['frames']} frames -> {exact['keys_read']} keys, "
            f"{exact['packets_read']} packets ({exact['duplicates_merged']} duplicates merged; "
            f"every source's count exact: {exact['each_source_exact']})."
        )
    for layout, rules in result["protection"].items():
        for rule, kept in rules.items():
            lines.append(
                f"Protection, {layout}, {rule}: {kept['still_present']} of {kept['protected']} "
                f"repeat senders still present after {kept['flood']} one-packet sources "
                f"(table of {kept['capacity']})."
            )
    if "read" in result:
        read = result["read"]
        through_mmap = ", ".join(
            f"{name.removeprefix('mmap_s, ')} {value:.3f} s"
            for name, value in read.items()
            if name.startswith("mmap_s")
        )
        lines.append(
            f"Reading {read['entries']} entries: mmap + merge {through_mmap}; "
            f"batch lookup of the LRU hash {read['batch_s']:.3f} s."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes")
    parser.add_argument("--out", type=Path, help="write the raw results here (JSON)")
    args = parser.parse_args()
    result = run(SMOKE if args.smoke else FULL)
    result["meta"] = {"smoke": args.smoke, "load_before": os.getloadavg()[0]}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
