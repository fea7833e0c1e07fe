"""Pinning (xdp_ip_counter/pinning.py): restore_and_pin carries the live entries and the sketch
rings of the maps pinned by one DataPath into another's, also of another capacity and with the
port's sketch at other ids, where the kernel then finds them; an entry older than the window
stays behind; a pinned map of another layout is replaced with a log line, not misread.

The pins go to a directory made here under /sys/fs/bpf (bpffs mounted there for the test if it
is not), removed whatever happens.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.layout import RING, SET_DTYPE, SKETCH_SLOT_DTYPE, VALUE_DTYPE, WAYS
from xdp_ip_counter.pinning import PINNED, SKETCH_OF_PORT, SKETCHES, SOURCES, restore_and_pin
from xdp_ip_counter.sketch import CLASSES, sketch_class
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
    source_key,
    spread,
)

pytestmark = pytest.mark.root

BPFFS = Path("/sys/fs/bpf")
BPF_MAP_TYPE_ARRAY = 2
OTHER_PORT = 5353
CARRY_WINDOW = 10  # the new process's window: shorter than the entry left behind is old


def _is_bpffs(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) and line.split()[2] == "bpf"
        for line in Path("/proc/mounts").read_text().splitlines()
    )


@pytest.fixture
def pin_dir(require_root: None) -> Iterator[Path]:
    mounted_here = False
    if not _is_bpffs(BPFFS):
        subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True, timeout=30)
        mounted_here = True
    directory = BPFFS / f"xic-kernel-test-{os.getpid()}"
    assert not directory.exists(), f"{directory} is left from an earlier run"
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if mounted_here:
            subprocess.run(["umount", str(BPFFS)], check=False, timeout=30)


def pinned_info(path: Path) -> bpf_syscall.MapInfo:
    fd = bpf_syscall.obj_get(str(path))
    try:
        return bpf_syscall.map_info(fd)
    finally:
        os.close(fd)


def ring(program: ProgramUnderTest, sketch: int) -> np.ndarray:
    """A copy of one sketch's RING slots (tick, lost, registers)."""
    return program.datapath.read_sketches()[sketch * RING : (sketch + 1) * RING].copy()


def sketch_of(program: ProgramUnderTest, family: int, proto: int, port: int) -> int:
    own = program.datapath.plan.sketch_id(family, proto, port)
    return sketch_class(family, proto) if own is None else own


def raw_keys(program: ProgramUnderTest) -> set:
    """Every key in a used slot of the table, live or not."""
    table = program.datapath.table_words().reshape(-1).view(SET_DTYPE)
    return {source_key(row) for row in table["way"]["key"][table["tag"] != 0]}


def test_entries_and_sketches_are_carried_into_a_table_of_another_capacity(
    wide: ProgramUnderTest, small: ProgramUnderTest, pin_dir: Path
) -> None:
    """wide (8192 sets; OWN_PORT's sketches at ids 4..7) pins its maps; small (512 sets; the
    same port's at ids 12..15) carries them over and pins its own instead, then wide again
    from small's: the same entries each time (first and last seen, packets, bytes), found by
    the kernel where they were placed, and the same sketch rings; an entry last seen longer
    than the new window ago is left behind."""
    assert small.datapath.sets != wide.datapath.sets
    assert sketch_of(small, 4, UDP, OWN_PORT) != sketch_of(wide, 4, UDP, OWN_PORT)
    assert restore_and_pin(pin_dir, wide.datapath, WINDOW) == 0, "nothing was pinned yet"
    assert sorted(p.name for p in pin_dir.iterdir()) == sorted(PINNED)

    now = wide.datapath.clock.now_ns()
    stale = Source("10.120.9.9", OWN_PORT)
    old = 3 * CARRY_WINDOW * 1_000_000_000
    assert now > old, "the machine has been up for less than 30 s"
    values = np.zeros(1, VALUE_DTYPE)
    values[0] = (now - old, now - old, 4, 4 * stale.frame.ip_length)
    assert place(wide.datapath.table_words(), key_array([wide.key(stale)]), values) == 1

    candidates = []  # every class, to OWN_PORT and OTHER_PORT
    for first in ("10.120.0.0", "fd00:120::"):
        for n, address in enumerate(addresses(first, 400)):
            candidates.append(
                Source(address, (OWN_PORT, OTHER_PORT)[n % 2], (UDP, TCP)[n // 2 % 2])
            )
    # at most WAYS - 1 per set of the smaller table (and so of the larger): the stale entry's
    # set keeps room, and no set of either table overflows
    sources = spread(candidates, wide.default_ifindex, small.datapath.set_bits, WAYS - 1)
    sent = wide.send(s.frame for s in sources)
    wide.send(s.frame for s in sources[::3])  # some established
    assert sent["recorded_new"] == len(sources)
    before = wide.sources()
    assert wide.key(stale) in before, "the stale entry is within the first window"
    del before[wide.key(stale)]
    assert len(before) == len(sources)
    rings = {
        (family, proto, port): ring(wide, sketch_of(wide, family, proto, port))
        for family, proto in CLASSES.values()
        for port in (OWN_PORT, OTHER_PORT)
    }
    assert all(r["reg"].any() for r in rings.values()), "every sketch saw sources"

    carried = restore_and_pin(pin_dir, small.datapath, CARRY_WINDOW)
    assert carried == len(sources)
    assert small.sources() == before
    assert wide.key(stale) not in raw_keys(small)
    for label, expected in rings.items():
        got = ring(small, sketch_of(small, *label))
        for field in ("tick", "lost", "reg"):
            assert np.array_equal(got[field], expected[field]), (label, field)
    assert pinned_info(pin_dir / SOURCES).max_entries == small.datapath.sets
    assert pinned_info(pin_dir / SKETCHES).max_entries == small.datapath.plan.sketches * RING

    # where the kernel looks for them: every frame of a carried source is a known key
    delta = small.send(s.frame for s in sources)
    assert {name: delta[name] for name in only("recorded")} == only("recorded", len(sources))
    after = small.sources()
    for key, value in before.items():
        assert after[key].packets == value.packets + 1, key
        assert after[key].first_seen == value.first_seen, key

    wide.clear()
    assert restore_and_pin(pin_dir, wide.datapath, WINDOW) == len(sources)
    assert wide.sources() == after
    for label, expected in rings.items():
        got = ring(wide, sketch_of(wide, *label))
        assert np.array_equal(got["reg"], expected["reg"]), label
    assert pinned_info(pin_dir / SOURCES).max_entries == wide.datapath.sets


def test_pinned_maps_of_another_layout_are_replaced_not_read(
    wide: ProgramUnderTest, pin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sources_v2 of the wrong value size, a sketches_v2 of the wrong type and an older
    version's sources_v1: the first two are replaced (logged, nothing read from them), the
    last removed (logged); the program counts as usual."""
    pin_dir.mkdir(parents=True)
    maps = {
        SOURCES: ("array", 4, 8),
        SKETCHES: ("hash", 4, SKETCH_SLOT_DTYPE.itemsize),
        "sources_v1": ("lru_hash", 24, 32),
    }
    for name, (kind, key_size, value_size) in maps.items():
        subprocess.run(
            ["bpftool", "map", "create", str(pin_dir / name), "type", kind, "key", str(key_size),
             "value", str(value_size), "entries", "16", "name", "old_layout"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    caplog.set_level(logging.INFO, logger="xdp_ip_counter.pinning")

    assert restore_and_pin(pin_dir, wide.datapath, WINDOW) == 0
    log = caplog.text
    assert f"replacing {pin_dir / SOURCES}" in log
    assert f"replacing {pin_dir / SKETCHES}" in log
    assert f"removing {pin_dir / 'sources_v1'}" in log
    assert sorted(p.name for p in pin_dir.iterdir()) == sorted(PINNED)
    assert pinned_info(pin_dir / SOURCES) == bpf_syscall.MapInfo(
        BPF_MAP_TYPE_ARRAY, 4, SET_DTYPE.itemsize, wide.datapath.sets
    )
    assert pinned_info(pin_dir / SKETCHES) == bpf_syscall.MapInfo(
        BPF_MAP_TYPE_ARRAY, 4, SKETCH_SLOT_DTYPE.itemsize, wide.datapath.plan.sketches * RING
    )
    assert pinned_info(pin_dir / SKETCH_OF_PORT).max_entries == 65536
    assert wide.sources() == {}
    assert not wide.datapath.read_sketches()["reg"].any()
    source = Source("10.121.0.2", 22, TCP)
    wide.expect(source.frame, "recorded_new", {wide.key(source): (1, source.frame.ip_length)})
