"""Kernel tests: the XDP program compiled once per test module, run with BPF_PROG_TEST_RUN.

Compiling takes most of a second, so each module shares one DataPath (capacity CAPACITY); the
`program` fixture gives every test an empty sources map and every-port filter, and stats are
compared as deltas around each frame, so tests never see each other's counts.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.config import PortFilter

from .program import ProgramUnderTest

CAPACITY = 64


@pytest.fixture(scope="module")
def datapath() -> Iterator[DataPath]:
    """One compiled program per module. Tests using it are marked root, and the root check in
    tests/conftest.py runs before fixtures are set up, so a non-root run never gets here."""
    datapath = DataPath(CAPACITY)
    try:
        datapath.set_ports(PortFilter.all())
        yield datapath
    finally:
        datapath.close()


@pytest.fixture
def program(require_root: None, datapath: DataPath) -> ProgramUnderTest:
    """The module's program with every port watched and an empty sources map."""
    datapath.set_ports(PortFilter.all())
    under_test = ProgramUnderTest(datapath, default_ifindex=socket.if_nametoindex("lo"))
    under_test.clear()
    return under_test
