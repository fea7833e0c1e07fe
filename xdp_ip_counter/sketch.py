"""The userspace half of the sliding-window sketch (bpf/xdp_ip_counter.c): the same hash,
registers built from addresses in numpy, unions by register-wise max, folding to a lower
precision, two estimators of the cardinality; which port has which sketch (SketchPlan); and the
window's union of the kernel's ticks (SketchWindow).

Pure (numpy only: no bcc, no clock, no I/O).

Registers: index = the hash's top P bits, rank = leading zeros + 1 of the other 64 - P bits
(64 - P + 1 when they are all zero). A sketch is a uint8 array of 2**P registers.

Estimators:
- `estimate_classic`: Flajolet et al. 2007 (alpha_m * m^2 / sum 2^-M[j]) with linear counting
  below 2.5 m; no large-range correction (the hash has 64 bits). It is what a PromQL recording
  rule can compute (a sum of 2^-register and a count of zero registers).
- `estimate`: Ertl, "New cardinality estimation algorithms for HyperLogLog sketches" (2017),
  the improved raw estimator over the register histogram: no bias tables, no switch-over
  between ranges, unbiased from 0 to far beyond 2^32.
The relative standard error of both is about 1.04 / sqrt(m) (`relative_standard_error`).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .layout import HLL_P, OTHER_SKETCH_IDS, OTHER_SKETCHES, RING, SKETCH_SLOT_DTYPE, TICK_SHIFT

DEFAULT_P = HLL_P
FLEET_P = 12  # the precision of the registers exported for fleet_ports
_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_V4_MAPPED = np.uint64(0xFFFF0000)


def address_words(address: str) -> tuple[int, int]:
    """The two little-endian 64-bit words of an address as the product's key holds it
    (IPv4-mapped for IPv4): the hash's input."""
    parsed = ipaddress.ip_address(address)
    packed = parsed.packed if parsed.version == 6 else bytes(10) + b"\xff\xff" + parsed.packed
    return int.from_bytes(packed[:8], "little"), int.from_bytes(packed[8:], "little")


def ipv4_words(addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) words of IPv4 addresses given as host-order integers (a.b.c.d = a << 24 | ...)."""
    addresses = np.asarray(addresses, dtype=np.uint32)
    network = addresses.byteswap().astype(
        np.uint64
    )  # the 4 bytes as a little-endian load sees them
    return np.zeros_like(network), (network << np.uint64(32)) | _V4_MAPPED


def address_hash(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """the kernel's address_hash, bit for bit: one multiply, then murmur3's fmix64."""
    with np.errstate(over="ignore"):
        lo = np.asarray(lo, dtype=np.uint64)
        hi = np.asarray(hi, dtype=np.uint64)
        h = (lo * _MIX1) ^ hi
        h ^= h >> np.uint64(33)
        h *= _FMIX1
        h ^= h >> np.uint64(33)
        h *= _FMIX2
        h ^= h >> np.uint64(33)
    return h


def _rank(rest: np.ndarray, q: int) -> np.ndarray:
    """Leading zeros + 1 of rest (q + 1 when 0), by the C's binary search."""
    x = rest.copy()
    n = np.ones(x.shape, dtype=np.uint8)
    for shift, test in ((32, 32), (16, 48), (8, 56), (4, 60), (2, 62)):
        zero = (x >> np.uint64(test)) == 0
        n[zero] += shift
        x[zero] <<= np.uint64(shift)
    n[(x >> np.uint64(63)) == 0] += 1
    n[rest == 0] = q + 1
    return n


def index_and_rank(hashes: np.ndarray, p: int = DEFAULT_P) -> tuple[np.ndarray, np.ndarray]:
    hashes = np.asarray(hashes, dtype=np.uint64)
    index = (hashes >> np.uint64(64 - p)).astype(np.int64)
    return index, _rank(hashes << np.uint64(p), 64 - p)


def registers(hashes: np.ndarray, p: int = DEFAULT_P) -> np.ndarray:
    """The sketch of a set of hashes: per register the largest rank that fell into it."""
    index, rank = index_and_rank(hashes, p)
    sketch = np.zeros(1 << p, dtype=np.uint8)
    # Sorted by (index, rank), the last write to each index is its largest rank.
    order = np.lexsort((rank, index))
    sketch[index[order]] = rank[order]
    return sketch


def union(sketches: Iterable[np.ndarray]) -> np.ndarray:
    """The sketch of the union of the sets: the register-wise max (over ticks, CPUs, hosts)."""
    return np.maximum.reduce([np.asarray(s, dtype=np.uint8) for s in sketches])


def fold(sketch: np.ndarray, p: int) -> np.ndarray:
    """The same set's sketch at a lower precision p, exactly: the register of p's index i is
    the max over its 2^(P - p) children, each child's rank moved by the index bits it loses
    (a child whose lost bits are not all zero has its rank from those bits alone)."""
    big_p = int(math.log2(len(sketch)))
    if not 4 <= p <= big_p:
        raise ValueError(f"fold: precision {p} must be between 4 and {big_p}")
    extra = big_p - p
    children = np.asarray(sketch, dtype=np.uint8).reshape(1 << p, 1 << extra)
    low = np.arange(1 << extra)
    # Rank of the lost bits b (extra of them): leading zeros + 1 within extra bits.
    lost_rank = np.array([extra - int(b).bit_length() + 1 if b else 0 for b in low], dtype=np.uint8)
    moved = np.where(low == 0, children + np.uint8(extra), lost_rank)
    moved = np.where(children > 0, moved, 0).astype(np.uint8)
    return moved.max(axis=1)


def relative_standard_error(p: int = DEFAULT_P) -> float:
    return 1.04 / math.sqrt(1 << p)


def _alpha(m: int) -> float:
    if m == 16:
        return 0.673
    if m == 32:
        return 0.697
    if m == 64:
        return 0.709
    return 0.7213 / (1 + 1.079 / m)


def estimate_classic(sketch: np.ndarray) -> float:
    """Flajolet et al.'s estimate with linear counting for small cardinalities."""
    regs = np.asarray(sketch, dtype=np.float64)
    m = len(regs)
    raw = _alpha(m) * m * m / float(np.sum(np.exp2(-regs)))
    zeros = int(np.count_nonzero(sketch == 0))
    if raw <= 2.5 * m and zeros:
        return m * math.log(m / zeros)
    return raw


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        previous = z
        z += x * y
        y += y
        if z == previous:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        previous = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == previous:
            return z / 3.0


def estimate(sketch: np.ndarray) -> float:
    """Ertl's improved raw estimator over the register histogram."""
    m = len(sketch)
    q = 64 - int(math.log2(m))
    counts = np.bincount(np.asarray(sketch, dtype=np.int64), minlength=q + 2)
    z = m * _tau(1.0 - counts[q + 1] / m)
    for k in range(q, 0, -1):
        z = 0.5 * (z + counts[k])
    z += m * _sigma(counts[0] / m)
    if z == math.inf:
        return 0.0
    return m * m / (2.0 * math.log(2.0)) / z


def ipv4_sketch(addresses: np.ndarray, p: int = DEFAULT_P) -> np.ndarray:
    """The sketch of IPv4 sources given as host-order integers."""
    return registers(address_hash(*ipv4_words(addresses)), p)


# -- which port has which sketch -------------------------------------------------------------

MAX_OWN_PORTS = 64  # 131 KiB of kernel memory per port and class: 33.6 MB at most
SPARE_PORTS = 4  # room for ports a reload adds


def sketch_class(family: int, proto: int) -> int:
    """The kernel's class of a TCP or UDP (family, protocol): (family == 6) * 2 + (proto == UDP);
    also the id of its "other ports" sketch (layout.OTHER_SKETCH_IDS)."""
    return (2 if family == 6 else 0) | (1 if proto == 17 else 0)


CLASSES = {sketch_class(f, p): (f, p) for f in (4, 6) for p in (6, 17)}  # TCP and UDP only


@dataclass(frozen=True)
class SketchPlan:
    """TCP and UDP ports with sketches of their own: ports[i] has the ids OTHER_SKETCHES + 4 i +
    class. Every other port, and every port (ICMP type) of the other protocols, goes to its
    (family, protocol)'s "other ports" sketch (layout.OTHER_SKETCH_IDS, ids 0..OTHER_SKETCHES -
    1). The kernel's map has room for `capacity` ports, fixed at start-up; a reload keeps every
    port's ids (a port no longer watched keeps them, unused) and gives new ports the ids left."""

    ports: tuple[int, ...] = ()
    capacity: int = SPARE_PORTS

    @staticmethod
    def wanted(listed: Iterable[int], fleet_ports: Iterable[int]) -> list[int]:
        """The ports that should have sketches of their own, in order of precedence: the
        fleet ports, then the watched ports as listed (none when all ports are watched)."""
        return sorted(set(fleet_ports)) + sorted(set(listed) - set(fleet_ports))

    @classmethod
    def initial(cls, listed: Iterable[int], fleet_ports: Iterable[int]) -> SketchPlan:
        wanted = cls.wanted(listed, fleet_ports)
        capacity = min(MAX_OWN_PORTS, len(wanted) + SPARE_PORTS)
        return cls(tuple(wanted[:capacity]), capacity)

    def updated(self, listed: Iterable[int], fleet_ports: Iterable[int]) -> SketchPlan:
        new = [p for p in self.wanted(listed, fleet_ports) if p not in self.ports]
        room = self.capacity - len(self.ports)
        return SketchPlan(self.ports + tuple(new[:room]), self.capacity)

    def left_out(self, listed: Iterable[int], fleet_ports: Iterable[int]) -> list[int]:
        """Wanted ports that found no room (they are counted in the "other ports" sketches)."""
        return [p for p in self.wanted(listed, fleet_ports) if p not in self.ports]

    @property
    def sketches(self) -> int:
        return OTHER_SKETCHES + 4 * self.capacity

    def sketch_id(self, family: int, proto: int, port: int) -> int | None:
        """The id of the port's own sketch for (family, proto), None if it has none (always
        for protocols other than TCP and UDP)."""
        if proto not in (6, 17):
            return None
        try:
            position = self.ports.index(port)
        except ValueError:
            return None
        return OTHER_SKETCHES + 4 * position + sketch_class(family, proto)

    def port_ids(self) -> np.ndarray:
        """The kernel's sketch_of_port map: (65536, 4) uint16 by TCP/UDP class, 0 = the
        class's other sketch."""
        ids = np.zeros((65536, 4), np.uint16)
        for position, port in enumerate(self.ports):
            ids[port] = OTHER_SKETCHES + 4 * position + np.arange(4)
        return ids


# -- the window ------------------------------------------------------------------------------


def tick_of(ns: int) -> int:
    return int(ns) >> TICK_SHIFT


def first_tick(now_ns: int, window_s: int) -> int:
    """The oldest tick that overlaps the window ending at now_ns: the union of the ticks from
    it to now covers between the window and the window plus a tick (8.6 s)."""
    return tick_of(max(0, int(now_ns) - int(window_s) * 1_000_000_000))


@dataclass
class SketchUnion:
    """The window's union of every sketch: registers and sources lost from the table."""

    registers: np.ndarray  # (sketches, 2**HLL_P) uint8
    lost: np.ndarray  # (sketches,) uint64

    def estimate(self, sketch: int) -> float:
        return estimate(self.registers[sketch])

    def fleet_registers(self, sketch: int) -> np.ndarray | None:
        """The sketch folded to FLEET_P, None when it saw nothing."""
        registers = self.registers[sketch]
        if not registers.any():
            return None
        return fold(registers, FLEET_P)


@dataclass
class SketchWindow:
    """The daemon's half of the window: the kernel keeps RING ticks per sketch (the default
    window); this keeps every tick it has read until it leaves the window, so that longer
    windows and late refreshes lose nothing. Memory: 16 KiB per sketch and tick that saw
    frames."""

    sketches: int
    _ticks: dict[int, dict[int, tuple[np.ndarray, int]]] = field(default_factory=dict)

    def update(self, slots: np.ndarray, now_ns: int, window_s: int) -> SketchUnion:
        """Take in the kernel's slots (SKETCH_SLOT_DTYPE, sketches * RING of them) and return
        the union over the window ending at now_ns."""
        if slots.dtype != SKETCH_SLOT_DTYPE or len(slots) != self.sketches * RING:
            raise ValueError(f"expected {self.sketches * RING} sketch slots, got {len(slots)}")
        first, now_tick = first_tick(now_ns, window_s), tick_of(now_ns)
        ticks = slots["tick"]
        for index in np.flatnonzero((ticks >= first) & (ticks <= now_tick)).tolist():
            slot = slots[index]
            tick = int(slot["tick"])
            if not (slot["lost"] or slot["reg"].any()):
                continue
            registers, lost_there = slot["reg"].copy(), int(slot["lost"])
            if int(slot["tick"]) != tick:
                continue  # the kernel started another tick in this slot meanwhile: torn
            held = self._ticks.setdefault(tick, {})
            sketch = index // RING
            if sketch in held:  # a tick's registers and losses only grow
                before, lost_before = held[sketch]
                np.maximum(registers, before, out=registers)
                lost_there = max(lost_there, lost_before)
            held[sketch] = (registers, lost_there)
        for tick in [t for t in self._ticks if t < first]:
            del self._ticks[tick]
        registers = np.zeros((self.sketches, 1 << HLL_P), np.uint8)
        lost = np.zeros(self.sketches, np.uint64)
        for held in self._ticks.values():
            for sketch, (regs, lost_there) in held.items():
                np.maximum(registers[sketch], regs, out=registers[sketch])
                lost[sketch] += np.uint64(lost_there)
        return SketchUnion(registers, lost)


@dataclass(frozen=True)
class SketchCounts:
    """What /metrics shows of the sketches, per (family, proto, port) of the TCP and UDP ports
    with a sketch of their own, and per (family, proto) of layout.OTHER_SKETCH_IDS for the
    other ports (and ICMP types)."""

    exact: Mapping[tuple[int, int, int], bool]  # no source of it lost from the table
    estimates: Mapping[tuple[int, int, int], float]  # the sketch's, for every own-port sketch
    other_exact: Mapping[tuple[int, int], bool]
    other_estimates: Mapping[tuple[int, int], float]
    fleet: Mapping[tuple[int, int, int], np.ndarray]  # FLEET_P registers of fleet ports

    @classmethod
    def of(cls, union: SketchUnion, plan: SketchPlan, fleet_ports: Iterable[int]) -> SketchCounts:
        fleet = set(fleet_ports)
        exact, estimates, fleet_registers = {}, {}, {}
        for port in plan.ports:
            for family, proto in CLASSES.values():
                sketch = plan.sketch_id(family, proto, port)
                label = (family, proto, port)
                exact[label] = not union.lost[sketch]
                estimates[label] = union.estimate(sketch)
                if port in fleet:
                    registers = union.fleet_registers(sketch)
                    if registers is not None:
                        fleet_registers[label] = registers
        other_exact = {label: not union.lost[k] for label, k in OTHER_SKETCH_IDS.items()}
        other_estimates = {label: union.estimate(k) for label, k in OTHER_SKETCH_IDS.items()}
        return cls(exact, estimates, other_exact, other_estimates, fleet_registers)
