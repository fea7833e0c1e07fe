"""Part 1: the program's cost per frame, with BPF_PROG_TEST_RUN, against an empty XDP_PASS
program loaded in the same run.

Every figure is a ratio to the empty program measured in the same round (A B A B ...), so that
the noise of a shared machine mostly cancels; each is the median of several rounds, with the
smallest and largest round as its spread. The process is pinned to one CPU while it measures
(BPF_PROG_TEST_RUN runs the program on the calling CPU, as one RX queue would).

- The hot path (one source again and again), by steps: parsing + port filter + outcome counter
  (the product built with -DPARSE_ONLY); the first version (bench/programs/first_version.c: an
  LRU-hash lookup and update per frame, the coarse clock helper); the product calling the
  coarse clock helper (-DCOARSE_CLOCK); the product; the product recording every protocol with
  both source lists in force (LISTED: an exclude list of EXCLUDED_PREFIXES prefixes and an
  include list, so every frame pays two longest-prefix lookups). Then other frames (an ICMP
  echo request, a source the exclude list has, ...) for the product and LISTED, and the hot
  path with many other entries in the table.
- A new source in every frame, two ways. Per frame: one BPF_PROG_TEST_RUN per frame (the
  syscall in between leaves the code cold too). The flood run (issue 12's goal 2): every
  contender wrapped in bench/programs/varying_source.c, which gives each run of one test run
  with repeat N a new source: code warm, table cold, as in a flood at line rate; the table
  with room, and full. Added cost = (contender - empty) / (first version - empty), round by
  round.
- Checks: every frame given to the product is in the counts it reports; the table is exact
  when two CPUs send the same new sources at once (duplicates merged on reading); how many
  sources the table loses when new sources fill it to a share of max_entries (issue 12's goal
  1: none up to max_entries); sources that keep sending stay through a flood of one-packet
  sources.

The product's tables are sized as the daemon sizes them: `max_entries` is the capacity (the
first version's LRU hash gets as many entries), in 1.5 times as many slots (two sets of 8 ways
per key; xdp_ip_counter/table.py, sets_for). "Full" is every slot live: past capacity.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass

import numpy as np

from tests.support import frames
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.layout import ESTABLISHED, OUTCOMES, PROTOCOLS, WAYS
from xdp_ip_counter.table import live_mask

from . import contenders, fill
from .stats import chunk_medians, ratios, summary

XDP_PASS = 2
WATCHED = frozenset({22, 53, 443})
PORTS = PortFilter(all_ports=False, ports=WATCHED)

EMPTY = "empty XDP"
PARSE = "parse + port filter + counter"
FIRST = "LRU hash per frame (first version)"
COARSE = "project, coarse clock helper"
PROJECT = "project"
NO_SKETCH = "project without the sketch update"
BUDGET = 1000  # new sources per second and CPU: 8,590 per tick of 8.6 s
BUDGETED = f"project, new_source_budget {BUDGET}"
LISTED = "project, every protocol, source lists"
EXCLUDED_PREFIXES = 1000  # /24s of 100.64.0.0/10 (the source lists' cost grows with depth)
EXCLUDED_SOURCE = "100.64.7.9"  # in the exclude list
# The hot path's steps: the -D switches the product is built with (None: the first version).
STEPS = {
    PARSE: {"PARSE_ONLY": "1"},
    FIRST: None,
    COARSE: {"COARSE_CLOCK": "1"},
    PROJECT: {},
}
FLOOD_CONTENDERS = (FIRST, PROJECT, NO_SKETCH, BUDGETED)

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
    "ICMP echo request": frames.pad_to(frames.v4_proto("10.1.0.5", "icmp", 8).data, 60),
    "excluded source": frames.small_v4(EXCLUDED_SOURCE, 53),
}
HOT = "hot path IPv4"
NEW_SOURCE = "new source every frame"  # one test run per frame
FLOOD = "flood run"  # a new source in every run of one test run


def source_lists() -> dict[str, tuple]:
    """LISTED's lists: EXCLUDED_PREFIXES /24s of 100.64.0.0/10 and a /48 of IPv6 excluded; the
    include list every address (two halves of IPv4, all of IPv6), so that it is in force and
    every source passes it."""
    excluded = [
        ipaddress.ip_network(f"100.{64 + n // 256}.{n % 256}.0/24")
        for n in range(EXCLUDED_PREFIXES - 1)
    ] + [ipaddress.ip_network("2001:db8:bad::/48")]
    included = [ipaddress.ip_network(p) for p in ("0.0.0.0/1", "128.0.0.0/1", "::/0")]
    return {"exclude_sources": tuple(excluded), "include_sources": tuple(included)}


@dataclass(frozen=True)
class Config:
    repeat: int  # frames per BPF_PROG_TEST_RUN on the hot path
    rounds: int
    capacity: int  # of the tables of the hot path at scale and the per-frame rows
    fills: tuple[int, ...]  # other entries in the table for the hot-path-at-scale rows
    insert_frames: int  # new sources per per-frame measurement
    flood_capacities: tuple[int, ...]  # max_entries of the flood runs' tables
    flood_full_repeat: int  # new sources per test run of the flood run, table full
    loads: tuple[float, ...]  # shares of max_entries the tables are filled to, for losses
    exact_sources: int  # distinct sources sent from two CPUs at once
    exact_capacity: int
    cpu: int  # the CPU the measurements run on (-1: the last one allowed)


FULL = Config(
    repeat=1_000_000,
    rounds=9,
    capacity=1_100_000,
    fills=(100_000, 1_000_000),
    insert_frames=20_000,
    flood_capacities=(65_536, 262_144, 1_048_576),
    flood_full_repeat=100_000,
    loads=(0.2, 0.5, 0.75, 1.0),
    exact_sources=20_000,
    exact_capacity=65_536,
    cpu=-1,
)
SMOKE = Config(
    repeat=20_000,
    rounds=3,
    capacity=4096,
    fills=(1000, 3000),
    insert_frames=300,
    flood_capacities=(4096,),
    flood_full_repeat=2000,
    loads=(0.2, 0.5, 0.75, 1.0),
    exact_sources=500,
    exact_capacity=4096,
    cpu=-1,
)


@dataclass
class Contender:
    name: str
    fd: int


@contextmanager
def pinned(cpu: int) -> Iterator[int]:
    previous = os.sched_getaffinity(0)
    chosen = cpu if cpu >= 0 else max(previous)
    os.sched_setaffinity(0, {chosen})
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, previous)


def run_frames(fd: int, frame: bytes, repeat: int) -> int:
    result = bpf_syscall.prog_test_run(fd, frame, repeat=repeat)
    if result.retval != XDP_PASS:
        raise RuntimeError(f"program fd {fd} returned {result.retval}, not XDP_PASS")
    return result.duration_ns


def _series(
    empty: int, contenders_: list[Contender], frame_list: list[bytes], repeat: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """For each frame: every contender (each first in turn) right after the empty program on
    the same frame. (own ns, empty ns) per contender, one value per frame."""
    own: dict[str, list[float]] = {c.name: [] for c in contenders_}
    base: dict[str, list[float]] = {c.name: [] for c in contenders_}
    for number, frame in enumerate(frame_list):
        first = number % len(contenders_)
        for contender in contenders_[first:] + contenders_[:first]:
            base[contender.name].append(run_frames(empty, frame, repeat))
            own[contender.name].append(run_frames(contender.fd, frame, repeat))
    return own, base


def _figures(
    own: dict[str, list[float]], base: dict[str, list[float]], baseline: str | None = None
) -> dict[str, dict]:
    """ns, the empty program's ns and the ratio, per contender; with a baseline also the ratio
    to it and the added cost over the empty program relative to the baseline's, round by
    round."""
    result = {}
    for name, mine in own.items():
        figures = {
            "ns": summary(mine),
            "empty_ns": summary(base[name]),
            "ratio": summary(ratios(mine, base[name])),
        }
        if baseline is not None and baseline in own:
            added = [o - b for o, b in zip(mine, base[name], strict=True)]
            theirs = [o - b for o, b in zip(own[baseline], base[baseline], strict=True)]
            figures["to_first_version"] = summary(ratios(mine, own[baseline]))
            figures["added_vs_first_version"] = summary(ratios(added, theirs))
        result[name] = figures
    return result


def _compare(
    empty: int, contenders_: list[Contender], frame: bytes, config: Config
) -> dict[str, dict]:
    """The same frame, repeat times per test run, one test run per contender and round."""
    for contender in contenders_:  # warm up: the first frame of a source inserts it
        run_frames(contender.fd, frame, 1000)
    own, base = _series(empty, contenders_, [frame] * config.rounds, config.repeat)
    return _figures(own, base, FIRST)


def _per_frame(
    empty: int, contenders_: list[Contender], new_frames: list[bytes], rounds: int
) -> dict[str, dict]:
    """A new source in every frame, one test run per frame (repeat 1: the figures include the
    syscall's leftovers, which the empty program shows too). Rounds are consecutive slices."""
    own, base = _series(empty, contenders_, new_frames, 1)
    return _figures(
        {n: chunk_medians(v, rounds) for n, v in own.items()},
        {n: chunk_medians(v, rounds) for n, v in base.items()},
        FIRST,
    )


def run(config: Config, log: Callable[[str], None] = print) -> dict:
    result: dict = {
        "config": config.__dict__
        | {
            "fills": list(config.fills),
            "flood_capacities": list(config.flood_capacities),
            "loads": list(config.loads),
        }
    }
    with ExitStack() as stack, pinned(config.cpu) as cpu:
        result["cpu"] = cpu
        log(f"kernel: compiling the contenders (capacity {config.capacity})")
        empty = stack.enter_context(closing(contenders.empty())).fd
        first = stack.enter_context(closing(contenders.FirstVersion(config.capacity, PORTS)))
        steps: dict[str, DataPath] = {}
        for name, switches in STEPS.items():
            if switches is not None:
                steps[name] = stack.enter_context(
                    closing(contenders.product(config.capacity, PORTS, defines=switches))
                )
        project = steps[PROJECT]
        listed = stack.enter_context(
            closing(
                contenders.product(
                    config.capacity, PORTS, protocols=tuple(PROTOCOLS), **source_lists()
                )
            )
        )
        result["capacity"] = {FIRST: config.capacity, PROJECT: project.capacity}
        result["slots"] = {PROJECT: project.slots}
        programs = {
            name: Contender(name, first.fd if name == FIRST else steps[name].prog_fd)
            for name in STEPS
        }
        programs[LISTED] = Contender(LISTED, listed.prog_fd)
        result["case_outcomes"] = {
            name: case_outcomes(datapath)
            for name, datapath in ((PROJECT, project), (LISTED, listed))
        }
        result["rows"], result["at_scale_entries"] = _measure(
            empty, programs, first, project, config=config, log=log
        )
        result["project_counts"] = _project_counts(project, config)
        result["flood"] = []
        result["flood_checks"] = {}
        for capacity in config.flood_capacities:
            rows, checks = _flood_runs(capacity, config, log)
            result["flood"] += rows
            result["flood_checks"][str(capacity)] = checks
    log("kernel: exactness, the same new sources from two CPUs at once")
    result["exactness_two_cpus"] = exactness(config)
    return result


def _measure(
    empty: int,
    programs: dict[str, Contender],
    first: contenders.FirstVersion,
    project: DataPath,
    *,
    config: Config,
    log: Callable[[str], None],
) -> tuple[list[dict], dict[str, int]]:
    rows: list[dict] = []

    def add(case: str, entries: str, measured: dict[str, dict]) -> None:
        for name, figures in measured.items():
            rows.append({"case": case, "entries": entries, "program": name, **figures})

    log("kernel: steps of the hot path")
    add(HOT, "1", _compare(empty, list(programs.values()), CASES[HOT], config))
    for case, frame in CASES.items():
        if case != HOT:
            log(f"kernel: {case}")
            add(case, "1", _compare(empty, [programs[PROJECT], programs[LISTED]], frame, config))

    log("kernel: new source every frame (one test run each), table with room")
    inserters = [programs[FIRST], programs[PROJECT]]
    new = [
        frames.small_v4(str(ipaddress.IPv4Address(int(address))), 53)
        for address in contenders.flood_sources(config.insert_frames * 2)
    ]  # scattered, as varying_source.c makes them
    add(
        NEW_SOURCE, "room", _per_frame(empty, inserters, new[: config.insert_frames], config.rounds)
    )

    filled, next_key = 0, 0
    for target in config.fills:
        log(f"kernel: hot path with {target} other entries")
        fill.fill(first.sources_fd, target - filled, start=filled)
        next_key = fill.fill_table(project, target - filled, start=next_key).next_start
        filled = target
        add(HOT, f"{target} others", _compare(empty, inserters, CASES[HOT], config))

    log("kernel: new source every frame (one test run each), table full")
    # Past capacity, with keys no fill used yet: the LRU has to evict; every slot of the table
    # live, every other entry established.
    fill.fill(first.sources_fd, config.capacity + config.capacity // 8, start=10 * config.capacity)
    fill.fill_table(project, None, start=next_key, established=2)
    entries = {
        FIRST: _lru_entries(first.sources_fd, config.capacity),
        PROJECT: len(project.read_sources()[0]),
    }
    add(
        NEW_SOURCE, "full", _per_frame(empty, inserters, new[config.insert_frames :], config.rounds)
    )
    return rows, entries


def _lru_entries(map_fd: int, capacity: int) -> int:
    return bpf_syscall.map_lookup_batch(map_fd, 24, 32, capacity)[2]


# The source of each recorded case, and its family.
_SOURCES = {
    HOT: ("10.1.0.2", 4),
    "hot path IPv6": ("fd00:1::2", 6),
    "IPv6, 3 extension headers": ("fd00:1::3", 6),
    "QinQ IPv4": ("10.1.0.4", 4),
}


def _project_counts(project: DataPath, config: Config) -> dict[str, dict[str, int]]:
    """Packets the product reports per source (read as the daemon reads them: through mmap,
    duplicates merged) against the frames it was given: they must be equal."""
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


# -- the flood run -------------------------------------------------------------------------------


def _flood_runs(capacity: int, config: Config, log) -> tuple[list[dict], dict]:
    """The flood run with tables of `capacity` (the product's max_entries): room (rounds of
    capacity / (2 rounds) new sources each, so the table holds at most half its max_entries),
    then full (the LRU filled past capacity, every slot of the product's table live, every
    other entry established; rounds of flood_full_repeat new sources). Then the checks on the
    product's table: protection, and the sources lost by load."""
    log(f"kernel: compiling the flood-run contenders (capacity {capacity})")
    with ExitStack() as stack:
        empty = stack.enter_context(closing(contenders.empty(varying=True))).fd
        first = stack.enter_context(closing(contenders.FirstVersion(capacity, PORTS, varying=True)))
        tables = {
            PROJECT: contenders.product(capacity, PORTS, varying=True),
            NO_SKETCH: contenders.product(
                capacity, PORTS, defines={"NO_SKETCH": "1"}, varying=True
            ),
            BUDGETED: contenders.product(capacity, PORTS, varying=True, new_source_budget=BUDGET),
        }
        for datapath in tables.values():
            stack.enter_context(closing(datapath))
        if any(datapath.capacity != capacity for datapath in tables.values()):
            raise ValueError(f"flood capacity {capacity}: the product holds another max_entries")
        runners = [Contender(FIRST, first.fd)]
        runners += [Contender(name, datapath.prog_fd) for name, datapath in tables.items()]
        frame = CASES[HOT]
        rows: list[dict] = []

        def add(table: str, frames_per_run: int, measured: dict[str, dict]) -> None:
            for name, figures in measured.items():
                rows.append(
                    {
                        "case": FLOOD,
                        "table": table,
                        "capacity": capacity,
                        "frames_per_run": frames_per_run,
                        "program": name,
                        **figures,
                    }
                )

        log(f"kernel: flood run, table of {capacity} with room")
        per_run = max(capacity // (2 * config.rounds), 1)
        before = _counters(tables[PROJECT])
        before_budgeted = _counters(tables[BUDGETED])
        add(
            "room",
            per_run,
            _figures(*_series(empty, runners, [frame] * config.rounds, per_run), FIRST),
        )
        checks = {
            "slots": tables[PROJECT].slots,
            "room": _outcomes(tables[PROJECT], before, config.rounds * per_run),
            "room_budgeted": _outcomes(tables[BUDGETED], before_budgeted, config.rounds * per_run),
        }

        log(f"kernel: flood run, table of {capacity} full")
        fill.fill(first.sources_fd, capacity + capacity // 8, start=0)
        for datapath in tables.values():
            fill.fill_table(datapath, None, established=2)
        full_per_run = config.flood_full_repeat
        before = _counters(tables[PROJECT])
        before_budgeted = _counters(tables[BUDGETED])
        series = _series(empty, runners, [frame] * config.rounds, full_per_run)
        add("full", full_per_run, _figures(*series, FIRST))
        checks["full"] = _outcomes(tables[PROJECT], before, config.rounds * full_per_run)
        checks["full_budgeted"] = _outcomes(
            tables[BUDGETED], before_budgeted, config.rounds * full_per_run
        )
        checks["first_version_entries"] = _lru_entries(first.sources_fd, capacity)

        log(f"kernel: a flood of one-packet sources past sources that keep sending ({capacity})")
        checks["protection"] = protection(tables[PROJECT], capacity)
        log(f"kernel: sources lost by load ({capacity})")
        checks["losses"] = losses(tables[PROJECT], capacity, config.loads)
        return rows, checks


def case_outcomes(datapath: DataPath) -> dict[str, str]:
    """What the program makes of each frame of CASES: the one outcome a test run of it counts
    (checked before the timing: a frame meant to be excluded is)."""
    found = {}
    for case, frame in CASES.items():
        before = datapath.read_stats()
        run_frames(datapath.prog_fd, frame, 1)
        delta = {k: v - before[k] for k, v in datapath.read_stats().items() if v != before[k]}
        (found[case],) = delta
    datapath.clear()  # the counts check (_project_counts) starts from an empty table
    return found


def _counters(datapath: DataPath) -> dict[str, int]:
    return datapath.read_stats() | datapath.read_events()


def _outcomes(datapath: DataPath, before: dict[str, int], frames_given: int) -> dict:
    """The product's outcome and event counters since `before` (_counters), and its live
    entries."""
    now = _counters(datapath)
    return {
        "frames_given": frames_given,
        **{name: count - before[name] for name, count in now.items() if count != before[name]},
        "live_entries": len(datapath.read_sources()[0]),
    }


def losses(datapath: DataPath, capacity: int, loads: tuple[float, ...]) -> list[dict]:
    """For each load, an empty table given load x capacity new sources (scattered, one test
    run of the wrapped product on one CPU: each placed as the kernel places it), then read as
    the daemon reads (DataPath.read_sources): the sources it lost (not in the table), with
    the evicted event and insert_failed outcome counts. Exact below capacity: none lost."""
    found = []
    for load in loads:
        datapath.clear()
        sources = round(load * capacity)
        before = _counters(datapath)
        run_frames(datapath.prog_fd, CASES[HOT], sources)
        counted = _outcomes(datapath, before, sources)
        found.append(
            {
                "load": load,
                "sources": sources,
                "recorded_new": counted.get("recorded_new", 0),
                "kept": counted["live_entries"],
                "lost": sources - counted["live_entries"],
                "evicted": counted.get("evicted", 0),
                "insert_failed": counted.get("insert_failed", 0),
            }
        )
    return found


def protection(datapath: DataPath, capacity: int) -> dict:
    """capacity / 8 established sources (seen in two frames each), then a flood of 4 x capacity
    one-packet sources through the wrapped product, in one test run: how many of the
    established sources keep their slot and their counts. By design only a set whose ways all
    hold established sources can give one of them up to the flood (when a flood source's
    other set is such a set too), and then churns that slot only: those sets are counted
    before the flood, an upper bound of the sources lost."""
    datapath.clear()
    protected = capacity // 8
    fill.fill_table(datapath, protected, established=1)
    tags = datapath.table_words()[:, :WAYS]
    full_of_established = int(((tags & np.uint64(ESTABLISHED)) != 0).all(axis=1).sum())
    del tags
    datapath.unmap_table()
    evicted_before = datapath.read_events()["evicted"]
    flood = 4 * capacity
    run_frames(datapath.prog_fd, CASES[HOT], flood)
    keys, values, _ = datapath.read_sources()
    mine = (keys["ifindex"] == fill.FILL_IFINDEX) & (values["packets"] == 2)
    return {
        "protected": protected,
        "sets_full_of_established": full_of_established,
        "flood": flood,
        "still_present": int(mine.sum()),
        "evicted_during_flood": datapath.read_events()["evicted"] - evicted_before,
        "live_entries": len(keys),
    }


# -- exactness from two CPUs -----------------------------------------------------------------------


def _send_from(cpu: int, fd: int, sends: list[tuple[bytes, int]]) -> None:
    os.sched_setaffinity(0, {cpu})  # this thread only
    for frame, times in sends:
        for _ in range(times):
            run_frames(fd, frame, 1)


def exactness(config: Config) -> dict:
    """exact_sources distinct sources, source i sent 1 + i % 5 times by each of two threads
    pinned to two CPUs, in the same order (so that they often claim one new key at once), read
    back as the daemon reads (duplicate slots merged): every source the table kept with
    exactly its frames. A source both of whose sets are full gives up a one-packet entry
    (evicted, counted as such): those sources are missing, and only those."""
    datapath = contenders.product(config.exact_capacity, PORTS)
    try:
        sources = frames.distinct_v4(config.exact_sources, first="10.200.0.0")
        sends = [(frame, 1 + number % 5) for number, frame in enumerate(sources)]
        cpus = sorted(os.sched_getaffinity(0))[:2]
        threads = [
            threading.Thread(target=_send_from, args=(cpu, datapath.prog_fd, sends)) for cpu in cpus
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        now = datapath.clock.now_ns()
        keys, values, _ = datapath.read_sources()
        slots = int(live_mask(datapath.table_words()[:, :WAYS], now, 60).sum())
        datapath.unmap_table()
        expected = np.array([times for _, times in sends], np.uint64) * len(threads)
        addresses = np.frombuffer(keys["addr"].tobytes(), np.uint8).reshape(-1, 16)
        number = addresses[:, 12:16].copy().view(">u4").ravel().astype(np.int64) - 0x0AC80000
        stats = datapath.read_stats()
        return {
            "cpus": len(threads),
            "sources": len(sends),
            "capacity": datapath.capacity,
            "slots": datapath.slots,
            "frames": int(expected.sum()),
            "keys_read": len(keys),
            "packets_read": int(values["packets"].sum()),
            "packets_of_sources_read": int(expected[number].sum()),
            "duplicate_slots_merged": slots - len(keys),
            "each_source_read_exact": bool(np.array_equal(values["packets"], expected[number])),
            "evicted": datapath.read_events()["evicted"],
            "outcomes": {name: stats[name] for name in OUTCOMES if stats[name]},
        }
    finally:
        datapath.close()
