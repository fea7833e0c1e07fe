"""The sliding window: a snapshot of the kernel map in, the active set out.

Pure: no bcc, no clock, no I/O. Every time comes in with the snapshot, so tests inject it.

Decisions:
- A key is active when ``last_seen >= taken_at_ns - window_s * 1e9``: a source seen exactly at the
  window's edge is still in it.
- Rows are aggregated per (address, family, protocol, port) across interfaces: first_seen is the
  earliest, last_seen the latest, packets and bytes are summed, and the interfaces are kept as a
  bit set over the snapshot's distinct ifindexes.
- Order is (port, protocol number, family, address), with the address compared numerically (as
  its big-endian bytes): 10.0.0.9 sorts before 10.0.0.10, as an operator expects, and IPv4 sorts
  before IPv6 because family 4 < 6. Protocol order is by number (tcp 6 before udp 17), which is
  also alphabetical.
- Prefixes (active_prefixes) and scanners (scanning_sources, /list?scanners=1) are counted from
  the same rows as the sources: a source seen on several interfaces counts once, since a
  repeated (prefix, group) or (address, port) is counted once whatever its interface.
- Work is done on numpy arrays: a million rows are sorted and reduced in a fraction of a second.
  Text (canonical addresses, RFC 3339 times) is produced only when /list asks for it, a slice at a
  time.
- Times are RFC 3339 in UTC with millisecond precision and a "Z" suffix
  (``2024-05-01T12:00:03.125Z``): the kernel's clock (jiffies) ticks every few milliseconds, so
  milliseconds keep the order of events within a second without claiming more than it knows.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from xdp_ip_counter.layout import FAMILIES, KEY_DTYPE, PORT_PROTOCOLS, PROTOCOLS, VALUE_DTYPE
from xdp_ip_counter.table import key_hash

NS_PER_S = 1_000_000_000

# One aggregated row of the active set: a distinct (address, family, protocol, port).
ACTIVE_DTYPE = np.dtype(
    [
        ("addr", "V16"),  # as in the kernel key: IPv4 stored as ::ffff:a.b.c.d
        ("family", "u1"),
        ("proto", "u1"),
        ("port", "<u2"),
        ("first_seen", "<u8"),  # kernel CLOCK_MONOTONIC ns, earliest over the interfaces
        ("last_seen", "<u8"),  # latest over the interfaces
        ("packets", "<u8"),
        ("bytes", "<u8"),
    ]
)

# Distinct source addresses per (family, protocol, port): what active_users exposes.
COUNT_DTYPE = np.dtype([("family", "u1"), ("proto", "u1"), ("port", "<u2"), ("sources", "<u8")])

# Distinct source prefixes of a length per (family, protocol, port): what active_prefixes exposes.
PREFIX_COUNT_DTYPE = np.dtype(
    [("family", "u1"), ("proto", "u1"), ("port", "<u2"), ("length", "u1"), ("prefixes", "<u8")]
)

# A source that tried scan_ports distinct destination ports or more within the window (over the
# protocols with ports, across interfaces): what scanning_sources counts and /list?scanners=1
# lists.
SCANNER_DTYPE = np.dtype([("addr", "V16"), ("family", "u1"), ("ports", "<u4")])


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One read of the kernel maps.

    ``taken_at_ns`` is the kernel's CLOCK_MONOTONIC when the read finished (read it after the
    batch lookup, so no last_seen is later than it by more than the read took);
    ``taken_at_wall`` is ``time.time()`` at the same moment. A kernel time ``t_ns`` is the wall
    time ``taken_at_wall + (t_ns - taken_at_ns) / 1e9``.
    """

    keys: np.ndarray  # layout.KEY_DTYPE
    values: np.ndarray  # layout.VALUE_DTYPE, values[i] belongs to keys[i]
    taken_at_ns: int
    taken_at_wall: float
    stats: dict[str, int] = field(default_factory=dict)  # outcome -> frames, summed over CPUs
    entries_in_map: int = 0
    capacity: int = 0

    def __post_init__(self) -> None:
        if self.keys.dtype != KEY_DTYPE:
            raise TypeError(
                f"Snapshot.keys must have dtype layout.KEY_DTYPE, not {self.keys.dtype}"
            )
        if self.values.dtype != VALUE_DTYPE:
            raise TypeError(
                f"Snapshot.values must have dtype layout.VALUE_DTYPE, not {self.values.dtype}"
            )
        if self.keys.shape != self.values.shape or self.keys.ndim != 1:
            raise ValueError(
                f"Snapshot keys {self.keys.shape} and values {self.values.shape} do not match"
            )


@dataclass(frozen=True, eq=False)
class ActiveSet:
    """Every (address, family, protocol, port) seen within the window, across interfaces."""

    rows: np.ndarray  # ACTIVE_DTYPE, sorted (port, proto, family, address)
    # interface_bits[i, w] bit b set: rows[i] was seen on interface_names[64 * w + b]
    interface_bits: np.ndarray  # shape (len(rows), words), uint64
    interface_names: tuple[str, ...]
    counts: np.ndarray  # COUNT_DTYPE, sorted (port, proto, family); only combinations with rows
    window_s: int
    taken_at_ns: int
    taken_at_wall: float
    # Of the whole set (a selection has none): PREFIX_COUNT_DTYPE sorted (port, proto, family,
    # length), only combinations with rows; SCANNER_DTYPE sorted (ports descending, family,
    # address).
    prefixes: np.ndarray = field(default_factory=lambda: np.zeros(0, PREFIX_COUNT_DTYPE))
    scanners: np.ndarray = field(default_factory=lambda: np.zeros(0, SCANNER_DTYPE))

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def empty(cls, window_s: int, taken_at_ns: int = 0, taken_at_wall: float = 0.0) -> ActiveSet:
        return cls(
            rows=np.zeros(0, ACTIVE_DTYPE),
            interface_bits=np.zeros((0, 1), np.uint64),
            interface_names=(),
            counts=np.zeros(0, COUNT_DTYPE),
            window_s=window_s,
            taken_at_ns=taken_at_ns,
            taken_at_wall=taken_at_wall,
        )

    def count_map(self) -> dict[tuple[int, int, int], int]:
        """{(family, proto, port): distinct sources}."""
        return count_map(self.counts)

    def prefix_map(self) -> dict[tuple[int, int, int, int], int]:
        """{(family, proto, port, length): distinct prefixes}."""
        return prefix_map(self.prefixes)

    def select(
        self,
        ports: Sequence[int] | None = None,
        protos: Sequence[int] | None = None,
        families: Sequence[int] | None = None,
        interfaces: Sequence[str] | None = None,
    ) -> ActiveSet:
        """The rows matching every given filter; within one filter any value matches (OR).

        ``counts`` of the result are recomputed for the selected rows; it has no prefixes or
        scanners.
        """
        keep = np.ones(len(self.rows), bool)
        if ports is not None:
            keep &= np.isin(self.rows["port"], np.asarray(list(ports), np.uint16))
        if protos is not None:
            keep &= np.isin(self.rows["proto"], np.asarray(list(protos), np.uint8))
        if families is not None:
            keep &= np.isin(self.rows["family"], np.asarray(list(families), np.uint8))
        if interfaces is not None:
            on_any = np.zeros(len(self.rows), bool)
            for position, name in enumerate(self.interface_names):
                if name in interfaces:
                    word, bit = divmod(position, 64)
                    on_any |= (self.interface_bits[:, word] >> np.uint64(bit)) & np.uint64(1) == 1
            keep &= on_any
        if keep.all():
            return self
        rows = self.rows[keep]
        return ActiveSet(
            rows=rows,
            interface_bits=self.interface_bits[keep],
            interface_names=self.interface_names,
            counts=_count_sources(rows),
            window_s=self.window_s,
            taken_at_ns=self.taken_at_ns,
            taken_at_wall=self.taken_at_wall,
        )

    def ip_texts(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Canonical text of the addresses of rows[start:stop].

        IPv4 dotted quad (never v4-mapped); IPv6 compressed lowercase as RFC 5952.
        """
        return format_addresses(self.rows[start:stop])

    def interface_lists(self, start: int = 0, stop: int | None = None) -> list[tuple[str, ...]]:
        """Sorted interface names of each of rows[start:stop]."""
        bits = self.interface_bits[start:stop]
        cache: dict[bytes, tuple[str, ...]] = {}
        result = []
        for row in bits:
            raw = row.tobytes()
            names = cache.get(raw)
            if names is None:
                names = interface_names_of(row, self.interface_names)
                cache[raw] = names
            result.append(names)
        return result

    def wall_ms(self, times_ns: np.ndarray) -> np.ndarray:
        """Kernel monotonic ns -> wall clock ms since the epoch (int64)."""
        delta_ns = times_ns.astype(np.int64) - np.int64(self.taken_at_ns)
        wall_ns = np.int64(round(self.taken_at_wall * NS_PER_S)) + delta_ns
        return wall_ns // 1_000_000


def prefix_map(prefixes: np.ndarray) -> dict[tuple[int, int, int, int], int]:
    """PREFIX_COUNT_DTYPE rows as {(family, proto, port, length): distinct prefixes}."""
    columns = ("family", "proto", "port", "length", "prefixes")
    return {
        (f, p, port, length): n
        for f, p, port, length, n in zip(*(prefixes[c].tolist() for c in columns), strict=True)
    }


def count_map(counts: np.ndarray) -> dict[tuple[int, int, int], int]:
    """COUNT_DTYPE rows as {(family, proto, port): distinct sources}."""
    return {
        (int(f), int(p), int(port)): int(n)
        for f, p, port, n in zip(
            counts["family"].tolist(),
            counts["proto"].tolist(),
            counts["port"].tolist(),
            counts["sources"].tolist(),
            strict=True,
        )
    }


class DeferredActiveSet:
    """The active set of a snapshot as the daemon serves it: the counts, prefix counts and
    scanners (what /metrics and /list?scanners=1 need) made at once (count_window); the rows
    (sorted and merged across interfaces: what /list needs) made the first time something asks
    for them, and kept. Thread-safe: the HTTP threads may ask at once. The snapshot's arrays are
    held until then."""

    def __init__(
        self,
        snapshot: Snapshot,
        window_s: int,
        ifnames: Mapping[int, str],
        *,
        prefix_lengths: Sequence[tuple[int, int]] = (),
        scan_ports: int = 0,
    ) -> None:
        self.window_s = window_s
        self.taken_at_ns = snapshot.taken_at_ns
        self.taken_at_wall = snapshot.taken_at_wall
        counted = count_window(snapshot, window_s, prefix_lengths, scan_ports)
        self.counts, self._rows = counted.sources, counted.rows
        self.prefixes, self.scanners = counted.prefixes, counted.scanners
        self._snapshot: Snapshot | None = snapshot
        self._ifnames = dict(ifnames)
        self._active: ActiveSet | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._rows

    def count_map(self) -> dict[tuple[int, int, int], int]:
        return count_map(self.counts)

    def prefix_map(self) -> dict[tuple[int, int, int, int], int]:
        return prefix_map(self.prefixes)

    def resolve(self) -> ActiveSet:
        """The whole ActiveSet (made once), with the prefixes and scanners counted already."""
        with self._lock:
            if self._active is None:
                assert self._snapshot is not None
                active = active_set(self._snapshot, self.window_s, self._ifnames)
                self._active = replace(active, prefixes=self.prefixes, scanners=self.scanners)
                self._snapshot = None
            return self._active

    def select(self, **filters: Sequence[int] | Sequence[str] | None) -> ActiveSet:
        return self.resolve().select(**filters)  # type: ignore[arg-type]

    @property
    def rows(self) -> np.ndarray:
        return self.resolve().rows


@dataclass(frozen=True, eq=False)
class WindowCounts:
    """What count_window makes of a snapshot."""

    sources: np.ndarray  # COUNT_DTYPE, sorted (port, proto, family)
    prefixes: np.ndarray  # PREFIX_COUNT_DTYPE, sorted (port, proto, family, length)
    scanners: np.ndarray  # SCANNER_DTYPE, sorted (ports descending, family, address)
    rows: int  # distinct (address, family, protocol, port): the rows active_set() would make


def count_window(
    snapshot: Snapshot,
    window_s: int,
    prefix_lengths: Sequence[tuple[int, int]] = (),
    scan_ports: int = 0,
) -> WindowCounts:
    """The counts of the keys within the window, as active_set() would give them, without
    sorting the rows: each key is in the snapshot once, so with one interface every key is a
    distinct source; with several, the keys of one source on several interfaces are counted
    once (_source_kinds). Prefix counts of the (family, length) pairs of ``prefix_lengths``
    (count_prefixes) and the sources that tried ``scan_ports`` ports or more (find_scanners; 0:
    none) from the same keys."""
    inside = snapshot.values["last_seen"] >= _cutoff(snapshot.taken_at_ns, window_s)
    keys = snapshot.keys if inside.all() else snapshot.keys[inside]
    del inside
    if len(keys) == 0:
        return WindowCounts(
            np.zeros(0, COUNT_DTYPE),
            np.zeros(0, PREFIX_COUNT_DTYPE),
            np.zeros(0, SCANNER_DTYPE),
            0,
        )
    ifindex = keys["ifindex"]
    if ifindex.min() == ifindex.max():  # one interface: each key is a distinct source
        group, kinds = _groups(_kinds(keys))
        sources, rows = _kind_counts(kinds, np.bincount(group, minlength=len(kinds))), len(keys)
    else:
        distinct = _source_kinds(keys)
        sources, rows = _kind_counts(*_count_each(distinct)), len(distinct)
        del distinct
        group, kinds = _groups(_kinds(keys)) if prefix_lengths else (None, None)
    prefixes = np.zeros(0, PREFIX_COUNT_DTYPE)
    if prefix_lengths:
        assert group is not None and kinds is not None
        prefixes = _count_prefixes(keys, group, kinds, prefix_lengths)
    del group
    return WindowCounts(sources, prefixes, find_scanners(keys, scan_ports), rows)


def _kinds(rows: np.ndarray) -> np.ndarray:
    """port | proto << 16 | family << 24 (uint32) of each row of a KEY_DTYPE or ACTIVE_DTYPE
    array."""
    if rows.dtype == KEY_DTYPE:  # the key's last 4 bytes, read as one word
        return np.ascontiguousarray(rows).view("<u4").reshape(-1, 6)[:, 5].copy()
    kind = rows["port"].astype(np.uint32)
    kind |= rows["proto"].astype(np.uint32) << np.uint32(16)
    kind |= rows["family"].astype(np.uint32) << np.uint32(24)
    return kind


def _groups(kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group, kinds): kinds the distinct values of kind, ascending, and group[i] the index of
    kind[i] in it. By counting, not sorting: the (protocol, family) pairs present (a handful)
    and then the ports of each."""
    # The arrays of a row each are made in place where they can: with the daemon's mmap
    # threshold every new one is fresh pages, and faulting them in costs as much as the work.
    slot = kind.astype(np.intp)
    slot >>= 16  # pair: proto | family << 8
    pairs = np.flatnonzero(np.bincount(slot, minlength=1 << 16))
    # slot = pair's index << 16 | port, as (index - pair) << 16 + kind: no temporary array.
    shift_by = np.zeros(1 << 16, np.intp)
    shift_by[pairs] = np.arange(len(pairs)) - pairs
    np.take(shift_by, slot, out=slot, mode="clip")  # "clip": not buffered
    slot <<= 16
    slot += kind
    used = np.flatnonzero(np.bincount(slot, minlength=len(pairs) << 16))
    kinds = ((pairs[used >> 16] << 16) | (used & 0xFFFF)).astype(np.uint32)
    index = np.zeros(len(pairs) << 16, np.min_scalar_type(max(len(used) - 1, 0)))
    index[used] = np.arange(len(used))
    return index[slot], kinds


def _count_each(kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct kinds ascending, how many times each occurs)."""
    group, kinds = _groups(kind)
    return kinds, np.bincount(group, minlength=len(kinds))


def _kind_counts(kinds: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """COUNT_DTYPE of kinds and their counts, sorted (port, proto, family)."""
    counts = np.empty(len(kinds), COUNT_DTYPE)
    counts["port"] = kinds & np.uint32(0xFFFF)
    counts["proto"] = (kinds >> np.uint32(16)) & np.uint32(0xFF)
    counts["family"] = kinds >> np.uint32(24)
    counts["sources"] = sources
    return counts[np.lexsort((counts["family"], counts["proto"], counts["port"]))]


def count_prefixes(rows: np.ndarray, prefix_lengths: Sequence[tuple[int, int]]) -> np.ndarray:
    """PREFIX_COUNT_DTYPE: the distinct source prefixes of each (family, length) of
    prefix_lengths per (family, protocol, port) of rows (KEY_DTYPE or ACTIVE_DTYPE; a row
    repeated, as for a source seen on several interfaces, counts once), sorted (port, proto,
    family, length); only the (family, protocol, port) with rows."""
    if len(rows) == 0 or not prefix_lengths:
        return np.zeros(0, PREFIX_COUNT_DTYPE)
    group, kinds = _groups(_kinds(rows))
    return _count_prefixes(rows, group, kinds, prefix_lengths)


def _count_prefixes(
    rows: np.ndarray,
    group: np.ndarray,
    kinds: np.ndarray,
    prefix_lengths: Sequence[tuple[int, int]],
) -> np.ndarray:
    """count_prefixes with the rows' groups (_groups) made already.

    Per family, the rows as (group, address) sorted once by group, then by the address's
    longest prefix wanted: each shorter prefix is then sorted too, so every length is counted
    by comparing neighbours. IPv4 and IPv6 prefixes of up to 64 bits (with the group in front)
    fit one 64-bit integer (_sorted_keys); longer IPv6 prefixes sort the address's two halves.
    """
    parts = []
    found: list[np.ndarray] = []  # per (family, length): the group of each distinct prefix
    group_bits = max(len(kinds) - 1, 1).bit_length()
    for family in sorted({f for f, _ in prefix_lengths}):
        lengths = sorted({length for f, length in prefix_lengths if f == family})
        of_family = np.flatnonzero(rows["family"] == family)
        if len(of_family) == 0:
            continue
        # high: the IPv4 address (32 bits), or the IPv6 address's high half (64 bits)
        if family == 4:
            high, low, width = _ipv4_addresses(rows, of_family), None, 32
        else:
            (high, low), width = _address_halves(rows["addr"][of_family]), 64
        longest = lengths[-1]
        bits = group_bits + longest
        if bits <= 64 and longest <= width:
            # group << longest | the longest prefix, made in place in the smallest word
            word = np.uint32 if bits <= 32 else np.uint64
            key = group[of_family].astype(word)
            del of_family
            key <<= word(longest)
            high >>= high.dtype.type(width - longest)
            key |= high.astype(word, copy=False)
            del high, low
            key = _sorted_keys(key, bits)
            for length in lengths:  # the groups of the first of each (group, prefix)
                shorter = key >> word(longest - length) if length < longest else key
                found.append(_first_of_runs(shorter) >> word(length))
                del shorter
            del key
        else:  # an IPv6 prefix longer than fits one word beside the group
            groups = group[of_family].astype(np.uint64)
            del of_family
            assert low is not None
            order = np.lexsort((low, high, groups))
            groups, high, low = groups[order], high[order], low[order]
            del order
            for length in lengths:
                columns = [groups]
                for half, start in ((high, 0), (low, 64)):
                    kept = min(max(length - start, 0), 64)
                    if kept:
                        columns.append(half >> np.uint64(64 - kept) if kept < 64 else half)
                new = np.zeros(len(groups), bool)
                new[0] = True
                for column in columns:
                    new[1:] |= column[1:] != column[:-1]
                found.append(groups[new])
        for length, first_groups in zip(lengths, found, strict=True):
            counts = np.bincount(first_groups.astype(np.intp), minlength=len(kinds))
            hit = np.flatnonzero(counts)
            part = np.empty(len(hit), PREFIX_COUNT_DTYPE)
            part["port"] = kinds[hit] & np.uint32(0xFFFF)
            part["proto"] = (kinds[hit] >> np.uint32(16)) & np.uint32(0xFF)
            part["family"] = family
            part["length"] = length
            part["prefixes"] = counts[hit]
            parts.append(part)
        found.clear()
    if not parts:
        return np.zeros(0, PREFIX_COUNT_DTYPE)
    prefixes = np.concatenate(parts)
    order = np.lexsort(
        (prefixes["length"], prefixes["family"], prefixes["proto"], prefixes["port"])
    )
    return prefixes[order]


def _ipv4_addresses(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The IPv4 addresses of rows[index] (stored IPv4-mapped: the last 4 bytes) as uint32
    numbers."""
    if rows.dtype == KEY_DTYPE:  # the address's last 4 bytes, read alone
        address = np.ascontiguousarray(rows).view("<u4").reshape(-1, 6)[index, 3]
        return address.byteswap(inplace=True)  # big-endian: a.b.c.d as a number
    raw = np.ascontiguousarray(rows["addr"][index]).view(">u4").reshape(-1, 4)
    return raw[:, 3].astype(np.uint32)


def _first_of_runs(ordered: np.ndarray) -> np.ndarray:
    """The first element of each run of equal elements of a sorted array."""
    new = np.empty(len(ordered), bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    return ordered[new]


# Radix passes (16 bits each) that beat numpy's comparison sort of as many 64-bit integers.
_RADIX_PASSES = 3


def _sorted_keys(keys: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integer keys below 2**bits, sorted (in place, or into one array of their size).
    numpy's stable sort of 16-bit integers is a radix sort: a least-significant-digit radix sort
    of up to _RADIX_PASSES 16-bit digits made of it takes about 14 ms a pass for 750,000 keys,
    numpy's sort of them as 64-bit integers about 45 ms."""
    if bits > 16 * _RADIX_PASSES:
        keys.sort()
        return keys
    spare = np.empty_like(keys)
    for shift in range(0, bits, 16):
        np.right_shift(keys, keys.dtype.type(shift), out=spare)
        order = np.argsort(spare.astype(np.uint16), kind="stable")
        np.take(keys, order, out=spare, mode="clip")  # "clip": not buffered
        keys, spare = spare, keys
    return keys


def find_scanners(rows: np.ndarray, scan_ports: int) -> np.ndarray:
    """SCANNER_DTYPE: the source addresses of rows (KEY_DTYPE or ACTIVE_DTYPE) with at least
    scan_ports distinct destination port numbers over the protocols that have ports
    (layout.PORT_PROTOCOLS: the same port over TCP and UDP is one port; ICMP types are not
    ports), whatever the interface; sorted by ports descending, then family, then address.
    None when scan_ports is 0.

    Only the rows of addresses that could reach scan_ports are sorted: the rows are counted
    per bucket of a hash of their address first (about two rows a bucket), and an address
    whose bucket holds fewer rows than scan_ports cannot have that many ports."""
    if scan_ports <= 0 or len(rows) < scan_ports:
        return np.zeros(0, SCANNER_DTYPE)
    with_ports = np.zeros(256, bool)
    with_ports[list(PORT_PROTOCOLS)] = True
    counted = with_ports[rows["proto"]]
    if scan_ports == 1:
        candidates = np.flatnonzero(counted)
    else:
        # The address as two native words (whatever their byte order: this is a hash), and the
        # family: ::ffff:10.0.0.1 in an IPv6 header is not 10.0.0.1.
        if rows.dtype == KEY_DTYPE:
            words = np.ascontiguousarray(rows).view("<u8").reshape(-1, 3)
        else:
            words = np.ascontiguousarray(rows["addr"]).view("<u8").reshape(-1, 2)
        bucket_bits = min(max((len(rows) // 2).bit_length(), 10), 20)
        with np.errstate(over="ignore"):
            mixed = words[:, 0] * np.uint64(0x9E3779B97F4A7C15)
            mixed ^= words[:, 1]
            mixed += rows["family"]
            mixed *= np.uint64(0xFF51AFD7ED558CCD)
        del words
        mixed >>= np.uint64(64 - bucket_bits)
        bucket = mixed.view(np.intp)  # below 2**bucket_bits
        bucket[~counted] = 1 << bucket_bits  # a bucket of their own, never a candidate
        crowded = np.bincount(bucket, minlength=(1 << bucket_bits) + 1)
        crowded[-1] = 0
        # At most scan_ports matters: one byte a bucket, then one a row.
        crowded = np.minimum(crowded, scan_ports).astype(np.min_scalar_type(scan_ports))
        candidates = np.flatnonzero(crowded[bucket] >= scan_ports)
        del bucket, mixed, crowded
    del counted
    if len(candidates) < scan_ports:
        return np.zeros(0, SCANNER_DTYPE)
    high, low = _address_halves(rows["addr"][candidates])
    family, port = rows["family"][candidates], rows["port"][candidates]
    del candidates
    order = np.lexsort((port, low, high, family))
    port, high, low, family = port[order], high[order], low[order], family[order]
    del order
    new_address = np.ones(len(port), bool)
    new_address[1:] = (high[1:] != high[:-1]) | (low[1:] != low[:-1]) | (family[1:] != family[:-1])
    new_port = new_address.copy()
    new_port[1:] |= port[1:] != port[:-1]
    starts = np.flatnonzero(new_address)
    ports = np.add.reduceat(new_port, starts, dtype=np.intp)
    scanning = ports >= scan_ports
    starts, ports = starts[scanning], ports[scanning]
    found = np.empty(len(starts), SCANNER_DTYPE)
    halves = np.empty((len(starts), 2), ">u8")
    halves[:, 0], halves[:, 1] = high[starts], low[starts]
    found["addr"] = halves.view("V16").ravel()
    found["family"] = family[starts]
    found["ports"] = ports
    # By ports descending; the rows are in (family, address) order already: a stable sort.
    return found[np.argsort(-ports, kind="stable")]


def _source_kinds(keys: np.ndarray) -> np.ndarray:
    """port | proto << 16 | family << 24 (uint32) of each distinct (address, family, protocol,
    port) of keys, whatever the interface. IPv4: the address and those fit one 64-bit integer
    exactly, sorted. IPv6: the table's key_hash of them (the interface cleared), sorted, and
    where two hashes are equal the keys themselves compared (a collision never merges two
    sources)."""
    words = np.ascontiguousarray(keys).view("<u8").reshape(-1, 3)
    high = np.uint64(32)
    rest = words[:, 2] >> high  # port, proto, family: the key's last 4 bytes
    v4 = keys["family"] == 4
    kinds = []
    if v4.any():
        exact = (rest[v4] << high) | (words[v4, 1] >> high)  # ... and the IPv4 address
        exact.sort()
        first = np.empty(len(exact), bool)
        first[0] = True
        np.not_equal(exact[1:], exact[:-1], out=first[1:])
        kinds.append((exact[first] >> high).astype(np.uint32))
    if not v4.all():
        v6 = np.flatnonzero(~v4)
        without_interface = keys[v6]  # a copy
        without_interface["ifindex"] = 0
        h = key_hash(without_interface)
        del without_interface
        order = np.argsort(h)
        h = h[order]
        keep = np.ones(len(order), bool)
        for position in np.flatnonzero(h[1:] == h[:-1]).tolist():  # mostly the same source
            a, b = v6[order[position]], v6[order[position + 1]]
            if (words[a, :2] == words[b, :2]).all() and rest[a] == rest[b]:
                keep[position + 1] = False
        kinds.append(rest[v6[order[keep]]].astype(np.uint32))
    return np.concatenate(kinds) if len(kinds) > 1 else kinds[0]


def interface_names_of(bits: np.ndarray, names: Sequence[str]) -> tuple[str, ...]:
    """The sorted, distinct names whose bit is set in one row of interface_bits."""
    found = set()
    for word_index, word in enumerate(bits.tolist()):
        remaining = word
        while remaining:
            lowest = remaining & -remaining
            found.add(names[word_index * 64 + lowest.bit_length() - 1])
            remaining ^= lowest
    return tuple(sorted(found))


def format_addresses(rows: np.ndarray) -> list[str]:
    """Canonical address text for each row of an ACTIVE_DTYPE (or KEY_DTYPE) array."""
    if len(rows) == 0:
        return []
    raw = np.ascontiguousarray(rows["addr"]).view(np.uint8).reshape(-1, 16)
    family = rows["family"]
    texts: list[str] = [""] * len(rows)
    v4 = np.flatnonzero(family == 4)
    if len(v4):
        octets = raw[v4, 12:16].tolist()
        for index, (a, b, c, d) in zip(v4.tolist(), octets, strict=True):
            texts[index] = f"{a}.{b}.{c}.{d}"
    v6 = np.flatnonzero(family != 4)
    if len(v6):
        # glibc's inet_ntop is RFC 5952 (lowercase, longest zero run compressed, "::ffff:a.b.c.d"
        # for mapped addresses) except that it writes ::/96 addresses (deprecated
        # IPv4-compatible) as "::a.b.c.d": those few go through ipaddress instead.
        as_bytes = raw[v6].tobytes()
        compatible = ~raw[v6, :12].any(axis=1)
        ntop = socket.inet_ntop
        inet6 = socket.AF_INET6
        for n, (index, compat) in enumerate(zip(v6.tolist(), compatible.tolist(), strict=True)):
            packed = as_bytes[16 * n : 16 * n + 16]
            if compat:
                texts[index] = ipaddress.IPv6Address(packed).compressed
            else:
                texts[index] = ntop(inet6, packed)
    return texts


def rfc3339_ms(wall_ms: np.ndarray) -> list[str]:
    """Wall clock ms since the epoch -> "YYYY-MM-DDTHH:MM:SS.mmmZ" strings.

    numpy's datetime formatting is slow per element, so each distinct second is formatted once.
    """
    if len(wall_ms) == 0:
        return []
    seconds, milliseconds = np.divmod(wall_ms.astype(np.int64), 1000)
    distinct, inverse = np.unique(seconds, return_inverse=True)
    prefixes = np.datetime_as_string(distinct.astype("datetime64[s]"), unit="s").tolist()
    return [
        f"{prefixes[i]}.{ms:03d}Z"
        for i, ms in zip(inverse.tolist(), milliseconds.tolist(), strict=True)
    ]


def _cutoff(taken_at_ns: int, window_s: int) -> np.uint64:
    if window_s <= 0:
        raise ValueError(f"window must be positive, not {window_s}")
    return np.uint64(max(0, taken_at_ns - window_s * NS_PER_S))


def stale_keys(snapshot: Snapshot, window_s: int) -> np.ndarray:
    """Keys last seen before the window (KEY_DTYPE): the daemon deletes them from the map."""
    return snapshot.keys[snapshot.values["last_seen"] < _cutoff(snapshot.taken_at_ns, window_s)]


_GATHER_ROWS = 65536  # rows gathered at a time: the temporaries stay at a few MB


def active_set(
    snapshot: Snapshot,
    window_s: int,
    ifnames: Mapping[int, str],
    prefix_lengths: Sequence[tuple[int, int]] = (),
    scan_ports: int = 0,
) -> ActiveSet:
    """Aggregate the keys seen within the window per (address, family, protocol, port).

    ``ifnames`` maps ifindex to name; an ifindex not in it is shown as "if<N>". The prefixes
    of ``prefix_lengths`` and the scanners of ``scan_ports`` (0: none) are counted from the rows.

    Memory: besides the result, an order of the keys (8 bytes a key) and temporaries of a
    chunk of rows; a source seen on several interfaces (several keys, one row) is merged with
    whole columns, only when there is one.
    """
    selected = np.flatnonzero(
        snapshot.values["last_seen"] >= _cutoff(snapshot.taken_at_ns, window_s)
    )
    if len(selected) == 0:
        return ActiveSet.empty(window_s, snapshot.taken_at_ns, snapshot.taken_at_wall)
    # The key as its three 64-bit words: the address, then ifindex | (port, proto, family) << 32.
    key_words = np.ascontiguousarray(snapshot.keys).view("<u8").reshape(-1, 3)
    value_words = np.ascontiguousarray(snapshot.values).view("<u8").reshape(-1, 4)
    order = _row_order(snapshot.keys, selected)  # indices of keys, sorted as the rows are
    del selected
    new_row = _new_rows(key_words, order)
    ifindexes, position = _positions(snapshot.keys["ifindex"][order])
    names = tuple(ifnames.get(i, f"if{i}") for i in ifindexes.tolist())
    if new_row.all():  # every key a row of its own (one interface): gather, a chunk at a time
        del new_row
        rows = np.empty(len(order), ACTIVE_DTYPE)
        for start in range(0, len(order), _GATHER_ROWS):
            chunk = order[start : start + _GATHER_ROWS]
            _fill_rows(rows[start : start + len(chunk)], key_words[chunk], value_words[chunk])
        interface_bits = _bit_sets(position, len(ifindexes))
    else:
        starts = np.flatnonzero(new_row)
        del new_row
        rows = np.empty(len(starts), ACTIVE_DTYPE)
        _fill_rows(rows, key_words[order[starts]], None)
        values = snapshot.values
        rows["first_seen"] = np.minimum.reduceat(values["first_seen"][order], starts)
        rows["last_seen"] = np.maximum.reduceat(values["last_seen"][order], starts)
        rows["packets"] = np.add.reduceat(values["packets"][order], starts)
        rows["bytes"] = np.add.reduceat(values["bytes"][order], starts)
        interface_bits = np.bitwise_or.reduceat(_bit_sets(position, len(ifindexes)), starts, axis=0)
    return ActiveSet(
        rows=rows,
        interface_bits=interface_bits,
        interface_names=names,
        counts=_count_sources(rows),
        window_s=window_s,
        taken_at_ns=snapshot.taken_at_ns,
        taken_at_wall=snapshot.taken_at_wall,
        prefixes=count_prefixes(rows, prefix_lengths),
        scanners=find_scanners(rows, scan_ports),
    )


def _fill_rows(rows: np.ndarray, key_words: np.ndarray, value_words: np.ndarray | None) -> None:
    """rows' fields from keys (and values) given as their 64-bit words."""
    rows["addr"] = np.ascontiguousarray(key_words[:, :2]).view("V16").ravel()
    kind = key_words[:, 2] >> np.uint64(32)  # port | proto << 16 | family << 24
    rows["port"] = kind & np.uint64(0xFFFF)
    rows["proto"] = (kind >> np.uint64(16)) & np.uint64(0xFF)
    rows["family"] = kind >> np.uint64(24)
    if value_words is not None:
        for column, name in enumerate(("first_seen", "last_seen", "packets", "bytes")):
            rows[name] = value_words[:, column]


def _row_order(keys: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """selected (indices of keys) sorted by (port, protocol, family, address); the keys of one
    source on several interfaces end up next to each other (in no particular order)."""
    # (port, proto, family) in one integer that sorts in that order.
    group = keys["port"][selected].astype(np.uint32)
    group <<= 16
    group |= keys["proto"][selected].astype(np.uint32) << 8
    group |= keys["family"][selected]
    is_v4 = keys["family"][selected] == 4
    parts = []
    if is_v4.any():
        v4 = selected[is_v4]
        # IPv4: the group and the address (big-endian in the key's last 4 address bytes) in
        # one 64-bit integer that sorts in (group, address) order.
        combined = group[is_v4].astype(np.uint64)
        combined <<= np.uint64(32)
        address = np.ascontiguousarray(keys["addr"][v4]).view(">u4").reshape(-1, 4)[:, 3]
        combined |= address.astype(np.uint64)
        del address
        parts.append(v4[np.argsort(combined)])
        del combined
    if not is_v4.all():
        v6 = selected[~is_v4]
        high, low = _address_halves(keys["addr"][v6])
        parts.append(v6[np.lexsort((low, high, group[~is_v4]))])
        del high, low
    if len(parts) == 1:
        return parts[0]
    # Both: a stable sort on the group merges them (family is the group's lowest byte).
    order = np.concatenate(parts)
    del parts
    again = keys["port"][order].astype(np.uint32)
    again <<= 16
    again |= keys["proto"][order].astype(np.uint32) << 8
    again |= keys["family"][order]
    return order[np.argsort(again, kind="stable")]


def _new_rows(key_words: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Whether each key of `order` starts a row: its (address, family, protocol, port), i.e.
    its words but the ifindex, differ from the key before it (a chunk at a time)."""
    new_row = np.empty(len(order), bool)
    new_row[0] = True
    for start in range(1, len(order), _GATHER_ROWS):
        stop = min(start + _GATHER_ROWS, len(order))
        words = key_words[order[start - 1 : stop]]
        words[:, 2] >>= np.uint64(32)  # the ifindex out
        new_row[start:stop] = (words[1:] != words[:-1]).any(axis=1)
    return new_row


def _address_halves(addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """16-byte addresses -> (high 64 bits, low 64 bits) as native integers: numeric order."""
    big_endian = np.ascontiguousarray(addresses).view(">u8").reshape(-1, 2)
    return big_endian[:, 0].astype(np.uint64), big_endian[:, 1].astype(np.uint64)


def _positions(ifindex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct ifindexes ascending, position of each element's ifindex among them)."""
    if int(ifindex.max()) < 1 << 20:  # ifindexes are small: count instead of sorting a million
        distinct = np.flatnonzero(np.bincount(ifindex)).astype(np.uint32)
        lookup = np.zeros(int(distinct[-1]) + 1, np.min_scalar_type(len(distinct)))
        lookup[distinct] = np.arange(len(distinct))
        return distinct, lookup[ifindex]
    distinct, position = np.unique(ifindex, return_inverse=True)
    return distinct, position


def _bit_sets(position: np.ndarray, bit_count: int) -> np.ndarray:
    """One row per element, bit ``position`` set, in (bit_count + 63) // 64 uint64 words."""
    words = (bit_count + 63) // 64
    single = np.left_shift(np.uint64(1), (position % 64).astype(np.uint8), dtype=np.uint64)
    if words == 1:
        return single.reshape(-1, 1)
    bits = np.zeros((len(position), words), np.uint64)
    word_of = position // 64
    for word in range(words):
        bits[:, word] = np.where(word_of == word, single, np.uint64(0))
    return bits


def _count_sources(rows: np.ndarray) -> np.ndarray:
    """Distinct addresses per (family, proto, port) of sorted, aggregated rows."""
    if len(rows) == 0:
        return np.zeros(0, COUNT_DTYPE)
    group = (
        (rows["port"].astype(np.uint32) << 16)
        | (rows["proto"].astype(np.uint32) << 8)
        | rows["family"].astype(np.uint32)
    )
    new_group = np.empty(len(rows), bool)
    new_group[0] = True
    new_group[1:] = group[1:] != group[:-1]
    starts = np.flatnonzero(new_group)
    counts = np.empty(len(starts), COUNT_DTYPE)
    counts["family"] = rows["family"][starts]
    counts["proto"] = rows["proto"][starts]
    counts["port"] = rows["port"][starts]
    counts["sources"] = np.diff(np.append(starts, len(rows)))
    return counts


def family_name(family: int) -> str:
    return FAMILIES.get(family, f"family{family}")


def protocol_name(proto: int) -> str:
    return PROTOCOLS.get(proto, f"proto{proto}")
