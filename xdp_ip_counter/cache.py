"""The userspace half of the per-CPU cache protocol (source_cache in bpf/xdp_ip_counter.c).

The program counts a source's frames within one clock tick in a per-CPU cache slot before they
reach the sources map. SourceCache.read_sources() adds those pending counts to what it reads
from the map, and flush() moves them into the map once no program runs, so that every reader
sees exact packets and bytes. Only bpf(2) on the maps' fds here: no bcc.
"""

from __future__ import annotations

import logging

import numpy as np

from . import bpf_syscall
from .layout import KEY_DTYPE, VALUE_DTYPE

log = logging.getLogger(__name__)

# struct cache_slot of bpf/xdp_ip_counter.c: one slot of the per-CPU cache of recent keys.
CACHE_SLOT_DTYPE = np.dtype(
    [
        ("packets", "<u8"),  # pending: counted in the slot, not yet in the sources map
        ("bytes", "<u8"),
        ("stamp", "<u8"),  # the clock tick every pending count is from
        ("key", KEY_DTYPE),  # family 0: empty
        ("seq", "<u8"),  # odd while pending counts move out of the slot
    ]
)
CACHE_BITS = 10  # the program's default (1024 slots per CPU); SourceCache reads the real one
_HASH_MULTIPLIERS = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xC2B2AE3D27D4EB4F),
    np.uint64(0x165667B19E3779F9),
)
REREAD_ATTEMPTS = 20
# Entries per BPF_MAP_LOOKUP_BATCH call: the kernel walks buckets without yielding the CPU, so
# a call of 16384 entries (a few ms) keeps a non-preemptible kernel responsive.
READ_CHUNK = 16384


def cache_index(keys: np.ndarray, cache_bits: int = CACHE_BITS) -> np.ndarray:
    """The cache slot of each key (KEY_DTYPE array), as the program's cache_index() computes it.
    In place on one array: a million keys cost 8 MB, not a temporary per step."""
    words = np.ascontiguousarray(keys).view(np.uint64).reshape(-1, 3)
    first, second, third = _HASH_MULTIPLIERS
    h = np.multiply(words[:, 0], first)
    np.bitwise_xor(h, words[:, 1], out=h)
    np.multiply(h, second, out=h)
    np.bitwise_xor(h, words[:, 2], out=h)
    np.multiply(h, third, out=h)
    np.right_shift(h, np.uint64(64 - cache_bits), out=h)
    return h.view(np.intp)


def _key_words(keys: np.ndarray) -> np.ndarray:
    """KEY_DTYPE array (any shape) -> its keys as rows of three uint64 words."""
    return np.ascontiguousarray(keys).view(np.uint64).reshape(-1, 3)


class SourceCache:
    """The per-CPU cache (an array map of `slots` CACHE_SLOT_DTYPE entries on each of `cpus`
    CPUs, behind cache_fd) and the sources map it feeds (max_entries, behind sources_fd)."""

    def __init__(
        self, cache_fd: int, slots: int, cpus: int, sources_fd: int, max_entries: int
    ) -> None:
        self.cache_fd = cache_fd
        self.slots = slots
        self.cpus = cpus
        self.sources_fd = sources_fd
        self.max_entries = max_entries

    @property
    def bits(self) -> int:
        """log2 of the slots per CPU: the program's CACHE_BITS, for cache_index()."""
        return self.slots.bit_length() - 1

    def read_sources(self) -> tuple[np.ndarray, np.ndarray]:
        """Every entry of the sources map as (keys, values) numpy arrays, with the counts still
        pending in the per-CPU cache added.

        The cache is read before and after the map. A slot whose seq is the same (and even) both
        times moved no counts into the map in between, so its pending counts are added to the
        map's value as read; the keys of a slot that did move counts are read again, one by one,
        until the slot holds still around the read.
        """
        before = self.read()
        raw_keys, raw_values, count = bpf_syscall.map_lookup_batch(
            self.sources_fd,
            KEY_DTYPE.itemsize,
            VALUE_DTYPE.itemsize,
            self.max_entries,
            chunk=READ_CHUNK,
        )
        after = self.read()
        keys = np.frombuffer(raw_keys, dtype=KEY_DTYPE, count=count)
        values = np.frombuffer(raw_values, dtype=VALUE_DTYPE, count=count)
        keys, values = self._add_pending(keys, values, before, after)
        return keys, values

    def read(self) -> np.ndarray:
        """The cache as an array of CACHE_SLOT_DTYPE, shape (slots, CPUs)."""
        _, raw, count = bpf_syscall.map_lookup_batch(
            self.cache_fd, 4, CACHE_SLOT_DTYPE.itemsize * self.cpus, self.slots
        )
        slots = np.frombuffer(raw, dtype=CACHE_SLOT_DTYPE, count=count * self.cpus)
        return slots.reshape(count, self.cpus)

    def read_slot(self, index: int) -> np.ndarray:
        """One slot on every CPU (CACHE_SLOT_DTYPE, shape (CPUs,))."""
        raw = bpf_syscall.map_lookup(
            self.cache_fd, index.to_bytes(4, "little"), CACHE_SLOT_DTYPE.itemsize * self.cpus
        )
        assert raw is not None, "an array map has every index"
        return np.frombuffer(raw, dtype=CACHE_SLOT_DTYPE).copy()

    def _add_pending(
        self, keys: np.ndarray, values: np.ndarray, before: np.ndarray, after: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        held_still = (before["seq"] == after["seq"]) & (after["seq"] % 2 == 0)
        moved = np.flatnonzero(~held_still.all(axis=1))
        pending = after["packets"] > 0
        pending[moved] = False
        if not pending.any() and len(moved) == 0:
            return keys, values
        index = cache_index(keys, self.bits)
        _add_slot_counts(keys, values, index, after, pending)
        if len(moved):
            keys, values = self._reread(keys, values, index, moved, before=before, after=after)
        return keys, values

    def _reread(
        self,
        keys: np.ndarray,
        values: np.ndarray,
        index: np.ndarray,
        moved: np.ndarray,
        *,
        before: np.ndarray,
        after: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read again the entries whose slot moved counts into the map during the batch read:
        every key of the slot's rows and of the slot itself, bracketed by two reads of the
        slot, until the slot held still."""
        rows_of = {int(i): [] for i in moved.tolist()}
        for row in np.flatnonzero(np.isin(index, moved)).tolist():
            rows_of[int(index[row])].append(row)
        drop: list[int] = []
        extra_keys: list[bytes] = []
        extra_values: list[bytes] = []
        for slot_index, rows in rows_of.items():
            wanted = {keys[row].tobytes(): row for row in rows}
            for state in (before[slot_index], after[slot_index]):
                for slot in state:
                    if slot["key"]["family"]:
                        wanted.setdefault(slot["key"].tobytes(), -1)
            found, slot_state = self._read_around_slot(slot_index, wanted)
            for key, value in found.items():
                row = wanted.get(key, -1)
                if value is None:
                    if row >= 0:
                        drop.append(row)
                    continue
                counted = _with_slot_counts(key, value, slot_state)
                if row >= 0:
                    values[row] = np.frombuffer(counted, dtype=VALUE_DTYPE)[0]
                else:
                    extra_keys.append(key)
                    extra_values.append(counted)
        if drop or extra_keys:
            keep = np.ones(len(keys), bool)
            keep[drop] = False
            keys = np.concatenate(
                [keys[keep], np.frombuffer(b"".join(extra_keys), dtype=KEY_DTYPE)]
            )
            values = np.concatenate(
                [values[keep], np.frombuffer(b"".join(extra_values), dtype=VALUE_DTYPE)]
            )
        return keys, values

    def _read_around_slot(
        self, slot_index: int, wanted: dict[bytes, int]
    ) -> tuple[dict[bytes, bytes | None], np.ndarray]:
        """{key: map value or None} for every wanted key and every key pending in the slot,
        read while the slot moved nothing; and the slot's state at the end of that read."""
        keys = set(wanted)
        found: dict[bytes, bytes | None] = {}
        state = self.read_slot(slot_index)
        for _ in range(REREAD_ATTEMPTS):
            first = state
            keys |= {slot["key"].tobytes() for slot in first if slot["packets"]}
            found = {
                key: bpf_syscall.map_lookup(self.sources_fd, key, VALUE_DTYPE.itemsize)
                for key in keys
            }
            state = self.read_slot(slot_index)
            held_still = bool(np.all((first["seq"] == state["seq"]) & (state["seq"] % 2 == 0)))
            pending_known = all(slot["key"].tobytes() in found for slot in state if slot["packets"])
            if held_still and pending_known:
                return found, state
        log.debug("cache slot %d kept moving counts; its pending counts may be off", slot_index)
        return found, state

    def flush(self) -> None:
        """Move every pending count into the sources map. Only when no program runs any more
        (after detaching): the program would race with these writes."""
        cache = self.read()
        for slot_index, cpu in zip(*np.nonzero(cache["packets"]), strict=True):
            slot = cache[slot_index, cpu]
            key = slot["key"].tobytes()
            raw = bpf_syscall.map_lookup(self.sources_fd, key, VALUE_DTYPE.itemsize)
            if raw is None:
                continue
            value = np.frombuffer(raw, dtype=VALUE_DTYPE)[0].copy()
            if value["first_seen"] > slot["stamp"]:
                continue
            value["packets"] += slot["packets"]
            value["bytes"] += slot["bytes"]
            bpf_syscall.map_update(self.sources_fd, key, value.tobytes(), bpf_syscall.BPF_EXIST)


def _add_slot_counts(
    keys: np.ndarray, values: np.ndarray, index: np.ndarray, cache: np.ndarray, use: np.ndarray
) -> None:
    """values += the pending counts of the cache slots marked in use (shape (slots, CPUs)) that
    hold the row's key and belong to its entry (first_seen <= the slot's stamp)."""
    if not use.any():
        return
    row_words = _key_words(keys)
    for cpu in range(cache.shape[1]):
        rows = np.flatnonzero(use[index, cpu])
        if len(rows) == 0:
            continue
        slots = cache[index[rows], cpu]
        same = (row_words[rows] == _key_words(slots["key"])).all(axis=1)
        same &= values["first_seen"][rows] <= slots["stamp"]
        rows, slots = rows[same], slots[same]
        values["packets"][rows] += slots["packets"]
        values["bytes"][rows] += slots["bytes"]


def _with_slot_counts(key: bytes, raw_value: bytes, slots: np.ndarray) -> bytes:
    """A map value with the pending counts of the slots (one per CPU) that belong to it."""
    value = np.frombuffer(raw_value, dtype=VALUE_DTYPE)[0].copy()
    for slot in slots:
        if (
            slot["packets"]
            and slot["key"].tobytes() == key
            and value["first_seen"] <= slot["stamp"]
        ):
            value["packets"] += slot["packets"]
            value["bytes"] += slot["bytes"]
    return value.tobytes()
