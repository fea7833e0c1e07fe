"""Every truncation of valid frames: each cut from 14 bytes to the full frame returns XDP_PASS,
counts exactly one outcome, and records the source only once the full L4 header is present
(TCP: data offset * 4 bytes, options included; UDP: 8 bytes)."""

from __future__ import annotations

import errno
from typing import NamedTuple

import pytest

from tests.support import frames as f

from .program import TCP, UDP, ProgramUnderTest, SourceKey

pytestmark = pytest.mark.root

QINQ = ((f.ETH_P_8021AD, 100), (f.ETH_P_8021Q, 200))


class Case(NamedTuple):
    name: str
    frame: f.Frame
    source: str
    port: int
    proto: int
    family: int


def _cases() -> list[Case]:
    v6_chain = (
        f.hop_by_hop(),
        f.destination_options(1),
        f.routing(1),
        f.fragment(0, True),
        f.authentication(),
    )
    return [
        Case(
            "v4-tcp-options",
            f.v4_tcp("10.30.0.2", 22, data_offset=8, payload=b"hello", ihl=7),
            "10.30.0.2",
            22,
            TCP,
            4,
        ),
        Case("v4-udp", f.v4_udp("10.30.0.3", 53, payload=b"query"), "10.30.0.3", 53, UDP, 4),
        Case(
            "v6-tcp-ext",
            f.v6_tcp("fd00:30::2", 443, data_offset=6, payload=b"tls", extensions=v6_chain),
            "fd00:30::2",
            443,
            TCP,
            6,
        ),
        Case(
            "vlan-v4-udp",
            f.v4_udp("10.30.0.4", 161, payload=b"get", vlans=((f.ETH_P_8021Q, 7),)),
            "10.30.0.4",
            161,
            UDP,
            4,
        ),
        Case(
            "qinq-v6-udp",
            f.v6_udp("fd00:30::3", 5353, payload=b"mdns", vlans=QINQ),
            "fd00:30::3",
            5353,
            UDP,
            6,
        ),
        Case("qinq-v4-tcp", f.v4_tcp("10.30.0.5", 8080, vlans=QINQ), "10.30.0.5", 8080, TCP, 4),
    ]


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_cut_from_the_ethernet_header_to_the_whole_frame(
    program: ProgramUnderTest, case: Case
) -> None:
    frame = case.frame
    key: SourceKey = (
        program.key_v4(case.source, case.port, case.proto)
        if case.family == 4
        else program.key_v6(case.source, case.port, case.proto)
    )
    recorded = 0
    for size in range(f.ETH_HLEN, len(frame) + 1):
        cut = frame.data[:size]
        if size < frame.l4_end:
            program.expect(cut, "malformed", {})
        else:
            recorded += 1
            program.expect(
                cut,
                "recorded_new" if recorded == 1 else "recorded",
                {key: (recorded, recorded * frame.ip_length)},
            )
    assert recorded == len(frame) - frame.l4_end + 1


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_cuts_shorter_than_an_ethernet_header_are_refused_by_test_run(
    program: ProgramUnderTest, case: Case
) -> None:
    frame = case.frame
    before = program.stats()
    for size in range(f.ETH_HLEN):
        with pytest.raises(OSError) as refused:
            program.run(frame.data[:size])
        assert refused.value.errno == errno.EINVAL
    assert program.stats() == before
    assert program.sources() == {}


def test_every_cut_of_an_arp_frame_is_not_ip(program: ProgramUnderTest) -> None:
    frame = f.pad_to(f.ethernet(f.ETH_P_ARP, f.arp_request()), 60)
    for size in range(f.ETH_HLEN, len(frame) + 1):
        program.expect(frame[:size], "not_ip", {})


def test_every_cut_of_a_tagged_arp_frame(program: ProgramUnderTest) -> None:
    """Within the tags: malformed; once the inner EtherType is there: not IP."""
    frame = f.ethernet(f.ETH_P_ARP, f.arp_request(), vlans=QINQ)
    for size in range(f.ETH_HLEN, len(frame) + 1):
        program.expect(frame[:size], "malformed" if size < f.ETH_HLEN + 8 else "not_ip", {})


def test_each_frame_counts_exactly_one_outcome(program: ProgramUnderTest) -> None:
    """Over all the cuts of all the frames, the stats grow by exactly the number of frames."""
    before = program.stats()
    sent = 0
    for case in CASES:
        for size in range(f.ETH_HLEN, len(case.frame) + 1):
            program.run(case.frame.data[:size])
            sent += 1
    after = program.stats()
    assert sum(after.values()) - sum(before.values()) == sent
