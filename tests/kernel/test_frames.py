"""The frame builder checked against scapy's dissectors (no root needed), so that a mistake in
frames.py cannot hide a parser bug or fake one."""

from __future__ import annotations

# A plain import: without scapy (python3-scapy, from the bootstrap) this module fails to
# collect, where importorskip would skip it silently, also under CI.
import scapy.all as scapy_all

from tests.support import frames as f


def _dissect(frame: f.Frame):
    return scapy_all.Ether(frame.data)


def test_ipv4_tcp_with_options() -> None:
    frame = f.v4_tcp("10.1.2.3", 8080, ihl=9, data_offset=8, payload=b"abc")
    packet = _dissect(frame)
    ip, tcp = packet[scapy_all.IP], packet[scapy_all.TCP]
    assert (ip.version, ip.ihl, ip.src, ip.len) == (4, 9, "10.1.2.3", frame.ip_length)
    assert (tcp.dport, tcp.dataofs, bytes(tcp.payload)) == (8080, 8, b"abc")
    assert frame.l4_end == 14 + 36 + 32


def test_ipv4_checksum_is_valid() -> None:
    data = f.v4_udp("10.1.2.3", 53, ihl=6).data
    rebuilt = scapy_all.Ether(data)
    del rebuilt[scapy_all.IP].chksum
    assert (
        scapy_all.Ether(bytes(rebuilt))[scapy_all.IP].chksum
        == scapy_all.Ether(data)[scapy_all.IP].chksum
    )


def test_vlan_tags() -> None:
    frame = f.v4_udp("10.1.2.4", 161, vlans=((f.ETH_P_8021AD, 10), (f.ETH_P_8021Q, 20)))
    packet = _dissect(frame)
    assert packet.type == f.ETH_P_8021AD
    tags = [layer for layer in packet.iterpayloads() if isinstance(layer, scapy_all.Dot1Q)]
    assert [tag.vlan for tag in tags] == [10, 20]
    assert packet[scapy_all.UDP].dport == 161
    assert frame.l4_end == 14 + 8 + 20 + 8


def test_ipv6_extension_chain() -> None:
    extensions = (
        f.hop_by_hop(),
        f.destination_options(1),
        f.routing(2),
        f.fragment(0, True),
        f.authentication(),
    )
    frame = f.v6_tcp("fd00::5", 443, extensions=extensions, data_offset=6)
    packet = _dissect(frame)
    ip6 = packet[scapy_all.IPv6]
    assert (ip6.src, ip6.plen) == ("fd00::5", frame.ip_length - 40)
    assert packet.haslayer(scapy_all.IPv6ExtHdrHopByHop)
    assert len(packet[scapy_all.IPv6ExtHdrHopByHop]) > 0
    assert packet[scapy_all.IPv6ExtHdrDestOpt].len == 1
    assert packet[scapy_all.IPv6ExtHdrRouting].len == 4
    assert packet[scapy_all.IPv6ExtHdrFragment].offset == 0
    assert packet[scapy_all.IPv6ExtHdrFragment].m == 1
    ah = packet[scapy_all.AH]
    assert (ah.nh, ah.payloadlen, len(ah.icv)) == (f.IPPROTO_TCP, 4, 12)
    # scapy stops at AH: the rest is raw bytes, which must be our TCP header
    tcp = scapy_all.TCP(bytes(ah.payload))
    assert (tcp.dport, tcp.dataofs) == (443, 6)
    assert frame.l4_end == len(frame)  # no payload: the frame ends with the TCP header


def test_ipv6_fragment_offset_and_udp() -> None:
    frame = f.v6_udp("fd00::6", 53, extensions=(f.fragment(185, False),))
    fragment = _dissect(frame)[scapy_all.IPv6ExtHdrFragment]
    assert (fragment.offset, fragment.m, fragment.nh) == (185, 0, f.IPPROTO_UDP)


def test_arp() -> None:
    packet = scapy_all.Ether(f.ethernet(f.ETH_P_ARP, f.arp_request("10.9.9.2", "10.9.9.1")))
    assert (packet[scapy_all.ARP].psrc, packet[scapy_all.ARP].pdst) == ("10.9.9.2", "10.9.9.1")
