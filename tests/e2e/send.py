"""Send real traffic from inside the client namespace: one line per packet to send.

Usage: send.py tcp|udp SRC DST PORT [COUNT]
  tcp: a connection attempt (SYN) from SRC to DST:PORT; the answer (RST or SYN-ACK) is not
       waited for beyond a short timeout.
  udp: COUNT datagrams from SRC to DST:PORT.
Run with `ip netns exec NS /usr/bin/python3 send.py ...`; it exits 0 once everything was sent.
"""

from __future__ import annotations

import contextlib
import socket
import sys


def main(argv: list[str]) -> int:
    proto, src, dst, port = argv[0], argv[1], argv[2], int(argv[3])
    count = int(argv[4]) if len(argv) > 4 else 1
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
