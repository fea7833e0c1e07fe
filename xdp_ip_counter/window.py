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
from dataclasses import dataclass, field

import numpy as np

from xdp_ip_counter.layout import FAMILIES, KEY_DTYPE, PROTOCOLS, VALUE_DTYPE
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

    def select(
        self,
        ports: Sequence[int] | None = None,
        protos: Sequence[int] | None = None,
        families: Sequence[int] | None = None,
        interfaces: Sequence[str] | None = None,
    ) -> ActiveSet:
        """The rows matching every given filter; within one filter any value matches (OR).

        ``counts`` of the result are recomputed for the selected rows.
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
    """The active set of a snapshot as the daemon serves it: the counts (what /metrics needs)
    made at once, in one pass without sorting; the rows (sorted and merged across interfaces:
    what /list needs) made the first time something asks for them, and kept. Thread-safe: the
    HTTP threads may ask at once. The snapshot's arrays are held until then."""

    def __init__(self, snapshot: Snapshot, window_s: int, ifnames: Mapping[int, str]) -> None:
        self.window_s = window_s
        self.taken_at_ns = snapshot.taken_at_ns
        self.taken_at_wall = snapshot.taken_at_wall
        self.counts, self._rows = count_sources(snapshot, window_s)
        self._snapshot: Snapshot | None = snapshot
        self._ifnames = dict(ifnames)
        self._active: ActiveSet | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._rows

    def count_map(self) -> dict[tuple[int, int, int], int]:
        return count_map(self.counts)

    def resolve(self) -> ActiveSet:
        """The whole ActiveSet (made once)."""
        with self._lock:
            if self._active is None:
                assert self._snapshot is not None
                self._active = active_set(self._snapshot, self.window_s, self._ifnames)
                self._snapshot = None
            return self._active

    def select(self, **filters: Sequence[int] | Sequence[str] | None) -> ActiveSet:
        return self.resolve().select(**filters)  # type: ignore[arg-type]

    @property
    def rows(self) -> np.ndarray:
        return self.resolve().rows


def count_sources(snapshot: Snapshot, window_s: int) -> tuple[np.ndarray, int]:
    """(COUNT_DTYPE counts, distinct (address, family, protocol, port) rows) within the window,
    as active_set() would give them, without sorting the rows: each key is in the snapshot once,
    so with one interface every row is a distinct source; with several, the rows of one source
    on several interfaces are counted once (_source_kinds)."""
    inside = snapshot.values["last_seen"] >= _cutoff(snapshot.taken_at_ns, window_s)
    keys = snapshot.keys if inside.all() else snapshot.keys[inside]
    if len(keys) == 0:
        return np.zeros(0, COUNT_DTYPE), 0
    ifindex = keys["ifindex"]
    if ifindex.min() == ifindex.max():
        kind = keys["port"].astype(np.uint32)
        kind |= keys["proto"].astype(np.uint32) << np.uint32(16)
        kind |= keys["family"].astype(np.uint32) << np.uint32(24)
    else:
        kind = _source_kinds(keys)
    # Per (protocol, family) present, a count per port: bincount, no sort.
    kinds = np.unique(kind >> np.uint32(16))  # a handful of values
    parts = []
    for value in kinds.tolist():
        per_port = np.bincount(kind[(kind >> np.uint32(16)) == value] & np.uint32(0xFFFF))
        hit = np.flatnonzero(per_port)
        part = np.empty(len(hit), COUNT_DTYPE)
        part["proto"] = value & 0xFF
        part["family"] = value >> 8
        part["port"] = hit
        part["sources"] = per_port[hit]
        parts.append(part)
    counts = np.concatenate(parts)
    order = np.lexsort((counts["family"], counts["proto"], counts["port"]))
    return counts[order], len(kind)


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


def active_set(snapshot: Snapshot, window_s: int, ifnames: Mapping[int, str]) -> ActiveSet:
    """Aggregate the keys seen within the window per (address, family, protocol, port).

    ``ifnames`` maps ifindex to name; an ifindex not in it is shown as "if<N>".

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
