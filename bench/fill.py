"""Fill the sources of a program from userspace, without sending a frame: the state a large
fleet of sources (or a flood) leaves behind.

- `fill_table`: the product's set-associative table (bpf/xdp_ip_counter.c), written through
  the mapped map (`DataPath.table_words()`) with the product's own `table.place`, so that every
  entry sits where the kernel looks for it. Only keys whose set has room are used, so exactly
  `count` entries are added; the entries already there are kept.
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
from xdp_ip_counter.layout import KEY_DTYPE, VALUE_DTYPE, WAYS
from xdp_ip_counter.table import key_hash, place

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
    numbered from start, a key used only when its set has a free slot. The live entries already
    there stay (keep=False: they go). The new entries are last seen age_s ago (1 s: older than
    what a frame just wrote, which place() keeps first), every `established`-th of them
    established (seen in two frames; 0: none). Not while frames arrive."""
    words = datapath.table_words()
    sets = datapath.sets
    if keep:
        old_keys, old_values, _ = datapath.read_sources()
    else:
        old_keys, old_values = np.zeros(0, KEY_DTYPE), np.zeros(0, VALUE_DTYPE)
    room = WAYS - np.bincount(_set_of(old_keys, sets), minlength=sets)
    wanted = int(room.sum()) if count is None else count
    if wanted > room.sum():
        raise ValueError(f"the table has {room.sum()} free slots, not {wanted}")
    chosen, number = [], start
    while wanted > 0:
        # A few candidates per set: a set with room gets its share even when few are left.
        size = max(2 * wanted, 4 * sets)
        keys = source_keys(size, number, mixed=mixed, ifindex=ifindex)
        set_index = _set_of(keys, sets)
        taken = np.flatnonzero(_rank_within_set(set_index) < room[set_index])[:wanted]
        np.subtract.at(room, set_index[taken], 1)
        chosen.append(keys[taken])
        wanted -= len(taken)
        number = number + int(taken[-1]) + 1 if wanted == 0 else number + size
    new_keys = np.concatenate(chosen) if chosen else np.zeros(0, KEY_DTYPE)
    new_values = source_values(len(new_keys), age_s, established)
    keys = np.concatenate([old_keys, new_keys])
    values = np.concatenate([old_values, new_values])
    words[:] = 0
    placed = place(words, keys, values)
    del words
    datapath.unmap_table()  # the whole table counted in this process's RSS while mapped
    if placed != len(keys):
        raise RuntimeError(f"placed {placed} of {len(keys)} entries")
    return Filled(len(new_keys), number)


def _set_of(keys: np.ndarray, sets: int) -> np.ndarray:
    """The set the kernel puts each key in (the key hash's top bits)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    set_bits = sets.bit_length() - 1
    return (key_hash(keys) >> np.uint64(64 - set_bits)).astype(np.int64)


def _rank_within_set(set_index: np.ndarray) -> np.ndarray:
    """For each element, how many elements before it have the same set."""
    order = np.argsort(set_index, kind="stable")
    ordered = set_index[order]
    first = np.searchsorted(ordered, ordered, side="left")
    rank = np.empty(len(set_index), np.int64)
    rank[order] = np.arange(len(order)) - first
    return rank
