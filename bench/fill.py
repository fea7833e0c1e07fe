"""Fill the sources of a program from userspace, without sending a frame: the state a large
fleet of sources (or a flood) leaves behind.

- `fill_table`: the product's set-associative table (bpf/xdp_ip_counter.c), written through
  the mapped map (`DataPath.table_words()`), each key into one of its two sets
  (`table.primary_set`, `table.alternate_set`) as the kernel chooses: the one with more free
  slots. Only keys with a free slot in one of their sets are used, so exactly `count` entries
  are added (up to every slot of the table); the entries already there stay where they are.
- `fill`: the LRU hash of the first version (bench/programs/first_version.c), with
  BPF_MAP_UPDATE_BATCH.

Keys come from `source_keys`: numbered, distinct, and by default on an interface no frame
arrives on (BPF_PROG_TEST_RUN gives frames ifindex 1), so that a filled key is never a frame's
key, whatever its address.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.bpf_syscall import map_update_batch
from xdp_ip_counter.clock import kernel_clock_ns
from xdp_ip_counter.layout import KEY_DTYPE, ROOMY, VALUE_DTYPE, WAYS
from xdp_ip_counter.table import (
    alternate_set,
    key_hash,
    live_mask,
    primary_set,
    tag_hash,
    write_slots,
)

FIRST_V4 = 0x0A400000  # 10.64.0.0
PORTS = (22, 25, 53, 80, 110, 123, 143, 443, 465, 587, 993, 995, 3306, 5432, 8080, 8443)
FILL_IFINDEX = 1000  # no frame of a test run has it: a filled key is never a frame's key
CHUNK = 131072


def source_keys(
    count: int, start: int = 0, mixed: bool = False, ifindex: int = FILL_IFINDEX
) -> np.ndarray:
    """count distinct keys (KEY_DTYPE), numbered from start.

    Plain: IPv4 sources from 10.64.0.0 up, UDP to port 53. Mixed (what a busy server sees): one
    in four an IPv6 source, TCP and UDP alternating, sixteen ports; still all distinct.
    """
    number = np.arange(start, start + count, dtype=np.uint64)
    addresses = np.zeros((count, 16), np.uint8)
    v6 = (number % 4 == 3) if mixed else np.zeros(count, bool)
    v4_rows = ~v6
    addresses[v4_rows, 10:12] = 0xFF
    v4_addr = ((FIRST_V4 + number[v4_rows]) & np.uint64(0xFFFFFFFF)).astype(">u4")
    addresses[v4_rows, 12:16] = v4_addr.view(np.uint8).reshape(-1, 4)
    # IPv6: fd00:64::/32 with the number in the low 64 bits
    addresses[v6, 0:4] = (0xFD, 0x00, 0x00, 0x64)
    addresses[v6, 8:16] = number[v6].astype(">u8").view(np.uint8).reshape(-1, 8)
    keys = np.zeros(count, KEY_DTYPE)
    keys["addr"] = addresses.view("V16").ravel()
    keys["ifindex"] = ifindex
    keys["family"] = np.where(v6, 6, 4)
    if mixed:
        keys["port"] = np.asarray(PORTS, np.uint16)[(number // 2) % len(PORTS)]
        keys["proto"] = np.where(number % 2 == 0, 6, 17)
    else:
        keys["port"] = 53
        keys["proto"] = 17
    return keys


def source_values(count: int, age_s: float = 0.0, established: int = 0) -> np.ndarray:
    """Values last seen age_s ago (first seen a second before that), 46 bytes a packet; one
    packet each, but two for every `established`-th entry (0: none), which the product's table
    marks established."""
    values = np.zeros(count, VALUE_DTYPE)
    seen = kernel_clock_ns() - int(age_s * 1e9)
    values["first_seen"] = seen - 1_000_000_000
    values["last_seen"] = seen
    values["packets"] = 1
    if established:
        values["packets"][::established] = 2
    values["bytes"] = 46 * values["packets"]
    return values


def fill(
    map_fd: int,
    count: int,
    *,
    start: int = 0,
    mixed: bool = False,
    ifindex: int = FILL_IFINDEX,
    age_s: float = 0.0,
) -> None:
    """Insert (or overwrite) count distinct entries into an LRU hash, a chunk at a time so that
    the buffers stay small."""
    for offset in range(0, count, CHUNK):
        size = min(CHUNK, count - offset)
        keys = source_keys(size, start + offset, mixed=mixed, ifindex=ifindex)
        values = source_values(size, age_s)
        map_update_batch(map_fd, keys.tobytes(), values.tobytes(), size)


@dataclass(frozen=True)
class Filled:
    added: int  # entries added to the table
    next_start: int  # the first key number not used: where another fill can start


def fill_table(
    datapath: DataPath,
    count: int | None = None,
    *,
    start: int = 0,
    mixed: bool = False,
    ifindex: int = FILL_IFINDEX,
    age_s: float = 1.0,
    established: int = 0,
    keep: bool = True,
) -> Filled:
    """Add count entries (None: one to every free slot) to the product's table, with keys
    numbered from start, each in a free slot of one of its two sets, chosen as the kernel
    chooses (`choose_sets`): a key both of whose sets are full is not used, so exactly `count`
    entries are added and none is given up. The live entries already there stay where they
    are (keep=False: they go). The new entries are last seen age_s ago (1 s: older than what a
    frame just wrote), every `established`-th of them established (seen in two frames; 0:
    none). Not while frames arrive."""
    words = datapath.table_words()
    try:
        if not keep:
            words[:] = 0
        live = live_mask(words[:, :WAYS], datapath.clock.now_ns(), datapath.window or 0)
        free = WAYS - live.sum(axis=1)
        wanted = int(free.sum()) if count is None else count
        if wanted > free.sum():
            raise ValueError(f"the table has {free.sum()} free slots, not {wanted}")
        room = free.tolist()
        chosen_keys, chosen_sets, number = [], [], start
        while wanted > 0:
            # Enough candidates that the last sets with a free slot are some keys' choice too.
            size = max(2 * wanted, 4 * datapath.sets)
            keys = source_keys(size, number, mixed=mixed, ifindex=ifindex)
            number += size
            taken, set_index = choose_sets(keys, datapath.sets, room, wanted)
            chosen_keys.append(keys[taken])
            chosen_sets.append(set_index)
            wanted -= len(taken)
        if chosen_keys:
            keys = np.concatenate(chosen_keys)
            _write(
                words,
                live,
                keys,
                np.concatenate(chosen_sets),
                age_s=age_s,
                established=established,
            )
        added = sum(len(k) for k in chosen_keys)
        datapath.rebuild_fingerprints()
    finally:
        del words
        datapath.unmap_table()  # the whole table counted in this process's RSS while mapped
    return Filled(added, number)


def choose_sets(
    keys: np.ndarray, sets: int, room: list[int], wanted: int
) -> tuple[np.ndarray, np.ndarray]:
    """The keys a table of `sets` sets with room[s] free slots in set s takes, in order, as the
    kernel takes new keys one at a time: into the primary while it has ROOMY free slots or
    more, else whichever of its two sets has more free slots (the primary on a tie), and not at
    all when both are full (the kernel would give an entry up). At most `wanted` keys. Returns
    their indices in keys and their sets; room is updated."""
    hashes = key_hash(keys)
    primary = primary_set(hashes, sets).astype(np.int64)
    alternate = alternate_set(primary, tag_hash(hashes), sets)
    taken: list[int] = []
    chosen: list[int] = []
    pairs = zip(primary.tolist(), alternate.tolist(), strict=True)
    for number, (first, second) in enumerate(pairs):
        into = second if room[second] > room[first] and room[first] < ROOMY else first
        if room[into] == 0:
            continue
        room[into] -= 1
        taken.append(number)
        chosen.append(into)
        if len(taken) == wanted:
            break
    return np.asarray(taken, np.int64), np.asarray(chosen, np.int64)


def _write(
    words: np.ndarray,
    live: np.ndarray,
    keys: np.ndarray,
    set_index: np.ndarray,
    *,
    age_s: float,
    established: int,
) -> None:
    """Write keys, with new values, into free ways of their chosen sets (live: the ways taken
    before), tag words as the kernel writes them (the SECONDARY bit for a key in its alternate
    set)."""
    free_first = np.argsort(live[set_index], axis=1, kind="stable")  # free ways, in order
    way = free_first[np.arange(len(keys)), _rank_within_set(set_index)]
    write_slots(words, set_index, way, keys, source_values(len(keys), age_s, established))


def _rank_within_set(set_index: np.ndarray) -> np.ndarray:
    """For each element, how many elements before it have the same set."""
    order = np.argsort(set_index, kind="stable")
    ordered = set_index[order]
    first = np.searchsorted(ordered, ordered, side="left")
    rank = np.empty(len(set_index), np.int64)
    rank[order] = np.arange(len(order)) - first
    return rank
