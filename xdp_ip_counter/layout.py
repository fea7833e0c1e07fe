"""The kernel map layouts, mirrored once for the Python side.

The C definitions (bpf/source_key.h: the key, the outcomes and events; bpf/xdp_ip_counter.c:
the value, the table's sets and the sketch's slots) are the source of truth; tests/kernel
compares these sizes and offsets against the ctypes types bcc generates from the compiled
program.
"""

from __future__ import annotations

import numpy as np

# Bumped whenever source_key, source_value, the set or its tag word change: a table pinned by
# another layout is not read (but see TABLE_READABLE_VERSIONS).
TABLE_LAYOUT_VERSION = 3
# Layout 2 had one set per key: its tag words are read as layout 3's (the SECONDARY bit was
# part of the tag hash: a few more duplicate candidates, compared by key).
TABLE_READABLE_VERSIONS = (2,)
# Bumped whenever the sketch slot, sketch_of_port or the sketch ids change.
SKETCH_LAYOUT_VERSION = 3

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

# The sources table (xdp_ip_counter.c, struct set): one array element is one set, WAYS tag
# words then WAYS slots of 64 bytes (struct slot: the value, the key, and the source lists the
# source was let through by: port_filter.source_lists then).
WAYS = 8
SLOT_DTYPE = np.dtype([("value", VALUE_DTYPE), ("key", KEY_DTYPE), ("lists", "<u8")])
SET_WORDS = WAYS + WAYS * SLOT_DTYPE.itemsize // 8  # 72 64-bit words, 576 bytes
SET_DTYPE = np.dtype([("tag", "<u8", (WAYS,)), ("way", SLOT_DTYPE, (WAYS,))])
# A tag word: tag hash << 32 | ESTABLISHED | stamp (last seen >> 30); tag hash = the key hash's
# low 32 bits with bit 0 set and bit 1 = SECONDARY (the key's alternate set holds the slot).
# Each key has two sets in one block of BLOCK_SETS (table.py: primary_set, alternate_set).
STAMP_SHIFT = 30
STAMP_MASK = (1 << 31) - 1
ESTABLISHED = 1 << 31
SECONDARY = 2 << 32
BLOCK_SETS = 2048
# A new key takes its primary set when that has ROOMY free slots or more; otherwise the one of
# its two sets with more free slots (the primary on a tie).
ROOMY = 5

# The sketch (struct sketch_slot): HLL_P index bits, one byte per register; RING slots per
# sketch, one per tick of 2**TICK_SHIFT ns. Sketches 0..OTHER_SKETCHES - 1 are the "other ports"
# sketches, one per (family, protocol) (OTHER_SKETCH_IDS, the kernel's other_sketch()); TCP and
# UDP ports may have sketches of their own after them (sketch.py, SketchPlan), the other
# protocols always count in their (family, protocol)'s.
HLL_P = 14
RING = 8
TICK_SHIFT = 33
OTHER_SKETCH_IDS = {
    (4, 6): 0,
    (4, 17): 1,
    (6, 6): 2,
    (6, 17): 3,
    (4, 1): 4,
    (6, 58): 5,
    (4, 132): 6,
    (6, 132): 7,
    (4, 136): 8,
    (6, 136): 9,
    (4, 33): 10,
    (6, 33): 11,
}
OTHER_SKETCHES = len(OTHER_SKETCH_IDS)
SKETCH_SLOT_DTYPE = np.dtype([("tick", "<u8"), ("lost", "<u8"), ("reg", "u1", (1 << HLL_P,))])

# Index of each outcome in the per-CPU stats array; every frame increments exactly one of them.
OUTCOMES = (
    "recorded",  # a known (interface, source, protocol, port) updated in place
    "recorded_new",  # a new entry (in a free slot, or one given up by another key)
    "not_ip",  # EtherType neither IPv4 nor IPv6 (ARP, LLDP, ...)
    "other_protocol",  # IP, but not a protocol recorded (see protocols): ESP, No Next Header, ...
    "port_filtered",  # to a port (an ICMP type) that is not watched
    "fragment",  # a non-first fragment: it carries no ports
    "malformed",  # truncated or invalid at some layer
    "too_deep",  # more VLAN tags or IPv6 extension headers than the parser walks
    "insert_failed",  # a new key that could not be given a slot (two claims lost to races)
    "not_admitted",  # a new key past its CPU's new_source_budget for the tick: sketch only
    "excluded",  # a source in exclude_sources
    "not_included",  # a source not in include_sources (when that list is given)
)
# Counted after the outcomes in the same per-CPU array (enum event).
EVENTS = (
    "evicted",  # a live entry given up for a new key (the table's set was full)
    "sketch_ticks",  # sketch slots cleared for a new tick
)

# The recorded protocols, by IP protocol number, in the order of the protocols setting's --help.
# TCP, UDP, SCTP, UDP-Lite and DCCP carry a destination port; ICMP (IPv4 only) and ICMPv6 (IPv6
# only) carry their message type where the key holds the port.
PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 136: "udplite", 33: "dccp"}
PROTOCOL_NUMBERS = {name: number for number, name in PROTOCOLS.items()}
ICMP_PROTOCOLS = {1: 4, 58: 6}  # protocol -> the one family it is recorded in
PORT_PROTOCOLS = (6, 17, 132, 136, 33)
DEFAULT_PROTOCOLS = (6, 17)  # the original tool's
DEFAULT_ICMP_TYPES = ((1, 8), (58, 128))  # (protocol, type): echo requests


def protocol_bits(protocols: tuple[int, ...]) -> int:
    """port_filter.protocols: bit i for the i-th protocol of PROTOCOLS (bpf/source_key.h,
    PROTOCOL_*)."""
    return sum(1 << i for i, number in enumerate(PROTOCOLS) if number in protocols)


def protocol_families(proto: int) -> tuple[int, ...]:
    """The families a protocol is recorded in: ICMP in IPv4, ICMPv6 in IPv6, the others both."""
    return (ICMP_PROTOCOLS[proto],) if proto in ICMP_PROTOCOLS else (4, 6)


FAMILIES = {4: "v4", 6: "v6"}
