"""The new-source budget (setting new_source_budget, port_filter.admit_per_tick): per CPU and
tick of the sketches, at most admit_per_tick new sources enter the table; past it a new source
is counted in its port's sketch only, as `not_admitted`, and marks the port's count estimated.
Sources already in the table are counted as before, and the budget is back at the next tick.

Each test sends from one CPU (the budget is per CPU; BPF_PROG_TEST_RUN runs the program on the
calling CPU) within one tick, checked by reading the kernel clock before and after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.layout import TICK_SHIFT, VALUE_DTYPE, WAYS
from xdp_ip_counter.sketch import SketchCounts, SketchWindow
from xdp_ip_counter.table import admit_per_tick, fingerprint_words, place

from .conftest import FLOODED_PORT, QUIET_PORT
from .program import WINDOW, ProgramUnderTest, Source, addresses, key_array, wait_for
from .test_table import expected_counts

BUDGET = 1  # new sources per second and CPU
PER_TICK = admit_per_tick(BUDGET)  # 9: 2**33 ns is 8.59 s


def tick_now(program: ProgramUnderTest) -> int:
    return program.datapath.clock.now_ns() >> TICK_SHIFT


@contextmanager
def on_one_cpu() -> Iterator[None]:
    """Run this thread on one CPU (the budget is counted per CPU), then as before."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def outcomes(delta: dict[str, int]) -> dict[str, int]:
    return {name: count for name, count in delta.items() if count and name != "sketch_ticks"}


def exactness(program: ProgramUnderTest) -> dict[tuple[int, int, int], bool]:
    datapath = program.datapath
    union = SketchWindow(datapath.plan.sketches).update(
        datapath.read_sketches(), datapath.clock.now_ns(), WINDOW
    )
    return SketchCounts.of(union, datapath.plan, []).exact


def send_in_one_tick(program: ProgramUnderTest, frames: list) -> dict[str, int]:
    """Send frames from one CPU within one tick: a new tick first if the current one is about
    to end (the tick is 8.6 s; the frames take milliseconds)."""
    tick = tick_now(program)
    with on_one_cpu():
        delta = program.send(frames)
    assert tick_now(program) == tick, "a tick ended while sending: the budget was renewed"
    return delta


def start_of_a_tick(program: ProgramUnderTest) -> None:
    """Wait for the next tick to begin, so that what follows runs well inside one tick."""
    tick = tick_now(program)
    wait_for(lambda: tick_now(program) != tick, 10.0, "the next tick of the sketches")


def test_past_the_budget_a_new_source_is_in_the_sketch_only(small: ProgramUnderTest) -> None:
    """With a budget of 1 new source per second (9 per tick): of 30 new sources to
    FLOODED_PORT, the first 9 enter the table and 21 are not admitted; the 9 are counted on
    their next frames without using the budget, and a new source to QUIET_PORT is refused
    too; both ports' counts are then estimates; with the budget turned off on a live
    reconfigure, the 21 enter."""
    assert PER_TICK == 9
    small.datapath.configure(PortFilter.all(), WINDOW, new_source_budget=BUDGET)
    flood = [Source(a, FLOODED_PORT) for a in addresses("10.95.0.0", 30)]
    quiet = Source("10.96.0.1", QUIET_PORT)
    start_of_a_tick(small)

    delta = send_in_one_tick(small, [s.frame for s in flood])
    assert outcomes(delta) == {"recorded_new": PER_TICK, "not_admitted": 30 - PER_TICK}
    admitted = flood[:PER_TICK]
    assert small.counts() == expected_counts(small, dict.fromkeys(admitted, 1))

    # known sources: counted, and the budget is not spent on them; a new one is still refused
    delta = send_in_one_tick(small, [s.frame for s in admitted] + [quiet.frame])
    assert outcomes(delta) == {"recorded": PER_TICK, "not_admitted": 1}
    assert small.counts() == expected_counts(small, dict.fromkeys(admitted, 2))
    estimated = sorted(label for label, is_exact in exactness(small).items() if not is_exact)
    assert estimated == sorted([(4, quiet.proto, FLOODED_PORT), (4, quiet.proto, QUIET_PORT)])

    small.datapath.configure(PortFilter.all(), WINDOW)  # no budget
    delta = small.send(s.frame for s in flood[PER_TICK:])
    assert outcomes(delta) == {"recorded_new": 30 - PER_TICK}
    assert small.counts() == expected_counts(
        small, {**dict.fromkeys(admitted, 2), **dict.fromkeys(flood[PER_TICK:], 1)}
    )


def test_the_budget_is_renewed_every_tick(small: ProgramUnderTest) -> None:
    """The budget spent, the next tick admits PER_TICK new sources again."""
    small.datapath.configure(PortFilter.all(), WINDOW, new_source_budget=BUDGET)
    sources = [Source(a, FLOODED_PORT) for a in addresses("10.97.0.0", 2 * PER_TICK + 2)]
    start_of_a_tick(small)
    first = send_in_one_tick(small, [s.frame for s in sources[: PER_TICK + 1]])
    assert outcomes(first) == {"recorded_new": PER_TICK, "not_admitted": 1}
    start_of_a_tick(small)
    second = send_in_one_tick(small, [s.frame for s in sources[PER_TICK + 1 :]])
    assert outcomes(second) == {"recorded_new": PER_TICK, "not_admitted": 1}
    kept = sources[:PER_TICK] + sources[PER_TICK + 1 : 2 * PER_TICK + 1]
    assert small.counts() == expected_counts(small, dict.fromkeys(kept, 1))


@pytest.mark.parametrize("budget", [0, 10**8])
def test_no_budget_or_a_large_one_keeps_every_new_source(
    small: ProgramUnderTest, budget: int
) -> None:
    """0 (the default) is no limit; a budget above what is sent admits everything."""
    small.datapath.configure(PortFilter.all(), WINDOW, new_source_budget=budget)
    sources = [Source(a, FLOODED_PORT) for a in addresses("10.98.0.0", 500)]
    delta = small.send(s.frame for s in sources)
    assert outcomes(delta) == {"recorded_new": 500}
    assert all(exactness(small).values())


def test_the_kernel_keeps_a_fingerprint_for_every_slot_it_claims(small: ProgramUnderTest) -> None:
    """As many new sources as the table has slots (claims of free slots and, where a key's two
    sets are full, of given-up ones): afterwards the fingerprints map is byte for byte what
    table.fingerprint_words() computes from the table (each claimed way's byte is its key's
    fingerprint, never-used ways 0)."""
    datapath = small.datapath
    flood = [Source(a, FLOODED_PORT) for a in addresses("10.99.0.0", datapath.slots)]
    delta = small.send(s.frame for s in flood)
    assert delta["recorded_new"] == len(flood) and delta["evicted"] > 0
    kernel = datapath.fingerprints().copy()
    mirror = fingerprint_words(datapath.table_words())
    differ = np.flatnonzero(kernel != mirror)
    assert not len(differ), (
        f"{len(differ)} sets differ, set {differ[0]}: kernel {kernel[differ[0]]:#x}, "
        f"table.py {mirror[differ[0]]:#x}"
    )
    keyed = int(np.count_nonzero(datapath.table_words()[:, :WAYS] >> np.uint64(32)))
    assert np.count_nonzero(kernel.view(np.uint8)) == keyed > datapath.capacity


@pytest.mark.parametrize("rebuilt", [True, False], ids=["rebuilt", "not-rebuilt"])
def test_past_the_budget_known_sources_are_still_counted(
    small: ProgramUnderTest, rebuilt: bool
) -> None:
    """Sources put in the table by userspace (as a pinned table is carried over) and by the
    kernel: with the budget spent, their frames are still recorded (the fingerprints say they
    may be there), and new ones are not admitted. Without rebuild_fingerprints() after
    userspace wrote the table, its sources would look new: not admitted (the check that the
    rebuild matters)."""
    datapath = small.datapath
    placed = [Source(a, QUIET_PORT) for a in addresses("10.100.0.0", 50)]
    keys = key_array([small.key(s) for s in placed])
    values = np.zeros(len(placed), VALUE_DTYPE)
    values["packets"], values["bytes"] = 1, [s.frame.ip_length for s in placed]
    values["first_seen"] = values["last_seen"] = datapath.clock.now_ns()
    assert place(datapath.table_words(), keys, values) == len(placed)
    if rebuilt:
        datapath.rebuild_fingerprints()
    datapath.unmap_table()
    inserted = [Source(a, FLOODED_PORT) for a in addresses("10.101.0.0", PER_TICK)]
    new = [Source(a, FLOODED_PORT) for a in addresses("10.102.0.0", 20)]
    datapath.configure(PortFilter.all(), WINDOW, new_source_budget=BUDGET)
    start_of_a_tick(small)

    first = send_in_one_tick(small, [s.frame for s in inserted + new])
    assert outcomes(first) == {"recorded_new": PER_TICK, "not_admitted": len(new)}
    again = send_in_one_tick(small, [s.frame for s in placed + inserted])
    if rebuilt:
        assert outcomes(again) == {"recorded": len(placed) + PER_TICK}
        assert small.counts() == expected_counts(small, dict.fromkeys(placed + inserted, 2))
    else:
        assert outcomes(again) == {"recorded": PER_TICK, "not_admitted": len(placed)}
