"""Toward issue 12: what a sliding-window HyperLogLog update costs per frame in XDP, and how
accurate the sketch is (bench/prototypes/hll_sketch.c, bench/prototypes/hll.py).

    sudo /usr/bin/python3 -m bench.sketch_cost            full (about a minute)
    sudo /usr/bin/python3 -m bench.sketch_cost --smoke    briefly

Cost: BPF_PROG_TEST_RUN on one pinned CPU, round by round (empty, contender, empty, contender
...), with kernel_cost's helpers: the empty program; the product's "parse + port filter +
counter" step (bpf/xdp_ip_counter.c -DPARSE_ONLY); the prototype without its sketch update
(the same work with its own code); the prototype with it. A distinct source in every frame two
ways: in-kernel (-DVARY_SOURCE xors a per-CPU frame number into the source, with repeat, so no
syscall overhead; the baseline is the prototype with the same switch and no sketch), and with
real frames, one BPF_PROG_TEST_RUN each (kernel_cost's insert measurement). And a slot clear
(the first frame of a tick on a CPU) on every frame.

Accuracy: the C hash against hll.address_hash on sample frames (bit for bit), the kernel's
registers against numpy's for the same sources (split over two CPUs, joined by max), then
numpy alone: 2,000,000 distinct IPv4 sources (random, and one consecutive block), trials at
several cardinalities, two overlapping "hosts", and a window of ticks under a flood.

Writes bench/results/sketch-<UTC date>[-smoke].json and prints Markdown.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tests.support import frames
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.bpf import source_dir
from xdp_ip_counter.clock import kernel_clock

from . import kernel_cost
from xdp_ip_counter import sketch as hll
from .stats import ratios, summary

PROTOTYPE = Path(__file__).resolve().parent / "prototypes" / "hll_sketch.c"
RESULTS = Path(__file__).resolve().parent / "results"
P = 14
RING = 7  # the default 60 s window in 10 s ticks, plus the current tick
NSKETCH = 16
NOTHER = 4  # sketches 0..3: "other ports" of class (family == 6) * 2 + (proto == UDP)
SLOT_BYTES = 8 + (1 << P)
PORT = 53
UDP_V4 = 1  # class of IPv4/UDP
FLEET_P = 12


@dataclass(frozen=True)
class Config:
    repeat: int
    rounds: int
    distinct_frames: int  # real frames, one BPF_PROG_TEST_RUN each
    agreement: int  # sources whose kernel hash and registers are compared with numpy
    trials: int  # per cardinality
    cardinalities: tuple[int, ...]
    flood_per_tick: int


FULL = Config(
    repeat=1_000_000,
    rounds=9,
    distinct_frames=20_000,
    agreement=20_000,
    trials=10,
    cardinalities=(1_000, 10_000, 100_000, 1_000_000, 2_000_000),
    flood_per_tick=400_000,
)
SMOKE = Config(
    repeat=20_000,
    rounds=3,
    distinct_frames=300,
    agreement=2_000,
    trials=2,
    cardinalities=(1_000, 100_000, 2_000_000),
    flood_per_tick=50_000,
)


# -- the prototype program --------------------------------------------------------------------


@dataclass
class SketchProgram:
    """hll_sketch.c built with some switches, port PORT watched, IPv4/UDP to PORT in sketch 4."""

    bpf: object
    fd: int

    def slots(self) -> tuple[np.ndarray, np.ndarray]:
        """(registers [cpu, slot, 2^P] uint8, ticks [cpu, slot]) of every CPU and ring slot."""
        from bcc.utils import get_possible_cpus  # noqa: PLC0415

        cpus = len(get_possible_cpus())
        table = self.bpf[b"sketches"]  # type: ignore[index]
        fd = table.get_fd()
        count = NSKETCH * RING
        raw = np.zeros((cpus, count, SLOT_BYTES), dtype=np.uint8)
        for index in range(count):
            value = bpf_syscall.map_lookup(fd, index.to_bytes(4, "little"), SLOT_BYTES * cpus)
            assert value is not None
            raw[:, index, :] = np.frombuffer(value, dtype=np.uint8).reshape(cpus, SLOT_BYTES)
        ticks = raw[:, :, :8].copy().view("<u8")[:, :, 0]
        return raw[:, :, 8:], ticks

    def sketch(self, sketch_id: int, now_tick: int | None = None) -> np.ndarray:
        """The window's union of one sketch: its ring slots (those of the last RING ticks, or
        all when now_tick is None) over every CPU."""
        registers, ticks = self.slots()
        ring = registers[:, sketch_id * RING : (sketch_id + 1) * RING, :]
        ring_ticks = ticks[:, sketch_id * RING : (sketch_id + 1) * RING]
        if now_tick is not None:
            live = (ring_ticks <= now_tick) & (ring_ticks > now_tick - RING)
            ring = ring[live]
        return hll.union(ring.reshape(-1, 1 << P)) if ring.size else np.zeros(1 << P, np.uint8)

    def hash_probe(self) -> int:
        value = bpf_syscall.map_lookup(self.bpf[b"hash_probe"].get_fd(), bytes(4), 8)  # type: ignore[index]
        assert value is not None
        return int.from_bytes(value, "little")

    def stats(self) -> list[int]:
        return [sum(v) for v in self.bpf[b"stats"].values()]  # type: ignore[index]


def compile_prototype(switches: tuple[str, ...], keep: list) -> SketchProgram:
    from bcc import BPF  # noqa: PLC0415 - bcc only where it is needed

    clock = kernel_clock()
    cflags = [
        f"-I{source_dir()}",
        "-Wno-unused-function",
        f"-DCLOCK_JIFFY_ZERO={clock.jiffy_zero}ULL",
        f"-DCLOCK_TICK_NS={clock.tick_ns}ULL",
        f"-DHLL_P={P}",
        f"-DRING={RING}",
        f"-DNSKETCH={NSKETCH}",
        *(f"-D{switch}" for switch in switches),
    ]
    bpf = BPF(src_file=str(PROTOTYPE).encode(), cflags=cflags)
    keep.append(bpf)
    fd = bpf.load_func(b"hll_sketch", BPF.XDP).fd
    leaf = bpf[b"port_filter"].Leaf()
    for port in kernel_cost.WATCHED:
        leaf.bits[port >> 6] |= 1 << (port & 63)
    bpf[b"port_filter"][ctypes.c_int(0)] = leaf
    ids = bpf[b"sketch_of_port"].Leaf()
    ids.id[UDP_V4] = NOTHER  # IPv4/UDP to PORT: the first sketch of its own
    bpf[b"sketch_of_port"][ctypes.c_int(PORT)] = ids
    return SketchProgram(bpf, fd)


def current_tick() -> int:
    clock = kernel_clock()
    return clock.now_ns() // 10_000_000_000


# -- cost ---------------------------------------------------------------------------------------

PARSE = "parse + port filter + counter"
OURS_PARSE = "prototype, no sketch"
SKETCH = "parse + sketch update"
OURS_PARSE_VARY = "prototype, no sketch, new source per frame"
SKETCH_VARY = "parse + sketch update, new source per frame"
RESET = "parse + slot clear + sketch update"


def _interleaved(empty: int, programs: dict[str, int], frame: bytes, config: Config) -> dict:
    """Per round: empty, contender, for every contender in turn (rotated each round). Raw ns."""
    for fd in programs.values():
        kernel_cost._run(fd, frame, 1000)
    own: dict[str, list[float]] = {name: [] for name in programs}
    base: dict[str, list[float]] = {name: [] for name in programs}
    names = list(programs)
    for number in range(config.rounds):
        first = number % len(names)
        for name in names[first:] + names[:first]:
            base[name].append(kernel_cost._run(empty, frame, config.repeat))
            own[name].append(kernel_cost._run(programs[name], frame, config.repeat))
    return {"own": own, "base": base}


def _row(raw: dict, name: str, baseline: str | None) -> dict:
    own, base = raw["own"][name], raw["base"][name]
    row = {"program": name, "ns": summary(own), "empty_ns": summary(base)}
    row["ratio"] = summary(ratios(own, base))
    if baseline is not None:
        # Added cost over the baseline, in units of the empty program, round by round.
        theirs = ratios(raw["own"][baseline], raw["base"][baseline])
        row["baseline"] = baseline
        row["added_vs_baseline"] = summary(
            [a - b for a, b in zip(ratios(own, base), theirs, strict=True)]
        )
        row["added_ns"] = summary([a - b for a, b in zip(own, raw["own"][baseline], strict=True)])
        row["ratio_to_baseline"] = summary(ratios(own, raw["own"][baseline]))
    return row


def measure_cost(config: Config, log) -> dict:
    keep: list = []
    clock = kernel_clock()
    product_defines = {
        "MAX_ENTRIES": "4096",
        "LRU_FLAGS": "0",
        "CLOCK_JIFFY_ZERO": f"{clock.jiffy_zero}ULL",
        "CLOCK_TICK_NS": f"{clock.tick_ns}ULL",
    }
    try:
        from bcc import BPF  # noqa: PLC0415

        empty_bpf = BPF(text=kernel_cost.EMPTY_SOURCE)
        keep.append(empty_bpf)
        empty = empty_bpf.load_func(b"xdp_pass", BPF.XDP).fd
        parse_fd, _ = kernel_cost._bcc_program(product_defines | kernel_cost.STEPS[PARSE], keep)
        programs = {
            PARSE: parse_fd,
            OURS_PARSE: compile_prototype(("NO_SKETCH",), keep).fd,
            SKETCH: compile_prototype((), keep).fd,
            OURS_PARSE_VARY: compile_prototype(("NO_SKETCH", "VARY_SOURCE"), keep).fd,
            SKETCH_VARY: compile_prototype(("VARY_SOURCE",), keep).fd,
            RESET: compile_prototype(("ALWAYS_RESET",), keep).fd,
        }
        frame = frames.small_v4("10.1.0.2", PORT)
        with kernel_cost._pinned(-1) as cpu:
            log(f"sketch: cost per frame on CPU {cpu}")
            raw = _interleaved(empty, programs, frame, config)
            rows = [
                _row(raw, PARSE, None),
                _row(raw, OURS_PARSE, PARSE),
                _row(raw, SKETCH, PARSE),
                _row(raw, OURS_PARSE_VARY, PARSE),
                _row(raw, SKETCH_VARY, OURS_PARSE_VARY),
                _row(raw, RESET, SKETCH),
            ]
            log("sketch: real distinct frames, one test run each")
            contenders = [
                kernel_cost.Program(PARSE, parse_fd),
                kernel_cost.Program(SKETCH, programs[SKETCH]),
            ]
            distinct = frames.distinct_v4(config.distinct_frames, first="10.160.0.0", dport=PORT)
            per_frame = kernel_cost._insert_costs(empty, contenders, distinct, config.rounds)
        return {"cpu": cpu, "rows": rows, "distinct_frames": per_frame}
    finally:
        for bpf in keep:
            bpf.cleanup()


# -- accuracy -----------------------------------------------------------------------------------


def random_ipv4(count: int, seed: int) -> np.ndarray:
    """count distinct IPv4 addresses (host-order integers), in random order."""
    rng = np.random.default_rng(seed)
    drawn = np.unique(rng.integers(0, 1 << 32, size=count + count // 50 + 1000, dtype=np.uint64))
    while len(drawn) < count:  # practically never
        more = rng.integers(0, 1 << 32, size=count, dtype=np.uint64)
        drawn = np.unique(np.concatenate([drawn, more]))
    rng.shuffle(drawn)
    return drawn[:count].astype(np.uint32)


def _str_v4(address: int) -> str:
    return ".".join(str((int(address) >> shift) & 255) for shift in (24, 16, 8, 0))


def check_hashes(sources_v4: np.ndarray, sources_v6: list[str], keep: list) -> dict:
    """Each source through the HASH_PROBE build: the kernel's hash against numpy's."""
    program = compile_prototype(("HASH_PROBE",), keep)
    mismatches = 0
    for address in [_str_v4(a) for a in sources_v4] + sources_v6:
        frame = frames.small_v6(address, PORT) if ":" in address else frames.small_v4(address, PORT)
        kernel_cost._run(program.fd, frame, 1)
        lo, hi = hll.address_words(address)
        expected = int(hll.address_hash(np.array([lo]), np.array([hi]))[0])
        mismatches += program.hash_probe() != expected
    return {"compared": len(sources_v4) + len(sources_v6), "mismatches": int(mismatches)}


def check_registers(sources: np.ndarray, keep: list) -> dict:
    """The sources through the sketch program, the first half on one CPU and the second on
    another: the union of the kernel's per-CPU slots against numpy's sketch of all."""
    program = compile_prototype((), keep)
    cpus = sorted(os.sched_getaffinity(0))
    halves = np.array_split(sources, 2)
    used = []
    for number, half in enumerate(halves):
        with kernel_cost._pinned(cpus[number % len(cpus)]) as cpu:
            used.append(cpu)
            for address in half:
                kernel_cost._run(program.fd, frames.small_v4(_str_v4(address), PORT), 1)
    kernel = program.sketch(NOTHER, now_tick=current_tick())
    expected = hll.ipv4_sketch(sources, P)
    return {
        "sources": len(sources),
        "cpus": used,
        "registers_equal": bool(np.array_equal(kernel, expected)),
        "registers_differing": int(np.count_nonzero(kernel != expected)),
        "kernel_estimate": hll.estimate(kernel),
        "recorded": program.stats()[0],
    }


def _error(estimate: float, truth: int) -> float:
    return estimate / truth - 1


def accuracy(config: Config, log) -> dict:
    rse = hll.relative_standard_error(P)
    result: dict = {"p": P, "rse": rse, "fleet_p": FLEET_P}
    log("sketch: 2,000,000 distinct IPv4 sources (numpy, the kernel's hash)")
    flood = random_ipv4(2_000_000, seed=12)
    sketch = hll.ipv4_sketch(flood, P)
    block = np.arange(2_000_000, dtype=np.uint64) + (10 << 24 | 128 << 16)  # 10.128.0.0 on
    block_sketch = hll.ipv4_sketch(block.astype(np.uint32), P)
    result["two_million"] = {
        "random": {"estimate": hll.estimate(sketch), "classic": hll.estimate_classic(sketch)},
        "consecutive": {
            "estimate": hll.estimate(block_sketch),
            "classic": hll.estimate_classic(block_sketch),
        },
        "random_fleet_p": {"estimate": hll.estimate(hll.fold(sketch, FLEET_P))},
    }
    for entry in result["two_million"].values():
        entry["error"] = {k: _error(v, 2_000_000) for k, v in entry.items()}

    log("sketch: trials per cardinality")
    trials = []
    for cardinality in config.cardinalities:
        errors, classic = [], []
        for trial in range(config.trials):
            s = hll.ipv4_sketch(random_ipv4(cardinality, seed=1000 + trial), P)
            errors.append(_error(hll.estimate(s), cardinality))
            classic.append(_error(hll.estimate_classic(s), cardinality))
        trials.append(
            {
                "cardinality": cardinality,
                "trials": config.trials,
                "mean_error": statistics.fmean(errors),
                "rms_error": math.sqrt(statistics.fmean(e * e for e in errors)),
                "max_abs_error": max(abs(e) for e in errors),
                "classic_max_abs_error": max(abs(e) for e in classic),
            }
        )
    result["trials"] = trials

    log("sketch: two hosts with overlapping sources")
    a, b = flood[:1_500_000], flood[500_000:]
    sa, sb = hll.ipv4_sketch(a, P), hll.ipv4_sketch(b, P)
    joined = hll.union([sa, sb])
    fa, fb = hll.fold(sa, FLEET_P), hll.fold(sb, FLEET_P)
    result["two_hosts"] = {
        "host_a": len(a),
        "host_b": len(b),
        "true_union": 2_000_000,
        "estimate_a": hll.estimate(sa),
        "estimate_b": hll.estimate(sb),
        "sum_of_estimates": hll.estimate(sa) + hll.estimate(sb),
        "union_estimate": hll.estimate(joined),
        "union_estimate_fleet_p_classic": hll.estimate_classic(hll.union([fa, fb])),
    }
    hosts = result["two_hosts"]
    hosts["sum_error"] = _error(hosts["sum_of_estimates"], 2_000_000)
    hosts["union_error"] = _error(hosts["union_estimate"], 2_000_000)
    hosts["union_fleet_p_classic_error"] = _error(
        hosts["union_estimate_fleet_p_classic"], 2_000_000
    )

    log("sketch: a window of ticks under a flood")
    # Each tick: the 50 steady clients and flood_per_tick spoofed sources, half of them new
    # and half those of the tick before (a botnet that goes on sending).
    half = config.flood_per_tick // 2
    pool = random_ipv4(50 + half * (RING + 1), seed=7)
    clients, spoofed = pool[:50], pool[50:]
    per_tick = [
        hll.ipv4_sketch(
            np.concatenate([clients, spoofed[t * half : t * half + 2 * half]]),
            P,
        )
        for t in range(RING)
    ]
    truth = len(pool)
    window = hll.estimate(hll.union(per_tick))
    result["window"] = {
        "ticks": RING,
        "steady_clients": 50,
        "flood_per_tick": 2 * half,
        "true_union": truth,
        "union_estimate": window,
        "union_error": _error(window, truth),
        "sum_of_tick_estimates_error": _error(sum(hll.estimate(s) for s in per_tick), truth),
    }
    return result


def memory() -> dict:
    cpus = os.cpu_count() or 1
    per_sketch_cpu = RING * SLOT_BYTES
    return {
        "p": P,
        "registers": 1 << P,
        "slot_bytes": SLOT_BYTES,
        "ring": RING,
        "sketch_bytes_per_cpu": per_sketch_cpu,
        "sketches": NSKETCH,
        "map_bytes_per_cpu": NSKETCH * per_sketch_cpu,
        "map_bytes_this_host": NSKETCH * per_sketch_cpu * cpus,
        "cpus": cpus,
        "fleet_series_per_sketch": 1 << FLEET_P,
        "kernel_series_per_sketch": 1 << P,
    }


def run(config: Config, log=print) -> dict:
    started = time.monotonic()
    result: dict = {"config": asdict(config), "memory": memory()}
    result["cost"] = measure_cost(config, log)
    keep: list = []
    try:
        log("sketch: kernel hash and registers against numpy")
        sample = random_ipv4(config.agreement, seed=99)
        rng = np.random.default_rng(98)
        v6 = [f"2001:db8:{rng.integers(1 << 16):x}::{rng.integers(1 << 16):x}" for _ in range(200)]
        result["hash_agreement"] = check_hashes(sample[:1000], v6, keep)
        result["register_agreement"] = check_registers(sample, keep)
    finally:
        for bpf in keep:
            bpf.cleanup()
    result["accuracy"] = accuracy(config, log)
    result["seconds"] = time.monotonic() - started
    return result


# -- report -------------------------------------------------------------------------------------


def _fig(figure: dict, digits: int = 2) -> str:
    median, low, high = figure["median"], figure["min"], figure["max"]
    return f"{median:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def markdown(result: dict) -> str:
    lines = [
        "| program | ns/frame | ratio to empty | over | ratio to it | added (x empty) | added ns |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for row in result["cost"]["rows"]:
        added = (
            (
                row["baseline"],
                _fig(row["ratio_to_baseline"]),
                _fig(row["added_vs_baseline"]),
                _fig(row["added_ns"], 1),
            )
            if "baseline" in row
            else ("-", "-", "-", "-")
        )
        lines.append(
            f"| {row['program']} | {_fig(row['ns'], 0)} | {_fig(row['ratio'])} | "
            + " | ".join(added)
            + " |"
        )
    lines += [
        "",
        "| real distinct frames, 1 test run each | ns | empty ns | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, figures in result["cost"]["distinct_frames"].items():
        lines.append(
            f"| {name} | {_fig(figures['ns'], 0)} | {_fig(figures['empty_ns'], 0)} | "
            f"{_fig(figures['ratio'])} |"
        )
    acc = result["accuracy"]
    two = acc["two_million"]
    lines += [
        "",
        f"p={acc['p']}, RSE {acc['rse']:.4f}; hashes {result['hash_agreement']}; "
        f"registers {result['register_agreement']}",
        f"2,000,000 random: {two['random']['error']}; consecutive: {two['consecutive']['error']}; "
        f"folded to p={acc['fleet_p']}: {two['random_fleet_p']['error']}",
        "",
        "| cardinality | trials | mean error | rms error | max abs error | classic max abs |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for t in acc["trials"]:
        lines.append(
            f"| {t['cardinality']:,} | {t['trials']} | {t['mean_error']:+.4f} | "
            f"{t['rms_error']:.4f} | {t['max_abs_error']:.4f} | {t['classic_max_abs_error']:.4f} |"
        )
    lines += ["", f"two hosts: {acc['two_hosts']}", f"window: {acc['window']}"]
    lines += ["", f"memory: {result['memory']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.sketch_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.sketch_cost: needs root (BPF)", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    result = run(SMOKE if args.smoke else FULL, log)
    result["date"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = args.out or RESULTS / (
        f"sketch-{result['date'].replace(':', '')}{'-smoke' if args.smoke else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"results in {out}")
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
