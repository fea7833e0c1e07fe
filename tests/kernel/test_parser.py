"""The parser, frame shape by frame shape: return value, the exact sources map and the exact
stats delta after every frame."""

from __future__ import annotations

import errno
import os
import re
import socket
from pathlib import Path

import pytest

from tests.support import frames as f
from tests.support.netns import namespace_with_veths
from xdp_ip_counter import bpf_syscall

from .program import TCP, UDP, XDP_PASS, ProgramUnderTest, only, wait_for_clock_after

pytestmark = pytest.mark.root

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"


def header_constant(name: str) -> int:
    match = re.search(rf"^#define {name} (\d+)", (BPF_DIR / "parsing.h").read_text(), re.M)
    assert match, f"#define {name} not found in bpf/parsing.h"
    return int(match.group(1))


IPV6_EXT_MAX_DEPTH = header_constant("IPV6_EXT_MAX_DEPTH")
VLAN_MAX_DEPTH = header_constant("VLAN_MAX_DEPTH")


# -- the four basic shapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "family", "proto"),
    [
        (f.v4_tcp("10.1.0.2", 22), 4, TCP),
        (f.v4_udp("10.1.0.2", 53, payload=b"query"), 4, UDP),
        (f.v6_tcp("fd00:1::2", 22, payload=b"x" * 10), 6, TCP),
        (f.v6_udp("fd00:1::2", 53), 6, UDP),
    ],
    ids=["v4-tcp", "v4-udp", "v6-tcp", "v6-udp"],
)
def test_each_family_and_protocol_is_recorded(
    program: ProgramUnderTest, frame: f.Frame, family: int, proto: int
) -> None:
    port = 22 if proto == TCP else 53
    key = (
        program.key_v4("10.1.0.2", port, proto)
        if family == 4
        else program.key_v6("fd00:1::2", port, proto)
    )
    program.expect(frame, "recorded_new", {key: (1, frame.ip_length)})
    (value,) = program.sources().values()
    assert value.first_seen == value.last_seen


def test_ipv4_source_is_stored_ipv4_mapped_with_family_4(program: ProgramUnderTest) -> None:
    program.expect(
        f.v4_udp("192.0.2.33", 123),
        "recorded_new",
        {program.key_v4("192.0.2.33", 123, UDP): (1, 28)},
    )
    (key,) = program.sources()
    assert key.addr == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 33])
    assert (key.family, key.proto, key.port) == (4, UDP, 123)


def test_same_source_on_two_ports_is_two_keys(program: ProgramUnderTest) -> None:
    ssh, web = program.key_v4("10.2.0.2", 22), program.key_v4("10.2.0.2", 80)
    program.expect(f.v4_tcp("10.2.0.2", 22), "recorded_new", {ssh: (1, 40)})
    program.expect(f.v4_tcp("10.2.0.2", 80), "recorded_new", {ssh: (1, 40), web: (1, 40)})
    program.expect(f.v4_tcp("10.2.0.2", 22), "recorded", {ssh: (2, 80), web: (1, 40)})


def test_two_sources_on_one_port_are_two_keys(program: ProgramUnderTest) -> None:
    first, second = program.key_v6("fd00:2::a", 443), program.key_v6("fd00:2::b", 443)
    program.expect(f.v6_tcp("fd00:2::a", 443), "recorded_new", {first: (1, 60)})
    program.expect(f.v6_tcp("fd00:2::b", 443), "recorded_new", {first: (1, 60), second: (1, 60)})


def test_protocol_and_family_are_part_of_the_key(program: ProgramUnderTest) -> None:
    """TCP and UDP to the same port, and 10.3.0.2 vs ::ffff:10.3.0.2 sent as IPv6: four keys."""
    mapped = f.ipv4_mapped("10.3.0.2")
    lo = program.default_ifindex
    expected = {}
    for frame, key in [
        (f.v4_tcp("10.3.0.2", 53), (mapped, lo, 53, TCP, 4)),
        (f.v4_udp("10.3.0.2", 53), (mapped, lo, 53, UDP, 4)),
        (f.v6_tcp("::ffff:10.3.0.2", 53), (mapped, lo, 53, TCP, 6)),
        (f.v6_udp("::ffff:10.3.0.2", 53), (mapped, lo, 53, UDP, 6)),
    ]:
        expected[key] = (1, frame.ip_length)
        program.expect(frame, "recorded_new", expected)
    assert len(expected) == 4


def test_repeated_packets_update_last_seen_packets_and_bytes_only(
    program: ProgramUnderTest,
) -> None:
    small = f.v4_udp("10.4.0.2", 5000, payload=b"a")
    large = f.v4_udp("10.4.0.2", 5000, payload=b"b" * 1000)
    key = program.key_v4("10.4.0.2", 5000, UDP)
    program.expect(small, "recorded_new", {key: (1, 29)})
    first = program.sources()[key]

    clock = wait_for_clock_after(first.last_seen)
    program.expect(large, "recorded", {key: (2, 29 + 1028)})
    second = program.sources()[key]
    assert second.first_seen == first.first_seen
    assert second.last_seen >= clock > first.last_seen

    clock = wait_for_clock_after(second.last_seen)
    program.expect(small, "recorded", {key: (3, 29 + 1028 + 29)})
    third = program.sources()[key]
    assert third.first_seen == first.first_seen
    assert third.last_seen >= clock > second.last_seen


def test_bytes_are_the_ip_total_length_not_the_frame_length(program: ProgramUnderTest) -> None:
    """A 60-byte (minimum-size, padded) frame holding a 28-byte IPv4/UDP packet counts 28."""
    frame = f.pad_to(f.v4_udp("10.5.0.2", 7).data, 60)
    assert len(frame) == 60
    program.expect(frame, "recorded_new", {program.key_v4("10.5.0.2", 7, UDP): (1, 28)})


def test_minimum_size_ipv6_frame(program: ProgramUnderTest) -> None:
    frame = f.pad_to(f.v6_udp("fd00:5::2", 7).data, 64)
    program.expect(frame, "recorded_new", {program.key_v6("fd00:5::2", 7, UDP): (1, 48)})


def test_ipv6_payload_length_zero_counts_the_bytes_the_frame_holds(
    program: ProgramUnderTest,
) -> None:
    """Payload Length 0 (a jumbogram's) is taken as "what the frame holds", per parsing.h."""
    packet = f.ipv6(
        "fd00:5::3", "fd00:ff::1", f.IPPROTO_UDP, f.udp(9, payload=b"j" * 100), payload_length=0
    )
    program.expect(
        f.ethernet(f.ETH_P_IPV6, packet),
        "recorded_new",
        {program.key_v6("fd00:5::3", 9, UDP): (1, len(packet))},
    )


# -- frame sizes -------------------------------------------------------------------------------


def test_test_run_refuses_frames_shorter_than_an_ethernet_header(
    program: ProgramUnderTest,
) -> None:
    for size in range(f.ETH_HLEN):
        with pytest.raises(OSError) as refused:
            program.run(f.v4_tcp("10.6.0.2", 22).data[:size])
        assert refused.value.errno == errno.EINVAL, size
    assert program.sources() == {}


def _accepted(program: ProgramUnderTest, size: int) -> bool:
    try:
        bpf_syscall.prog_test_run(program.datapath.prog_fd, bytes(size))
    except OSError as exc:
        assert exc.errno in (errno.EINVAL, errno.ENOMEM, errno.E2BIG), exc
        return False
    return True


def test_largest_frame_test_run_accepts_is_recorded(program: ProgramUnderTest) -> None:
    """Find the largest frame test_run takes (a page of linear data, the rest as fragments on
    recent kernels), then send an IPv4/UDP datagram of the maximum IP length (65535) in a frame
    of that size (or the IP packet's own size, if smaller): recorded with bytes = 65535."""
    assert _accepted(program, 64 * 1024), "test_run should accept a 64 KiB frame"
    accepted, refused = 64 * 1024, 1 << 24
    while refused - accepted > 1:
        middle = (accepted + refused) // 2
        if _accepted(program, middle):
            accepted = middle
        else:
            refused = middle
    largest_ip = f.ETH_HLEN + 65535
    udp = f.udp(4789, payload=bytes(65535 - 20 - 8))
    packet = f.ipv4("10.7.0.2", "10.255.0.1", f.IPPROTO_UDP, udp)
    assert len(packet) == 65535
    frame = f.ethernet(f.ETH_P_IP, packet)
    frame = f.pad_to(frame, accepted) if accepted >= largest_ip else frame[:accepted]
    key = program.key_v4("10.7.0.2", 4789, UDP)
    program.expect(frame, "recorded_new", {key: (1, 65535)})
    # and IPv6 at the same size: Payload Length 65535 - 40
    packet6 = f.ipv6("fd00:7::2", "fd00:ff::1", f.IPPROTO_UDP, f.udp(4789, payload=bytes(65487)))
    frame6 = f.ethernet(f.ETH_P_IPV6, packet6)
    frame6 = frame6[:accepted] if len(frame6) > accepted else f.pad_to(frame6, accepted)
    key6 = program.key_v6("fd00:7::2", 4789, UDP)
    program.expect(frame6, "recorded_new", {key: (1, 65535), key6: (1, 65535)})


# -- layer 2 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ethertype", [f.ETH_P_ARP, 0x88CC, 0x8847, 0x0026, 0x05DC])
def test_non_ip_frames_are_not_ip(program: ProgramUnderTest, ethertype: int) -> None:
    """ARP, LLDP, MPLS, and 802.3 length-field frames."""
    frame = f.pad_to(f.ethernet(ethertype, f.arp_request()), 60)
    program.expect(frame, "not_ip", {})


def test_arp_behind_a_vlan_tag_is_not_ip(program: ProgramUnderTest) -> None:
    frame = f.ethernet(f.ETH_P_ARP, f.arp_request(), vlans=((f.ETH_P_8021Q, 10),))
    program.expect(frame, "not_ip", {})


@pytest.mark.parametrize(
    "tags",
    [
        (f.ETH_P_8021Q,),
        (f.ETH_P_8021AD,),
        (f.ETH_P_8021AD, f.ETH_P_8021Q),
        (f.ETH_P_8021Q, f.ETH_P_8021Q),
        (f.ETH_P_8021Q, f.ETH_P_8021AD),
        (f.ETH_P_8021AD, f.ETH_P_8021AD),
    ],
    ids=["8100", "88a8", "88a8+8100", "8100+8100", "8100+88a8", "88a8+88a8"],
)
def test_vlan_tags_up_to_two_are_skipped(program: ProgramUnderTest, tags: tuple[int, ...]) -> None:
    vlans = tuple((tag, 100 + n) for n, tag in enumerate(tags))
    v4 = f.v4_udp("10.8.0.2", 161, vlans=vlans)
    v6 = f.v6_tcp("fd00:8::2", 179, vlans=vlans)
    k4, k6 = program.key_v4("10.8.0.2", 161, UDP), program.key_v6("fd00:8::2", 179)
    program.expect(v4, "recorded_new", {k4: (1, 28)})
    program.expect(v6, "recorded_new", {k4: (1, 28), k6: (1, 60)})


@pytest.mark.parametrize(
    "tags",
    [
        (f.ETH_P_8021Q,) * 3,
        (f.ETH_P_8021AD, f.ETH_P_8021Q, f.ETH_P_8021Q),
        (f.ETH_P_8021AD, f.ETH_P_8021AD, f.ETH_P_8021AD, f.ETH_P_8021Q),
    ],
    ids=["8100x3", "88a8+8100+8100", "four"],
)
def test_more_vlan_tags_than_the_walk_limit_are_too_deep(
    program: ProgramUnderTest, tags: tuple[int, ...]
) -> None:
    assert len(tags) > VLAN_MAX_DEPTH
    vlans = tuple((tag, 100 + n) for n, tag in enumerate(tags))
    program.expect(f.v4_udp("10.9.0.2", 161, vlans=vlans), "too_deep", {})


# -- IPv4 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ihl", range(6, 16))
def test_ipv4_options_are_skipped_and_the_port_read_at_ihl_times_four(
    program: ProgramUnderTest, ihl: int
) -> None:
    """The options are NOPs (0x01): reading the port at byte 20 would find port 257."""
    tcp = f.v4_tcp("10.10.0.2", 8080, ihl=ihl)
    udp = f.v4_udp("10.10.0.2", 8081, ihl=ihl)
    k_tcp, k_udp = program.key_v4("10.10.0.2", 8080), program.key_v4("10.10.0.2", 8081, UDP)
    program.expect(tcp, "recorded_new", {k_tcp: (1, ihl * 4 + 20)})
    program.expect(udp, "recorded_new", {k_tcp: (1, ihl * 4 + 20), k_udp: (1, ihl * 4 + 8)})


@pytest.mark.parametrize("ihl", range(5))
@pytest.mark.parametrize(
    ("protocol", "l4"),
    [(f.IPPROTO_TCP, f.tcp(22)), (f.IPPROTO_UDP, f.udp(53)), (f.IPPROTO_ICMP, f.icmp_echo())],
    ids=["tcp", "udp", "icmp"],
)
def test_ipv4_ihl_below_five_is_malformed(
    program: ProgramUnderTest, ihl: int, protocol: int, l4: bytes
) -> None:
    """UDP matters most here: a parser taking IHL 4 at its word would find "UDP" 16 bytes in
    (the destination address) and record port 1."""
    packet = f.ipv4("10.11.0.2", "10.255.0.1", protocol, l4, ihl=ihl)
    program.expect(f.ethernet(f.ETH_P_IP, packet), "malformed", {})


@pytest.mark.parametrize("version", [0, 5, 6, 15])
def test_wrong_ip_version_in_an_ipv4_frame_is_malformed(
    program: ProgramUnderTest, version: int
) -> None:
    packet = f.ipv4("10.12.0.2", "10.255.0.1", f.IPPROTO_TCP, f.tcp(22), version=version)
    program.expect(f.ethernet(f.ETH_P_IP, packet), "malformed", {})


def test_ipv6_header_in_an_ipv4_frame_is_malformed(program: ProgramUnderTest) -> None:
    packet = f.ipv6("fd00:12::2", "fd00:ff::1", f.IPPROTO_TCP, f.tcp(22))
    program.expect(f.ethernet(f.ETH_P_IP, packet), "malformed", {})


@pytest.mark.parametrize("version", [4, 0, 7])
def test_wrong_ip_version_in_an_ipv6_frame_is_malformed(
    program: ProgramUnderTest, version: int
) -> None:
    packet = f.ipv6("fd00:12::2", "fd00:ff::1", f.IPPROTO_TCP, f.tcp(22), version=version)
    program.expect(f.ethernet(f.ETH_P_IPV6, packet), "malformed", {})


@pytest.mark.parametrize(
    ("ihl", "total_length"), [(5, 0), (5, 19), (5, 1), (6, 20), (6, 23), (15, 59)]
)
@pytest.mark.parametrize(
    ("protocol", "flags_fragment"),
    [(f.IPPROTO_UDP, 0), (f.IPPROTO_TCP, 0), (f.IPPROTO_ICMP, 0), (f.IPPROTO_UDP, 0x2010)],
    ids=["udp", "tcp", "icmp", "udp-later-fragment"],
)
def test_ipv4_total_length_below_the_header_is_malformed(
    program: ProgramUnderTest, ihl: int, total_length: int, protocol: int, flags_fragment: int
) -> None:
    """Malformed whatever follows: not other_protocol, not fragment."""
    l4 = f.udp(53) if protocol == f.IPPROTO_UDP else f.tcp(22)
    packet = f.ipv4(
        "10.13.0.2",
        "10.255.0.1",
        protocol,
        l4,
        ihl=ihl,
        total_length=total_length,
        flags_fragment=flags_fragment,
    )
    program.expect(f.ethernet(f.ETH_P_IP, packet), "malformed", {})


@pytest.mark.parametrize(
    ("protocol", "l4", "short_by"),
    [
        (f.IPPROTO_UDP, f.udp(53), 1),
        (f.IPPROTO_UDP, f.udp(53), 8),
        (f.IPPROTO_TCP, f.tcp(22, data_offset=6), 4),
    ],
)
def test_l4_header_beyond_the_ipv4_total_length_is_malformed(
    program: ProgramUnderTest, protocol: int, l4: bytes, short_by: int
) -> None:
    """The frame holds the whole L4 header, but the IP header says the packet ends before it."""
    packet = f.ipv4("10.13.0.3", "10.255.0.1", protocol, l4, total_length=20 + len(l4) - short_by)
    program.expect(f.ethernet(f.ETH_P_IP, packet), "malformed", {})


def test_ipv4_total_length_just_covering_the_l4_header_is_recorded(
    program: ProgramUnderTest,
) -> None:
    packet = f.ipv4(
        "10.13.0.4", "10.255.0.1", f.IPPROTO_UDP, f.udp(53, payload=b"rest"), total_length=28
    )
    program.expect(
        f.ethernet(f.ETH_P_IP, packet),
        "recorded_new",
        {program.key_v4("10.13.0.4", 53, UDP): (1, 28)},
    )


@pytest.mark.parametrize(
    ("flags_fragment", "outcome"),
    [
        (0x2000, "recorded_new"),  # MF, offset 0: the first fragment, it has the ports
        (0x4000, "recorded_new"),  # DF only
        (0x8000, "recorded_new"),  # the reserved ("evil") bit: not an offset
        (0x2001, "fragment"),  # MF, offset 8 bytes
        (0x0001, "fragment"),  # the last fragment, offset 8 bytes
        (0x1FFF, "fragment"),  # the largest offset
        (0x3000, "fragment"),  # MF, offset 0x1000 units: bit 12 of the offset
    ],
)
def test_ipv4_fragments(program: ProgramUnderTest, flags_fragment: int, outcome: str) -> None:
    frame = f.v4_tcp("10.14.0.2", 22, flags_fragment=flags_fragment)
    expected = {program.key_v4("10.14.0.2", 22): (1, 40)} if outcome == "recorded_new" else {}
    program.expect(frame, outcome, expected)


@pytest.mark.parametrize("protocol", [f.IPPROTO_ICMP, f.IPPROTO_ESP, f.IPPROTO_AH, 47, 132, 255])
def test_ipv4_other_protocols(program: ProgramUnderTest, protocol: int) -> None:
    """ICMP, ESP, AH (IPv4's AH is not walked), GRE, SCTP, reserved."""
    packet = f.ipv4("10.15.0.2", "10.255.0.1", protocol, f.icmp_echo())
    program.expect(f.ethernet(f.ETH_P_IP, packet), "other_protocol", {})


# -- IPv6 and its extension headers ------------------------------------------------------------


def test_ipv6_hop_by_hop_destination_options_routing_then_tcp(program: ProgramUnderTest) -> None:
    extensions = (f.hop_by_hop(), f.destination_options(1), f.routing(2))
    frame = f.v6_tcp("fd00:16::2", 22, extensions=extensions, data_offset=7)
    assert frame.ip_length == 40 + 8 + 16 + 40 + 28
    program.expect(frame, "recorded_new", {program.key_v6("fd00:16::2", 22): (1, frame.ip_length)})


@pytest.mark.parametrize("length_units", [0, 1, 5, 31])
def test_ipv6_option_header_lengths_are_honoured(
    program: ProgramUnderTest, length_units: int
) -> None:
    frame = f.v6_udp("fd00:16::3", 5353, extensions=(f.destination_options(length_units),))
    program.expect(
        frame,
        "recorded_new",
        {program.key_v6("fd00:16::3", 5353, UDP): (1, 48 + 8 * (length_units + 1))},
    )


@pytest.mark.parametrize("icv_words", [1, 3, 5])
def test_ipv6_authentication_header_then_tcp(program: ProgramUnderTest, icv_words: int) -> None:
    frame = f.v6_tcp("fd00:17::2", 443, extensions=(f.authentication(icv_words),))
    program.expect(
        frame, "recorded_new", {program.key_v6("fd00:17::2", 443): (1, 60 + 12 + 4 * icv_words)}
    )


@pytest.mark.parametrize("number", [135, 139, 140], ids=["mobility", "hip", "shim6"])
def test_ipv6_other_walked_extension_headers(program: ProgramUnderTest, number: int) -> None:
    frame = f.v6_tcp("fd00:17::3", 25, extensions=((number, f.ipv6_options_header(0)),))
    program.expect(frame, "recorded_new", {program.key_v6("fd00:17::3", 25): (1, 68)})


@pytest.mark.parametrize(
    ("offset_units", "more", "outcome"),
    [
        (0, True, "recorded_new"),  # the first fragment
        (0, False, "recorded_new"),  # an atomic fragment (RFC 6946)
        (1, True, "fragment"),
        (185, False, "fragment"),  # the last one
        (0x1FFF, True, "fragment"),
    ],
)
def test_ipv6_fragments(
    program: ProgramUnderTest, offset_units: int, more: bool, outcome: str
) -> None:
    frame = f.v6_udp("fd00:18::2", 53, extensions=(f.hop_by_hop(), f.fragment(offset_units, more)))
    expected = (
        {program.key_v6("fd00:18::2", 53, UDP): (1, frame.ip_length)}
        if outcome == "recorded_new"
        else {}
    )
    program.expect(frame, outcome, expected)


@pytest.mark.parametrize(
    ("next_header", "extensions"),
    [
        (f.IPPROTO_ESP, ()),
        (f.IPPROTO_ESP, (f.hop_by_hop(), f.authentication())),
        (f.IPPROTO_NONE, ()),
        (f.IPPROTO_NONE, (f.destination_options(),)),
        (f.IPPROTO_ICMPV6, ()),
        (f.IPPROTO_ICMPV6, (f.hop_by_hop(),)),
        (253, ()),  # experimental, not walked
        (f.IPPROTO_ICMP, ()),  # ICMP (v4) inside IPv6: not TCP/UDP
    ],
    ids=["esp", "ah+esp", "none", "dst+none", "icmpv6", "hbh+icmpv6", "253", "icmp"],
)
def test_ipv6_other_protocols(
    program: ProgramUnderTest, next_header: int, extensions: tuple[tuple[int, bytes], ...]
) -> None:
    frame = f.v6_l4("fd00:19::2", next_header, f.icmpv6_echo(), 8, extensions=extensions)
    program.expect(frame, "other_protocol", {})


def _chain(length: int) -> tuple[tuple[int, bytes], ...]:
    """Hop-by-hop, then a mix of every walked header type, `length` headers in all."""
    kinds = [
        f.destination_options(),
        f.routing(),
        f.fragment(0, True),
        f.authentication(),
        f.destination_options(2),
    ]
    return (f.hop_by_hop(), *(kinds[n % len(kinds)] for n in range(length - 1)))


def test_extension_chain_at_the_walk_limit_is_recorded(program: ProgramUnderTest) -> None:
    assert IPV6_EXT_MAX_DEPTH >= 6, "the issue asks for a walk at least 6 deep"
    frame = f.v6_tcp("fd00:20::2", 22, extensions=_chain(IPV6_EXT_MAX_DEPTH))
    program.expect(frame, "recorded_new", {program.key_v6("fd00:20::2", 22): (1, frame.ip_length)})


def test_extension_chain_beyond_the_walk_limit_is_too_deep(program: ProgramUnderTest) -> None:
    frame = f.v6_tcp("fd00:20::3", 22, extensions=_chain(IPV6_EXT_MAX_DEPTH + 1))
    program.expect(frame, "too_deep", {})
    frame = f.v6_tcp("fd00:20::3", 22, extensions=_chain(IPV6_EXT_MAX_DEPTH + 4))
    program.expect(frame, "too_deep", {})


def test_extension_chain_at_the_limit_ending_in_esp_is_other_protocol(
    program: ProgramUnderTest,
) -> None:
    frame = f.v6_l4(
        "fd00:20::4", f.IPPROTO_ESP, bytes(16), 8, extensions=_chain(IPV6_EXT_MAX_DEPTH)
    )
    program.expect(frame, "other_protocol", {})


@pytest.mark.parametrize("short_by", [1, 8, 20])
def test_l4_header_beyond_the_ipv6_payload_length_is_malformed(
    program: ProgramUnderTest, short_by: int
) -> None:
    chain = f.ipv6_options_header(f.IPPROTO_TCP, 1)
    segment = f.tcp(22)
    packet = f.ipv6(
        "fd00:21::2",
        "fd00:ff::1",
        f.IPPROTO_DSTOPTS,
        chain + segment,
        payload_length=len(chain) + len(segment) - short_by,
    )
    program.expect(f.ethernet(f.ETH_P_IPV6, packet), "malformed", {})


def test_tcp_data_offset_below_five_is_malformed(program: ProgramUnderTest) -> None:
    for data_offset in range(5):
        segment = bytearray(f.tcp(22, payload=bytes(40)))
        segment[12] = data_offset << 4
        packet = f.ipv4("10.22.0.2", "10.255.0.1", f.IPPROTO_TCP, bytes(segment))
        program.expect(f.ethernet(f.ETH_P_IP, packet), "malformed", {})


# -- the ingress interface ---------------------------------------------------------------------


def test_frames_without_a_context_come_from_loopback(program: ProgramUnderTest) -> None:
    assert program.default_ifindex == socket.if_nametoindex("lo")
    program.expect(
        f.v4_tcp("10.23.0.2", 22), "recorded_new", {program.key_v4("10.23.0.2", 22): (1, 40)}
    )
    (key,) = program.sources()
    assert key.ifindex == socket.if_nametoindex("lo")


def test_ingress_ifindex_lands_in_the_key(program: ProgramUnderTest) -> None:
    """lo given explicitly in the context, then a veth in a test namespace (test_run resolves
    the ifindex in the caller's namespace: the run happens in a thread that entered it)."""
    lo = socket.if_nametoindex("lo")
    key_lo = program.key_v4("10.24.0.2", 22, ifindex=lo)
    program.expect(f.v4_tcp("10.24.0.2", 22), "recorded_new", {key_lo: (1, 40)}, ifindex=lo)

    with namespace_with_veths(f"{os.getpid()}i", pairs=1) as namespace:
        veth = namespace.veths[0]
        veth_index = namespace.ifindex(veth)
        assert veth_index != lo
        frame = f.v6_udp("fd00:24::2", 53)
        before = program.stats()
        result = namespace.call_inside(
            lambda: bpf_syscall.prog_test_run(program.datapath.prog_fd, frame.data, veth_index)
        )
        assert result.retval == XDP_PASS
        after = program.stats()
        assert {name: after[name] - before[name] for name in after} == only("recorded_new")
        key_veth = program.key_v6("fd00:24::2", 53, UDP, ifindex=veth_index)
        assert program.counts() == {key_lo: (1, 40), key_veth: (1, 48)}


def test_ifindex_unknown_in_the_callers_namespace_is_refused(program: ProgramUnderTest) -> None:
    known = {socket.if_nametoindex(name) for _, name in socket.if_nameindex()}
    missing = max(known) + 1000
    with pytest.raises(OSError) as refused:
        program.run(f.v4_tcp("10.25.0.2", 22), ifindex=missing)
    assert refused.value.errno == errno.ENODEV
    assert program.sources() == {}
