"""The Python mirror of the kernel's layouts (xdp_ip_counter/layout.py) against the program:
the fields of the ctypes types bcc generates from the compiled C (DataPath.table: name, offset
and size of each top-level field), the constants and the outcome and event enums in the source.

The slot inside a set (SLOT_DTYPE: the value, the key) has no top-level ctypes description of
its own; test_table reads every field of it back from what the kernel wrote (keys by field, the
tag, first and last seen, packets and bytes), which a wrong offset there would fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from xdp_ip_counter import layout
from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.config import MAX_SOURCE_PREFIXES
from xdp_ip_counter.layout import (
    EVENTS,
    KEY_DTYPE,
    OUTCOMES,
    RING,
    SET_DTYPE,
    SET_WORDS,
    SKETCH_SLOT_DTYPE,
    SLOT_DTYPE,
    VALUE_DTYPE,
    WAYS,
)
from xdp_ip_counter.table import SLOTS_PER_ENTRY, sets_for

from .conftest import CAPACITY

pytestmark = pytest.mark.root

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
# enum outcome, enum event, struct source_key and struct port_filter: shared by the program and
# the benchmark's programs.
SHARED_HEADER = BPF_DIR / "source_key.h"
PROGRAM = BPF_DIR / "xdp_ip_counter.c"
BPF_F_MMAPABLE = 1 << 10


def _numpy_fields(dtype: np.dtype) -> list[tuple[str, int, int]]:
    assert dtype.names is not None
    return [(name, dtype.fields[name][1], dtype.fields[name][0].itemsize) for name in dtype.names]


@pytest.mark.parametrize(
    ("name", "dtype"), [("sources", SET_DTYPE), ("sketches", SKETCH_SLOT_DTYPE)]
)
def test_value_dtypes_match_bccs_ctypes(datapath: DataPath, name: str, dtype: np.dtype) -> None:
    compiled = datapath.table(name)
    assert compiled.value_size == dtype.itemsize
    assert list(compiled.value_fields) == _numpy_fields(dtype)
    assert compiled.key_size == 4  # arrays: an int index


def test_the_slot_and_the_set_in_words() -> None:
    """What the table's readers rely on beyond the fields: 64-byte slots (the value, then the
    key, then the source lists it was let through by), the tag line first, the set a whole
    number of 64-bit words."""
    assert _numpy_fields(SLOT_DTYPE) == [
        ("value", 0, VALUE_DTYPE.itemsize),
        ("key", VALUE_DTYPE.itemsize, KEY_DTYPE.itemsize),
        ("lists", VALUE_DTYPE.itemsize + KEY_DTYPE.itemsize, 8),
    ]
    assert SLOT_DTYPE.itemsize == 64
    assert SET_DTYPE.fields["way"][0].shape == (WAYS,)
    assert SET_DTYPE.itemsize == SET_WORDS * 8 == 8 * WAYS + 64 * WAYS


def test_port_filter_and_sketch_ids_as_the_data_path_writes_them(datapath: DataPath) -> None:
    """DataPath writes struct port_filter as words (all_ports, window_stamps, admit_per_tick,
    protocols, source_lists, 8 ICMP type words, 1024 port bitmap words), the source lists'
    keys as 24 bytes (prefix length, family, address, padding), and reads sketch_of_port as
    four uint16 ids per port."""
    port_filter = datapath.table("port_filter")
    assert list(port_filter.value_fields) == [
        ("all_ports", 0, 8),
        ("window_stamps", 8, 8),
        ("admit_per_tick", 16, 8),
        ("protocols", 24, 8),
        ("source_lists", 32, 8),
        ("icmp_types", 40, 8 * 8),
        ("bits", 104, 8 * 1024),
    ]
    for name in ("exclude_sources", "include_sources"):
        trie = datapath.table(name)
        assert trie.key_size == 24 and trie.max_entries == MAX_SOURCE_PREFIXES, name
        assert list(trie.key_fields) == [
            ("prefixlen", 0, 4),
            ("family", 4, 1),
            ("addr", 5, 16),
            ("__pad_end", 21, 3),
        ]
    ids = datapath.table("sketch_of_port")
    assert list(ids.value_fields) == [("id", 0, 8)]
    assert ids.max_entries == 65536


def test_dtypes_are_little_endian_like_this_machine() -> None:
    assert np.little_endian, "the dtypes hard-code '<': big-endian hosts need a change"

    def byte_orders(dtype: np.dtype) -> list[tuple[str, str]]:
        if dtype.names is None:
            base = dtype.subdtype[0] if dtype.subdtype else dtype
            return [(str(base), base.byteorder)]
        return [o for name in dtype.names for o in byte_orders(dtype.fields[name][0])]

    for dtype in (KEY_DTYPE, VALUE_DTYPE, SLOT_DTYPE, SET_DTYPE, SKETCH_SLOT_DTYPE):
        wrong = [(kind, order) for kind, order in byte_orders(dtype) if order not in "<|="]
        assert not wrong, (dtype, wrong)


def _enum(source: Path, name: str, prefix: str) -> list[str]:
    """The members of `enum name` in order, checking that every explicit value is its
    position (the first member may start where another enum ends: OUTCOME_MAX)."""
    match = re.search(rf"enum {name}\s*\{{(.*?)\}};", source.read_text(), re.S)
    assert match, f"enum {name} not found in {source.name}"
    body = re.sub(r"/\*.*?\*/", "", match.group(1), flags=re.S)
    names = []
    for position, item in enumerate(re.findall(r"\w+(?:\s*=\s*\w+)?", body)):
        member, _, value = (part.strip() for part in item.partition("="))
        if value and position:
            assert int(value, 0) == position, f"{member} = {value} is not its position"
        assert member.startswith(prefix) or member.endswith("_MAX"), member
        names.append(member)
    return names


def test_outcomes_match_the_enum_in_the_c_source() -> None:
    names = _enum(SHARED_HEADER, "outcome", "OUTCOME_")
    assert names[-1] == "OUTCOME_MAX"
    assert tuple(name.removeprefix("OUTCOME_").lower() for name in names[:-1]) == OUTCOMES


def test_events_follow_the_outcomes_in_the_c_source() -> None:
    source = SHARED_HEADER.read_text()
    assert re.search(r"EVENT_\w+\s*=\s*OUTCOME_MAX", source), "events must start at OUTCOME_MAX"
    names = _enum(SHARED_HEADER, "event", "EVENT_")
    assert names[-1] == "STATS_MAX"
    assert tuple(name.removeprefix("EVENT_").lower() for name in names[:-1]) == EVENTS


def _define(name: str) -> int:
    match = re.search(rf"^#define {name} (.+)$", PROGRAM.read_text(), re.M)
    assert match, f"#define {name} not found in {PROGRAM.name}"
    text = re.sub(r"/\*.*?\*/", "", match.group(1)).strip()
    text = re.sub(r"(?<=[0-9a-fA-F])U?L?L\b", "", text)
    shifted = re.fullmatch(r"\(\s*(\d+)\s*<<\s*(\d+)\s*\)", text)
    if shifted:
        return int(shifted.group(1)) << int(shifted.group(2))
    return int(text, 0)


@pytest.mark.parametrize(
    "name",
    ["WAYS", "STAMP_SHIFT", "STAMP_MASK", "ESTABLISHED", "SECONDARY", "BLOCK_SETS", "HLL_P",
     "RING", "TICK_SHIFT", "OTHER_SKETCHES", "ROOMY"],
)  # fmt: skip
def test_constants_match_the_c_source(name: str) -> None:
    """BLOCK_SETS is the C's default; DataPath compiles it with table.block_sets(sets)."""
    assert getattr(layout, name) == _define(name)


def test_map_sizes(datapath: DataPath) -> None:
    assert datapath.table("stats").max_entries == len(OUTCOMES) + len(EVENTS)
    assert datapath.table("sources").max_entries == datapath.sets == sets_for(CAPACITY)
    assert datapath.slots == datapath.sets * WAYS >= CAPACITY * SLOTS_PER_ENTRY
    assert datapath.capacity == CAPACITY
    assert datapath.table("port_filter").max_entries == 1
    assert datapath.table("sketches").max_entries == datapath.plan.sketches * RING
    for name in ("sources", "sketches", "sketch_of_port"):
        assert datapath.table(name).flags & BPF_F_MMAPABLE, f"{name} must be mmapable"
    assert set(datapath.read_stats()) == set(OUTCOMES)
    assert set(datapath.read_events()) == set(EVENTS)
