"""The sliding-window sketch (bpf/xdp_ip_counter.c) against its userspace half
(xdp_ip_counter/sketch.py): the kernel's registers are the numpy sketch of the same addresses,
bit for bit, in the sketch of the right port and class (a port of its own, or its class's "other
ports" sketch, ids 0..3); the window's union estimates 20,000 sources within 3 %, and the fleet
registers are the same sketch at p = 12; a known source enters the sketch once per tick.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from xdp_ip_counter.layout import RING, TICK_SHIFT, VALUE_DTYPE, WAYS
from xdp_ip_counter.sketch import (
    FLEET_P,
    SketchCounts,
    SketchUnion,
    SketchWindow,
    address_hash,
    address_words,
    estimate,
    registers,
    sketch_class,
    tick_of,
)
from xdp_ip_counter.table import place

from .conftest import OWN_PORT
from .program import (
    TCP,
    UDP,
    WINDOW,
    ProgramUnderTest,
    Source,
    addresses,
    key_array,
    only,
    spread,
    wait_for,
)

pytestmark = pytest.mark.root

OTHER_PORT = 5353  # no sketch of its own: its class's "other ports" sketch
CLASSES = ((4, TCP), (4, UDP), (6, TCP), (6, UDP))
ESTIMATE_TOLERANCE = 0.03  # the standard error is 0.81 % at p = 14


def hashes_of(sources: list[Source]) -> np.ndarray:
    """The kernel's address_hash of each source, computed in numpy."""
    words = np.array([address_words(s.address) for s in sources], np.uint64).reshape(-1, 2)
    return address_hash(words[:, 0], words[:, 1])


def window_union(program: ProgramUnderTest) -> SketchUnion:
    datapath = program.datapath
    window = SketchWindow(datapath.plan.sketches)
    return window.update(datapath.read_sketches(), datapath.clock.now_ns(), WINDOW)


def differing(kernel: np.ndarray, expected: np.ndarray) -> str:
    wrong = np.flatnonzero(kernel != expected)
    if not len(wrong):
        return "equal"
    first = int(wrong[0])
    return (
        f"{len(wrong)} registers differ, the first {first}: "
        f"kernel {kernel[first]}, numpy {expected[first]}"
    )


def test_registers_are_the_numpy_sketch_bit_for_bit(wide: ProgramUnderTest) -> None:
    """1,000 sources per class to OWN_PORT (sketches of its own) and 1,000 others per class to
    OTHER_PORT (the class's other-ports sketch): each of the eight sketches holds exactly the
    registers of its own sources' addresses; every other sketch is empty."""
    datapath, plan = wide.datapath, wide.datapath.plan
    sent: dict[int, list[Source]] = {}
    for number, (family, proto) in enumerate(CLASSES):
        for port, offset in ((OWN_PORT, 0), (OTHER_PORT, 1)):
            first = (
                f"10.{100 + 2 * number + offset}.0.0"
                if family == 4
                else f"fd00:{100 + 2 * number + offset}::"
            )
            sketch = plan.sketch_id(family, proto, port)
            if sketch is None:
                sketch = sketch_class(family, proto)
            sent[sketch] = [Source(a, port, proto) for a in addresses(first, 1000)]
    assert sorted(sent)[:4] == [0, 1, 2, 3]  # the TCP and UDP classes' other-ports sketches
    assert len(sent) == 8

    tick_before = tick_of(datapath.clock.now_ns())
    delta = wide.send(s.frame for sources in sent.values() for s in sources)
    tick_after = tick_of(datapath.clock.now_ns())
    assert delta["recorded_new"] + delta["insert_failed"] == 8000

    union = window_union(wide)
    for sketch, sources in sent.items():
        expected = registers(hashes_of(sources))
        assert np.array_equal(union.registers[sketch], expected), (
            f"sketch {sketch} ({sources[0].family}, {sources[0].proto}, port "
            f"{sources[0].port}): {differing(union.registers[sketch], expected)}"
        )
    for sketch in set(range(plan.sketches)) - set(sent):
        assert not union.registers[sketch].any(), f"sketch {sketch} saw sources"

    slots = datapath.read_sketches()
    used = np.flatnonzero(slots["tick"])
    assert {int(i) // RING for i in used} == set(sent)
    assert all(tick_before <= int(slots["tick"][i]) <= tick_after for i in used)
    assert delta["sketch_ticks"] == len(used), "every slot is cleared once for its tick"
    # a sketch is marked lossy exactly when the table gave up one of its sources
    assert bool(union.lost.any()) == bool(delta["evicted"] + delta["insert_failed"])


def test_the_estimate_of_20000_sources(wide: ProgramUnderTest) -> None:
    """20,000 IPv4 UDP sources to OWN_PORT, all kept by the table: the count is exact, the
    sketch's estimate within 3 %, equal to the estimate of the numpy sketch; the fleet
    registers are the same addresses' sketch at p = 12."""
    datapath, plan = wide.datapath, wide.datapath.plan
    candidates = [Source(a, OWN_PORT) for a in addresses("10.110.0.0", 26_000)]
    sources = spread(candidates, wide.default_ifindex, datapath.sets, WAYS)[:20_000]
    assert len(sources) == 20_000
    delta = wide.send(s.frame for s in sources)
    assert {name: delta[name] for name in only("recorded")} == only("recorded_new", 20_000)
    assert delta["evicted"] == 0

    union = window_union(wide)
    counts = SketchCounts.of(union, plan, [OWN_PORT])
    label = (4, UDP, OWN_PORT)
    assert counts.exact[label] is True
    assert counts.estimates[label] == pytest.approx(20_000, rel=ESTIMATE_TOLERANCE)
    hashes = hashes_of(sources)
    assert counts.estimates[label] == estimate(registers(hashes))
    assert np.array_equal(counts.fleet[label], registers(hashes, FLEET_P))
    assert set(counts.fleet) == {label}, "fleet registers only for the port's sketch that saw any"


def test_a_known_source_enters_the_sketch_on_its_first_frame_of_a_tick(
    wide: ProgramUnderTest,
) -> None:
    """Entries placed in the table, one last seen in the previous tick (2**33 ns), one in this
    tick: a frame of each is counted in its entry (recorded), and only the first goes into the
    sketch; the hot path of a source known in this tick leaves the sketch alone."""
    datapath = wide.datapath
    tick_ns = 1 << TICK_SHIFT
    # Far enough from the tick's end that both frames are sent within it.
    now = wait_for(
        lambda: (t := datapath.clock.now_ns()) % tick_ns < tick_ns - 2_000_000_000 and t,
        timeout=3,
        what="two seconds left in the sketch's tick",
    )
    earlier, this = Source("10.111.0.2", OWN_PORT), Source("10.111.0.3", OWN_PORT)
    values = np.zeros(2, VALUE_DTYPE)
    values["first_seen"] = now - tick_ns
    values["last_seen"] = [now - tick_ns, now]
    values["packets"] = 1
    values["bytes"] = earlier.frame.ip_length
    keys = key_array([wide.key(earlier), wide.key(this)])
    assert place(datapath.table_words(), keys, values) == 2

    started = time.monotonic()
    delta = wide.send([earlier.frame, this.frame])
    assert tick_of(datapath.clock.now_ns()) == tick_of(now), (
        f"the tick ended within {time.monotonic() - started:.3f} s"
    )
    assert {name: delta[name] for name in only("recorded")} == only("recorded", 2)
    union = window_union(wide)
    sketch = datapath.plan.sketch_id(4, UDP, OWN_PORT)
    expected = registers(hashes_of([earlier]))
    assert np.array_equal(union.registers[sketch], expected), differing(
        union.registers[sketch], expected
    )
