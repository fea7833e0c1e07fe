"""The kernel's sources table (bpf/xdp_ip_counter.c), as numpy sees it through mmap.

Pure: no bcc, no I/O. The table is an array of sets, each a line of WAYS tag words and WAYS
64-byte slots (layout.SET_DTYPE); ``words`` below is that memory as a (sets, SET_WORDS) uint64
array, a view of the mapped map or a copy.

- `live_entries` reads the entries the kernel still holds (tag set, stamp within the window),
  and merges duplicates: two CPUs that claim one new key at once can leave it in two slots (of
  its two sets), whose counts add up to the key's.
- `key_hash`, `primary_set`, `alternate_set` and `sets_for` mirror the kernel's placement: each
  key has two sets, in one block of BLOCK_SETS sets; `place` writes entries into an empty table
  the way the kernel would have (a pinned table carried into a new one, tests), `write_slots`
  into the slots given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .layout import (
    BLOCK_SETS,
    ESTABLISHED,
    KEY_DTYPE,
    SECONDARY,
    SLOT_DTYPE,
    STAMP_MASK,
    STAMP_SHIFT,
    TICK_SHIFT,
    VALUE_DTYPE,
    WAYS,
)

MIN_SETS = 16
# Slots per entry of capacity: with two sets per key, a table 2/3 full has no set that
# overflows (simulated: 0 of 1,048,576 and of 65,536 keys lost; 1.25 slots per entry lost
# 212 of 1,048,576; one set per key lost 0.84 % at half load).
SLOTS_PER_ENTRY = 1.5

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0x165667B19E3779F9)
_SLOT_WORDS = SLOT_DTYPE.itemsize // 8


def sets_for(max_entries: int) -> int:
    """The sets of a table that holds max_entries live entries with no set overflowing:
    SLOTS_PER_ENTRY slots each, WAYS slots a set; a power of two up to a block (at least
    MIN_SETS), whole blocks of BLOCK_SETS past it (a key's two sets are in one block)."""
    sets = max(1, -(-int(max_entries) * 3 // (2 * WAYS)))
    if sets <= BLOCK_SETS:
        return max(MIN_SETS, 1 << (sets - 1).bit_length())
    return -(-sets // BLOCK_SETS) * BLOCK_SETS


def block_sets(sets: int) -> int:
    """Sets of a block of a table of `sets` sets (all of them, below BLOCK_SETS)."""
    return min(BLOCK_SETS, sets)


def primary_set(hashes: np.ndarray, sets: int) -> np.ndarray:
    """The kernel's primary set of keys of these key_hash()es: the top 32 bits scaled to sets."""
    return ((hashes >> np.uint64(32)) * np.uint64(sets)) >> np.uint64(32)


def alternate_set(set_index: np.ndarray, tag_hashes: np.ndarray, sets: int) -> np.ndarray:
    """The other set of keys in set_index with these tag hashes (tag word >> 32, or the key
    hash's low 32 bits): set_index xor an odd offset below the block, from bits 16-26."""
    offset = ((tag_hashes >> np.uint64(16)) & np.uint64(block_sets(sets) - 1)) | np.uint64(1)
    return set_index ^ offset.astype(set_index.dtype)


def tag_hash(hashes: np.ndarray) -> np.ndarray:
    """The tag hash of a key in its primary set (SECONDARY clear), as tag words hold it."""
    return ((hashes & np.uint64(0xFFFFFFFF)) | np.uint64(1)) & ~np.uint64(SECONDARY >> 32)


def fingerprint(hashes: np.ndarray) -> np.ndarray:
    """The kernel's fingerprint() of keys of these key_hash()es: bits 8-15, 0 made 1."""
    fp = (hashes >> np.uint64(8)) & np.uint64(0xFF)
    return (fp | (fp == 0)).astype(np.uint8)


def fingerprint_words(words: np.ndarray) -> np.ndarray:
    """The kernel's fingerprints map for a table (sets, SET_WORDS) whose slots were written by
    userspace: per set, byte w the fingerprint of way w's key when its tag word has a key's hash
    (live or expired: the kernel keeps a slot's byte until the slot is claimed again), else 0.
    (sets,) uint64, to be copied into the map while nothing runs the program."""
    tags = words[:, :WAYS]
    keyed = (tags >> np.uint64(32)) != 0
    out = np.zeros((len(words), WAYS), np.uint8)
    if keyed.any():
        slots = np.ascontiguousarray(_slots(words)[keyed]).view(SLOT_DTYPE).reshape(-1)
        out[keyed] = fingerprint(key_hash(slots["key"]))
    return out.view("<u8").reshape(-1)


def window_stamps(window_s: int) -> int:
    """The window in the tag's stamp units (2**30 ns), rounded up: what the kernel's lazy
    expiry compares ages with (port_filter.window_stamps)."""
    return -(-int(window_s) * 1_000_000_000 // (1 << STAMP_SHIFT))


def admit_per_tick(new_sources_per_second: int) -> int:
    """The new-source budget (new sources per second and CPU, 0 for no limit) as the kernel
    counts it: new sources per tick of the sketches (2**TICK_SHIFT ns), rounded up."""
    return -(-int(new_sources_per_second) * (1 << TICK_SHIFT) // 1_000_000_000)


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
    stamp written after now_ns was read (above it, as the kernel's tag_free sees it): fresh, not
    old."""
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
    duplicate_sets = _duplicate_candidate_sets(tags, live)
    if len(duplicate_sets):
        keys, values = _merge_duplicates(keys, values, live, duplicate_sets)
    return keys, values


def read_live_entries(
    chunks: Callable[[], Iterator[np.ndarray]],
    now_ns: int,
    window_s: int,
    expected: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """live_entries over a table read chunk by chunk (each chunk a (sets, SET_WORDS) view of
    whole blocks that is valid until the next one is asked for), gathered straight into arrays
    of the right size, their keys and values and nothing else. The size: `expected` (the last
    read's count, say) with some room, or a first pass that counts the live slots. Past it, the
    rest is gathered apart and joined at the end: nothing is lost, only a copy more."""
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
        duplicate_sets = _duplicate_candidate_sets(tags, live)
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


def _duplicate_candidate_sets(tags: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Indices of the sets that may hold a key twice: two live slots of a set with one tag
    hash (the 28 pairs of ways compared column by column), and a live slot in its key's
    alternate set (SECONDARY) whose primary set has a live slot of the same tag hash. tags is a
    whole table or whole blocks of it (a key's two sets are in one block)."""
    hashes = np.where(live, tags >> np.uint64(32), np.uint64(0))
    repeated = np.zeros(len(tags), bool)
    for a in range(WAYS - 1):
        column = hashes[:, a]
        for b in range(a + 1, WAYS):
            repeated |= (column == hashes[:, b]) & (column != 0)
    in_alternate, way = np.nonzero(hashes & np.uint64(SECONDARY >> 32))
    if len(in_alternate):
        tag = hashes[in_alternate, way]
        primary = alternate_set(in_alternate, tag, len(tags))
        both = (hashes[primary] == (tag & ~np.uint64(SECONDARY >> 32))[:, None]).any(axis=1)
        repeated[in_alternate[both]] = True
        repeated[primary[both]] = True
    return np.flatnonzero(repeated)


def _merge_duplicates(
    keys: np.ndarray, values: np.ndarray, live: np.ndarray, candidate_sets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge rows of one key among the rows of the candidate sets (the live slots in table
    order: live.sum(axis=1) rows a set)."""
    values = values.copy()
    first_row = np.concatenate(([0], np.cumsum(live.sum(axis=1))))
    drop = np.zeros(len(keys), bool)
    kept: dict[bytes, int] = {}
    for set_index in candidate_sets.tolist():
        for row in range(int(first_row[set_index]), int(first_row[set_index + 1])):
            raw = keys[row].tobytes()
            into = kept.setdefault(raw, row)
            if into == row:
                continue
            values["first_seen"][into] = min(values["first_seen"][into], values["first_seen"][row])
            values["last_seen"][into] = max(values["last_seen"][into], values["last_seen"][row])
            values["packets"][into] += values["packets"][row]
            values["bytes"][into] += values["bytes"][row]
            drop[row] = True
    return keys[~drop], values[~drop]


# place(): each round, every key not yet placed asks for the emptier of its two sets and takes
# a way there while the set holds fewer than the round's cap: rising caps spread the keys as the
# kernel's one-at-a-time choice does (simulated at 2/3 load: 22 of 1,048,576 left over, and
# those find room by moving one entry of a full set to its other set).
_PLACE_CAPS = (4, 5, 6, 7, 8, 8, 8, 8)
_PLACE_REPAIRS = 256  # each one scans every entry: a table carried into one much smaller
# keeps about (not exactly) the most recent entries of each pair of sets


def place(words: np.ndarray, keys: np.ndarray, values: np.ndarray) -> int:
    """Write entries into an empty table where the kernel looks for them (each in its primary
    set or, marked SECONDARY, in its alternate one), most recently seen first: when the table
    cannot hold them all, the least recently seen are left out. Not for a table the program
    is attached to. Returns how many were placed."""
    if len(keys) == 0:
        return 0
    sets = len(words)
    if (sets > BLOCK_SETS and sets % BLOCK_SETS) or (sets <= BLOCK_SETS and sets & (sets - 1)):
        raise ValueError(f"a table has a power of two of sets or whole blocks, not {sets}")
    order = np.argsort(~values["last_seen"], kind="stable")  # newest first
    hashes = key_hash(keys[order])
    primary = primary_set(hashes, sets).astype(np.int64)
    alternate = alternate_set(primary, tag_hash(hashes), sets).astype(np.int64)
    where = np.full(len(order), -1, np.int64)
    occupied = np.zeros(sets, np.int64)
    waiting = np.arange(len(order))
    for cap in _PLACE_CAPS:
        if len(waiting) == 0:
            break
        p, a = primary[waiting], alternate[waiting]
        target = np.where(occupied[a] < occupied[p], a, p)
        by_set = np.argsort(target, kind="stable")  # newest first within a set
        ordered = target[by_set]
        rank = np.arange(len(ordered)) - np.searchsorted(ordered, ordered, side="left")
        taken = rank < cap - occupied[ordered]
        where[waiting[by_set[taken]]] = ordered[taken]
        np.add.at(occupied, ordered[taken], 1)
        waiting = np.sort(waiting[by_set[~taken]])
    # Both sets full: move an entry of either to its other set, or else give up the oldest
    # entry of the two sets if it is older than this key (newest keys first; a table made
    # smaller than what it is given keeps the most recent entries of each pair of sets, up to
    # _PLACE_REPAIRS keys).
    for key in waiting[:_PLACE_REPAIRS].tolist():
        members = np.flatnonzero((where == primary[key]) | (where == alternate[key]))
        other = np.where(where[members] == primary[members], alternate[members], primary[members])
        room = np.flatnonzero(occupied[other] < WAYS)
        if len(room):
            moved = members[room[0]]
            occupied[where[moved]] -= 1
            where[moved] = other[room[0]]
            occupied[where[moved]] += 1
        elif len(members) and members.max() > key:
            oldest = members.max()
            occupied[where[oldest]] -= 1
            where[oldest] = -1
        else:
            continue
        target = (
            primary[key] if occupied[primary[key]] <= occupied[alternate[key]] else alternate[key]
        )
        where[key] = target
        occupied[target] += 1
    placed = np.flatnonzero(where >= 0)
    set_index = where[placed]
    way = np.zeros(len(placed), np.int64)
    by_set = np.argsort(set_index, kind="stable")
    ordered = set_index[by_set]
    way[by_set] = np.arange(len(ordered)) - np.searchsorted(ordered, ordered, side="left")

    rows = order[placed]
    write_slots(words, set_index, way, keys[rows], values[rows], hashes=hashes[placed])
    return len(placed)


def write_slots(
    words: np.ndarray,
    set_index: np.ndarray,
    way: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    *,
    hashes: np.ndarray | None = None,
) -> None:
    """Write entries into the slots (set_index, way) of a table, with the tag words the kernel
    writes: the SECONDARY bit for a key in its alternate set, ESTABLISHED past one packet.
    hashes: the keys' key_hash(), when the caller has them."""
    if hashes is None:
        hashes = key_hash(keys)
    slots = np.zeros(len(keys), SLOT_DTYPE)
    slots["key"] = keys
    slots["value"] = values
    stamp = (values["last_seen"] >> np.uint64(STAMP_SHIFT)) & np.uint64(STAMP_MASK)
    tag = tag_hash(hashes)
    tag[set_index != primary_set(hashes, len(words)).astype(set_index.dtype)] |= np.uint64(
        SECONDARY >> 32
    )
    tag = (tag << np.uint64(32)) | stamp
    tag[values["packets"] > 1] |= np.uint64(ESTABLISHED)
    words[set_index, way] = tag
    _slots(words)[set_index, way] = slots.view("<u8").reshape(-1, _SLOT_WORDS)
