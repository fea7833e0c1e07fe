"""sketch.py: registers, folding and estimates; which port has which sketch (SketchPlan); the
window's union of the kernel's ticks (SketchWindow); what /metrics takes of it (SketchCounts).

Registers are checked against index and rank written out here from the C (the top P bits; the
leading zeros + 1 of the rest), folding against registers made at the lower precision from the
same hashes, and estimates against the true count of the set that was put in.
"""

from __future__ import annotations

import numpy as np
import pytest

from xdp_ip_counter.layout import (
    HLL_P,
    OTHER_SKETCH_IDS,
    OTHER_SKETCHES,
    RING,
    SKETCH_SLOT_DTYPE,
    TICK_SHIFT,
)
from xdp_ip_counter.sketch import (
    CLASSES,
    FLEET_P,
    MAX_OWN_PORTS,
    SPARE_PORTS,
    SketchCounts,
    SketchPlan,
    SketchUnion,
    SketchWindow,
    address_hash,
    address_words,
    estimate,
    estimate_classic,
    first_tick,
    fold,
    index_and_rank,
    ipv4_sketch,
    ipv4_words,
    registers,
    relative_standard_error,
    sketch_class,
    union,
)

S = 1_000_000_000
TICK = 1 << TICK_SHIFT  # 8.59 s
T = 1000  # the tick of "now" in these tests
M64 = (1 << 64) - 1
TCP, UDP, ICMP, SCTP = 6, 17, 1, 132


def addresses(first: int, count: int) -> np.ndarray:
    """count distinct IPv4 addresses (host-order integers) from 10.0.0.0 + first."""
    return np.arange(first, first + count, dtype=np.uint32) + np.uint32(10 << 24)


def hashes_of(first: int, count: int) -> np.ndarray:
    return address_hash(*ipv4_words(addresses(first, count)))


def within(value: float, truth: int, sigmas: float = 4.0) -> bool:
    """value is the truth within `sigmas` standard errors of a p = 14 sketch (and 1 absolute)."""
    return abs(value - truth) <= max(1.0, sigmas * relative_standard_error(HLL_P) * truth)


# -- registers, fold, estimates --------------------------------------------------------------


def reference_index_and_rank(h: int, p: int) -> tuple[int, int]:
    """The C's sketch_add: index = top p bits; rank = leading zeros + 1 of the other 64 - p
    bits (hll_rank(h << p)), 64 - p + 1 when they are all zero."""
    rest = (h << p) & M64
    return h >> (64 - p), (64 - rest.bit_length() + 1) if rest else 64 - p + 1


EDGE_HASHES = [0, 1, M64, 1 << 63, 1 << 50, (1 << 50) - 1, 0x3FFF << 50, (0x3FFF << 50) | 1]


@pytest.mark.parametrize("p", [4, 12, 14])
def test_index_and_rank_are_the_kernels(p: int) -> None:
    generator = np.random.default_rng(1)
    hashes = np.concatenate(
        [np.array(EDGE_HASHES, np.uint64), generator.integers(0, M64, 2000, np.uint64, True)]
    )
    # Hashes with many leading zeros in the rest: every rank occurs.
    hashes = np.concatenate([hashes, hashes >> generator.integers(0, 64, len(hashes), np.uint64)])
    index, rank = index_and_rank(hashes, p)
    expected = [reference_index_and_rank(int(h), p) for h in hashes]
    assert list(zip(index.tolist(), rank.tolist(), strict=True)) == expected


def test_registers_keep_the_largest_rank_of_each_index() -> None:
    hashes = hashes_of(0, 5000)
    expected = np.zeros(1 << HLL_P, np.uint8)
    for h in hashes.tolist():
        index, rank = reference_index_and_rank(h, HLL_P)
        expected[index] = max(expected[index], rank)
    assert np.array_equal(registers(hashes), expected)
    assert np.array_equal(ipv4_sketch(addresses(0, 5000)), expected)


def test_ipv4_words_are_the_keys_words() -> None:
    """IPv4 sources are hashed as the key holds them: ::ffff:a.b.c.d, two little-endian words."""
    for text, value in (("10.0.0.1", 0x0A000001), ("192.168.77.200", 0xC0A84DC8)):
        lo, hi = ipv4_words(np.array([value], np.uint32))
        assert (int(lo[0]), int(hi[0])) == address_words(text)
    assert address_words("fd00::1") == (0xFD, 1 << 56)


def test_the_union_is_the_sketch_of_the_union_of_the_sets() -> None:
    first, second = hashes_of(0, 30_000), hashes_of(20_000, 30_000)
    assert np.array_equal(
        union([registers(first), registers(second)]),
        registers(np.concatenate([first, second])),
    )


@pytest.mark.parametrize("p", [4, 10, 12, 13, 14])
def test_fold_is_the_same_sets_sketch_at_a_lower_precision(p: int) -> None:
    hashes = np.concatenate([np.array(EDGE_HASHES, np.uint64), hashes_of(0, 50_000)])
    assert np.array_equal(fold(registers(hashes), p), registers(hashes, p))


def test_fold_of_a_small_set_and_of_nothing() -> None:
    few = hashes_of(7, 3)
    assert np.array_equal(fold(registers(few), FLEET_P), registers(few, FLEET_P))
    assert not fold(np.zeros(1 << HLL_P, np.uint8), FLEET_P).any()


@pytest.mark.parametrize("p", [3, 15])
def test_fold_refuses_a_precision_it_cannot_give(p: int) -> None:
    with pytest.raises(ValueError, match="precision"):
        fold(np.zeros(1 << HLL_P, np.uint8), p)


@pytest.mark.parametrize("count", [1, 10, 300, 5_000, 40_000, 80_000, 400_000])
def test_estimate_is_within_the_standard_error(count: int) -> None:
    """Ertl's estimator, from one source to 24 m; the classic one away from 2.5 m to 5 m, where
    its switch from linear counting to the raw estimate is known to be biased (40,000 here,
    2.4 m, reads 41,453: +3.6 %). PromQL computes the classic one for p = 12."""
    sketch = registers(hashes_of(1_000_000, count))
    assert within(estimate(sketch), count)
    if not 2.5 * (1 << HLL_P) * 0.9 < count < 5 * (1 << HLL_P):
        assert within(estimate_classic(sketch), count)


def test_estimate_of_nothing_is_zero() -> None:
    empty = np.zeros(1 << HLL_P, np.uint8)
    assert estimate(empty) == 0.0
    assert estimate_classic(empty) == 0.0


def test_relative_standard_error() -> None:
    assert relative_standard_error(14) == pytest.approx(0.0081, abs=1e-4)
    assert relative_standard_error(FLEET_P) == pytest.approx(0.01625)


# -- which port has which sketch -------------------------------------------------------------


def test_sketch_class_is_the_kernels() -> None:
    """(family == 6) * 2 + (proto == UDP)."""
    assert [sketch_class(f, p) for f in (4, 6) for p in (TCP, UDP)] == [0, 1, 2, 3]
    assert CLASSES == {0: (4, TCP), 1: (4, UDP), 2: (6, TCP), 3: (6, UDP)}
    # A class is also the id of its "other ports" sketch, as it was before there were twelve.
    assert all(OTHER_SKETCH_IDS[label] == klass for klass, label in CLASSES.items())
    assert sorted(OTHER_SKETCH_IDS.values()) == list(range(OTHER_SKETCHES)) == list(range(12))


def test_initial_plan_gives_fleet_ports_then_listed_ports_their_own_sketches() -> None:
    plan = SketchPlan.initial({443, 22, 53}, fleet_ports=(53,))
    assert plan.ports == (53, 22, 443)
    assert plan.capacity == 3 + SPARE_PORTS
    assert plan.sketches == OTHER_SKETCHES + 4 * plan.capacity == 40


def test_initial_plan_with_all_ports_watched() -> None:
    assert SketchPlan.initial(frozenset(), ()) == SketchPlan((), SPARE_PORTS)
    assert SketchPlan.initial(frozenset(), (8080, 22)).ports == (22, 8080)


def test_initial_plan_is_capped() -> None:
    listed = set(range(8000, 8100))
    plan = SketchPlan.initial(listed, fleet_ports=(8099,))
    assert plan.capacity == MAX_OWN_PORTS
    assert plan.ports == (8099, *range(8000, 8000 + MAX_OWN_PORTS - 1))
    assert plan.left_out(listed, (8099,)) == list(range(8000 + MAX_OWN_PORTS - 1, 8099))


def test_updated_plan_keeps_every_ports_ids_and_adds_new_ports_while_there_is_room() -> None:
    plan = SketchPlan.initial({22, 53}, ())  # room for 2 + 4 ports
    ids_before = {port: plan.sketch_id(4, TCP, port) for port in plan.ports}
    updated = plan.updated({53, 80, 443, 8080, 8081, 8082}, fleet_ports=(8082,))
    # 22 is no longer watched but keeps its ids; 8082 (fleet) comes first among the new ports.
    assert updated.ports == (22, 53, 8082, 80, 443, 8080)
    assert updated.capacity == plan.capacity
    assert updated.sketches == plan.sketches
    assert {port: updated.sketch_id(4, TCP, port) for port in (22, 53)} == ids_before
    assert updated.left_out({53, 80, 443, 8080, 8081, 8082}, (8082,)) == [8081]
    assert updated.updated({53, 80, 9000}, ()) == updated  # no room left: nothing changes


def test_sketch_ids_and_the_kernels_port_map_agree() -> None:
    plan = SketchPlan((53, 22), capacity=6)
    assert plan.sketch_id(4, TCP, 53) == 12
    assert plan.sketch_id(6, UDP, 22) == 12 + 4 + 3
    assert plan.sketch_id(4, TCP, 443) is None
    # Only TCP and UDP ports have sketches of their own; ICMP types never do.
    for family, proto in OTHER_SKETCH_IDS:
        if proto not in (TCP, UDP):
            assert plan.sketch_id(family, proto, 53) is None
            assert plan.sketch_id(family, proto, 22) is None
    ids = plan.port_ids()
    assert ids.shape == (65536, 4)
    assert ids.dtype == np.uint16
    for port in (53, 22):
        for klass, (family, proto) in CLASSES.items():
            assert ids[port, klass] == plan.sketch_id(family, proto, port)
    others = np.ones(65536, bool)
    others[[53, 22]] = False
    assert not ids[others].any()  # 0: the class's "other ports" sketch
    assert len({*ids[[53, 22]].ravel().tolist()}) == 8  # no two share a sketch


# -- the window ------------------------------------------------------------------------------


def kernel_slots(sketches: int) -> np.ndarray:
    return np.zeros(sketches * RING, SKETCH_SLOT_DTYPE)


def write_tick(slots: np.ndarray, sketch: int, tick: int, regs: np.ndarray, lost: int = 0) -> None:
    """What the kernel's ring holds for `sketch` once `tick` has begun: slot tick % RING."""
    index = sketch * RING + tick % RING
    slots["tick"][index] = tick
    slots["lost"][index] = lost
    slots["reg"][index] = regs


def at(tick: int) -> int:
    """The middle of a tick, in ns."""
    return tick * TICK + TICK // 2


def test_the_window_covers_its_ticks() -> None:
    # 60 s back from the middle of tick T is 6.49 ticks: tick T - 7 overlaps the window.
    assert first_tick(at(T), 60) == T - 7
    assert first_tick(at(T), 120) == T - 14
    assert first_tick(5 * S, 60) == 0  # less than a window since boot


def test_the_union_is_the_max_over_the_windows_ticks_and_lost_is_their_sum() -> None:
    a, b, c = registers(hashes_of(0, 400)), registers(hashes_of(300, 400)), hashes_of(0, 50)
    slots = kernel_slots(8)
    write_tick(slots, 2, T - 7, a, lost=2)  # the oldest tick of the window
    write_tick(slots, 2, T, b, lost=3)
    write_tick(slots, 3, T - 8, registers(c), lost=9)  # one tick too old
    write_tick(slots, 4, T + 1, registers(c), lost=1)  # not begun at the read
    result = SketchWindow(8).update(slots, at(T), 60)
    assert np.array_equal(result.registers[2], np.maximum(a, b))
    assert np.array_equal(result.registers[2], registers(hashes_of(0, 700)))
    assert result.lost.tolist() == [0, 0, 5, 0, 0, 0, 0, 0]
    assert not result.registers[[0, 1, 3, 4, 5, 6, 7]].any()
    assert within(result.estimate(2), 700)


def test_ticks_the_kernel_overwrote_are_kept_until_they_leave_the_window() -> None:
    """A 120 s window is 14 ticks; the kernel keeps 8: the daemon keeps the ticks it read."""
    window = SketchWindow(5)
    early, late = registers(hashes_of(0, 1000)), registers(hashes_of(5000, 1000))
    slots = kernel_slots(5)
    write_tick(slots, 4, T - 6, early, lost=1)
    first = window.update(slots, at(T), 120)
    assert np.array_equal(first.registers[4], early)

    write_tick(slots, 4, T + 2, late)  # the same slot of the ring, 8 ticks on
    second = window.update(slots, at(T + 8), 120)  # the window starts at T - 6: still in
    assert np.array_equal(second.registers[4], np.maximum(early, late))
    assert second.lost[4] == 1
    assert within(second.estimate(4), 2000)

    third = window.update(slots, at(T + 9), 120)  # now it starts at T - 5: T - 6 is gone
    assert np.array_equal(third.registers[4], late)
    assert third.lost[4] == 0


def test_a_shorter_window_drops_what_a_longer_one_kept() -> None:
    window = SketchWindow(5)
    slots = kernel_slots(5)
    write_tick(slots, 0, T - 10, registers(hashes_of(0, 10)))
    write_tick(slots, 0, T, registers(hashes_of(100, 10)))
    assert within(window.update(slots, at(T), 120).estimate(0), 20)
    assert within(window.update(slots, at(T), 60).estimate(0), 10)


def test_update_takes_the_kernels_slots_only() -> None:
    with pytest.raises(ValueError, match="expected 40 sketch slots"):
        SketchWindow(5).update(kernel_slots(4), at(T), 60)


def test_a_tick_read_again_never_loses_what_it_had() -> None:
    """The daemon reads the kernel's slots while the kernel writes them: a slot whose tick
    field still says T - 6 may already have lost = 0 and half its registers cleared for T + 2."""
    window = SketchWindow(5)
    full = registers(hashes_of(0, 3000))
    slots = kernel_slots(5)
    write_tick(slots, 1, T - 6, full, lost=4)
    window.update(slots, at(T + 7), 120)
    torn = full.copy()
    torn[: len(torn) // 2] = 0
    write_tick(slots, 1, T - 6, torn, lost=0)
    again = window.update(slots, at(T + 7), 120)
    assert np.array_equal(again.registers[1], full)
    assert again.lost[1] == 4


# -- what /metrics takes of it ---------------------------------------------------------------


def test_sketch_counts_per_port_and_for_the_other_ports() -> None:
    plan = SketchPlan.initial({22, 53}, fleet_ports=(53,))  # 53 then 22: ids 12..15, 16..19
    union_ = SketchUnion(
        np.zeros((plan.sketches, 1 << HLL_P), np.uint8), np.zeros(plan.sketches, np.uint64)
    )
    udp53 = hashes_of(0, 3000)
    union_.registers[plan.sketch_id(4, UDP, 53)] = registers(udp53)
    union_.registers[plan.sketch_id(4, TCP, 22)] = registers(hashes_of(10_000, 500))
    union_.lost[plan.sketch_id(4, TCP, 22)] = 7
    union_.registers[sketch_class(6, TCP)] = registers(hashes_of(20_000, 40))
    union_.lost[sketch_class(4, UDP)] = 1
    union_.registers[OTHER_SKETCH_IDS[(6, SCTP)]] = registers(hashes_of(30_000, 70))
    union_.lost[OTHER_SKETCH_IDS[(6, SCTP)]] = 2
    union_.registers[OTHER_SKETCH_IDS[(4, ICMP)]] = registers(hashes_of(40_000, 5))

    counts = SketchCounts.of(union_, plan, fleet_ports=(53,))

    labels = {(f, p, port) for port in (53, 22) for f, p in CLASSES.values()}
    assert set(counts.exact) == set(counts.estimates) == labels
    assert {label for label, exact in counts.exact.items() if not exact} == {(4, TCP, 22)}
    assert within(counts.estimates[(4, UDP, 53)], 3000)
    assert within(counts.estimates[(4, TCP, 22)], 500)
    assert counts.estimates[(6, UDP, 53)] == 0.0
    # One "other ports" sketch per (family, protocol) the kernel records.
    assert set(counts.other_exact) == set(counts.other_estimates) == set(OTHER_SKETCH_IDS)
    assert {label for label, exact in counts.other_exact.items() if not exact} == {
        (4, UDP),
        (6, SCTP),
    }
    assert within(counts.other_estimates[(6, TCP)], 40)
    assert within(counts.other_estimates[(6, SCTP)], 70)
    assert within(counts.other_estimates[(4, ICMP)], 5)
    assert counts.other_estimates[(4, TCP)] == 0.0
    assert counts.other_estimates[(6, 58)] == 0.0
    # Fleet registers: only the fleet port, only its sketches that saw sources, at p = 12.
    assert set(counts.fleet) == {(4, UDP, 53)}
    assert counts.fleet[(4, UDP, 53)].shape == (1 << FLEET_P,)
    assert np.array_equal(counts.fleet[(4, UDP, 53)], registers(udp53, FLEET_P))


def test_a_fleet_port_without_a_sketch_of_its_own_exports_no_registers() -> None:
    plan = SketchPlan((22,), capacity=1)  # 53 found no room
    union_ = SketchUnion(
        np.full((plan.sketches, 1 << HLL_P), 3, np.uint8), np.zeros(plan.sketches, np.uint64)
    )
    counts = SketchCounts.of(union_, plan, fleet_ports=(53,))
    assert dict(counts.fleet) == {}
    assert set(counts.exact) == {(f, p, 22) for f, p in CLASSES.values()}
