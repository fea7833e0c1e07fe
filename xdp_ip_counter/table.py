"""The kernel's sources table (bpf/xdp_ip_counter.c), as numpy sees it through mmap.

Pure: no bcc, no I/O. The table is an array of sets, each a line of WAYS tag words and WAYS
64-byte slots (layout.SET_DTYPE); ``words`` below is that memory as a (sets, SET_WORDS) uint64
array, a view of the mapped map or a copy.

- `live_entries` reads the entries the kernel still holds (tag set, stamp within the window),
  and merges duplicates: two CPUs that claim one new key at once can leave it in two slots of
  its set, whose counts add up to the key's.
- `key_hash` and `set_bits_for` mirror the kernel's placement; `place` writes entries into an
  empty table the way the kernel would have (a pinned table carried into a new one, tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .layout import (
    ESTABLISHED,
    KEY_DTYPE,
    SLOT_DTYPE,
    STAMP_MASK,
    STAMP_SHIFT,
    VALUE_DTYPE,
    WAYS,
)

MIN_SET_BITS = 4

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0x165667B19E3779F9)
_SLOT_WORDS = SLOT_DTYPE.itemsize // 8


def set_bits_for(max_entries: int) -> int:
    """log2 of the sets for a capacity of at least max_entries slots (WAYS per set)."""
    sets = max(1, -(-int(max_entries) // WAYS))
    return max(MIN_SET_BITS, (sets - 1).bit_length())


def window_stamps(window_s: int) -> int:
    """The window in the tag's stamp units (2**30 ns), rounded up: what the kernel's lazy
    expiry compares ages with (port_filter.window_stamps)."""
    return -(-int(window_s) * 1_000_000_000 // (1 << STAMP_SHIFT))


def key_hash(keys: np.ndarray) -> np.ndarray:
    """The kernel's key_hash() of KEY_DTYPE keys: per word, xor, fold, multiply."""
    words = np.ascontiguousarray(keys, dtype=KEY_DTYPE).view("<u8").reshape(-1, 3)
    half = np.uint64(32)
    with np.errstate(over="ignore"):
        h = words[:, 0] * _M1
        h ^= words[:, 1]
        h ^= h >> half
        h *= _M2
        h ^= words[:, 2]
        h ^= h >> half
        h *= _M3
        return h ^ (h >> half)


def _slots(words: np.ndarray) -> np.ndarray:
    """(sets, WAYS, slot words) view of the slots (a view: no copy of the table)."""
    slots = words[:, WAYS:]
    return np.lib.stride_tricks.as_strided(
        slots,
        shape=(len(words), WAYS, _SLOT_WORDS),
        strides=(slots.strides[0], _SLOT_WORDS * slots.strides[1], slots.strides[1]),
        writeable=slots.flags.writeable,
    )


def live_mask(tags: np.ndarray, now_ns: int, window_s: int) -> np.ndarray:
    """Which slots hold an entry the kernel has not let go: tag's hash part set (not free, not
    being written) and stamp at most window_stamps old. An age past half the stamp's range is a
    stamp written after now_ns was read (the kernel's tag_age): fresh, not old."""
    stamp = np.uint64((int(now_ns) >> STAMP_SHIFT) & STAMP_MASK)
    age = (stamp - (tags & np.uint64(STAMP_MASK))) & np.uint64(STAMP_MASK)
    fresh = (age <= np.uint64(window_stamps(window_s))) | (age > np.uint64(STAMP_MASK >> 1))
    return ((tags >> np.uint64(32)) != 0) & fresh


def live_entries(words: np.ndarray, now_ns: int, window_s: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, values) of the live entries, one row per key: duplicates merged (earliest
    first_seen, latest last_seen, counts added)."""
    tags = words[:, :WAYS]
    live = live_mask(tags, now_ns, window_s)
    rows = _slots(words)[live].view(SLOT_DTYPE).ravel()
    keys = np.ascontiguousarray(rows["key"])
    values = np.ascontiguousarray(rows["value"])
    del rows
    duplicate_sets = _sets_with_repeated_tags(tags, live)
    if len(duplicate_sets):
        keys, values = _merge_duplicates(keys, values, live, duplicate_sets)
    return keys, values


def read_live_entries(
    chunks: Callable[[], Iterator[np.ndarray]],
    now_ns: int,
    window_s: int,
    expected: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """live_entries over a table read chunk by chunk (each chunk a (sets, SET_WORDS) view that
    is valid until the next one is asked for), gathered straight into arrays of the right
    size, their keys and values and nothing else. The size: `expected` (the last read's count,
    say) with some room, or a first pass that counts the live slots. Past it, the rest is
    gathered apart and joined at the end: nothing is lost, only a copy more."""
    if expected is None:
        expected = sum(int(live_mask(c[:, :WAYS], now_ns, window_s).sum()) for c in chunks())
    size = expected + expected // 64 + 1024
    keys, values = np.empty(size, KEY_DTYPE), np.empty(size, VALUE_DTYPE)
    key_words, value_words = keys.view("<u8").reshape(size, 3), values.view("<u8").reshape(size, 4)
    extra: list[tuple[np.ndarray, np.ndarray]] = []
    filled = 0
    for chunk in chunks():
        tags = chunk[:, :WAYS]
        live = live_mask(tags, now_ns, window_s)
        set_index, way = np.nonzero(live)  # row-major: set by set, way by way
        if len(set_index) == 0:
            continue
        duplicate_sets = _sets_with_repeated_tags(tags, live)
        if len(set_index) > size - filled or len(duplicate_sets):
            chunk_keys, chunk_values = live_entries(chunk, now_ns, window_s)
            extra.append((chunk_keys, chunk_values))
            continue
        end = filled + len(set_index)
        gathered = _slots(chunk)[set_index, way]  # (live, slot words)
        value_words[filled:end] = gathered[:, :4]
        key_words[filled:end] = gathered[:, 4:7]
        filled = end
    if extra:
        return (
            np.concatenate([keys[:filled], *(k for k, _ in extra)]),
            np.concatenate([values[:filled], *(v for _, v in extra)]),
        )
    return keys[:filled], values[:filled]


def _sets_with_repeated_tags(tags: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Indices of the sets where two live slots have the same tag hash (duplicate candidates):
    the 28 pairs of ways compared column by column."""
    hashes = np.where(live, tags >> np.uint64(32), np.uint64(0))
    repeated = np.zeros(len(tags), bool)
    for a in range(WAYS - 1):
        column = hashes[:, a]
        for b in range(a + 1, WAYS):
            repeated |= (column == hashes[:, b]) & (column != 0)
    return np.flatnonzero(repeated)


def _merge_duplicates(
    keys: np.ndarray, values: np.ndarray, live: np.ndarray, duplicate_sets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    values = values.copy()
    # Row number of each live slot, to find the rows of the candidate sets.
    first_row = np.concatenate(([0], np.cumsum(live.sum(axis=1))))
    drop = np.zeros(len(keys), bool)
    for set_index in duplicate_sets.tolist():
        start, stop = int(first_row[set_index]), int(first_row[set_index + 1])
        kept: dict[bytes, int] = {}
        for row in range(start, stop):
            raw = keys[row].tobytes()
            if raw not in kept:
                kept[raw] = row
                continue
            into = kept[raw]
            values["first_seen"][into] = min(values["first_seen"][into], values["first_seen"][row])
            values["last_seen"][into] = max(values["last_seen"][into], values["last_seen"][row])
            values["packets"][into] += values["packets"][row]
            values["bytes"][into] += values["bytes"][row]
            drop[row] = True
    return keys[~drop], values[~drop]


def place(words: np.ndarray, keys: np.ndarray, values: np.ndarray) -> int:
    """Write entries into an empty table where the kernel looks for them, most recently seen
    first; a set with more than WAYS of them keeps its WAYS most recent. Not for a table the
    program is attached to. Returns how many were placed."""
    if len(keys) == 0:
        return 0
    sets = len(words)
    set_bits = sets.bit_length() - 1
    if sets != 1 << set_bits:
        raise ValueError(f"a table has a power of two of sets, not {sets}")
    hashes = key_hash(keys)
    set_index = (hashes >> np.uint64(64 - set_bits)).astype(np.int64)
    order = np.lexsort((~values["last_seen"], set_index))  # newest first within a set
    ordered_sets = set_index[order]
    first = np.searchsorted(ordered_sets, ordered_sets, side="left")
    way = np.arange(len(order)) - first
    keep = way < WAYS
    order, way, ordered_sets = order[keep], way[keep], ordered_sets[keep]

    slots = np.zeros(len(order), SLOT_DTYPE)
    slots["key"] = keys[order]
    slots["value"] = values[order]
    stamp = (values["last_seen"][order] >> np.uint64(STAMP_SHIFT)) & np.uint64(STAMP_MASK)
    tag = ((hashes[order] & np.uint64(0xFFFFFFFF)) | np.uint64(1)) << np.uint64(32)
    tag |= stamp
    tag[values["packets"][order] > 1] |= np.uint64(ESTABLISHED)
    words[ordered_sets, way] = tag
    _slots(words)[ordered_sets, way] = slots.view("<u8").reshape(-1, _SLOT_WORDS)
    return len(order)
