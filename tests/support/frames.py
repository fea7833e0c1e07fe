"""Hand-built Ethernet frames for BPF_PROG_TEST_RUN, byte by byte with struct.

struct rather than scapy: the tests need frames scapy would "fix" (IHL 3, version 5, a total
length shorter than the header, nine extension headers), and every offset must be known exactly
to compute where the L4 header ends. tests/kernel/test_frames.py checks the well-formed ones
against scapy's dissectors so that the builder itself is not a blind spot.

Every builder returns bytes; `Frame` carries a frame together with the facts a test asserts on
(where the L4 header ends, the IP length the program should count). The tests and the benchmarks
(bench/kernel_cost.py: the small frames at the end) build their frames here.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_DCCP = 33
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

ETH_HLEN = 14
DST_MAC = bytes.fromhex("020000000001")
SRC_MAC = bytes.fromhex("020000000002")
SOURCE_PORT = 40000


def ipv4_mapped(address: str) -> bytes:
    """The 16-byte form the program stores an IPv4 source in (::ffff:a.b.c.d)."""
    return bytes(10) + b"\xff\xff" + ipaddress.IPv4Address(address).packed


def ipv6_bytes(address: str) -> bytes:
    return ipaddress.IPv6Address(address).packed


# -- layer 2 -----------------------------------------------------------------------------------


def ethernet(ethertype: int, payload: bytes, vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    """Ethernet header, then one 4-byte tag per (tag EtherType, VLAN id), outermost first."""
    if not vlans:
        return DST_MAC + SRC_MAC + struct.pack("!H", ethertype) + payload
    header = DST_MAC + SRC_MAC + struct.pack("!H", vlans[0][0])
    for index, (_, vlan_id) in enumerate(vlans):
        inner = vlans[index + 1][0] if index + 1 < len(vlans) else ethertype
        header += struct.pack("!HH", vlan_id & 0x0FFF, inner)
    return header + payload


def arp_request(sender: str = "10.1.0.2", target: str = "10.1.0.1") -> bytes:
    """An ARP who-has, as an L3 payload (EtherType 0x0806)."""
    return struct.pack(
        "!HHBBH6s4s6s4s",
        1,  # Ethernet
        ETH_P_IP,
        6,
        4,
        1,  # request
        SRC_MAC,
        ipaddress.IPv4Address(sender).packed,
        bytes(6),
        ipaddress.IPv4Address(target).packed,
    )


# -- layer 3 -----------------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(
    src: str,
    dst: str,
    protocol: int,
    payload: bytes,
    *,
    ihl: int = 5,
    version: int = 4,
    total_length: int | None = None,
    flags_fragment: int = 0,
    options: bytes | None = None,
) -> bytes:
    """An IPv4 header (with IHL*4 - 20 bytes of options, NOPs unless given) and payload.

    ihl and version go into the header as given, even when invalid; total_length defaults to the
    real length; flags_fragment is the 16-bit flags + fragment offset field (offset in 8-byte
    units in the low 13 bits, MF = 0x2000, DF = 0x4000).
    """
    option_len = max(ihl, 5) * 4 - 20
    if options is None:
        options = b"\x01" * option_len  # NOP
    assert len(options) == option_len, "options must fill IHL*4 - 20 bytes"
    header_len = 20 + option_len
    if total_length is None:
        total_length = header_len + len(payload)
    header = (
        struct.pack(
            "!BBHHHBBH4s4s",
            (version << 4) | (ihl & 0x0F),
            0,
            total_length & 0xFFFF,
            0x1234,
            flags_fragment,
            64,
            protocol,
            0,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
        + options
    )
    checksum = _checksum(header)
    header = header[:10] + struct.pack("!H", checksum) + header[12:]
    return header + payload


def ipv6(
    src: str,
    dst: str,
    next_header: int,
    payload: bytes,
    *,
    payload_length: int | None = None,
    version: int = 6,
) -> bytes:
    """An IPv6 header; payload holds any extension headers and the upper-layer header."""
    if payload_length is None:
        payload_length = len(payload)
    return (
        struct.pack(
            "!IHBB16s16s",
            version << 28,
            payload_length,
            next_header,
            64,
            ipv6_bytes(src),
            ipv6_bytes(dst),
        )
        + payload
    )


def ipv6_options_header(next_header: int, length_units: int = 0) -> bytes:
    """Hop-by-hop or destination options: (length_units + 1) * 8 bytes, padded with PadN."""
    size = (length_units + 1) * 8
    pad = size - 2
    return struct.pack("!BB", next_header, length_units) + bytes([1, pad - 2]) + bytes(pad - 2)


def ipv6_routing_header(next_header: int, segments: int = 1) -> bytes:
    """A type-0-style routing header with `segments` addresses (Segments Left 0)."""
    body = bytes(4) + bytes(16 * segments)
    return struct.pack("!BBBB", next_header, 2 * segments, 0, 0) + body


def ipv6_fragment_header(next_header: int, offset_units: int, more: bool) -> bytes:
    """Fragment header: offset in 8-byte units, M flag."""
    return struct.pack("!BBHI", next_header, 0, (offset_units << 3) | int(more), 0xABCD)


def ipv6_ah_header(next_header: int, icv_words: int = 3) -> bytes:
    """Authentication header: (Payload Len + 2) * 4 bytes, with a 12-byte ICV by default."""
    payload_len = 1 + icv_words  # (12 + 4 * icv_words) / 4 - 2
    return struct.pack("!BBHII", next_header, payload_len, 0, 0x100, 1) + bytes(4 * icv_words)


# -- layer 4 -----------------------------------------------------------------------------------


def tcp(
    dport: int, *, sport: int = SOURCE_PORT, data_offset: int = 5, payload: bytes = b""
) -> bytes:
    """A TCP SYN with data_offset*4 - 20 bytes of NOP options."""
    options = b"\x01" * max(data_offset * 4 - 20, 0)
    return (
        struct.pack("!HHIIBBHHH", sport, dport, 1, 0, data_offset << 4, 0x02, 65535, 0, 0)
        + options
        + payload
    )


def udp(dport: int, *, sport: int = SOURCE_PORT, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(dport: int, *, sport: int = SOURCE_PORT, chunk: bytes = b"") -> bytes:
    """The 12-byte SCTP common header (ports, verification tag, checksum), then chunk."""
    return struct.pack("!HHII", sport, dport, 0x1234ABCD, 0) + chunk


def sctp_init() -> bytes:
    """An INIT chunk (type 1), as the first packet of an association."""
    return struct.pack("!BBHIIHHI", 1, 0, 20, 0x11111111, 65535, 10, 10, 1)


def udplite(dport: int, *, sport: int = SOURCE_PORT, payload: bytes = b"") -> bytes:
    """UDP-Lite: the UDP header with a checksum coverage (8: the header) for the length."""
    return struct.pack("!HHHH", sport, dport, 8, 0) + payload


def dccp(
    dport: int,
    *,
    sport: int = SOURCE_PORT,
    extended: bool = True,
    data_offset: int | None = None,
    payload: bytes = b"",
) -> bytes:
    """A DCCP-Request: the generic header (16 bytes with extended sequence numbers, 12 without),
    the service code, and options (zero padding) up to data_offset * 4 bytes (default: no
    options beyond the service code)."""
    generic = 16 if extended else 12
    fixed = generic + 4  # + the Request's service code
    if data_offset is None:
        data_offset = fixed // 4
    x = 1 if extended else 0
    kind = 0  # DCCP-Request
    head = struct.pack("!HHBBHB", sport, dport, data_offset, 0, 0, (kind << 1) | x)
    head += bytes(7) if extended else bytes(3)  # the sequence number (48 or 24 bits, reserved)
    head += struct.pack("!I", 42)  # service code
    return head + bytes(max(data_offset * 4 - fixed, 0)) + payload


def icmp(kind: int, code: int = 0, body: bytes = b"\0\x01\0\x01ping") -> bytes:
    """An ICMP or ICMPv6 message: type, code, checksum (0), then body (the 4 bytes every
    message has first, then the rest)."""
    return struct.pack("!BBH", kind, code, 0) + body


def icmp_echo() -> bytes:
    return struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"


def icmpv6_echo() -> bytes:
    return struct.pack("!BBHHH", 128, 0, 0, 1, 1) + b"ping"


# -- whole frames with their facts -------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A frame and what the program should make of it when it is whole."""

    data: bytes
    l4_end: int  # offset just past the full TCP/UDP header
    ip_length: int  # what the program counts in bytes (IP total length, header included)

    def __len__(self) -> int:
        return len(self.data)


def v4_tcp(
    src: str,
    dport: int,
    *,
    data_offset: int = 5,
    payload: bytes = b"",
    vlans: tuple[tuple[int, int], ...] = (),
    ihl: int = 5,
    flags_fragment: int = 0,
    dst: str = "10.255.0.1",
) -> Frame:
    segment = tcp(dport, data_offset=data_offset, payload=payload)
    packet = ipv4(src, dst, IPPROTO_TCP, segment, ihl=ihl, flags_fragment=flags_fragment)
    l3 = ETH_HLEN + 4 * len(vlans)
    return Frame(ethernet(ETH_P_IP, packet, vlans), l3 + ihl * 4 + data_offset * 4, len(packet))


def v4_udp(
    src: str,
    dport: int,
    *,
    payload: bytes = b"",
    vlans: tuple[tuple[int, int], ...] = (),
    ihl: int = 5,
    flags_fragment: int = 0,
    dst: str = "10.255.0.1",
) -> Frame:
    packet = ipv4(
        src, dst, IPPROTO_UDP, udp(dport, payload=payload), ihl=ihl, flags_fragment=flags_fragment
    )
    l3 = ETH_HLEN + 4 * len(vlans)
    return Frame(ethernet(ETH_P_IP, packet, vlans), l3 + ihl * 4 + 8, len(packet))


def v4_l4(
    src: str,
    protocol: int,
    l4: bytes,
    l4_header_len: int,
    *,
    vlans: tuple[tuple[int, int], ...] = (),
    ihl: int = 5,
    flags_fragment: int = 0,
    dst: str = "10.255.0.1",
) -> Frame:
    """IPv4 carrying l4 (an upper-layer header of l4_header_len bytes, then its payload)."""
    packet = ipv4(src, dst, protocol, l4, ihl=ihl, flags_fragment=flags_fragment)
    l3 = ETH_HLEN + 4 * len(vlans)
    return Frame(ethernet(ETH_P_IP, packet, vlans), l3 + ihl * 4 + l4_header_len, len(packet))


def v6_l4(
    src: str,
    protocol: int,
    l4: bytes,
    l4_header_len: int,
    *,
    extensions: tuple[tuple[int, bytes], ...] = (),
    vlans: tuple[tuple[int, int], ...] = (),
    dst: str = "fd00:ff::1",
) -> Frame:
    """IPv6 with extension headers, given as (their own protocol number, bytes), in order.

    Each extension's first byte (Next Header) is overwritten to chain them correctly.
    """
    chain = b""
    protocols = [number for number, _ in extensions] + [protocol]
    for index, (_, header) in enumerate(extensions):
        chain += bytes([protocols[index + 1]]) + header[1:]
    packet = ipv6(src, dst, protocols[0], chain + l4)
    l3 = ETH_HLEN + 4 * len(vlans)
    return Frame(
        ethernet(ETH_P_IPV6, packet, vlans), l3 + 40 + len(chain) + l4_header_len, len(packet)
    )


def v6_tcp(
    src: str,
    dport: int,
    *,
    data_offset: int = 5,
    payload: bytes = b"",
    extensions: tuple[tuple[int, bytes], ...] = (),
    vlans: tuple[tuple[int, int], ...] = (),
) -> Frame:
    return v6_l4(
        src,
        IPPROTO_TCP,
        tcp(dport, data_offset=data_offset, payload=payload),
        data_offset * 4,
        extensions=extensions,
        vlans=vlans,
    )


def v6_udp(
    src: str,
    dport: int,
    *,
    payload: bytes = b"",
    extensions: tuple[tuple[int, bytes], ...] = (),
    vlans: tuple[tuple[int, int], ...] = (),
) -> Frame:
    return v6_l4(
        src, IPPROTO_UDP, udp(dport, payload=payload), 8, extensions=extensions, vlans=vlans
    )


# Per protocol name: (IP protocol, an upper-layer message to port or ICMP type n, the length of
# its header as the program checks it).
L4 = {
    "tcp": lambda n: (IPPROTO_TCP, tcp(n), 20),
    "udp": lambda n: (IPPROTO_UDP, udp(n, payload=b"query"), 8),
    "icmp": lambda n: (IPPROTO_ICMP, icmp(n), 8),
    "icmpv6": lambda n: (IPPROTO_ICMPV6, icmp(n), 8),
    "sctp": lambda n: (IPPROTO_SCTP, sctp(n, chunk=sctp_init()), 12),
    "udplite": lambda n: (IPPROTO_UDPLITE, udplite(n, payload=b"lite"), 8),
    "dccp": lambda n: (IPPROTO_DCCP, dccp(n), 20),
}


def v4_proto(
    src: str,
    name: str,
    port: int,
    *,
    vlans: tuple[tuple[int, int], ...] = (),
    ihl: int = 5,
    flags_fragment: int = 0,
) -> Frame:
    """IPv4 carrying protocol `name`'s message to port (the ICMP type for icmp/icmpv6)."""
    protocol, l4, header = L4[name](port)
    return v4_l4(src, protocol, l4, header, vlans=vlans, ihl=ihl, flags_fragment=flags_fragment)


def v6_proto(
    src: str,
    name: str,
    port: int,
    *,
    extensions: tuple[tuple[int, bytes], ...] = (),
    vlans: tuple[tuple[int, int], ...] = (),
) -> Frame:
    """IPv6 carrying protocol `name`'s message to port (the ICMP type for icmp/icmpv6)."""
    protocol, l4, header = L4[name](port)
    return v6_l4(src, protocol, l4, header, extensions=extensions, vlans=vlans)


def hop_by_hop(length_units: int = 0) -> tuple[int, bytes]:
    return IPPROTO_HOPOPTS, ipv6_options_header(0, length_units)


def destination_options(length_units: int = 0) -> tuple[int, bytes]:
    return IPPROTO_DSTOPTS, ipv6_options_header(0, length_units)


def routing(segments: int = 1) -> tuple[int, bytes]:
    return IPPROTO_ROUTING, ipv6_routing_header(0, segments)


def fragment(offset_units: int, more: bool) -> tuple[int, bytes]:
    return IPPROTO_FRAGMENT, ipv6_fragment_header(0, offset_units, more)


def authentication(icv_words: int = 3) -> tuple[int, bytes]:
    return IPPROTO_AH, ipv6_ah_header(0, icv_words)


def pad_to(frame: bytes, size: int) -> bytes:
    """Ethernet padding (trailer bytes after the IP packet) up to size."""
    return frame + bytes(max(size - len(frame), 0))


# -- small frames (the benchmarks): well-formed UDP, 64 bytes on the wire for IPv4 ---------------

SMALL_PAYLOAD = bytes(18)  # UDP payload of a minimum-size IPv4 frame (60 bytes + the FCS)
DONT_FRAGMENT = 0x4000


def small_v4(src: str, dport: int, vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    """IPv4/UDP from src to dport (DF set, as hosts send it)."""
    segment = udp(dport, payload=SMALL_PAYLOAD)
    packet = ipv4(src, "10.255.0.1", IPPROTO_UDP, segment, flags_fragment=DONT_FRAGMENT)
    return ethernet(ETH_P_IP, packet, vlans)


def small_v6(src: str, dport: int, extensions: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """IPv6/UDP from src to dport, after the given extension headers (hop_by_hop() ...)."""
    return v6_udp(src, dport, payload=SMALL_PAYLOAD, extensions=extensions).data


def small_qinq_v4(src: str, dport: int) -> bytes:
    """small_v4 inside an 802.1ad tag and an 802.1Q tag."""
    return small_v4(src, dport, vlans=((ETH_P_8021AD, 100), (ETH_P_8021Q, 200)))


def arp_frame() -> bytes:
    return ethernet(ETH_P_ARP, arp_request())


def distinct_v4(count: int, first: str = "10.128.0.0", dport: int = 53) -> list[bytes]:
    """count frames from consecutive IPv4 sources: a new key for every frame."""
    base = int(ipaddress.IPv4Address(first))
    return [small_v4(str(ipaddress.IPv4Address(base + n)), dport) for n in range(count)]
