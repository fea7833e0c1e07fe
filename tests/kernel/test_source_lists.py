"""The source lists (exclude_sources, include_sources): longest-prefix-match tries in the kernel.
An excluded source is never recorded (outcome excluded), whatever the include list says; with an
include list only its sources are (outcome not_included for the others); both are rewritten
in place by DataPath.configure, as a reload does."""

from __future__ import annotations

import errno
import ipaddress

import numpy as np
import pytest

from tests.support import frames as f
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.bpf import KernelRefused
from xdp_ip_counter.config import PortFilter, parse_sources
from xdp_ip_counter.layout import SECONDARY, SET_WORDS, WAYS

from .program import ProgramUnderTest, SourceKey

pytestmark = pytest.mark.root


def nets(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return parse_sources(text, "test")


def outcome_of(program: ProgramUnderTest, source: str) -> str:
    """Send one TCP frame to port 22 from source; the one outcome it counted."""
    frame = f.v4_tcp(source, 22) if ":" not in source else f.v6_tcp(source, 22)
    delta = program.run(frame).stats_delta
    (outcome,) = [name for name, count in delta.items() if count]
    assert delta[outcome] == 1
    return outcome


def key(program: ProgramUnderTest, source: str) -> SourceKey:
    return program.key_v6(source, 22) if ":" in source else program.key_v4(source, 22)


def recorded(program: ProgramUnderTest) -> set[str]:
    return {
        str(ipaddress.ip_address(k.addr).ipv4_mapped or ipaddress.ip_address(k.addr))
        for k in program.sources()
    }


def test_exclude_list(program: ProgramUnderTest) -> None:
    program.watch(PortFilter.all(), exclude_sources=nets("10.0.0.0/8,192.0.2.7,2001:db8::/32"))
    assert outcome_of(program, "10.1.2.3") == "excluded"
    assert outcome_of(program, "10.255.255.255") == "excluded"
    assert outcome_of(program, "192.0.2.7") == "excluded"
    assert outcome_of(program, "2001:db8:ffff::1") == "excluded"
    assert outcome_of(program, "11.0.0.1") == "recorded_new"
    assert outcome_of(program, "192.0.2.8") == "recorded_new"
    assert outcome_of(program, "9.255.255.255") == "recorded_new"
    assert outcome_of(program, "2001:db9::1") == "recorded_new"
    assert recorded(program) == {"11.0.0.1", "192.0.2.8", "9.255.255.255", "2001:db9::1"}


def test_include_list(program: ProgramUnderTest) -> None:
    program.watch(PortFilter.all(), include_sources=nets("10.0.0.0/8,2001:db8::/32"))
    assert outcome_of(program, "10.1.2.3") == "recorded_new"
    assert outcome_of(program, "11.0.0.1") == "not_included"
    assert outcome_of(program, "2001:db8::5") == "recorded_new"
    assert outcome_of(program, "2001:db9::5") == "not_included"
    assert recorded(program) == {"10.1.2.3", "2001:db8::5"}


def test_a_prefix_never_matches_a_source_of_the_other_family(program: ProgramUnderTest) -> None:
    """0.0.0.0/0 is every IPv4 source and no IPv6 one, not even an IPv6 packet from an
    IPv4-mapped address (stored as an IPv4 source is, with family 6); ::/0 is every IPv6
    source and no IPv4 one."""
    program.watch(PortFilter.all(), exclude_sources=nets("0.0.0.0/0"))
    assert outcome_of(program, "203.0.113.9") == "excluded"
    assert outcome_of(program, "fd00:70::1") == "recorded_new"
    assert outcome_of(program, "::203.0.113.9") == "recorded_new"  # IPv4-compatible: IPv6
    assert outcome_of(program, "::ffff:203.0.113.9") == "recorded_new"  # IPv4-mapped: IPv6
    program.watch(PortFilter.all(), exclude_sources=nets("::/0"))
    assert outcome_of(program, "fd00:70::2") == "excluded"
    assert outcome_of(program, "::ffff:203.0.113.10") == "excluded"
    assert outcome_of(program, "203.0.113.10") == "recorded_new"


def test_exclude_wins_over_include_both_ways_of_overlapping(program: ProgramUnderTest) -> None:
    """An exclusion inside an inclusion, and an inclusion inside an exclusion: excluded both."""
    program.watch(
        PortFilter.all(),
        include_sources=nets("10.0.0.0/8,172.16.5.0/24,2001:db8::/32"),
        exclude_sources=nets("10.1.0.0/16,172.16.0.0/12,2001:db8:1::/48"),
    )
    assert outcome_of(program, "10.1.2.3") == "excluded"  # excluded /16 inside included /8
    assert outcome_of(program, "10.2.0.1") == "recorded_new"
    assert outcome_of(program, "172.16.5.9") == "excluded"  # included /24 inside excluded /12
    assert outcome_of(program, "172.17.0.1") == "excluded"
    assert outcome_of(program, "192.168.0.1") == "not_included"
    assert outcome_of(program, "2001:db8:1::9") == "excluded"
    assert outcome_of(program, "2001:db8:2::9") == "recorded_new"
    assert recorded(program) == {"10.2.0.1", "2001:db8:2::9"}


def test_a_known_source_becomes_excluded_on_reload(program: ProgramUnderTest) -> None:
    """The lists apply to every frame, not only to new sources: once excluded, a source's entry
    is no longer counted (and leaves the table with the window)."""
    assert outcome_of(program, "10.71.0.2") == "recorded_new"
    assert outcome_of(program, "10.71.0.2") == "recorded"
    program.watch(PortFilter.all(), exclude_sources=nets("10.71.0.0/24"))
    assert outcome_of(program, "10.71.0.2") == "excluded"
    assert program.counts() == {key(program, "10.71.0.2"): (2, 80)}


def test_reload_rewrites_the_lists_in_place(program: ProgramUnderTest) -> None:
    """What a list no longer holds is gone from its trie; what it gained is there; an include
    list emptied records everyone again."""
    program.watch(
        PortFilter.all(),
        exclude_sources=nets("10.72.1.0/24,10.72.2.0/24"),
        include_sources=nets("10.72.0.0/16"),
    )
    assert outcome_of(program, "10.72.1.1") == "excluded"
    assert outcome_of(program, "10.72.2.1") == "excluded"
    assert outcome_of(program, "10.72.3.1") == "recorded_new"
    assert outcome_of(program, "10.73.0.1") == "not_included"

    program.watch(
        PortFilter.all(),
        exclude_sources=nets("10.72.2.0/24,10.72.3.0/24"),
        include_sources=nets("10.72.0.0/16,10.73.0.0/16"),
    )
    assert outcome_of(program, "10.72.1.1") == "recorded_new"  # no longer excluded
    assert outcome_of(program, "10.72.2.1") == "excluded"
    assert outcome_of(program, "10.72.3.1") == "excluded"  # newly excluded
    assert outcome_of(program, "10.73.0.1") == "recorded_new"  # newly included
    assert outcome_of(program, "10.74.0.1") == "not_included"

    program.watch(PortFilter.all())  # both lists emptied
    assert outcome_of(program, "10.72.2.1") == "recorded_new"  # excluded until now
    assert outcome_of(program, "10.72.3.1") == "recorded"  # its entry from before
    assert outcome_of(program, "10.74.0.1") == "recorded_new"
    assert program.datapath.source_lists == {
        "exclude_sources": frozenset(),
        "include_sources": frozenset(),
    }


@pytest.mark.parametrize("family", [4, 6])
def test_every_prefix_length(program: ProgramUnderTest, family: int) -> None:
    """A prefix of each length excludes the addresses inside it and none outside: the address
    with the prefix's last bit flipped is outside."""
    bits = 32 if family == 4 else 128
    base = ipaddress.ip_address("10.75.200.129" if family == 4 else "2001:db8:7500::8001:4000:81")
    for length in range(1, bits + 1):
        network = ipaddress.ip_network(f"{base}/{length}", strict=False)
        program.watch(PortFilter.all(), exclude_sources=(network,))
        outside = ipaddress.ip_address(int(base) ^ (1 << (bits - length)))
        assert outcome_of(program, str(base)) == "excluded", network
        assert outcome_of(program, str(outside)) != "excluded", (network, outside)
        program.clear()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (  # the include list grows, an exclusion moves
            {"include_sources": "10.80.0.0/16", "exclude_sources": "10.80.9.0/24"},
            {"include_sources": "10.80.0.0/16,10.81.0.0/16", "exclude_sources": "10.80.8.0/24"},
        ),
        ({"include_sources": "10.80.1.0/24"}, {}),  # the include list goes
        ({}, {"include_sources": "10.80.1.0/24", "exclude_sources": "10.80.2.0/24"}),  # comes
        (  # the include list is replaced by another that still has the source
            {"include_sources": "10.80.0.0/16"},
            {"include_sources": "10.80.1.1,10.99.0.0/16"},
        ),
    ],
    ids=["grow-and-move", "include-goes", "lists-come", "include-replaced"],
)
def test_a_source_kept_by_a_reload_is_recorded_at_every_step_of_it(
    program: ProgramUnderTest, monkeypatch: pytest.MonkeyPatch, before: dict, after: dict
) -> None:
    """DataPath.configure rewrites the tries and the filter in several writes; after each of
    them, a source both configurations record is recorded (never excluded or not included in
    between), and so is ICMP's echo request, recorded by both."""
    icmp = (6, 17, 1)
    program.watch(PortFilter.of({22}), protocols=icmp, **{k: nets(v) for k, v in before.items()})
    assert outcome_of(program, "10.80.1.1") == "recorded_new"
    datapath = program.datapath
    steps: list[tuple[str, str, str]] = []

    def check(step: str) -> None:
        ping = program.run(f.v4_proto("10.80.1.1", "icmp", 8)).stats_delta
        steps.append((step, outcome_of(program, "10.80.1.1"), *[k for k, v in ping.items() if v]))

    real_filter, real_list = datapath._write_filter, datapath._write_list
    monkeypatch.setattr(datapath, "_write_filter", lambda *a: (real_filter(*a), check("filter")))
    monkeypatch.setattr(datapath, "_write_list", lambda *a: (real_list(*a), check("list")))
    program.watch(
        PortFilter.of({22, 80}), protocols=(6, 1), **{k: nets(v) for k, v in after.items()}
    )
    assert len(steps) >= 4  # two list writes each way and at least the new filter
    for step, tcp, ping in steps:
        assert tcp == "recorded", (step, steps)
        assert ping in ("recorded", "recorded_new"), (step, steps)


def test_known_sources_are_judged_again_after_every_rewrite_of_the_lists(
    program: ProgramUnderTest,
) -> None:
    """A known source is counted without asking the lists until they are rewritten; then its
    next frame asks them again, in whichever of its two sets it lives: 150 sources in a table
    of 256 slots (many in their alternate set). A rewrite that keeps them: each still counted
    in its entry (recorded, not recorded_new); one that drops them from the include list: not
    included, their entries as they were; a rewrite that lets them in again: counted again."""
    sources = [f"10.90.{n // 200}.{n % 200 + 1}" for n in range(150)]
    frames = [f.v4_tcp(source, 22) for source in sources]
    program.watch(PortFilter.all(), include_sources=nets("10.90.0.0/16"))
    assert program.send(frames)["recorded_new"] == 150
    table = program.counts()
    assert len(table) == 150
    tags = program.datapath.table_words().reshape(-1, SET_WORDS)[:, :WAYS]
    assert ((tags & np.uint64(SECONDARY)) != 0).sum() >= 20  # in their alternate set
    program.watch(PortFilter.all(), include_sources=nets("10.90.0.0/16,10.91.0.0/16"))
    assert program.send(frames)["recorded"] == 150
    assert program.counts() == {k: (2, 80) for k in table}
    program.watch(PortFilter.all(), include_sources=nets("10.91.0.0/16"))
    delta = program.send(frames, repeat=2)
    assert delta["not_included"] == 300 and delta["recorded"] == delta["recorded_new"] == 0
    assert program.counts() == {k: (2, 80) for k in table}
    program.watch(PortFilter.all())
    assert program.send(frames)["recorded"] == 150
    assert program.counts() == {k: (3, 120) for k in table}


def test_a_prefix_the_kernel_refuses_leaves_both_lists_and_the_filter_as_they_were(
    program: ProgramUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The include list's second new prefix fails (as an out-of-memory insert would): the
    exclude list's three new prefixes and the include list's first are taken out again,
    nothing else is written, and KernelRefused names the list and the prefix."""
    before = {
        "exclude_sources": nets("10.95.1.0/24"),
        "include_sources": nets("10.95.0.0/16"),
    }
    program.watch(PortFilter.all(), **before)
    datapath = program.datapath
    state = (datapath.filter, dict(datapath.source_lists))
    tries = {datapath.table(name).fd for name in before}
    real, inserts = bpf_syscall.map_update, []

    def failing(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
        if fd in tries:
            inserts.append(key)
            if len(inserts) == 5:  # after three exclude prefixes and one include prefix
                raise bpf_syscall.BPFSyscallError(errno.ENOMEM, "bpf(MAP_UPDATE_ELEM)")
        real(fd, key, value, flags)

    monkeypatch.setattr(bpf_syscall, "map_update", failing)
    with pytest.raises(KernelRefused, match=r"include_sources: the kernel refused prefix 10\.9"):
        program.watch(
            PortFilter.of({22}),
            exclude_sources=nets("10.95.1.0/24,10.95.2.0/24,10.95.3.0/24,10.95.4.0/24"),
            include_sources=nets("10.95.0.0/16,10.96.0.0/16,10.97.0.0/16"),
        )
    monkeypatch.setattr(bpf_syscall, "map_update", real)
    assert (datapath.filter, datapath.source_lists) == state
    assert outcome_of(program, "10.95.1.1") == "excluded"
    assert outcome_of(program, "10.95.2.1") == "recorded_new"  # not excluded: taken out again
    assert outcome_of(program, "10.95.4.1") == "recorded_new"
    assert outcome_of(program, "10.96.0.1") == "not_included"  # not included: taken out again
    frame = f.v4_udp("10.95.5.1", 5353)  # every port still watched: the filter as it was
    assert program.run(frame).stats_delta["recorded_new"] == 1
