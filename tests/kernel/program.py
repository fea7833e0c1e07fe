"""The loaded XDP program as the kernel tests see it: run a frame, read back exactly what changed.

`ProgramUnderTest.run` runs one frame through BPF_PROG_TEST_RUN and returns the return value and
the stats delta (every outcome, zeros included); `sources()` is the sources table's live entries
as a dict (read as the daemon reads them: through mmap, duplicates merged). `expect` does both
and asserts them in one go, which is what almost every test wants. `send` runs many frames and
returns the stats and events delta over all of them, for the tests of the table as a whole.

`Source` is one (address, port, protocol) with its frame and key. `key_sets` says which two
sets the kernel may put a key in (written from record() in the C, not taken from table.py, so that
the tests check table.py's mirror too) and `choose_sets` which of them it takes; `spread`,
`within_reach`, `sharing_a_set` and `sharing_both_sets` choose sources with them, so that a test
can have sources that never overflow a set, or that fill a key's two sets.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from tests.support import frames as f
from tests.support.frames import Frame, ipv4_mapped, ipv6_bytes
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.clock import kernel_clock_ns
from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.layout import (
    BLOCK_SETS,
    EVENTS,
    KEY_DTYPE,
    OUTCOMES,
    ROOMY,
    STAMP_MASK,
    STAMP_SHIFT,
    WAYS,
)
from xdp_ip_counter.table import key_hash

XDP_PASS = 2
TCP = 6
UDP = 17
WINDOW = 60  # seconds: the window the kernel tests configure (the daemon's default)


class SourceKey(NamedTuple):
    addr: bytes
    ifindex: int
    port: int
    proto: int
    family: int


class SourceValue(NamedTuple):
    first_seen: int
    last_seen: int
    packets: int
    bytes: int


def v4_key(address: str, port: int, proto: int, ifindex: int) -> SourceKey:
    return SourceKey(ipv4_mapped(address), ifindex, port, proto, 4)


def v6_key(address: str, port: int, proto: int, ifindex: int) -> SourceKey:
    return SourceKey(ipv6_bytes(address), ifindex, port, proto, 6)


def key_array(keys: Sequence[SourceKey]) -> np.ndarray:
    """SourceKeys as a KEY_DTYPE array (the kernel's struct source_key)."""
    raw = b"".join(
        key.addr + struct.pack("<IHBB", key.ifindex, key.port, key.proto, key.family)
        for key in keys
    )
    return np.frombuffer(raw, KEY_DTYPE).copy()


def source_key(row: np.void) -> SourceKey:
    """A KEY_DTYPE row as a SourceKey."""
    return SourceKey(
        bytes(row["addr"]), int(row["ifindex"]), int(row["port"]), int(row["proto"]),
        int(row["family"]),
    )  # fmt: skip


def key_sets(keys: np.ndarray, sets: int) -> tuple[np.ndarray, np.ndarray]:
    """(primary, alternate) set of each KEY_DTYPE key in a table of `sets` sets, as record() in
    bpf/xdp_ip_counter.c computes them from key_hash: the primary is the hash's top 32 bits
    scaled to sets; the alternate is the primary xor an odd offset below the block (min(
    BLOCK_SETS, sets) sets), from the hash's bits 16 and up."""
    hashes = key_hash(keys)
    primary = ((hashes >> np.uint64(32)) * np.uint64(sets)) >> np.uint64(32)
    block = np.uint64(min(BLOCK_SETS, sets))
    alternate = primary ^ (((hashes >> np.uint64(16)) & (block - np.uint64(1))) | np.uint64(1))
    return primary.astype(np.int64), alternate.astype(np.int64)


def choose_sets(
    keys: np.ndarray, sets: int, occupied: np.ndarray | None = None, room: int = WAYS
) -> np.ndarray:
    """The set each new KEY_DTYPE key is given when the keys come one after another, one frame
    each, to a table whose sets hold `occupied` live entries (none of them expiring meanwhile):
    the primary set while it has ROOMY free slots or more, else the one of its two sets with
    more free slots, the primary on a tie (record()). -1 for a key
    whose two sets already hold `room` entries each: with room = WAYS, a key that gives up
    another's entry, in a slot of either set. `occupied` (sets,) is updated in place."""
    if occupied is None:
        occupied = np.zeros(sets, np.int64)
    primary, alternate = key_sets(keys, sets)
    chosen = np.full(len(keys), -1, np.int64)
    for n, (p, a) in enumerate(zip(primary.tolist(), alternate.tolist(), strict=True)):
        emptier = a if occupied[a] < occupied[p] and WAYS - occupied[p] < ROOMY else p
        if occupied[emptier] < room:
            occupied[emptier] += 1
            chosen[n] = emptier
    return chosen


def stamp_of(ns: int) -> int:
    """The tag word's stamp of a kernel time: units of 2**30 ns (1.07 s), 31 bits."""
    return (ns >> STAMP_SHIFT) & STAMP_MASK


@dataclass(frozen=True)
class Source:
    """One sender: a source address (IPv4 or IPv6), the destination port and the protocol."""

    address: str
    port: int
    proto: int = UDP

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version

    @cached_property
    def frame(self) -> Frame:
        build = {
            (4, TCP): f.v4_tcp, (4, UDP): f.v4_udp, (6, TCP): f.v6_tcp, (6, UDP): f.v6_udp,
        }[(self.family, self.proto)]  # fmt: skip
        return build(self.address, self.port)

    def key(self, ifindex: int) -> SourceKey:
        make = v4_key if self.family == 4 else v6_key
        return make(self.address, self.port, self.proto, ifindex)


def addresses(first: str, count: int) -> list[str]:
    """count consecutive addresses from first (IPv4 or IPv6)."""
    base = ipaddress.ip_address(first)
    return [str(base + n) for n in range(count)]


def spread(sources: Sequence[Source], ifindex: int, sets: int, per_set: int) -> list[Source]:
    """The sources, in order, leaving out each one that would find both its sets holding
    per_set of the others: sent in this order (one frame each, to an empty table of `sets`
    sets), they never put more than per_set entries in a set. A prefix keeps that."""
    keys = key_array([s.key(ifindex) for s in sources])
    chosen = choose_sets(keys, sets, room=per_set)
    return [source for source, where in zip(sources, chosen.tolist(), strict=True) if where >= 0]


def within_reach(sources: Sequence[Source], ifindex: int, sets: int, per_set: int) -> list[Source]:
    """The sources, in order, leaving out each one with a set that is already a set of per_set
    of the others: wherever the kernel or table.place puts them, in whatever order, no set of a
    table of `sets` sets holds more than per_set of them (each key once)."""
    primary, alternate = key_sets(key_array([s.key(ifindex) for s in sources]), sets)
    reach = np.zeros(sets, np.int64)
    kept = []
    for source, p, a in zip(sources, primary.tolist(), alternate.tolist(), strict=True):
        if reach[p] < per_set and reach[a] < per_set:
            reach[p] += 1
            reach[a] += 1
            kept.append(source)
    return kept


def sharing_a_set(
    candidates: Sequence[Source], ifindex: int, sets: int, count: int
) -> tuple[int, list[Source]]:
    """count of the candidates whose keys have one primary set, and that set's index."""
    primary, _ = key_sets(key_array([s.key(ifindex) for s in candidates]), sets)
    fullest = int(np.bincount(primary).argmax())
    members = [c for c, index in zip(candidates, primary.tolist(), strict=True) if index == fullest]
    assert len(members) >= count, f"only {len(members)} candidates share a set: give more"
    return fullest, members[:count]


def sharing_both_sets(
    candidates: Sequence[Source], ifindex: int, sets: int, count: int
) -> tuple[tuple[int, int], list[Source]]:
    """count of the candidates whose keys have the same two sets (either one the primary), and
    those two sets, lower index first: when they are full, a new key of them has to give up
    the entry of another."""
    primary, alternate = key_sets(key_array([s.key(ifindex) for s in candidates]), sets)
    pairs = np.minimum(primary, alternate) * sets + np.maximum(primary, alternate)
    values, counts = np.unique(pairs, return_counts=True)
    fullest = int(values[counts.argmax()])
    members = [c for c, pair in zip(candidates, pairs.tolist(), strict=True) if pair == fullest]
    assert len(members) >= count, f"only {len(members)} candidates share two sets: give more"
    return divmod(fullest, sets), members[:count]


def only(outcome: str, count: int = 1) -> dict[str, int]:
    """A stats delta with `count` in one outcome and 0 in every other."""
    assert outcome in OUTCOMES, f"unknown outcome {outcome!r}; known: {OUTCOMES}"
    return {name: (count if name == outcome else 0) for name in OUTCOMES}


@dataclass(frozen=True)
class RunResult:
    retval: int
    stats_delta: dict[str, int]


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll condition until it is truthy; fail naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.001)


def wait_for_stamp_after(stamp: int, timeout: float = 3.0) -> int:
    """Wait until the kernel clock is in a later stamp (2**30 ns) than `stamp`; returns the
    clock then."""
    deadline = time.monotonic() + timeout
    while stamp_of(now := kernel_clock_ns()) == stamp:
        if time.monotonic() > deadline:
            raise AssertionError(f"the kernel clock stayed in stamp {stamp} for {timeout}s")
        time.sleep(0.002)
    return now


def wait_for_clock_after(instant_ns: int, timeout: float = 2.0) -> int:
    """Wait until the kernel's coarse clock has moved past instant_ns (it ticks every few ms);
    returns the clock then."""
    deadline = time.monotonic() + timeout
    while (now := kernel_clock_ns()) <= instant_ns:
        if time.monotonic() > deadline:
            raise AssertionError(f"the coarse clock did not pass {instant_ns} in {timeout}s")
        time.sleep(0.001)
    return now


class ProgramUnderTest:
    """A DataPath whose table and sketches were emptied when this object was made (clear())."""

    def __init__(self, datapath: DataPath, default_ifindex: int) -> None:
        self.datapath = datapath
        self.default_ifindex = default_ifindex  # what test_run reports with no ctx (lo)
        self.started_ns = kernel_clock_ns()

    def stats(self) -> dict[str, int]:
        return self.datapath.read_stats()

    def events(self) -> dict[str, int]:
        return self.datapath.read_events()

    def send(self, frames: Iterable[Frame | bytes], repeat: int = 1) -> dict[str, int]:
        """Run each frame `repeat` times in a row, one BPF_PROG_TEST_RUN each (the syscall's
        own repeat count costs ~25 ms a call when above 1: the kernel swaps the XDP dispatcher
        for it); every run must pass. Returns the delta of every outcome and event."""
        before = {**self.stats(), **self.events()}
        fd = self.datapath.prog_fd
        for frame in frames:
            data = frame.data if isinstance(frame, Frame) else frame
            for _ in range(repeat):
                result = bpf_syscall.prog_test_run(fd, data)
                assert result.retval == XDP_PASS, data.hex()
        after = {**self.stats(), **self.events()}
        return {name: after[name] - before[name] for name in (*OUTCOMES, *EVENTS)}

    def key(self, source: Source) -> SourceKey:
        return source.key(self.default_ifindex)

    def run(self, frame: Frame | bytes, ifindex: int = 0) -> RunResult:
        data = frame.data if isinstance(frame, Frame) else frame
        before = self.stats()
        result = bpf_syscall.prog_test_run(self.datapath.prog_fd, data, ifindex=ifindex)
        after = self.stats()
        return RunResult(result.retval, {name: after[name] - before[name] for name in OUTCOMES})

    def sources(self) -> dict[SourceKey, SourceValue]:
        keys, values, _ = self.datapath.read_sources()
        table = {}
        for row, value in zip(keys, values, strict=True):
            key = source_key(row)
            assert key not in table, f"{key} read twice"
            table[key] = SourceValue(*(int(value[name]) for name in SourceValue._fields))
        return table

    def counts(self) -> dict[SourceKey, tuple[int, int]]:
        """The sources table as key -> (packets, bytes); times checked for sanity on the way."""
        now = kernel_clock_ns()
        table = {}
        for key, value in self.sources().items():
            assert self.started_ns <= value.first_seen <= value.last_seen <= now, (key, value)
            table[key] = (value.packets, value.bytes)
        return table

    def expect(
        self,
        frame: Frame | bytes,
        outcome: str,
        sources: dict[SourceKey, tuple[int, int]] | None = None,
        ifindex: int = 0,
    ) -> RunResult:
        """Run frame; assert XDP_PASS, exactly one `outcome` in the stats and the exact table
        contents afterwards as key -> (packets, bytes). sources=None means "unchanged", which
        only makes sense for outcomes that record nothing."""
        assert sources is not None or not outcome.startswith("recorded"), "say what is recorded"
        before = self.counts()
        result = self.run(frame, ifindex)
        assert result.retval == XDP_PASS
        assert result.stats_delta == only(outcome), f"expected only {outcome}"
        assert self.counts() == (before if sources is None else sources)
        return result

    def key_v4(self, address: str, port: int, proto: int = TCP, ifindex: int = 0) -> SourceKey:
        return v4_key(address, port, proto, ifindex or self.default_ifindex)

    def key_v6(self, address: str, port: int, proto: int = TCP, ifindex: int = 0) -> SourceKey:
        return v6_key(address, port, proto, ifindex or self.default_ifindex)

    def watch(self, ports: PortFilter, window: int = WINDOW, **recorded: Any) -> None:
        """Configure the watched ports (and the window of the table's lazy expiry), and what
        else DataPath.configure takes (protocols, icmp_types, exclude_sources, ...; their
        defaults otherwise)."""
        self.datapath.configure(ports, window, **recorded)

    def clear(self) -> None:
        self.datapath.clear()
        assert self.sources() == {}, "the sources table could not be emptied"
