"""The protocols beyond TCP and UDP (issue 13): SCTP, UDP-Lite and DCCP by destination port,
ICMP and ICMPv6 by message type; which protocols are recorded (protocols) and which ICMP types
(icmp_types). Each frame: the return value, exactly one outcome, the exact table afterwards."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from tests.support import frames as f
from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.layout import (
    OTHER_SKETCH_IDS,
    PROTOCOL_NUMBERS,
    PROTOCOLS,
    RING,
)

from .program import ProgramUnderTest, SourceKey, only

pytestmark = pytest.mark.root

EVERY_PROTOCOL = tuple(PROTOCOLS)
QINQ = ((f.ETH_P_8021AD, 100), (f.ETH_P_8021Q, 200))
V6_CHAIN = (f.hop_by_hop(), f.destination_options(1), f.routing(1), f.fragment(0, True))
# Per protocol: a port, or an ICMP type that icmp_types has by default (echo request)
PORT_OF = {
    "tcp": 22,
    "udp": 53,
    "icmp": 8,
    "icmpv6": 128,
    "sctp": 3868,
    "udplite": 5004,
    "dccp": 5001,
}
V4_NAMES = [name for name in PROTOCOL_NUMBERS if name != "icmpv6"]
V6_NAMES = [name for name in PROTOCOL_NUMBERS if name != "icmp"]


class Case(NamedTuple):
    name: str
    frame: f.Frame
    source: str
    proto: int
    port: int
    family: int

    def key(self, program: ProgramUnderTest) -> SourceKey:
        if self.family == 4:
            return program.key_v4(self.source, self.port, self.proto)
        return program.key_v6(self.source, self.port, self.proto)


def _cases() -> list[Case]:
    cases = []
    for n, name in enumerate(V4_NAMES):
        port, proto = PORT_OF[name], PROTOCOL_NUMBERS[name]
        source = f"10.60.{n}.2"
        cases.append(Case(f"v4-{name}", f.v4_proto(source, name, port), source, proto, port, 4))
        cases.append(
            Case(
                f"qinq-v4-{name}-options",
                f.v4_proto(source, name, port, vlans=QINQ, ihl=6),
                source,
                proto,
                port,
                4,
            )
        )
    for n, name in enumerate(V6_NAMES):
        port, proto = PORT_OF[name], PROTOCOL_NUMBERS[name]
        source = f"fd00:60:{n}::2"
        cases.append(Case(f"v6-{name}", f.v6_proto(source, name, port), source, proto, port, 6))
        cases.append(
            Case(
                f"vlan-v6-{name}-extensions",
                f.v6_proto(source, name, port, extensions=V6_CHAIN, vlans=((f.ETH_P_8021Q, 9),)),
                source,
                proto,
                port,
                6,
            )
        )
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_protocol_is_recorded_by_port_or_icmp_type(
    program: ProgramUnderTest, case: Case
) -> None:
    program.watch(PortFilter.all(), protocols=EVERY_PROTOCOL)
    key = case.key(program)
    program.expect(case.frame, "recorded_new", {key: (1, case.frame.ip_length)})
    program.expect(case.frame, "recorded", {key: (2, 2 * case.frame.ip_length)})


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_cut_records_only_once_the_whole_header_is_there(
    program: ProgramUnderTest, case: Case
) -> None:
    """Each header is checked whole before it is read: SCTP's 12-byte common header, UDP-Lite's
    8 bytes, DCCP's generic header and options up to its data offset, ICMP's 8 bytes."""
    program.watch(PortFilter.all(), protocols=EVERY_PROTOCOL)
    key, frame = case.key(program), case.frame
    recorded = 0
    for size in range(f.ETH_HLEN, len(frame) + 1):
        if size < frame.l4_end:
            program.expect(frame.data[:size], "malformed", {})
        else:
            recorded += 1
            program.expect(
                frame.data[:size],
                "recorded_new" if recorded == 1 else "recorded",
                {key: (recorded, recorded * frame.ip_length)},
            )
    assert recorded == len(frame) - frame.l4_end + 1


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_protocol_not_chosen_is_other_protocol_and_its_header_is_not_read(
    program: ProgramUnderTest, case: Case
) -> None:
    others = tuple(p for p in EVERY_PROTOCOL if p != case.proto)
    program.watch(PortFilter.all(), protocols=others)
    program.expect(case.frame, "other_protocol", {})
    # truncated inside its header: still not read, so not malformed
    program.expect(case.frame.data[: case.frame.l4_end - 1], "other_protocol", {})


def test_the_default_records_tcp_and_udp_only(program: ProgramUnderTest) -> None:
    """protocols' default (the original tool's): everything else is other_protocol."""
    for name in ("icmp", "sctp", "udplite", "dccp"):
        program.expect(f.v4_proto("10.61.0.2", name, PORT_OF[name]), "other_protocol", {})
    program.expect(f.v6_proto("fd00:61::2", "icmpv6", 128), "other_protocol", {})
    key = program.key_v4("10.61.0.2", 22)
    program.expect(f.v4_proto("10.61.0.2", "tcp", 22), "recorded_new", {key: (1, 40)})


def test_icmp_in_ipv6_and_icmpv6_in_ipv4_are_other_protocol(program: ProgramUnderTest) -> None:
    program.watch(PortFilter.all(), protocols=EVERY_PROTOCOL)
    wrong_v6 = f.v6_l4("fd00:62::2", f.IPPROTO_ICMP, f.icmp(8), 8)
    wrong_v4 = f.v4_l4("10.62.0.2", f.IPPROTO_ICMPV6, f.icmp(128), 8)
    program.expect(wrong_v6, "other_protocol", {})
    program.expect(wrong_v4, "other_protocol", {})


def test_icmp_types_choose_the_messages(program: ProgramUnderTest) -> None:
    """By default echo requests only; an error (unreachable: 3) or a reply (0) is
    port_filtered until listed; all ports watched says nothing of ICMP types; a type of one
    ICMP version does not watch it in the other."""
    icmp, icmpv6 = PROTOCOL_NUMBERS["icmp"], PROTOCOL_NUMBERS["icmpv6"]
    program.watch(PortFilter.all(), protocols=(icmp, icmpv6))
    program.expect(f.v4_proto("10.63.0.2", "icmp", 0), "port_filtered", {})
    program.expect(f.v4_proto("10.63.0.2", "icmp", 3), "port_filtered", {})
    program.expect(f.v6_proto("fd00:63::2", "icmpv6", 129), "port_filtered", {})
    program.expect(f.v4_proto("10.63.0.2", "icmp", 128), "port_filtered", {})  # ICMPv6's echo
    echo = program.key_v4("10.63.0.2", 8, icmp)
    program.expect(f.v4_proto("10.63.0.2", "icmp", 8), "recorded_new", {echo: (1, 32)})

    program.watch(PortFilter.of({22}), protocols=(icmp, icmpv6), icmp_types=((1, 3), (58, 1)))
    program.expect(f.v4_proto("10.63.0.2", "icmp", 8), "port_filtered", {echo: (1, 32)})
    unreachable = program.key_v4("10.63.0.2", 3, icmp)
    program.expect(
        f.v4_proto("10.63.0.2", "icmp", 3), "recorded_new", {echo: (1, 32), unreachable: (1, 32)}
    )
    program.expect(
        f.v6_proto("fd00:63::2", "icmpv6", 3),
        "port_filtered",
        {echo: (1, 32), unreachable: (1, 32)},
    )
    v6_unreachable = program.key_v6("fd00:63::2", 1, icmpv6)
    program.expect(
        f.v6_proto("fd00:63::2", "icmpv6", 1),
        "recorded_new",
        {echo: (1, 32), unreachable: (1, 32), v6_unreachable: (1, 52)},
    )


@pytest.mark.parametrize("kind", [0, 63, 64, 127, 128, 191, 192, 255])
def test_every_word_of_the_icmp_type_bitmap(program: ProgramUnderTest, kind: int) -> None:
    """Types at the edges of each 64-bit word, for both versions: only the listed one."""
    icmp, icmpv6 = PROTOCOL_NUMBERS["icmp"], PROTOCOL_NUMBERS["icmpv6"]
    program.watch(PortFilter.all(), protocols=(icmp, icmpv6), icmp_types=((1, kind), (58, kind)))
    expected: dict[SourceKey, tuple[int, int]] = {}
    for other in sorted({0, 63, 64, 127, 128, 191, 192, 255} - {kind}):
        program.expect(f.v4_proto("10.64.0.2", "icmp", other), "port_filtered", {})
        program.expect(f.v6_proto("fd00:64::2", "icmpv6", other), "port_filtered", {})
    expected[program.key_v4("10.64.0.2", kind, icmp)] = (1, 32)
    program.expect(f.v4_proto("10.64.0.2", "icmp", kind), "recorded_new", dict(expected))
    expected[program.key_v6("fd00:64::2", kind, icmpv6)] = (1, 52)
    program.expect(f.v6_proto("fd00:64::2", "icmpv6", kind), "recorded_new", dict(expected))


@pytest.mark.parametrize("name", ["sctp", "udplite", "dccp"])
def test_ports_of_the_new_protocols_go_through_the_port_filter(
    program: ProgramUnderTest, name: str
) -> None:
    program.watch(PortFilter.of({PORT_OF[name]}), protocols=EVERY_PROTOCOL)
    program.expect(f.v4_proto("10.65.0.2", name, PORT_OF[name] + 1), "port_filtered", {})
    program.expect(f.v6_proto("fd00:65::2", name, PORT_OF[name] + 1), "port_filtered", {})
    key = program.key_v4("10.65.0.2", PORT_OF[name], PROTOCOL_NUMBERS[name])
    frame = f.v4_proto("10.65.0.2", name, PORT_OF[name])
    program.expect(frame, "recorded_new", {key: (1, frame.ip_length)})


@pytest.mark.parametrize("name", ["sctp", "udplite", "dccp", "icmp"])
def test_later_fragments_are_fragments(program: ProgramUnderTest, name: str) -> None:
    program.watch(PortFilter.all(), protocols=EVERY_PROTOCOL)
    frame = f.v4_proto("10.66.0.2", name, PORT_OF[name], flags_fragment=0x2000 | 3)
    program.expect(frame, "fragment", {})


def test_dccp_without_extended_sequence_numbers_and_with_options(
    program: ProgramUnderTest,
) -> None:
    """A 12-byte generic header (X = 0); options to the data offset must all be present; a
    data offset below the generic header is malformed."""
    program.watch(PortFilter.all(), protocols=(PROTOCOL_NUMBERS["dccp"],))
    dccp = PROTOCOL_NUMBERS["dccp"]
    short = f.v4_l4("10.67.0.2", dccp, f.dccp(5001, extended=False), 16)
    key = program.key_v4("10.67.0.2", 5001, dccp)
    program.expect(short, "recorded_new", {key: (1, short.ip_length)})
    optioned = f.v4_l4("10.67.0.3", dccp, f.dccp(5001, data_offset=8, payload=b"data"), 32)
    program.expect(optioned.data[: optioned.l4_end - 1], "malformed", {key: (1, short.ip_length)})
    other = program.key_v4("10.67.0.3", 5001, dccp)
    program.expect(
        optioned, "recorded_new", {key: (1, short.ip_length), other: (1, optioned.ip_length)}
    )
    for data_offset in (0, 1, 3):  # below the 16 bytes of an extended generic header
        bad = f.v4_l4(
            "10.67.0.4", dccp, f.dccp(5001, data_offset=data_offset, payload=bytes(40)), 16
        )
        program.expect(
            bad, "malformed", {key: (1, short.ip_length), other: (1, optioned.ip_length)}
        )
    bad = f.v4_l4("10.67.0.4", dccp, f.dccp(5001, extended=False, data_offset=2), 12)
    program.expect(bad, "malformed", {key: (1, short.ip_length), other: (1, optioned.ip_length)})


@pytest.mark.parametrize("name", ["sctp", "udplite", "dccp", "icmp"])
def test_a_header_past_the_ip_length_is_malformed(program: ProgramUnderTest, name: str) -> None:
    """The frame holds the whole header, the IP header says the packet ends before it does."""
    program.watch(PortFilter.all(), protocols=EVERY_PROTOCOL)
    protocol, l4, header = f.L4[name](PORT_OF[name])
    packet = f.ipv4("10.68.0.2", "10.255.0.1", protocol, l4, total_length=20 + header - 1)
    program.expect(f.ethernet(f.ETH_P_IP, packet), "malformed", {})


@pytest.mark.parametrize(
    ("family", "name"),
    [
        (family, name)
        for (family, proto), _ in OTHER_SKETCH_IDS.items()
        for name in [PROTOCOLS[proto]]
        if name not in ("tcp", "udp")
    ],
)
def test_each_new_protocol_counts_in_its_own_other_ports_sketch(
    program: ProgramUnderTest, family: int, name: str
) -> None:
    """A new source of SCTP, UDP-Lite, DCCP, ICMP or ICMPv6 goes into the sketch of its (family,
    protocol), never into TCP's or UDP's, whatever the port."""
    program.watch(PortFilter.all(), protocols=EVERY_PROTOCOL)
    before = program.datapath.read_sketches().copy()
    frame = (
        f.v4_proto("10.69.0.2", name, PORT_OF[name])
        if family == 4
        else f.v6_proto("fd00:69::2", name, PORT_OF[name])
    )
    assert program.run(frame).stats_delta == only("recorded_new")
    after = program.datapath.read_sketches()
    changed = {
        int(index) // RING for index in np.flatnonzero((after["reg"] != before["reg"]).any(axis=1))
    }
    assert changed == {OTHER_SKETCH_IDS[(family, PROTOCOL_NUMBERS[name])]}
