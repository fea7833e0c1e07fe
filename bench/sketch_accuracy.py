"""Part 4: the product's sliding-window sketch, in the kernel and in numpy: does the kernel build
the registers the daemon's mirror (xdp_ip_counter/sketch.py) says it should, and how close are
the estimates to the truth.

- In the kernel: the product wrapped in bench/programs/varying_source.c (a new IPv4 source, in
  10.0.0.0/8, in every run of a test run) with a table far smaller than the flood, port 53
  watched (so it has a sketch of its own); `sources` distinct sources, one CPU. Then the
  daemon's reading of the sketch map (SketchWindow over the kernel's ticks, SketchCounts):
  the registers of (IPv4, UDP, 53) against `sketch.ipv4_sketch` of the same addresses,
  register by register; the estimate `active_users` would show, and whether it is marked
  exact; the fleet's p = 12 registers with the classic estimator (the recording rule's).
- In numpy, the product's hash and estimators on random IPv4 sources: trials per cardinality
  (Ertl's estimator at p = 14, what active_users shows; the classic one at the fleet's p = 12,
  what the recording rule computes, including its bias zone between 2.5 m and 5 m), and two
  hosts with overlapping sources (the register-wise max against the sum of their counts).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from xdp_ip_counter import sketch
from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.layout import HLL_P, RING, SKETCH_SLOT_DTYPE

from . import contenders
from .kernel_cost import CASES, HOT, pinned, run_frames

PORT = 53
UDP = 17
KEY = (4, UDP, PORT)


@dataclass(frozen=True)
class Config:
    sources: int  # distinct sources through the kernel
    capacity: int  # of the table they flood
    per_run: int  # sources per test run
    cardinalities: tuple[int, ...]
    trials: int  # per cardinality
    host_sources: int  # each of two hosts; a third of them in common


FULL = Config(
    sources=2_000_000,
    capacity=65_536,
    per_run=100_000,
    cardinalities=(1_000, 10_000, 15_000, 50_000, 100_000, 1_000_000, 2_000_000),
    trials=10,
    host_sources=1_500_000,
)
SMOKE = Config(
    sources=20_000,
    capacity=4096,
    per_run=5_000,
    cardinalities=(1_000, 15_000),
    trials=2,
    host_sources=30_000,
)


def random_ipv4(count: int, seed: int) -> np.ndarray:
    """count distinct IPv4 addresses (host-order integers), in random order."""
    rng = np.random.default_rng(seed)
    drawn = np.unique(rng.integers(0, 1 << 32, size=count + count // 50 + 1000, dtype=np.uint64))
    while len(drawn) < count:  # practically never
        more = rng.integers(0, 1 << 32, size=count, dtype=np.uint64)
        drawn = np.unique(np.concatenate([drawn, more]))
    rng.shuffle(drawn)
    return drawn[:count].astype(np.uint32)


def _error(estimate: float, truth: int) -> float:
    return estimate / truth - 1


def kernel(config: Config, log: Callable[[str], None]) -> dict:
    """The sources through the wrapped product, then the daemon's reading of its sketches."""
    ports = PortFilter(all_ports=False, ports=frozenset({PORT}))
    datapath = contenders.product(config.capacity, ports, varying=True)
    try:
        log(f"sketch: {config.sources} distinct sources through the product (one CPU)")
        with pinned(-1):
            for sent in range(0, config.sources, config.per_run):
                run_frames(datapath.prog_fd, CASES[HOT], min(config.per_run, config.sources - sent))
        now = datapath.clock.now_ns()
        window = datapath.window or 60
        union = sketch.SketchWindow(datapath.plan.sketches).update(
            datapath.read_sketches(), now, window
        )
        counts = sketch.SketchCounts.of(union, datapath.plan, (PORT,))
        own = datapath.plan.sketch_id(*KEY)
        assert own is not None
        expected = sketch.ipv4_sketch(contenders.flood_sources(config.sources))
        registers = union.registers[own]
        stats = datapath.read_stats()
        fleet = counts.fleet.get(KEY)
        estimate = counts.estimates[KEY]
        return {
            "sources": config.sources,
            "table_slots": datapath.slots,
            "max_entries": datapath.capacity,
            "recorded_new": stats["recorded_new"],
            "insert_failed": stats["insert_failed"],
            "evicted": datapath.read_events()["evicted"],
            "live_entries": len(datapath.read_sources()[0]),
            "registers_differing": int(np.count_nonzero(registers != expected)),
            "estimate": estimate,
            "error": _error(estimate, config.sources),
            "exact": counts.exact[KEY],
            "fleet_classic_estimate": sketch.estimate_classic(fleet) if fleet is not None else 0.0,
            "fleet_classic_error": (
                _error(sketch.estimate_classic(fleet), config.sources) if fleet is not None else -1
            ),
            "sketch_map_bytes": datapath.plan.sketches * RING * SKETCH_SLOT_DTYPE.itemsize,
            "sketches": datapath.plan.sketches,
        }
    finally:
        datapath.close()


def trials(config: Config, log: Callable[[str], None]) -> list[dict]:
    """Random sources per cardinality: the error of the estimate at p = 14 (Ertl's) and of the
    classic estimate at the fleet's p = 12 (folded, as the daemon exports them)."""
    log("sketch: trials per cardinality (numpy)")
    rows = []
    for cardinality in config.cardinalities:
        ertl, classic = [], []
        for trial in range(config.trials):
            registers = sketch.ipv4_sketch(random_ipv4(cardinality, seed=1000 + trial))
            ertl.append(_error(sketch.estimate(registers), cardinality))
            folded = sketch.fold(registers, sketch.FLEET_P)
            classic.append(_error(sketch.estimate_classic(folded), cardinality))
        rows.append(
            {
                "cardinality": cardinality,
                "trials": config.trials,
                "mean_error": statistics.fmean(ertl),
                "rms_error": math.sqrt(statistics.fmean(e * e for e in ertl)),
                "max_abs_error": max(abs(e) for e in ertl),
                "fleet_classic_mean_error": statistics.fmean(classic),
                "fleet_classic_rms_error": math.sqrt(statistics.fmean(e * e for e in classic)),
                "fleet_classic_max_abs_error": max(abs(e) for e in classic),
            }
        )
    return rows


def two_hosts(config: Config, log: Callable[[str], None]) -> dict:
    """Two hosts with host_sources each, a third of them the other's too."""
    log("sketch: two hosts with overlapping sources (numpy)")
    each = config.host_sources
    shared = each // 3
    pool = random_ipv4(2 * each - shared, seed=12)
    a, b = pool[:each], pool[each - shared :]
    sa, sb = sketch.ipv4_sketch(a), sketch.ipv4_sketch(b)
    truth = len(pool)
    union = sketch.union([sa, sb])
    fleet = sketch.union([sketch.fold(sa, sketch.FLEET_P), sketch.fold(sb, sketch.FLEET_P)])
    total = sketch.estimate(sa) + sketch.estimate(sb)
    return {
        "each": each,
        "shared": shared,
        "true_union": truth,
        "sum_of_estimates": total,
        "sum_error": _error(total, truth),
        "union_estimate": sketch.estimate(union),
        "union_error": _error(sketch.estimate(union), truth),
        "fleet_classic_union_estimate": sketch.estimate_classic(fleet),
        "fleet_classic_union_error": _error(sketch.estimate_classic(fleet), truth),
    }


def run(config: Config, log: Callable[[str], None] = print) -> dict:
    return {
        "config": asdict(config),
        "p": HLL_P,
        "relative_standard_error": sketch.relative_standard_error(HLL_P),
        "fleet_relative_standard_error": sketch.relative_standard_error(sketch.FLEET_P),
        "kernel": kernel(config, log),
        "trials": trials(config, log),
        "two_hosts": two_hosts(config, log),
    }
