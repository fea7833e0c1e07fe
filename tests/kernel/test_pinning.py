"""Pinning (xdp_ip_counter/pinning.py): restore_and_pin carries the live entries and the sketch
rings of the maps pinned by one DataPath into another's, also of another capacity and with the
port's sketch at other ids, where the kernel then finds them; an entry older than the window
stays behind; a table pinned by layout 2 (sources_v2: one set per key) is carried over the same
way and its pin removed; a pinned map of another layout is replaced with a log line, not
misread.

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
from xdp_ip_counter.bpf import MappedArray
from xdp_ip_counter.layout import (
    ESTABLISHED,
    RING,
    SET_DTYPE,
    SKETCH_SLOT_DTYPE,
    STAMP_MASK,
    STAMP_SHIFT,
    VALUE_DTYPE,
    WAYS,
)
from xdp_ip_counter.pinning import PINNED, SKETCH_OF_PORT, SKETCHES, SOURCES, restore_and_pin
from xdp_ip_counter.sketch import CLASSES, sketch_class
from xdp_ip_counter.table import key_hash, place

from .conftest import OWN_PORT
from .program import (
    TCP,
    UDP,
    WINDOW,
    ProgramUnderTest,
    Source,
    SourceValue,
    addresses,
    key_array,
    only,
    source_key,
    within_reach,
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
    """wide (12,288 sets; OWN_PORT's sketches at ids 4..7) pins its maps; small (1024 sets; the
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
    # Wherever the kernel (wide) or table.place (small, then wide again) puts them, no set of
    # either table gets more than WAYS of them (in wide's, the stale entry counted too).
    in_reach = within_reach([stale, *candidates], wide.default_ifindex, wide.datapath.sets, WAYS)
    assert in_reach[0] == stale
    sources = within_reach(in_reach[1:], wide.default_ifindex, small.datapath.sets, WAYS)
    sent = wide.send(s.frame for s in sources)
    wide.send(s.frame for s in sources[::3])  # some established
    assert sent["recorded_new"] == len(sources)
    assert sent["evicted"] == 0
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
    # as small pins them: those frames fill a new tick's slot if a tick (8.6 s) began meanwhile
    pinned_rings = {label: ring(small, sketch_of(small, *label)) for label in rings}

    wide.clear()
    assert restore_and_pin(pin_dir, wide.datapath, WINDOW) == len(sources)
    assert wide.sources() == after
    for label, expected in pinned_rings.items():
        got = ring(wide, sketch_of(wide, *label))
        for field in ("tick", "lost", "reg"):
            assert np.array_equal(got[field], expected[field]), (label, field)
    assert pinned_info(pin_dir / SOURCES).max_entries == wide.datapath.sets


def test_pinned_maps_of_another_layout_are_replaced_not_read(
    wide: ProgramUnderTest, pin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sources table of this layout's name but the wrong value size, a sketches_v2 of the
    wrong type and an older version's sources_v1: the first two are replaced (logged, nothing
    read from them), the last removed (logged); the program counts as usual."""
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


# Layout 2's table: one set per key (the top bits of its hash), 576-byte sets as now, tag word
# (the hash's low 32 bits | 1) << 32 | ESTABLISHED | stamp: bit 1 was part of the tag hash.
LAYOUT_2_SOURCES = "sources_v2"
LAYOUT_2_SETS = 512  # what layout 2 made for 4096 entries
BPF_F_MMAPABLE = 1 << 10


def pin_layout_2_table(path: Path, slots: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Pin at path a table as layout 2 wrote it, holding these (key, value) slots: each in the
    set of its key's top hash bits, in the next way of that set (a key given twice is in two
    slots, as two CPUs claiming it at once left it)."""
    subprocess.run(
        ["bpftool", "map", "create", str(path), "type", "array", "key", "4",
         "value", str(SET_DTYPE.itemsize), "entries", str(LAYOUT_2_SETS), "name", "sources",
         "flags", str(BPF_F_MMAPABLE)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    fd = bpf_syscall.obj_get(str(path))
    try:
        mapped = MappedArray(fd, SET_DTYPE.itemsize, LAYOUT_2_SETS)
    finally:
        os.close(fd)
    try:
        table = mapped.words(np.uint64).view(SET_DTYPE)
        set_bits = LAYOUT_2_SETS.bit_length() - 1
        used = np.zeros(LAYOUT_2_SETS, np.int64)
        for key, value in slots:
            hash_ = int(key_hash(key)[0])
            index = hash_ >> (64 - set_bits)
            way = int(used[index])
            assert way < WAYS, "more keys than ways in a set of the layout 2 table"
            used[index] += 1
            table["way"][index, way]["key"] = key[0]
            table["way"][index, way]["value"] = value
            established = ESTABLISHED if int(value["packets"]) > 1 else 0
            stamp = (int(value["last_seen"]) >> STAMP_SHIFT) & STAMP_MASK
            table["tag"][index, way] = ((hash_ & 0xFFFF_FFFF) | 1) << 32 | established | stamp
        del table
    finally:
        mapped.close()


def test_a_table_pinned_by_layout_2_is_carried_over_and_its_pin_removed(
    wide: ProgramUnderTest, pin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A table pinned as sources_v2 by layout 2 (one set per key; about half of the tag words
    with bit 1 set, which layout 3 reads as SECONDARY), holding live entries, one key twice (in
    two slots of its set, as a race left it) and an entry older than the new window: the live
    entries are carried into the new table (the key in two slots as one entry, its counts
    added), where the kernel finds them; the old entry stays behind; sources_v2 is removed
    (logged) and the new table pinned under its own name."""
    pin_dir.mkdir(parents=True)
    now = wide.datapath.clock.now_ns()
    old = 3 * CARRY_WINDOW * 1_000_000_000
    assert now > old, "the machine has been up for less than 30 s"
    candidates = []  # every class, to OWN_PORT and OTHER_PORT
    for first in ("10.122.0.0", "fd00:122::"):
        for n, address in enumerate(addresses(first, 300)):
            candidates.append(
                Source(address, (OWN_PORT, OTHER_PORT)[n % 2], (UDP, TCP)[n // 2 % 2])
            )
    stale = Source("10.122.9.9", OWN_PORT)
    # at most WAYS - 2 keys per set of the layout 2 table (room for the doubled key's second
    # slot and the stale entry), and within reach of WAYS in the new one: every live entry
    # fits wherever table.place puts it
    in_reach = within_reach([stale, *candidates], wide.default_ifindex, wide.datapath.sets, WAYS)
    assert in_reach[0] == stale
    top = LAYOUT_2_SETS.bit_length() - 1
    per_set = np.zeros(LAYOUT_2_SETS, np.int64)
    sources = []
    for source in in_reach[1:]:
        index = int(key_hash(key_array([wide.key(source)]))[0]) >> (64 - top)
        if per_set[index] < WAYS - 2:
            per_set[index] += 1
            sources.append(source)
    doubled = sources[0]

    def value(first_seen: int, last_seen: int, packets: int, source: Source) -> np.ndarray:
        row = np.zeros(1, VALUE_DTYPE)
        row[0] = (first_seen, last_seen, packets, packets * source.frame.ip_length)
        return row[0]

    slots, expected = [], {}
    for n, source in enumerate(sources):
        packets = 1 + n % 3
        first_seen, last_seen = now - 5_000_000 - n, now - n % 7 * 1_000_000
        slots.append((key_array([wide.key(source)]), value(first_seen, last_seen, packets, source)))
        expected[wide.key(source)] = (first_seen, last_seen, packets)
    first_seen, last_seen, packets = expected[wide.key(doubled)]
    slots.append(  # the race's second slot: earlier first seen, later last seen
        (key_array([wide.key(doubled)]), value(first_seen - 7, last_seen + 9, 2, doubled))
    )
    expected[wide.key(doubled)] = (first_seen - 7, last_seen + 9, packets + 2)
    slots.append((key_array([wide.key(stale)]), value(now - old, now - old, 4, stale)))
    pin_layout_2_table(pin_dir / LAYOUT_2_SOURCES, slots)
    hashes = key_hash(key_array([wide.key(s) for s in sources]))
    bit_1 = int(np.count_nonzero(hashes & np.uint64(2)))
    assert 0 < bit_1 < len(sources), "tag words of layout 2 with and without bit 1"

    caplog.set_level(logging.INFO, logger="xdp_ip_counter.pinning")
    carried = restore_and_pin(pin_dir, wide.datapath, CARRY_WINDOW)
    assert carried == len(sources)
    assert f"removing {pin_dir / LAYOUT_2_SOURCES}" in caplog.text
    assert sorted(p.name for p in pin_dir.iterdir()) == sorted(PINNED)
    assert pinned_info(pin_dir / SOURCES) == bpf_syscall.MapInfo(
        BPF_MAP_TYPE_ARRAY, 4, SET_DTYPE.itemsize, wide.datapath.sets
    )
    lengths = {wide.key(s): s.frame.ip_length for s in sources}
    assert wide.sources() == {
        key: SourceValue(first_seen, last_seen, packets, packets * lengths[key])
        for key, (first_seen, last_seen, packets) in expected.items()
    }
    assert wide.key(stale) not in raw_keys(wide)

    delta = wide.send(s.frame for s in sources)
    assert {name: delta[name] for name in only("recorded")} == only("recorded", len(sources))
    assert delta["evicted"] == 0
    after = wide.sources()
    assert {key: after[key].packets for key in after} == {
        key: packets + 1 for key, (_, _, packets) in expected.items()
    }
