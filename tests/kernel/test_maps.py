"""The sources map as a whole: the LRU keeps to its capacity under a flood of new sources, and
expire() removes what is old without losing a hit that lands after the snapshot."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import pytest

from tests.support import frames as f
from xdp_ip_counter.bpf import BPF_F_NO_COMMON_LRU, DataPath
from xdp_ip_counter.clock import kernel_clock_ns
from xdp_ip_counter.config import PortFilter

from .conftest import CAPACITY
from .program import UDP, ProgramUnderTest, only, wait_for_clock_after

pytestmark = pytest.mark.root

FLOOD_FACTOR = 10
RECENT = 8  # the newest sources that must still be there after the flood


@pytest.fixture
def per_cpu_lru_program() -> Iterator[ProgramUnderTest]:
    datapath = DataPath(CAPACITY, lru_flags=BPF_F_NO_COMMON_LRU)
    try:
        datapath.set_ports(PortFilter.all())
        yield ProgramUnderTest(datapath, default_ifindex=socket.if_nametoindex("lo"))
    finally:
        datapath.close()


def _flood(program: ProgramUnderTest) -> None:
    sources = [str(ipaddress.IPv4Address("10.60.0.0") + n) for n in range(FLOOD_FACTOR * CAPACITY)]
    totals = dict.fromkeys(only("recorded"), 0)
    for source in sources:
        result = program.run(f.v4_udp(source, 53))
        assert result.retval == 2
        assert sum(result.stats_delta.values()) == 1
        assert result.stats_delta["recorded_new"] + result.stats_delta["insert_failed"] == 1, (
            source,
            result.stats_delta,
        )
        for name, delta in result.stats_delta.items():
            totals[name] += delta
        assert len(program.sources()) <= CAPACITY
    assert totals["recorded_new"] + totals["insert_failed"] == len(sources)
    table = program.counts()
    assert 0 < len(table) <= CAPACITY
    assert set(table.values()) == {(1, 28)}
    for source in sources[-RECENT:]:
        assert program.key_v4(source, 53, UDP) in table, f"recent source {source} was evicted"
    # and the survivors are among the sources sent
    sent = {program.key_v4(source, 53, UDP) for source in sources}
    assert set(table) <= sent


def test_lru_keeps_to_its_capacity_under_a_flood(program: ProgramUnderTest) -> None:
    _flood(program)


def test_per_cpu_lru_keeps_to_its_capacity_under_a_flood(
    per_cpu_lru_program: ProgramUnderTest,
) -> None:
    assert per_cpu_lru_program.datapath.table("sources").flags & BPF_F_NO_COMMON_LRU
    _flood(per_cpu_lru_program)


def test_expire_removes_entries_last_seen_before_the_cutoff(program: ProgramUnderTest) -> None:
    old, kept = program.key_v4("10.61.0.2", 22), program.key_v4("10.61.0.3", 22)
    program.expect(f.v4_tcp("10.61.0.2", 22), "recorded_new", {old: (1, 40)})
    cutoff = wait_for_clock_after(program.sources()[old].last_seen)
    program.expect(f.v4_tcp("10.61.0.3", 22), "recorded_new", {old: (1, 40), kept: (1, 40)})
    assert program.sources()[kept].last_seen >= cutoff

    keys, _, _ = program.datapath.read_sources()
    assert program.datapath.expire(keys, cutoff) == 1
    assert program.counts() == {kept: (1, 40)}
    # expiring keys that are gone already is not an error
    assert program.datapath.expire(keys, cutoff) == 0
    assert program.counts() == {kept: (1, 40)}


def test_entry_refreshed_after_the_snapshot_is_kept(program: ProgramUnderTest) -> None:
    """A packet between read_sources() and expire(): the entry survives with everything it
    had (first seen, packets, bytes) and its new last seen; a key that appears after the
    snapshot is not touched; the untouched old entry goes."""
    refreshed, stale = program.key_v4("10.62.0.2", 80), program.key_v6("fd00:62::2", 80, UDP)
    program.expect(f.v4_tcp("10.62.0.2", 80), "recorded_new", {refreshed: (1, 40)})
    program.expect(f.v6_udp("fd00:62::2", 80), "recorded_new", {refreshed: (1, 40), stale: (1, 48)})
    before = program.sources()
    cutoff = wait_for_clock_after(max(value.last_seen for value in before.values()))

    keys, _, snapshot_ns = program.datapath.read_sources()
    assert len(keys) == 2
    assert snapshot_ns >= cutoff
    newcomer = program.key_v4("10.62.0.3", 80)
    program.expect(f.v4_tcp("10.62.0.2", 80), "recorded", {refreshed: (2, 80), stale: (1, 48)})
    program.expect(
        f.v4_tcp("10.62.0.3", 80),
        "recorded_new",
        {refreshed: (2, 80), stale: (1, 48), newcomer: (1, 40)},
    )

    assert program.datapath.expire(keys, cutoff) == 1
    after = program.sources()
    assert set(after) == {refreshed, newcomer}
    assert after[refreshed].first_seen == before[refreshed].first_seen
    assert after[refreshed].last_seen >= cutoff
    assert (after[refreshed].packets, after[refreshed].bytes) == (2, 80)
    assert after[newcomer].first_seen >= cutoff
    assert kernel_clock_ns() >= after[refreshed].last_seen
