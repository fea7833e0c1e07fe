"""table.py: the kernel's sources table as numpy reads it, on tables written here the way
bpf/xdp_ip_counter.c writes them (a line of 8 tag words, then 8 slots of 64 bytes per set).

Where a key goes (its two sets, its tag word) is written out here from the C, over
table.key_hash; that key_hash is the kernel's own is for tests/kernel, which runs the program.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from xdp_ip_counter.layout import (
    BLOCK_SETS,
    ESTABLISHED,
    KEY_DTYPE,
    SECONDARY,
    SET_DTYPE,
    SET_WORDS,
    SLOT_DTYPE,
    STAMP_MASK,
    STAMP_SHIFT,
    TICK_SHIFT,
    VALUE_DTYPE,
    WAYS,
)
from xdp_ip_counter.table import (
    MIN_SETS,
    SLOTS_PER_ENTRY,
    admit_per_tick,
    key_hash,
    live_entries,
    place,
    read_live_entries,
    sets_for,
    window_stamps,
)

S = 1_000_000_000
NOW = 5000 * S  # kernel monotonic ns of the read
WINDOW = 60
WINDOW_STAMPS = 56  # 60 s in units of 2**30 ns, rounded up: 55.88 -> 56
BUSY = 1  # the kernel's tag word while one CPU writes the slot (hash part 0)


# -- the C's placement -----------------------------------------------------------------------


def hash_of(key: np.void) -> int:
    return int(key_hash(np.array([key], KEY_DTYPE))[0])


def kernel_sets(key: np.void, sets: int) -> tuple[int, int]:
    """record(): the primary set is the hash's top 32 bits scaled to SETS; the alternate is the
    primary xor an odd offset below the block (min(BLOCK_SETS, SETS)) from bits 16-26."""
    h = hash_of(key)
    primary = ((h >> 32) * sets) >> 32
    return primary, primary ^ (((h >> 16) & (min(BLOCK_SETS, sets) - 1)) | 1)


def kernel_tag(key: np.void, last_seen: int, packets: int, *, secondary: bool = False) -> int:
    """The tag word the kernel leaves: ((hash low 32 bits | 1) with bit 1 = in the alternate
    set) << 32 | ESTABLISHED | stamp."""
    tag = (((hash_of(key) & 0xFFFFFFFF) | 1) & ~2) << 32 | (SECONDARY if secondary else 0)
    tag |= (last_seen >> STAMP_SHIFT) & STAMP_MASK
    return tag | (ESTABLISHED if packets > 1 else 0)


def stamp_of(ns: int) -> int:
    return (ns >> STAMP_SHIFT) & STAMP_MASK


# -- tables, keys and values -----------------------------------------------------------------


def empty_table(sets: int) -> np.ndarray:
    return np.zeros((sets, SET_WORDS), "<u8")


def as_sets(words: np.ndarray) -> np.ndarray:
    """The same memory as SET_DTYPE records, to write tags and slots into."""
    return words.reshape(-1).view(SET_DTYPE)


def address_bytes(ip: str) -> bytes:
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return ipaddress.IPv6Address(f"::ffff:{ip}").packed
    return address.packed


def make_keys(addresses: list[str], port: int = 22, proto: int = 6, ifindex: int = 2) -> np.ndarray:
    keys = np.zeros(len(addresses), KEY_DTYPE)
    keys["addr"] = [address_bytes(a) for a in addresses]
    keys["ifindex"], keys["port"], keys["proto"] = ifindex, port, proto
    keys["family"] = [ipaddress.ip_address(a).version for a in addresses]
    return keys


def make_values(last_seen: list[int], packets: int | list[int] = 1) -> np.ndarray:
    values = np.zeros(len(last_seen), VALUE_DTYPE)
    values["last_seen"] = last_seen
    values["first_seen"] = np.array(last_seen, np.uint64) - np.uint64(3 * S)
    values["packets"] = packets
    values["bytes"] = values["packets"] * np.uint64(60)
    return values


def write_slot(
    words: np.ndarray, at: tuple[int, int], key: np.void, value: np.void, tag: int
) -> None:
    """Write a slot and its tag word: at = (set, way)."""
    set_index, way = at
    slot = np.zeros(1, SLOT_DTYPE)
    slot["key"], slot["value"] = key, value
    table = as_sets(words)
    table["way"][set_index, way] = slot[0]
    table["tag"][set_index, way] = tag


def tag_with_stamp(
    key: np.void, stamp: int, *, established: bool = False, secondary: bool = False
) -> int:
    tag = (((hash_of(key) & 0xFFFFFFFF) | 1) & ~2) << 32 | (stamp & STAMP_MASK)
    tag |= SECONDARY if secondary else 0
    return tag | (ESTABLISHED if established else 0)


def rows(keys: np.ndarray, values: np.ndarray) -> dict[bytes, tuple[int, int, int, int]]:
    """key bytes -> (first_seen, last_seen, packets, bytes); fails on a key read twice."""
    found = {}
    for key, value in zip(keys, values, strict=True):
        assert key.tobytes() not in found, "a key read twice"
        found[key.tobytes()] = tuple(int(value[f]) for f in VALUE_DTYPE.names)
    return found


def distinct_keys(count: int, seed: int) -> np.ndarray:
    generator = random.Random(seed)
    addresses = [f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(count // 2)]
    addresses += [f"fd00:9::{n:x}" for n in range(count - len(addresses))]
    keys = make_keys(addresses)
    keys["port"] = [generator.choice([22, 53, 443, 8080]) for _ in range(count)]
    keys["proto"] = [generator.choice([6, 17]) for _ in range(count)]
    keys["ifindex"] = [generator.choice([2, 3]) for _ in range(count)]
    return keys


# -- the layout ------------------------------------------------------------------------------


def test_a_set_is_a_line_of_tags_and_eight_64_byte_slots() -> None:
    assert SLOT_DTYPE.itemsize == 64
    assert SET_DTYPE.itemsize == SET_WORDS * 8 == 8 * WAYS + 64 * WAYS == 576
    assert SET_DTYPE.fields["way"][1] == 64  # the slots start on the second cache line


# -- placement -------------------------------------------------------------------------------


def test_key_hash_spreads_keys_that_differ_in_one_field() -> None:
    """Keys that differ only in the address, or only in the port, fall into many sets (the
    hash's top bits), have alternates all over the block, and tags of their own (its low 32
    bits), as random keys would."""
    addresses = make_keys([f"10.8.{n >> 8}.{n & 255}" for n in range(4096)])
    ports = make_keys(["10.8.0.1"] * 4096)
    ports["port"] = np.arange(4096)
    for keys in (addresses, ports):
        placement = np.array([kernel_sets(key, 256) for key in keys])
        for column in placement.T:
            assert np.bincount(column, minlength=256).max() < 40  # 16 on average
        assert len(np.unique(placement[:, 0] ^ placement[:, 1])) == 128  # every odd offset
        assert len(np.unique(key_hash(keys) & np.uint64(0xFFFFFFFF))) == len(keys)


@pytest.mark.parametrize(
    ("max_entries", "sets"),
    [
        (1, MIN_SETS),  # 16 sets at least: 128 slots
        (85, 16),  # 1.5 x 85 = 127.5 slots
        (86, 32),
        (1000, 256),  # 188 sets -> 256
        (10_922, 2048),  # the largest table of one block
        (10_923, 4096),  # past it: whole blocks
        (262144, 49152),  # the default: 24 blocks, exactly 1.5 slots per entry
        (262145, 51200),
        (1 << 27, 25165824),  # the largest max_entries accepted
    ],
)
def test_sets_for(max_entries: int, sets: int) -> None:
    assert sets_for(max_entries) == sets


@pytest.mark.parametrize("max_entries", [1, 7, 8, 9, 100, 127, 128, 129, 4095, 4096, 100_000])
def test_a_table_has_one_and_a_half_slots_per_entry_in_whole_blocks(max_entries: int) -> None:
    sets = sets_for(max_entries)
    assert sets * WAYS >= SLOTS_PER_ENTRY * max_entries
    if sets <= BLOCK_SETS:
        assert sets & (sets - 1) == 0
    else:
        assert sets % BLOCK_SETS == 0
        assert (sets - BLOCK_SETS) * WAYS < SLOTS_PER_ENTRY * max_entries


@pytest.mark.parametrize(("window", "stamps"), [(10, 10), (60, 56), (3600, 3353), (86400, 80467)])
def test_window_stamps_rounds_the_window_up(window: int, stamps: int) -> None:
    assert window_stamps(window) == stamps
    unit = 1 << STAMP_SHIFT
    assert (stamps - 1) * unit < window * S <= stamps * unit


@pytest.mark.parametrize(
    ("per_second", "per_tick"),
    [(0, 0), (1, 9), (1000, 8590), (100_000_000, 858_993_460)],
)
def test_admit_per_tick_is_the_budget_over_a_tick_rounded_up(
    per_second: int, per_tick: int
) -> None:
    """A tick of the sketches is 2**33 ns = 8.589934592 s; 0 stays 0 (no budget)."""
    assert admit_per_tick(per_second) == per_tick
    tick = 1 << TICK_SHIFT
    assert per_tick == 0 or (per_tick - 1) * S < per_second * tick <= per_tick * S


def test_place_then_live_entries_gives_back_every_entry() -> None:
    keys = distinct_keys(300, seed=2)
    generator = random.Random(3)
    last_seen = [NOW - generator.randrange(0, 50 * S) for _ in range(len(keys))]
    packets = [generator.choice([1, 1, 2, 7]) for _ in range(len(keys))]
    values = make_values(last_seen, packets)
    words = empty_table(64)  # 512 slots for 300 keys: more than 1.5 per key

    assert place(words, keys, values) == len(keys)

    # Where the kernel looks: the key's primary set with its tag, or its alternate set with
    # the tag marked SECONDARY.
    tags = as_sets(words)["tag"]
    for i, key in enumerate(keys):
        primary, alternate = kernel_sets(key, 64)
        in_primary = kernel_tag(key, last_seen[i], packets[i]) in tags[primary].tolist()
        in_alternate = (
            kernel_tag(key, last_seen[i], packets[i], secondary=True) in tags[alternate].tolist()
        )
        assert in_primary != in_alternate, f"key {i}: in neither set, or in both"
    expected = {
        key.tobytes(): tuple(int(value[f]) for f in VALUE_DTYPE.names)
        for key, value in zip(keys, values, strict=True)
    }
    assert rows(*live_entries(words, NOW, WINDOW)) == expected


def test_place_fills_a_table_to_max_entries_without_losing_a_key() -> None:
    """The table the daemon makes for max_entries holds max_entries keys (the kernel's choice
    of the emptier set; place's rounds do the same): no set overflows."""
    max_entries = 30_000
    keys = np.zeros(max_entries, KEY_DTYPE)
    keys["addr"] = [
        address_bytes(f"10.{n >> 16}.{n >> 8 & 255}.{n & 255}") for n in range(max_entries)
    ]
    keys["ifindex"], keys["port"], keys["proto"], keys["family"] = 2, 53, 17, 4
    words = empty_table(sets_for(max_entries))
    assert place(words, keys, make_values([NOW - S] * max_entries)) == max_entries
    assert len(live_entries(words, NOW, WINDOW)[0]) == max_entries


def sharing_both_sets(candidates: np.ndarray, sets: int, count: int) -> list[np.void]:
    """count of the candidates whose two sets are the same two sets."""
    pairs: dict[tuple[int, int], list[np.void]] = {}
    for key in candidates:
        pairs.setdefault(tuple(sorted(kernel_sets(key, sets))), []).append(key)
    members = max(pairs.values(), key=len)
    assert len(members) >= count, f"only {len(members)} candidates share two sets: give more"
    return members[:count]


def test_place_keeps_the_most_recent_entries_of_two_full_sets() -> None:
    same_sets = sharing_both_sets(distinct_keys(4000, seed=4), 16, 2 * WAYS + 3)
    keys = np.array(same_sets, KEY_DTYPE)
    last_seen = [NOW - (n + 1) * S for n in range(len(keys))]  # keys[0] is the newest
    values = make_values(last_seen)
    words = empty_table(16)
    assert place(words, keys, values) == 2 * WAYS
    found = rows(*live_entries(words, NOW, WINDOW))
    assert set(found) == {key.tobytes() for key in keys[: 2 * WAYS]}
    used = np.flatnonzero(as_sets(words)["tag"].any(axis=1))
    assert sorted(used.tolist()) == sorted(kernel_sets(keys[0], 16))  # nothing in another set


def test_place_moves_an_entry_to_its_other_set_to_make_room() -> None:
    """Two full sets (one pair of sets for 16 keys) and a key with one of them and a third,
    empty set: place's last step makes room where a round alone would not."""
    candidates = distinct_keys(6000, seed=11)
    pair = sharing_both_sets(candidates, 16, 2 * WAYS)
    full = set(kernel_sets(pair[0], 16))
    # A newer key whose sets are one of the full two and a third one, which 8 even newer keys
    # with that same pair fill first.
    for key in candidates:
        sets = kernel_sets(key, 16)
        if len(full & set(sets)) == 1:
            third = (set(sets) - full).pop()
            break
    third_pair = [
        k for k in candidates if sorted(kernel_sets(k, 16)) == sorted(kernel_sets(key, 16))
    ]
    assert len(third_pair) > 1
    keys = np.array([*pair, key], KEY_DTYPE)
    words = empty_table(16)
    assert place(words, keys, make_values([NOW - S] * len(keys))) == len(keys)
    assert len(live_entries(words, NOW, WINDOW)[0]) == len(keys)
    assert as_sets(words)["tag"][third].any()


def test_a_full_table_reads_no_more_than_its_slots() -> None:
    keys = distinct_keys(2000, seed=5)
    values = make_values([NOW - S] * len(keys))
    words = empty_table(16)
    assert place(words, keys, values) == 16 * WAYS
    read_keys, _ = live_entries(words, NOW, WINDOW)
    assert len(read_keys) == 16 * WAYS


@pytest.mark.parametrize("sets", [24, 3000, BLOCK_SETS + 16])
def test_place_wants_a_power_of_two_of_sets_or_whole_blocks(sets: int) -> None:
    keys = distinct_keys(4, seed=6)
    with pytest.raises(ValueError, match="power of two"):
        place(empty_table(sets), keys, make_values([NOW] * 4))
    assert place(empty_table(16), keys[:0], make_values([])) == 0
    assert place(empty_table(2 * BLOCK_SETS), keys, make_values([NOW] * 4)) == 4


# -- liveness --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "window", "live"),
    [
        (0, WINDOW, True),
        (WINDOW_STAMPS, WINDOW, True),  # exactly the window old: the kernel keeps it
        (WINDOW_STAMPS + 1, WINDOW, False),  # the kernel may give the slot to a new key
        (10, 10, True),
        (11, 10, False),
        (3000, WINDOW, False),
    ],
)
@pytest.mark.parametrize("established", [False, True])
def test_an_entry_is_live_while_its_stamp_is_within_the_window(
    age: int, window: int, live: bool, established: bool
) -> None:
    key = make_keys(["10.1.0.1"])[0]
    value = make_values([NOW])[0]
    words = empty_table(16)
    write_slot(
        words, (3, 5), key, value, tag_with_stamp(key, stamp_of(NOW) - age, established=established)
    )
    keys, _ = live_entries(words, NOW, window)
    assert [k.tobytes() for k in keys] == ([key.tobytes()] if live else [])


def test_the_stamp_is_compared_modulo_its_31_bits() -> None:
    now = (1 << 61) + (5 << STAMP_SHIFT)  # the stamp has just wrapped to 5
    old_key, new_key, gone_key = make_keys(["10.1.0.1", "10.1.0.2", "10.1.0.3"])
    words = empty_table(16)
    value = make_values([now])[0]
    write_slot(words, (0, 0), old_key, value, tag_with_stamp(old_key, STAMP_MASK - 2))  # 8 old
    write_slot(words, (0, 1), new_key, value, tag_with_stamp(new_key, 5))
    write_slot(words, (0, 2), gone_key, value, tag_with_stamp(gone_key, 5 - WINDOW_STAMPS - 1))
    keys, _ = live_entries(words, now, WINDOW)
    assert sorted(k.tobytes() for k in keys) == sorted([old_key.tobytes(), new_key.tobytes()])


def test_free_and_busy_slots_are_not_read() -> None:
    never_used, busy, busy_stamped, live = make_keys(
        ["10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4"]
    )
    value = make_values([NOW])[0]
    words = empty_table(16)
    write_slot(words, (7, 0), never_used, value, 0)  # a tag word of 0: never used
    write_slot(words, (7, 1), busy, value, BUSY)  # being written by a CPU
    write_slot(words, (7, 2), busy_stamped, value, stamp_of(NOW) | ESTABLISHED)  # hash part 0
    write_slot(words, (7, 3), live, value, tag_with_stamp(live, stamp_of(NOW)))
    keys, values = live_entries(words, NOW, WINDOW)
    assert [k.tobytes() for k in keys] == [live.tobytes()]
    assert rows(keys, values)[live.tobytes()] == tuple(int(value[f]) for f in VALUE_DTYPE.names)


def test_an_entry_stamped_just_after_the_readers_clock_is_live() -> None:
    """DataPath.read_sources reads the clock, then the mapped table: a frame in between can
    stamp a slot with the next stamp; the entry is live, not 68 years old."""
    now = (stamp_of(NOW) << STAMP_SHIFT) + (1 << STAMP_SHIFT) - 1  # the last ns of a stamp
    key = make_keys(["10.3.0.1"])[0]
    words = empty_table(16)
    write_slot(
        words, (1, 0), key, make_values([now + 1])[0], tag_with_stamp(key, stamp_of(now) + 1)
    )
    keys, _ = live_entries(words, now, WINDOW)
    assert [k.tobytes() for k in keys] == [key.tobytes()]


# -- duplicates ------------------------------------------------------------------------------


def test_duplicates_of_a_key_in_its_set_are_merged() -> None:
    """Two CPUs that claim one new key at once leave it in two slots of its set (three with a
    third CPU): one entry, earliest first seen, latest last seen, counts added."""
    key, other = make_keys(["10.4.0.1", "10.4.0.2"])
    copies = np.zeros(3, VALUE_DTYPE)
    copies["first_seen"] = [NOW - 9 * S, NOW - 7 * S, NOW - 8 * S]
    copies["last_seen"] = [NOW - 2 * S, NOW - 1 * S, NOW - 3 * S]
    copies["packets"] = [5, 1, 2]
    copies["bytes"] = [500, 60, 130]
    words = empty_table(16)
    for way, copy in zip((1, 4, 6), copies, strict=True):
        write_slot(
            words, (9, way), key, copy, tag_with_stamp(key, stamp_of(int(copy["last_seen"])))
        )
    other_value = make_values([NOW - S], 3)[0]
    write_slot(words, (9, 2), other, other_value, tag_with_stamp(other, stamp_of(NOW)))
    found = rows(*live_entries(words, NOW, WINDOW))
    assert found == {
        key.tobytes(): (NOW - 9 * S, NOW - 1 * S, 8, 690),
        other.tobytes(): tuple(int(other_value[f]) for f in VALUE_DTYPE.names),
    }


def test_duplicates_are_merged_in_every_set_of_one_read() -> None:
    """Sets with and without duplicates, before and after each other: each row goes to its own
    key (the reader finds a set's rows by counting the live slots of the sets before it)."""
    keys = make_keys([f"10.5.0.{n}" for n in range(1, 9)])
    words = empty_table(16)
    expected = {}
    layout = {  # set -> [(way, key index, packets)]
        0: [(0, 0, 1), (3, 1, 1), (7, 2, 1)],
        5: [(2, 3, 2), (6, 3, 3), (1, 4, 1)],
        6: [(0, 5, 1)],
        12: [(0, 6, 1), (1, 6, 1), (2, 6, 4), (5, 7, 1)],
    }
    for set_index, slots in layout.items():
        for way, index, packets in slots:
            value = make_values([NOW - S], packets)[0]
            write_slot(
                words,
                (set_index, way),
                keys[index],
                value,
                tag_with_stamp(keys[index], stamp_of(NOW)),
            )
            first, last, count, size = expected.get(
                keys[index].tobytes(), (NOW - 4 * S, NOW - S, 0, 0)
            )
            expected[keys[index].tobytes()] = (first, last, count + packets, size + 60 * packets)
    assert rows(*live_entries(words, NOW, WINDOW)) == expected


def test_copies_of_a_key_in_its_two_sets_are_merged() -> None:
    """Two CPUs that claim one new key at once may take a slot in each of its sets (the one in
    the alternate set marked SECONDARY): one entry, counts added."""
    key, other = make_keys(["10.4.1.1", "10.4.1.2"])
    primary, alternate = kernel_sets(key, 64)
    words = empty_table(64)
    in_primary, in_alternate = make_values([NOW - 2 * S, NOW - S], [3, 4])
    in_alternate["first_seen"] = NOW - 9 * S
    write_slot(words, (primary, 5), key, in_primary, tag_with_stamp(key, stamp_of(NOW - 2 * S)))
    write_slot(
        words,
        (alternate, 0),
        key,
        in_alternate,
        tag_with_stamp(key, stamp_of(NOW - S), secondary=True),
    )
    other_value = make_values([NOW - S], 2)[0]
    write_slot(words, (alternate, 1), other, other_value, tag_with_stamp(other, stamp_of(NOW)))
    found = rows(*live_entries(words, NOW, WINDOW))
    assert found == {
        key.tobytes(): (NOW - 9 * S, NOW - S, 7, 420),
        other.tobytes(): tuple(int(other_value[f]) for f in VALUE_DTYPE.names),
    }


def test_a_key_in_its_alternate_set_alone_is_read_once() -> None:
    """A SECONDARY slot whose primary set holds another key with the same tag hash: two keys."""
    key, other = make_keys(["10.4.2.1", "10.4.2.2"])
    primary, alternate = kernel_sets(key, 64)
    words = empty_table(64)
    tag = tag_with_stamp(key, stamp_of(NOW))
    write_slot(words, (primary, 2), other, make_values([NOW], 5)[0], tag)  # same tag hash
    write_slot(words, (alternate, 3), key, make_values([NOW], 2)[0], tag | SECONDARY)
    found = rows(*live_entries(words, NOW, WINDOW))
    assert {k: v[2] for k, v in found.items()} == {key.tobytes(): 2, other.tobytes(): 5}


def test_keys_that_share_a_tag_hash_are_not_merged() -> None:
    """Tags carry 32 bits of the hash: two keys of a set may share them; the keys decide."""
    first, second = make_keys(["10.6.0.1", "10.6.0.2"])
    shared_tag = tag_with_stamp(first, stamp_of(NOW))
    words = empty_table(16)
    write_slot(words, (2, 0), first, make_values([NOW], 2)[0], shared_tag)
    write_slot(words, (2, 1), second, make_values([NOW], 5)[0], shared_tag)
    found = rows(*live_entries(words, NOW, WINDOW))
    assert {key: value[2] for key, value in found.items()} == {
        first.tobytes(): 2,
        second.tobytes(): 5,
    }


def test_an_expired_duplicate_adds_nothing() -> None:
    key = make_keys(["10.7.0.1"])[0]
    words = empty_table(16)
    live_value, old_value = make_values([NOW - S, NOW - 600 * S], [4, 9])
    write_slot(words, (4, 0), key, live_value, tag_with_stamp(key, stamp_of(NOW - S)))
    write_slot(words, (4, 1), key, old_value, tag_with_stamp(key, stamp_of(NOW - 600 * S)))
    found = rows(*live_entries(words, NOW, WINDOW))
    assert found == {key.tobytes(): tuple(int(live_value[f]) for f in VALUE_DTYPE.names)}


# -- the chunked read (DataPath.read_sources) ------------------------------------------------


def chunked(words: np.ndarray, sets: int) -> Callable[[], Iterator[np.ndarray]]:
    """DataPath._table_chunks over an array: `sets` sets at a time."""
    return lambda: (words[first : first + sets] for first in range(0, len(words), sets))


def test_the_chunked_read_is_live_entries_of_the_whole_table() -> None:
    """Chunks of whole blocks (a key's two sets are in one block), as DataPath reads them."""
    keys = distinct_keys(3000, seed=7)
    generator = random.Random(8)
    last_seen = [NOW - generator.randrange(0, 90 * S) for _ in range(len(keys))]  # some expired
    words = empty_table(2 * BLOCK_SETS)
    place(words, keys, make_values(last_seen, 2))
    # Duplicates in a set of the second block (one of them across a key's two sets), and a
    # BUSY slot.
    duplicated, across = make_keys(["10.9.0.1", "10.9.0.2"])
    for way in (0, 1):
        value = make_values([NOW - S], 3)[0]
        at = (BLOCK_SETS + 40, way)
        write_slot(words, at, duplicated, value, tag_with_stamp(duplicated, stamp_of(NOW)))
    primary, alternate = kernel_sets(across, 2 * BLOCK_SETS)
    for at, secondary in (((primary, 7), False), ((alternate, 7), True)):
        tag = tag_with_stamp(across, stamp_of(NOW), secondary=secondary)
        write_slot(words, at, across, make_values([NOW - S], 2)[0], tag)
    as_sets(words)["tag"][BLOCK_SETS + 41, 0] = BUSY
    whole = rows(*live_entries(words, NOW, WINDOW))
    assert whole[duplicated.tobytes()][2] == 6
    assert whole[across.tobytes()][2] == 4
    for sets in (BLOCK_SETS, 2 * BLOCK_SETS):
        assert rows(*read_live_entries(chunked(words, sets), NOW, WINDOW)) == whole


def test_the_chunked_read_keeps_what_arrived_between_its_passes() -> None:
    """The first pass counts the live slots to size the arrays; slots claimed before the
    second pass are read too, however many."""
    keys = distinct_keys(1500, seed=9)
    words = empty_table(256)
    placed = place(words, keys, make_values([NOW - S] * len(keys)))
    empty = empty_table(256)
    calls = iter([chunked(empty, 128)(), chunked(words, 128)()])
    found = rows(*read_live_entries(lambda: next(calls), NOW, WINDOW))
    assert len(found) == placed > 1024
    assert found == rows(*live_entries(words, NOW, WINDOW))
