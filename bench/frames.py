"""The frames the kernel benchmark runs through BPF_PROG_TEST_RUN, built with struct.

Only well-formed frames: tests/kernel/frames.py has the full builder (checked against scapy);
this is the handful of shapes the benchmark needs, kept apart so that bench/ does not import the
test suite.
"""

from __future__ import annotations

import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_HOPOPTS = 0
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_DSTOPTS = 60

DST_MAC = bytes.fromhex("020000000001")
SRC_MAC = bytes.fromhex("020000000002")
PAYLOAD = bytes(18)  # UDP payload: 64-byte IPv4 frames, as on the wire at minimum size


def ethernet(ethertype: int, payload: bytes, vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    """Ethernet, then one tag per (tag EtherType, VLAN id), outermost first."""
    if not vlans:
        return DST_MAC + SRC_MAC + struct.pack("!H", ethertype) + payload
    header = DST_MAC + SRC_MAC + struct.pack("!H", vlans[0][0])
    for index, (_, vlan_id) in enumerate(vlans):
        inner = vlans[index + 1][0] if index + 1 < len(vlans) else ethertype
        header += struct.pack("!HH", vlan_id, inner)
    return header + payload


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp(dport: int, sport: int = 40000) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(PAYLOAD), 0) + PAYLOAD


def ipv4_udp(src: str, dport: int, dst: str = "10.255.0.1") -> bytes:
    l4 = udp(dport)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        0,
        0x4000,
        64,
        IPPROTO_UDP,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + l4


def ipv6_udp(src: str, dport: int, extensions: tuple[int, ...] = (), dst: str = "fd00::1") -> bytes:
    """IPv6, then 8-byte extension headers of the given types (in order), then UDP."""
    chain = [*extensions, IPPROTO_UDP]
    headers = b""
    for index, kind in enumerate(extensions):
        next_header = chain[index + 1]
        if kind == IPPROTO_ROUTING:
            headers += struct.pack("!BBBB", next_header, 0, 0, 0) + bytes(4)
        else:  # hop-by-hop or destination options: PadN over the remaining 6 bytes
            headers += struct.pack("!BBBB", next_header, 0, 1, 4) + bytes(4)
    payload = headers + udp(dport)
    return (
        struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(payload),
            chain[0],
            64,
            ipaddress.IPv6Address(src).packed,
            ipaddress.IPv6Address(dst).packed,
        )
        + payload
    )


def arp_request() -> bytes:
    return struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        ETH_P_IP,
        6,
        4,
        1,
        SRC_MAC,
        ipaddress.IPv4Address("10.1.0.2").packed,
        bytes(6),
        ipaddress.IPv4Address("10.1.0.1").packed,
    )


def v4(src: str, dport: int) -> bytes:
    return ethernet(ETH_P_IP, ipv4_udp(src, dport))


def v6(src: str, dport: int, extensions: tuple[int, ...] = ()) -> bytes:
    return ethernet(ETH_P_IPV6, ipv6_udp(src, dport, extensions))


def qinq_v4(src: str, dport: int) -> bytes:
    return ethernet(ETH_P_IP, ipv4_udp(src, dport), vlans=((ETH_P_8021AD, 100), (ETH_P_8021Q, 200)))


def non_ip() -> bytes:
    return ethernet(ETH_P_ARP, arp_request())


def distinct_v4(count: int, first: str = "10.128.0.0", dport: int = 53) -> list[bytes]:
    """count frames from consecutive IPv4 sources: a new key for every frame."""
    base = int(ipaddress.IPv4Address(first))
    return [v4(str(ipaddress.IPv4Address(base + n)), dport) for n in range(count)]
