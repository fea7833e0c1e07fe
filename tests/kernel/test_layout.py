"""The Python mirror of the kernel's layouts (xdp_ip_counter/layout.py) against the program:
the ctypes types bcc generates from the compiled C, and the outcome enum in the source."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import numpy as np
import pytest

from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.layout import KEY_DTYPE, OUTCOMES, VALUE_DTYPE

from .conftest import CAPACITY

pytestmark = pytest.mark.root

# enum outcome, struct source_key and struct port_filter: shared by the program and the
# benchmark's prototypes.
OUTCOME_SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "source_key.h"


def _ctypes_layout(struct_type: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    return [
        (name, getattr(struct_type, name).offset, getattr(struct_type, name).size)
        for name, *_ in struct_type._fields_
    ]


def _numpy_layout(dtype: np.dtype) -> list[tuple[str, int, int]]:
    assert dtype.names is not None
    return [(name, dtype.fields[name][1], dtype.fields[name][0].itemsize) for name in dtype.names]


@pytest.mark.parametrize(
    ("table", "part", "dtype"), [("sources", "Key", KEY_DTYPE), ("sources", "Leaf", VALUE_DTYPE)]
)
def test_dtypes_match_bccs_ctypes(
    datapath: DataPath, table: str, part: str, dtype: np.dtype
) -> None:
    struct_type = getattr(datapath.table(table), part)
    assert ctypes.sizeof(struct_type) == dtype.itemsize
    assert _numpy_layout(dtype) == _ctypes_layout(struct_type)


def test_dtypes_are_little_endian_like_this_machine() -> None:
    assert np.little_endian, "KEY_DTYPE/VALUE_DTYPE hard-code '<': big-endian hosts need a change"
    for dtype in (KEY_DTYPE, VALUE_DTYPE):
        for name in dtype.names or ():
            assert dtype.fields[name][0].byteorder in "<|=", name


def _enum_outcome() -> list[str]:
    source = OUTCOME_SOURCE.read_text()
    match = re.search(r"enum outcome\s*\{(.*?)\};", source, re.S)
    assert match, "enum outcome not found in bpf/source_key.h"
    names = []
    for position, item in enumerate(re.findall(r"OUTCOME_\w+(?:\s*=\s*\w+)?", match.group(1))):
        name, _, value = (part.strip() for part in item.partition("="))
        if value:
            assert int(value, 0) == position, f"{name} = {value} is not its position"
        names.append(name)
    return names


def test_outcomes_match_the_enum_in_the_c_source() -> None:
    names = _enum_outcome()
    assert names[-1] == "OUTCOME_MAX"
    assert tuple(name.removeprefix("OUTCOME_").lower() for name in names[:-1]) == OUTCOMES


def test_map_sizes(datapath: DataPath) -> None:
    assert datapath.table("stats").max_entries == len(OUTCOMES)
    assert datapath.table("sources").max_entries == CAPACITY
    assert datapath.table("port_filter").max_entries == 1
    assert set(datapath.read_stats()) == set(OUTCOMES)
