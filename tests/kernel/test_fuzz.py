"""Fuzz the XDP program through BPF_PROG_TEST_RUN: random bytes, and valid frames with random
mutations (flipped bits, truncation, wrong IPv4/IPv6 lengths, wrong IHL, wrong TCP data offset,
extension-header loops, absurd VLAN stacks).

Every frame must return XDP_PASS; every key the program recorded must be well-formed (family 4
or 6, an IPv4 key stored as ::ffff:a.b.c.d, a protocol chosen, a port the filter watches or an
ICMP type listed, a source the lists let through, the ingress ifindex the frame came in on); the
stats must add up to the frames sent. On top of
those invariants each chunk of frames is compared with a reference parser written from
bpf/parsing.h (outcome counts and the exact map contents), and a mismatch is narrowed down to the
first frame that differs, printed in hex.

The run is seeded: the seed is printed and is in every assertion message. Environment:

    XIC_FUZZ_FRAMES  frames per run (default 20000: a few seconds)
    XIC_FUZZ_SEED    the seed (default: a random one)

The full run (about 1.5 minutes for a million frames):

    XIC_FUZZ_FRAMES=1000000 /usr/bin/python3 -m pytest -s tests/kernel/test_fuzz.py

Replay a failure: the same command with XIC_FUZZ_SEED=<the printed seed> and the same
XIC_FUZZ_FRAMES (chunks are generated from the seed and their index, so only chunks up to the
failing one need to run again).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import struct
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.conftest import env_int
from tests.support import frames as f
from tests.support.netns import CLONE_NEWNET, Namespace, namespace_with_veths
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.config import PortFilter, parse_sources
from xdp_ip_counter.layout import OUTCOMES, PROTOCOLS

from .program import TCP, UDP, WINDOW, XDP_PASS

DEFAULT_FRAMES = 20_000
# The sources table is emptied before every chunk and has six chunks' worth of slots (6144 sets
# of 8 ways), so a chunk's keys (about a thousand) never fill a set: nothing is evicted (each
# chunk checks the evicted event) and "new" vs "known" key is exactly predictable.
CHUNK_FRAMES = 8192
CAPACITY = 4 * CHUNK_FRAMES
# Outcomes of the table, not of the parse: a race lost twice, a new-source budget.
NOT_FUZZED = frozenset({"insert_failed", "not_admitted"})
MIN_FRAME = 14  # BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header
MAX_FRAME = 1600  # well inside one page: the frame stays linear (no XDP frags)

# Ports 22, 53, 443 and 8000-8100: a filter with single ports, a range and bitmap-word edges
# (8000-8100 spans words 125..126), so a frame that escapes the filter shows up as a key.
WATCHED_PORTS = frozenset({22, 53, 443, *range(8000, 8101)})
NEAR_MISSES = (0, 21, 23, 52, 54, 442, 444, 7999, 8101, 65535)
V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
ICMP, ICMPV6 = f.IPPROTO_ICMP, f.IPPROTO_ICMPV6
SCTP, UDPLITE, DCCP = f.IPPROTO_SCTP, f.IPPROTO_UDPLITE, f.IPPROTO_DCCP
# Every protocol but UDP-Lite (generated too: a protocol not chosen is other_protocol unread).
FUZZ_PROTOCOLS = tuple(p for p in PROTOCOLS if p != UDPLITE)
FUZZ_ICMP_TYPES = ((ICMP, 3), (ICMP, 8), (ICMPV6, 1), (ICMPV6, 128))
ICMP_TYPES_GENERATED = (0, 1, 3, 8, 11, 128, 129)
# Random sources fall in and out of these: a quarter of each family is not included;
# 64.0.0.0/3 and 4000::/3 are excluded inside inclusions, 40.0.0.0/5 is included inside the
# excluded 32.0.0.0/4 (excluded: exclusion wins), e000::/4 is excluded and not included.
FUZZ_INCLUDE = parse_sources("0.0.0.0/1,128.0.0.0/2,40.0.0.0/5,::/1,c000::/2", "fuzz")
FUZZ_EXCLUDE = parse_sources("64.0.0.0/3,32.0.0.0/4,4000::/3,e000::/4", "fuzz")

VLAN_TYPES = (f.ETH_P_8021Q, f.ETH_P_8021AD)
# Extension headers the program walks (bpf/parsing.h), by how their length is encoded.
EXT_EIGHT_OCTET_UNITS = frozenset(
    {f.IPPROTO_HOPOPTS, f.IPPROTO_ROUTING, f.IPPROTO_DSTOPTS, 135, 139, 140}
)
EXT_WALKED = EXT_EIGHT_OCTET_UNITS | {f.IPPROTO_AH, f.IPPROTO_FRAGMENT}
# Weighted towards the common ones; Mobility, HIP and Shim6 share the 8-octet length encoding.
EXT_GENERATED = (
    *(f.IPPROTO_HOPOPTS, f.IPPROTO_ROUTING, f.IPPROTO_DSTOPTS, f.IPPROTO_AH, f.IPPROTO_FRAGMENT)
    * 3,
    135,
    139,
    140,
)
VLAN_MAX_DEPTH = 2
IPV6_EXT_MAX_DEPTH = 8


# -- the frames ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the headers of a generated valid frame are, for the mutations to aim at."""

    family: int  # 4 or 6
    l3: int  # offset of the IP header
    l4: int  # offset of the L4 header (after options or extension headers)
    proto: int  # the L4 protocol the frame was built with


class FrameFactory:
    """Frames of every kind the fuzz mixes, all from one seeded random.Random."""

    KINDS = ("random", "random_l3", "valid", "mutated", "vlan_stack", "ext_loop", "repeat")
    WEIGHTS = (15, 12, 10, 40, 5, 13, 5)
    RECENT = 64

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._recent: deque[bytes] = deque(maxlen=self.RECENT)

    def frame(self) -> tuple[str, bytes]:
        kind = self.rng.choices(self.KINDS, self.WEIGHTS)[0]
        data = bytes(getattr(self, f"_{kind}")()[:MAX_FRAME])
        self._recent.append(data)
        return kind, data

    def _repeat(self) -> bytes:
        """One of the last frames again: a known key is updated in place, not inserted."""
        if not self._recent:
            return self._valid()
        return self.rng.choice(self._recent)

    # -- kinds ----------------------------------------------------------------------------

    def _random(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(MIN_FRAME, MAX_FRAME))

    def _random_l3(self) -> bytes:
        """A plausible Ethernet (+ VLAN) header announcing IP, then random bytes, half the time
        with the right version nibble so that the IP parsers get past their first check."""
        r = self.rng
        ethertype, version = r.choice(((f.ETH_P_IP, 4), (f.ETH_P_IPV6, 6)))
        body = bytearray(r.randbytes(r.randint(0, 200)))
        if body and r.random() < 0.5:
            body[0] = (version << 4) | (body[0] & 0x0F)
        return f.ethernet(ethertype, bytes(body), self._vlans(absurd=False))

    def _valid(self) -> bytes:
        return self._build(self._vlans(absurd=False))[0]

    def _mutated(self) -> bytes:
        data, layout = self._build(self._vlans(absurd=False))
        buffer = bytearray(data)
        for _ in range(self.rng.randint(1, 3)):
            self._mutate(buffer, layout)
        return bytes(buffer)

    def _vlan_stack(self) -> bytes:
        """3 to 10 tags (the program walks 2)."""
        return self._build(self._vlans(absurd=True))[0]

    def _ext_loop(self) -> bytes:
        """IPv6 whose extension headers each name their own type as the next header, 2 to 20
        times; the last one's "next header" then points into the TCP/UDP header."""
        r = self.rng
        ext_type = r.choice(EXT_GENERATED)
        chain = b"".join(self._extension(ext_type, ext_type) for _ in range(r.randint(2, 20)))
        proto = r.choice((TCP, UDP))
        l4 = self._l4(proto)
        packet = f.ipv6(self._v6_source(), "fd00:ff::1", ext_type, chain + l4)
        data = f.ethernet(f.ETH_P_IPV6, packet, self._vlans(absurd=False))
        if r.random() < 0.3:
            buffer = bytearray(data)
            self._mutate(buffer, Layout(6, len(data) - len(packet), len(data) - len(l4), proto))
            data = bytes(buffer)
        return data

    # -- parts ----------------------------------------------------------------------------

    def _vlans(self, absurd: bool) -> tuple[tuple[int, int], ...]:
        r = self.rng
        if absurd:
            depth = r.randint(VLAN_MAX_DEPTH + 1, 10)
        else:
            depth = r.choices((0, 1, 2), (60, 20, 20))[0]
        if depth == 2 and r.random() < 0.7:
            return ((f.ETH_P_8021AD, r.getrandbits(12)), (f.ETH_P_8021Q, r.getrandbits(12)))
        return tuple((r.choice(VLAN_TYPES), r.getrandbits(12)) for _ in range(depth))

    def _port(self) -> int:
        r = self.rng
        pick = r.random()
        if pick < 0.6:
            return r.choice((22, 53, 443, 8000, 8100, r.randint(8000, 8100)))
        if pick < 0.8:
            return r.choice(NEAR_MISSES)
        return r.getrandbits(16)

    def _l4(self, proto: int) -> bytes:
        r = self.rng
        payload = r.randbytes(r.choice((0, 0, 1, 8, 40, 200)))
        if proto == TCP:
            offset = 5 if r.random() < 0.7 else r.randint(6, 15)
            return f.tcp(self._port(), data_offset=offset, payload=payload)
        if proto == UDP:
            return f.udp(self._port(), payload=payload)
        if proto == UDPLITE:
            return f.udplite(self._port(), payload=payload)
        if proto == SCTP:
            return f.sctp(self._port(), chunk=f.sctp_init() + payload)
        if proto == DCCP:
            extended = r.random() < 0.7
            fixed = (16 if extended else 12) + 4
            offset = fixed // 4 if r.random() < 0.7 else r.randint(fixed // 4, 20)
            return f.dccp(self._port(), extended=extended, data_offset=offset, payload=payload)
        if proto in (ICMP, ICMPV6):
            kind = r.choice(ICMP_TYPES_GENERATED) if r.random() < 0.8 else r.getrandbits(8)
            return f.icmp(kind, body=r.randbytes(4) + payload)
        return r.randbytes(r.randint(0, 40))

    def _v6_source(self) -> str:
        r = self.rng
        pick = r.random()
        if pick < 0.05:  # v4-mapped on the wire: still an IPv6 packet, recorded with family 6
            return str(ipaddress.IPv6Address((0xFFFF << 32) | r.getrandbits(32)))
        if pick < 0.1:
            return str(ipaddress.IPv6Address(r.getrandbits(32)))  # ::/96 and ::1-like
        return str(ipaddress.IPv6Address(r.getrandbits(128)))

    def _extension(self, ext_type: int, next_header: int) -> bytes:
        r = self.rng
        if ext_type == f.IPPROTO_ROUTING:
            return f.ipv6_routing_header(next_header, r.randint(0, 3))
        if ext_type == f.IPPROTO_FRAGMENT:
            later = r.random() < 0.15
            return f.ipv6_fragment_header(
                next_header, r.randint(1, 500) if later else 0, r.random() < 0.5
            )
        if ext_type == f.IPPROTO_AH:
            return f.ipv6_ah_header(next_header, r.randint(1, 6))
        return f.ipv6_options_header(next_header, r.randint(0, 3))

    def _build(self, vlans: tuple[tuple[int, int], ...]) -> tuple[bytes, Layout]:
        """A valid v4/v6 frame of TCP, UDP, the other protocols the program parses (ICMP in
        both versions of IP, as ICMPv6) or another protocol, and its layout."""
        r = self.rng
        proto = r.choices(
            (TCP, UDP, ICMP, ICMPV6, SCTP, UDPLITE, DCCP, f.IPPROTO_ESP), (30, 30, 7, 7, 8, 5, 8, 5)
        )[0]
        l3 = f.ETH_HLEN + 4 * len(vlans)
        if r.random() < 0.5:
            ihl = 5 if r.random() < 0.7 else r.randint(6, 15)
            fragment_field = r.choices(
                (0, 0x2000, 0x4000, r.randint(1, 0x1FFF) | r.choice((0, 0x2000))), (70, 10, 10, 10)
            )[0]
            l4 = self._l4(proto)
            packet = f.ipv4(
                str(ipaddress.IPv4Address(r.getrandbits(32))),
                "10.255.0.1",
                proto,
                l4,
                ihl=ihl,
                options=r.randbytes(ihl * 4 - 20),  # random options: the parser must skip them
                flags_fragment=fragment_field,
            )
            return f.ethernet(f.ETH_P_IP, packet, vlans), Layout(4, l3, l3 + ihl * 4, proto)
        types = [
            r.choice(EXT_GENERATED)
            for _ in range(r.choices((0, 1, 2, 4, 8, 9), (50, 20, 10, 10, 5, 5))[0])
        ]
        following = [*types, proto][1:]
        chain = b"".join(self._extension(t, n) for t, n in zip(types, following, strict=True))
        l4 = self._l4(proto)
        packet = f.ipv6(self._v6_source(), "fd00:ff::1", (types or [proto])[0], chain + l4)
        layout = Layout(6, l3, l3 + 40 + len(chain), proto)
        return f.ethernet(f.ETH_P_IPV6, packet, vlans), layout

    def _mutate(self, data: bytearray, layout: Layout) -> None:
        """One mutation, in place. A mutation aimed past the end (an earlier truncation) is
        skipped."""
        r = self.rng
        mutation = r.choice(
            (
                "flip",
                "flip",
                "flip",
                "truncate",
                "extend",
                "ip_length",
                "ihl_or_version",
                "l4_offset",
                "ethertype",
                "next_header",
            )
        )
        size = len(data)
        l3 = layout.l3
        if mutation == "flip":
            header_end = min(size, layout.l4 + 24)
            for _ in range(r.randint(1, 8)):
                position = r.randrange(header_end if r.random() < 0.8 else size)
                data[position] ^= 1 << r.randrange(8)
        elif mutation == "truncate":
            if size > MIN_FRAME:
                del data[r.randint(MIN_FRAME, size - 1) :]
        elif mutation == "extend":
            data += r.randbytes(r.randint(1, 64))
        elif mutation == "ip_length":
            offset = l3 + (2 if layout.family == 4 else 4)
            if offset + 2 <= size:
                real = struct.unpack_from("!H", data, offset)[0]
                value = r.choice((0, 1, real - 1, real + 1, real - 20, r.getrandbits(16), 0xFFFF))
                struct.pack_into("!H", data, offset, value & 0xFFFF)
        elif mutation == "ihl_or_version":
            if l3 < size:
                if r.random() < 0.7:  # IHL (IPv4) or the traffic class's top bits (IPv6)
                    data[l3] = (data[l3] & 0xF0) | r.getrandbits(4)
                else:
                    data[l3] = (r.getrandbits(4) << 4) | (data[l3] & 0x0F)
        elif mutation == "l4_offset":  # TCP's data offset; DCCP's, and its X bit
            if layout.proto == TCP and layout.l4 + 12 < size:
                data[layout.l4 + 12] = (r.getrandbits(4) << 4) | (data[layout.l4 + 12] & 0x0F)
            elif layout.proto == DCCP and layout.l4 + 8 < size:
                if r.random() < 0.5:
                    data[layout.l4 + 4] = r.choice((0, 1, 2, 3, 4, 5, r.getrandbits(8)))
                else:
                    data[layout.l4 + 8] ^= 1
        elif mutation == "ethertype":
            if l3 <= size:
                ethertype = r.choice((f.ETH_P_IP, f.ETH_P_IPV6, *VLAN_TYPES, r.getrandbits(16)))
                struct.pack_into("!H", data, l3 - 2, ethertype)
        elif mutation == "next_header":
            offset = l3 + (9 if layout.family == 4 else 6)
            if offset < size:
                data[offset] = r.choice(
                    (*EXT_WALKED, TCP, UDP, 59, ICMP, ICMPV6, SCTP, DCCP, r.getrandbits(8))
                )


def chunk_frames(seed: int, chunk: int, count: int) -> list[tuple[str, bytes]]:
    """The frames of one chunk: a function of (seed, chunk index) alone, so any chunk can be
    generated again on its own."""
    factory = FrameFactory(random.Random(f"xic-fuzz/{seed}/{chunk}"))
    return [factory.frame() for _ in range(count)]


# -- the reference parser (bpf/parsing.h and bpf/xdp_ip_counter.c, in Python) ---------------

Key = tuple[bytes, int, int, int, int]  # addr, ifindex, port, proto, family


def expected_outcome(
    data: bytes, watched: frozenset[int], ifindex: int
) -> tuple[str, Key | None, int]:
    """(outcome, key or None, IP length counted) for one frame, as the program should see it."""
    end = len(data)
    if end < 14:
        return "malformed", None, 0
    pos = 14
    ethertype = struct.unpack_from("!H", data, 12)[0]
    for _ in range(VLAN_MAX_DEPTH):
        if ethertype not in VLAN_TYPES:
            break
        if pos + 4 > end:
            return "malformed", None, 0
        ethertype = struct.unpack_from("!H", data, pos + 2)[0]
        pos += 4
    if ethertype in VLAN_TYPES:
        return "too_deep", None, 0
    l3 = pos
    if ethertype == f.ETH_P_IP:
        if pos + 20 > end or data[pos] >> 4 != 4 or data[pos] & 0x0F < 5:
            return "malformed", None, 0
        header = (data[pos] & 0x0F) * 4
        if pos + header > end:
            return "malformed", None, 0
        ip_len = struct.unpack_from("!H", data, pos + 2)[0]
        if ip_len < header:
            return "malformed", None, 0
        if struct.unpack_from("!H", data, pos + 6)[0] & 0x1FFF:
            return "fragment", None, 0
        proto = data[pos + 9]
        family, addr = 4, V4_MAPPED_PREFIX + data[pos + 12 : pos + 16]
        pos += header
    elif ethertype == f.ETH_P_IPV6:
        if pos + 40 > end or data[pos] >> 4 != 6:
            return "malformed", None, 0
        payload_len = struct.unpack_from("!H", data, pos + 4)[0]
        ip_len = payload_len + 40 if payload_len else end - l3  # 0: a jumbogram
        proto = data[pos + 6]
        family, addr = 6, data[pos + 8 : pos + 24]
        pos += 40
        for _ in range(IPV6_EXT_MAX_DEPTH):
            if proto not in EXT_WALKED:
                break
            if proto == f.IPPROTO_FRAGMENT:
                if pos + 8 > end:
                    return "malformed", None, 0
                if struct.unpack_from("!H", data, pos + 2)[0] & 0xFFF8:
                    return "fragment", None, 0
                proto, pos = data[pos], pos + 8
                continue
            if pos + 2 > end:
                return "malformed", None, 0
            units = data[pos + 1]
            length = (units + 2) * 4 if proto == f.IPPROTO_AH else (units + 1) * 8
            if pos + length > end:
                return "malformed", None, 0
            proto, pos = data[pos], pos + length
        if proto in EXT_WALKED:
            return "too_deep", None, 0
    else:
        return "not_ip", None, 0

    if proto not in FUZZ_PROTOCOLS or (proto, family) in ((ICMP, 6), (ICMPV6, 4)):
        return "other_protocol", None, 0
    if proto == TCP:
        if pos + 20 > end:
            return "malformed", None, 0
        header = (data[pos + 12] >> 4) * 4
        if header < 20 or pos + header > end:
            return "malformed", None, 0
    elif proto == DCCP:
        if pos + 12 > end:
            return "malformed", None, 0
        header = data[pos + 4] * 4
        if header < (16 if data[pos + 8] & 1 else 12) or pos + header > end:
            return "malformed", None, 0
    else:
        header = {UDP: 8, UDPLITE: 8, SCTP: 12, ICMP: 8, ICMPV6: 8}[proto]
        if pos + header > end:
            return "malformed", None, 0
    # the ICMP type, or the destination port
    port = data[pos] if proto in (ICMP, ICMPV6) else struct.unpack_from("!H", data, pos + 2)[0]
    if pos + header - l3 > ip_len:
        return "malformed", None, 0
    if proto in (ICMP, ICMPV6):
        if (proto, port) not in FUZZ_ICMP_TYPES:
            return "port_filtered", None, 0
    elif port not in watched:
        return "port_filtered", None, 0
    if in_list(addr, family, FUZZ_EXCLUDE):
        return "excluded", None, 0
    if not in_list(addr, family, FUZZ_INCLUDE):
        return "not_included", None, 0
    return "recorded", (addr, ifindex, port, proto, family), ip_len


def in_list(
    addr: bytes, family: int, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    """Whether a key's address (IPv4-mapped for IPv4) of family is in one of the prefixes of
    that family (an IPv6 frame from ::ffff:a.b.c.d is family 6: no IPv4 prefix matches it)."""
    address = ipaddress.IPv4Address(addr[12:]) if family == 4 else ipaddress.IPv6Address(addr)
    return any(address in network for network in networks if network.version == family)


@dataclass
class ChunkExpectation:
    outcomes: Counter
    table: dict[Key, list[int]]  # key -> [packets, bytes]


def expect_chunk(frames: list[bytes], watched: frozenset[int], ifindex: int) -> ChunkExpectation:
    """What a chunk should do to an empty map."""
    outcomes: Counter = Counter()
    table: dict[Key, list[int]] = {}
    for data in frames:
        outcome, key, ip_len = expected_outcome(data, watched, ifindex)
        if key is not None:
            if key in table:
                table[key][0] += 1
                table[key][1] += ip_len
            else:
                outcome = "recorded_new"
                table[key] = [1, ip_len]
        outcomes[outcome] += 1
    return ChunkExpectation(outcomes, table)


# -- running it --------------------------------------------------------------------------------


class FuzzTarget:
    """The compiled program, run from a thread inside a test namespace (BPF_PROG_TEST_RUN looks
    the ingress ifindex up in the caller's namespace), so keys carry a veth's ifindex, not lo's."""

    def __init__(self, datapath: DataPath, namespace: Namespace, ifname: str) -> None:
        self.datapath = datapath
        self.ifindex = namespace.ifindex(ifname)
        self._thread = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="fuzz",
            initializer=_enter_namespace,
            initargs=(namespace.name,),
        )

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    def run(self, frames: list[bytes]) -> list[int]:
        """Run every frame once; returns the return values."""
        return self._thread.submit(self._run, frames).result()

    def _run(self, frames: list[bytes]) -> list[int]:
        prog_fd, ifindex, run = self.datapath.prog_fd, self.ifindex, bpf_syscall.prog_test_run
        return [run(prog_fd, data, ifindex=ifindex).retval for data in frames]

    def stats(self) -> dict[str, int]:
        return self.datapath.read_stats()

    def table(self) -> dict[Key, tuple[int, int, int, int]]:
        """The sources table as key -> (first_seen, last_seen, packets, bytes)."""
        keys, values, _ = self.datapath.read_sources()
        table = {}
        for key, value in zip(keys.tolist(), values.tolist(), strict=True):
            table[(bytes(key[0]), *key[1:])] = value
        return table

    def clear(self) -> None:
        self.datapath.clear()


_libc = ctypes.CDLL(None, use_errno=True)


def _enter_namespace(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[FuzzTarget]:
    """Used by root-marked tests only: the root gate in tests/conftest.py runs first."""
    datapath = DataPath(CAPACITY)
    try:
        datapath.configure(
            PortFilter.of(WATCHED_PORTS),
            WINDOW,
            protocols=FUZZ_PROTOCOLS,
            icmp_types=FUZZ_ICMP_TYPES,
            exclude_sources=FUZZ_EXCLUDE,
            include_sources=FUZZ_INCLUDE,
        )
        with namespace_with_veths(f"{os.getpid() % 100000}z", pairs=1) as namespace:
            target = FuzzTarget(datapath, namespace, namespace.veths[0])
            try:
                yield target
            finally:
                target.close()
    finally:
        datapath.close()


def _key_problems(key: Key, value: tuple[int, int, int, int], ifindex: int) -> list[str]:
    """Why a recorded key (and its value) is not well-formed; [] when it is."""
    addr, key_ifindex, port, proto, family = key
    _, _, packets, byte_count = value
    problems = []
    if family not in (4, 6):
        problems.append(f"family {family}")
    if family == 4 and addr[:12] != V4_MAPPED_PREFIX:
        problems.append("family 4 but the address is not ::ffff:a.b.c.d")
    if proto not in FUZZ_PROTOCOLS:
        problems.append(f"protocol {proto}")
    if proto in (ICMP, ICMPV6):
        if (proto, port) not in FUZZ_ICMP_TYPES:
            problems.append(f"ICMP type {port} of protocol {proto} is not listed")
    elif port not in WATCHED_PORTS:
        problems.append(f"port {port} is not watched")
    if in_list(addr, family, FUZZ_EXCLUDE) or not in_list(addr, family, FUZZ_INCLUDE):
        problems.append("a source the lists keep out")
    if key_ifindex != ifindex:
        problems.append(f"ifindex {key_ifindex}, frames came in on {ifindex}")
    if value[0] > value[1]:
        problems.append("first_seen after last_seen")
    smallest_ip_packet = 20 + 8 if family == 4 else 40 + 8
    if packets < 1 or byte_count < packets * smallest_ip_packet:
        problems.append(f"{packets} packets of {byte_count} bytes")
    return problems


def _first_divergence(
    target: FuzzTarget, frames: list[tuple[str, bytes]], watched: frozenset[int]
) -> str:
    """Replay a chunk frame by frame on an empty map and describe the first frame whose outcome
    or map change differs from the reference parser."""
    target.clear()
    known: set[Key] = set()
    for index, (kind, data) in enumerate(frames):
        before_stats, before_table = target.stats(), target.table()
        target.run([data])
        after_stats, after_table = target.stats(), target.table()
        delta = {n: after_stats[n] - before_stats[n] for n in OUTCOMES}
        delta = {n: d for n, d in delta.items() if d}
        outcome, key, ip_len = expected_outcome(data, watched, target.ifindex)
        if key is not None and key not in known:
            outcome = "recorded_new"
        if key is not None:
            known.add(key)
        changed = {k: v[2:] for k, v in after_table.items() if before_table.get(k) != v}
        want_changed = {}
        if key is not None:
            packets, byte_count = before_table.get(key, (0, 0, 0, 0))[2:]
            want_changed = {key: (packets + 1, byte_count + ip_len)}
        if delta != {outcome: 1} or changed != want_changed:
            return (
                f"frame {index} of the chunk ({kind}, {len(data)} bytes): expected {outcome} "
                f"and map change {want_changed}, got {delta} and {changed}; frame: {data.hex()}"
            )
    return "no single frame differs when replayed one by one (an interaction between frames?)"


@pytest.mark.root
def test_fuzz(fuzz_target: FuzzTarget) -> None:
    total = env_int("XIC_FUZZ_FRAMES", DEFAULT_FRAMES, 1)
    seed = env_int("XIC_FUZZ_SEED", random.SystemRandom().getrandbits(32), 0)
    replay = f"seed {seed} (replay: XIC_FUZZ_SEED={seed} XIC_FUZZ_FRAMES={total})"
    print(f"\nfuzz: {total} frames, {replay}")
    target = fuzz_target
    started = time.monotonic()
    kinds: Counter = Counter()
    outcomes_total: Counter = Counter()
    keys_seen = 0
    sent = 0
    stats_at_start = target.stats()
    for chunk in range((total + CHUNK_FRAMES - 1) // CHUNK_FRAMES):
        frames = chunk_frames(seed, chunk, min(CHUNK_FRAMES, total - sent))
        data = [frame for _, frame in frames]
        kinds.update(kind for kind, _ in frames)
        target.clear()
        before = target.stats()
        evicted_before = target.datapath.read_events()["evicted"]
        try:
            verdicts = target.run(data)
        except OSError as exc:
            raise AssertionError(
                f"chunk {chunk}: BPF_PROG_TEST_RUN failed: {exc}; {replay}"
            ) from exc
        after = target.stats()
        sent += len(data)
        not_passed = [i for i, verdict in enumerate(verdicts) if verdict != XDP_PASS]
        assert not not_passed, (
            f"chunk {chunk}: {len(not_passed)} frames not passed, the first returned "
            f"{verdicts[not_passed[0]]}: {data[not_passed[0]].hex()}; {replay}"
        )
        delta = Counter({name: after[name] - before[name] for name in OUTCOMES})
        assert sum(delta.values()) == len(data), (
            f"chunk {chunk}: {len(data)} frames but the stats grew by {sum(delta.values())}: "
            f"{dict(delta)}; {replay}"
        )
        evicted = target.datapath.read_events()["evicted"] - evicted_before
        assert evicted == 0, (
            f"chunk {chunk}: {evicted} entries evicted from a table of {CAPACITY} entries; {replay}"
        )
        table = target.table()
        for key, value in table.items():
            problems = _key_problems(key, value, target.ifindex)
            assert not problems, f"chunk {chunk}: bad key {key} -> {value}: {problems}; {replay}"
        assert len(table) == delta["recorded_new"], (
            f"chunk {chunk}: {delta['recorded_new']} new keys counted, {len(table)} in the "
            f"table (nothing was evicted); {replay}"
        )
        assert sum(v[2] for v in table.values()) == delta["recorded"] + delta["recorded_new"], (
            f"chunk {chunk}: packets in the table do not add up to the recorded frames; {replay}"
        )

        expected = expect_chunk(data, WATCHED_PORTS, target.ifindex)
        actual_table = {key: [value[2], value[3]] for key, value in table.items()}
        if +delta != expected.outcomes or actual_table != expected.table:
            where = _first_divergence(target, frames, WATCHED_PORTS)
            raise AssertionError(
                f"chunk {chunk} differs from the reference parser: outcomes {dict(+delta)}, "
                f"expected {dict(expected.outcomes)}; {where}; {replay}"
            )
        outcomes_total.update(delta)
        keys_seen += len(table)
    target.clear()

    elapsed = time.monotonic() - started
    stats_at_end = target.stats()
    grown = sum(stats_at_end.values()) - sum(stats_at_start.values())
    assert grown == total, f"{total} frames sent, stats grew by {grown}; {replay}"
    print(
        f"fuzz: {total} frames in {elapsed:.1f} s ({total / elapsed:,.0f}/s), {keys_seen} keys "
        f"recorded and checked; kinds {dict(kinds)}; outcomes {dict(+outcomes_total)}; {replay}"
    )
    if total >= 5000:
        # The mix must reach every outcome of the parse, or it tests less than it claims (the
        # fuzzed program has room and no budget).
        unreached = [o for o in OUTCOMES if o not in NOT_FUZZED and not outcomes_total[o]]
        assert not unreached, f"the frame mix never produced {unreached}; {replay}"


def test_reference_parser_agrees_with_the_hand_built_frames() -> None:
    """The reference parser against frames whose outcome the parser tests pin down, so that a
    mismatch in test_fuzz points at the program, not at the reference."""
    watched, lo = WATCHED_PORTS, 1
    v4_key = (f.ipv4_mapped("10.40.0.2"), lo, 22, TCP, 4)
    cases = [
        (f.v4_tcp("10.40.0.2", 22).data, ("recorded", v4_key, 40)),
        (f.v4_tcp("10.40.0.2", 80).data, ("port_filtered", None, 0)),
        (f.v4_tcp("10.40.0.2", 22, ihl=7, data_offset=8).data, ("recorded", v4_key, 60)),
        (f.v4_udp("10.40.0.2", 22, flags_fragment=3).data, ("fragment", None, 0)),
        (f.v4_tcp("10.40.0.2", 22, vlans=((f.ETH_P_8021Q, 1),) * 3).data, ("too_deep", None, 0)),
        (f.ethernet(f.ETH_P_ARP, f.arp_request()), ("not_ip", None, 0)),
        (f.v4_tcp("10.40.0.2", 22).data[:53], ("malformed", None, 0)),
        (
            f.v6_udp("fd00:40::2", 53, extensions=(f.hop_by_hop(), f.authentication())).data,
            ("recorded", (f.ipv6_bytes("fd00:40::2"), lo, 53, UDP, 6), 40 + 8 + 24 + 8),
        ),
        (f.v6_udp("fd00:40::2", 53, extensions=(f.hop_by_hop(),) * 9).data, ("too_deep", None, 0)),
        (
            f.v6_udp("fd00:40::2", 53, extensions=(f.fragment(1, False),)).data,
            ("fragment", None, 0),
        ),
        (
            f.v6_l4("fd00:40::2", f.IPPROTO_ICMPV6, f.icmpv6_echo(), 8).data,
            ("recorded", (f.ipv6_bytes("fd00:40::2"), lo, 128, ICMPV6, 6), 40 + 12),
        ),
        (f.v6_proto("fd00:40::2", "icmpv6", 129).data, ("port_filtered", None, 0)),
        (f.v6_proto("fd00:40::2", "icmp", 8).data, ("other_protocol", None, 0)),
        (f.v4_proto("10.40.0.2", "udplite", 53).data, ("other_protocol", None, 0)),
        (
            f.v4_proto("10.40.0.2", "sctp", 22).data,
            ("recorded", (f.ipv4_mapped("10.40.0.2"), lo, 22, SCTP, 4), 20 + 12 + 20),
        ),
        (f.v4_proto("10.40.0.2", "dccp", 22).data[: 14 + 20 + 19], ("malformed", None, 0)),
        (f.v4_tcp("64.0.0.1", 22).data, ("excluded", None, 0)),
        (f.v4_tcp("192.0.2.1", 22).data, ("not_included", None, 0)),
        (f.v6_tcp("4000::1", 22).data, ("excluded", None, 0)),
        (f.v6_tcp("8000::1", 22).data, ("not_included", None, 0)),
    ]
    for data, want in cases:
        assert expected_outcome(data, watched, lo) == want, data.hex()
    # and a frame mix from a fixed seed: every frame parses without an exception, the lengths are
    # within the frame limits, and every kind shows up
    frames = chunk_frames(0, 0, 3000)
    assert {kind for kind, _ in frames} == set(FrameFactory.KINDS)
    assert all(MIN_FRAME <= len(data) <= MAX_FRAME for _, data in frames)
    reached = Counter(expected_outcome(data, watched, lo)[0] for _, data in frames)
    assert set(reached) == set(OUTCOMES) - {"recorded_new", *NOT_FUZZED}, reached
