"""Kernel tests: the XDP program compiled once per test module, run with BPF_PROG_TEST_RUN.

Compiling takes most of a second, so each module shares one DataPath (capacity CAPACITY: 32 sets
of 8 slots, one block); the `program` fixture gives every test an empty table and sketches and the
every-port filter with a window of WINDOW seconds, and stats are compared as deltas around each
frame, so tests never see each other's counts.

The tests of the table, the sketches and pinning share two more programs for the whole session,
emptied and configured the same way for every test: `wide` (room for every source a test sends;
OWN_PORT has sketches of its own; six blocks of sets) and `small` (room for 4096 entries, for
floods; a power of two of sets; FLOODED_PORT, QUIET_PORT and OWN_PORT have sketches of their
own, OWN_PORT's at other ids than in `wide`).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.sketch import SketchPlan

from .program import WINDOW, ProgramUnderTest

CAPACITY = 128  # 32 sets of 8 ways (table.sets_for): 256 slots, 16 alternates for a set
WIDE_CAPACITY = 65536  # 12,288 sets: six blocks of table.BLOCK_SETS
SMALL_CAPACITY = 4096  # 1024 sets, a power of two below a block
OWN_PORT = 4242
FLOODED_PORT = 1053
QUIET_PORT = 2053


def _under_test(datapath: DataPath) -> ProgramUnderTest:
    under_test = ProgramUnderTest(datapath, default_ifindex=socket.if_nametoindex("lo"))
    under_test.watch(PortFilter.all())
    under_test.clear()
    return under_test


@pytest.fixture(scope="module")
def datapath() -> Iterator[DataPath]:
    """One compiled program per module. Tests using it are marked root, and the root check in
    tests/conftest.py runs before fixtures are set up, so a non-root run never gets here."""
    datapath = DataPath(CAPACITY)
    try:
        datapath.configure(PortFilter.all(), WINDOW)
        yield datapath
    finally:
        datapath.close()


@pytest.fixture
def program(require_root: None, datapath: DataPath) -> ProgramUnderTest:
    """The module's program with every port watched and an empty table."""
    return _under_test(datapath)


@pytest.fixture(scope="session")
def wide_datapath() -> Iterator[DataPath]:
    datapath = DataPath(WIDE_CAPACITY, SketchPlan.initial([OWN_PORT], []))
    try:
        yield datapath
    finally:
        datapath.close()


@pytest.fixture(scope="session")
def small_datapath() -> Iterator[DataPath]:
    plan = SketchPlan.initial([FLOODED_PORT, QUIET_PORT, OWN_PORT], [])
    datapath = DataPath(SMALL_CAPACITY, plan)
    try:
        yield datapath
    finally:
        datapath.close()


@pytest.fixture
def wide(require_root: None, wide_datapath: DataPath) -> ProgramUnderTest:
    """The session's wide program, every port watched, the table and sketches empty."""
    return _under_test(wide_datapath)


@pytest.fixture(params=["store", "exchange"])
def wide_publishing(
    request: pytest.FixtureRequest, require_root: None, wide_datapath: DataPath
) -> Iterator[ProgramUnderTest]:
    """The wide program publishing a new slot's tag as the loader builds it here (a plain
    store on x86), then built to publish with an atomic exchange (as on machines whose stores
    may be seen out of order: -DORDERED_STORES=0)."""
    if request.param == "store":
        yield _under_test(wide_datapath)
        return
    datapath = DataPath(
        WIDE_CAPACITY, SketchPlan.initial([OWN_PORT], []), defines={"ORDERED_STORES": "0"}
    )
    try:
        yield _under_test(datapath)
    finally:
        datapath.close()


@pytest.fixture
def small(require_root: None, small_datapath: DataPath) -> ProgramUnderTest:
    """The session's small program, every port watched, the table and sketches empty."""
    return _under_test(small_datapath)
