"""The kernel map layouts, mirrored once for the Python side.

The C definitions (bpf/source_key.h: the key and the outcomes; bpf/xdp_ip_counter.c: the
value) are the source of truth; tests/kernel compares these sizes and offsets against the ctypes
types bcc generates from the compiled program.
"""

from __future__ import annotations

import numpy as np

# Bumped whenever source_key or source_value change: a map pinned by another layout is not read.
LAYOUT_VERSION = 1

# struct source_key (24 bytes). IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d) in addr,
# with family == 4; IPv6 addresses as they are, with family == 6. port is in host byte order.
KEY_DTYPE = np.dtype(
    [
        ("addr", "V16"),
        ("ifindex", "<u4"),
        ("port", "<u2"),
        ("proto", "u1"),
        ("family", "u1"),
    ]
)

# struct source_value (32 bytes). Times are ns of CLOCK_MONOTONIC at the start of the current
# jiffy (the program reads bpf_jiffies64(); clock.kernel_clock_ns() reads the same clock).
VALUE_DTYPE = np.dtype(
    [
        ("first_seen", "<u8"),
        ("last_seen", "<u8"),
        ("packets", "<u8"),
        ("bytes", "<u8"),
    ]
)

# Index of each outcome in the per-CPU stats array; every frame increments exactly one of them.
OUTCOMES = (
    "recorded",  # a known (interface, source, protocol, port) updated in place
    "recorded_new",  # a new key inserted (the LRU may have evicted an older one for it)
    "not_ip",  # EtherType neither IPv4 nor IPv6 (ARP, LLDP, ...)
    "other_protocol",  # IP, but not TCP/UDP: ICMP, ESP, No Next Header, unknown extension header
    "port_filtered",  # TCP/UDP to a port that is not watched
    "fragment",  # a non-first fragment: it carries no ports
    "malformed",  # truncated or invalid at some layer
    "too_deep",  # more VLAN tags or IPv6 extension headers than the parser walks
    "insert_failed",  # a new key that could not be inserted
)

PROTOCOLS = {6: "tcp", 17: "udp"}
FAMILIES = {4: "v4", 6: "v6"}
