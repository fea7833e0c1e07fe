"""Send real traffic from inside the client namespace: one line per packet to send.

Usage: send.py tcp|udp|icmp|sctp SRC DST PORT [COUNT]
  tcp: a connection attempt (SYN) from SRC to DST:PORT; the answer (RST or SYN-ACK) is not
       waited for beyond a short timeout.
  udp: COUNT datagrams from SRC to DST:PORT.
  icmp: COUNT ICMP (IPv4) or ICMPv6 messages of type PORT (8 and 128: echo requests) through
        a raw socket; the kernel answers echo requests.
  sctp: COUNT SCTP INITs to DST:PORT through a raw socket (no SCTP module needed).
Run with `ip netns exec NS /usr/bin/python3 send.py ...`; it exits 0 once everything was sent.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys


def main(argv: list[str]) -> int:
    proto, src, dst, port = argv[0], argv[1], argv[2], int(argv[3])
    count = int(argv[4]) if len(argv) > 4 else 1
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    if proto in ("icmp", "sctp"):
        return send_raw(proto, family, src, dst, port=port, count=count)
    for _ in range(count):
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(family, kind) as sock:
            sock.bind((src, 0))
            if proto == "tcp":
                sock.settimeout(0.5)
                # Refused or timed out: the SYN went out, which is all we need.
                with contextlib.suppress(OSError):
                    sock.connect((dst, port))
            else:
                sock.sendto(b"xdp-ip-counter e2e", (dst, port))
    return 0


def send_raw(proto: str, family: int, src: str, dst: str, *, port: int, count: int) -> int:
    if proto == "icmp":
        number = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
        # type, code, checksum, identifier, sequence, data; the checksum is computed for
        # ICMPv4 here, by the kernel for ICMPv6
        body = struct.pack("!BBHHH", port, 0, 0, 0x1C, 1) + b"xdp-ip-counter e2e"
        if family == socket.AF_INET:
            body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    else:
        number = socket.IPPROTO_SCTP
        # common header (ports, verification tag 0, checksum not checked by anyone here), INIT
        body = struct.pack("!HHII", 40000, port, 0, 0) + struct.pack(
            "!BBHIIHHI", 1, 0, 20, 0x1234, 65535, 1, 1, 1
        )
    with socket.socket(family, socket.SOCK_RAW, number) as sock:
        sock.bind((src, 0))
        for _ in range(count):
            sock.sendto(body, (dst, 0))
    return 0


def checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
