"""The per-CPU cache of recently seen keys (bpf/xdp_ip_counter.c, source_cache) and the clock.

Frames of a source within one clock tick are counted in the cache, not in the sources map; these
tests check that nothing of it shows: read_sources() adds the pending counts exactly (also while
the program runs on another CPU), expire() neither loses them nor carries the counts of a removed
entry into a new one, colliding keys share a slot without mixing, and close() moves what is
pending into the map. Each test first makes sure the cache really holds pending counts, so that
it tests the cache and not only the map.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import threading
import time

import numpy as np
import pytest

from tests.support import frames as f
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.cache import CACHE_SLOT_DTYPE, cache_index
from xdp_ip_counter.clock import kernel_clock, kernel_clock_ns
from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.layout import KEY_DTYPE, VALUE_DTYPE

from .program import CUTOFF_FAR_FUTURE, UDP, ProgramUnderTest, SourceKey, wait_for_clock_after

pytestmark = pytest.mark.root

BURST = 5000  # frames per BPF_PROG_TEST_RUN: well within one tick (about 40 ns each)


def _key_array(key: SourceKey) -> np.ndarray:
    array = np.zeros(1, KEY_DTYPE)
    array["addr"] = np.frombuffer(key.addr, dtype="V16")
    array["ifindex"], array["port"], array["proto"], array["family"] = key[1:]
    return array


def _map_value(program: ProgramUnderTest, key: SourceKey) -> np.void | None:
    """The entry in the sources map itself, without the cache's pending counts."""
    raw = bpf_syscall.map_lookup(
        program.datapath.sources_fd, _key_array(key).tobytes(), VALUE_DTYPE.itemsize
    )
    return None if raw is None else np.frombuffer(raw, dtype=VALUE_DTYPE)[0]


def _pending(program: ProgramUnderTest, key: SourceKey) -> int:
    """Packets pending for key in the cache, over every CPU."""
    index = int(cache_index(_key_array(key), program.datapath.cache.bits)[0])
    slots = program.datapath.cache.read_slot(index)
    same = np.array([slot["key"].tobytes() == _key_array(key).tobytes() for slot in slots])
    return int(slots["packets"][same].sum())


def _packets_read(program: ProgramUnderTest, key: SourceKey) -> int:
    """Packets of key as read_sources() reports them (0 when absent)."""
    keys, values, _ = program.datapath.read_sources()
    match = np.flatnonzero(keys == _key_array(key)[0])
    assert len(match) <= 1, "a key was read twice"
    return int(values["packets"][match[0]]) if len(match) else 0


def _burst_with_pending(program: ProgramUnderTest, frame: f.Frame, key: SourceKey) -> int:
    """Run frame in bursts until some of its packets are pending in the cache; returns how
    many frames were run. (A burst that ends exactly on a new tick leaves nothing pending.)"""
    sent = 0
    deadline = time.monotonic() + 5
    while True:
        result = bpf_syscall.prog_test_run(program.datapath.prog_fd, frame.data, repeat=BURST)
        assert result.retval == 2
        sent += BURST
        if _pending(program, key) > 0:
            return sent
        assert time.monotonic() < deadline, "the cache never held a pending count"


def _ctypes_layout(struct_type: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    return [
        (name, getattr(struct_type, name).offset, getattr(struct_type, name).size)
        for name, *_ in struct_type._fields_
    ]


def test_cache_slot_dtype_matches_bccs_ctypes(datapath: DataPath) -> None:
    leaf = datapath.table("source_cache").sLeaf
    numpy_layout = [
        (name, CACHE_SLOT_DTYPE.fields[name][1], CACHE_SLOT_DTYPE.fields[name][0].itemsize)
        for name in CACHE_SLOT_DTYPE.names or ()
    ]
    assert numpy_layout == _ctypes_layout(leaf)


def test_python_cache_index_is_the_programs() -> None:
    """Each key is found in the slot cache_index() names, for both families and protocols.
    (A fresh program: in the module's, a slot may still hold the counts of a key another test
    removed, and a key that lands on it is then counted in the map, not cached.)"""
    datapath = DataPath(1024)
    try:
        datapath.set_ports(PortFilter.all())
        program = ProgramUnderTest(datapath, default_ifindex=socket.if_nametoindex("lo"))
        cases = []
        for n in range(40):
            v4 = f"10.64.{n}.7"
            cases.append((f.v4_udp(v4, 53 + n), program.key_v4(v4, 53 + n, UDP)))
            v6 = f"fd00:64::{n:x}"
            cases.append((f.v6_tcp(v6, 443), program.key_v6(v6, 443)))
        for frame, key in cases:
            bpf_syscall.prog_test_run(datapath.prog_fd, frame.data, repeat=2)
            index = int(cache_index(_key_array(key), datapath.cache.bits)[0])
            held = [slot["key"].tobytes() for slot in datapath.cache.read_slot(index)]
            assert _key_array(key).tobytes() in held, f"{key} is not in slot {index}"
    finally:
        datapath.close()


def test_a_burst_is_counted_exactly(program: ProgramUnderTest) -> None:
    frame, key = f.v4_udp("10.65.0.2", 53), program.key_v4("10.65.0.2", 53, UDP)
    before = program.stats()
    sent = _burst_with_pending(program, frame, key)
    after = program.stats()
    in_map = _map_value(program, key)
    assert in_map is not None
    assert int(in_map["packets"]) < sent, "nothing was pending: the cache was not used"
    assert program.counts() == {key: (sent, sent * frame.ip_length)}
    assert after["recorded_new"] - before["recorded_new"] == 1
    assert after["recorded"] - before["recorded"] == sent - 1


def test_pending_counts_survive_an_expire_that_keeps_the_entry(program: ProgramUnderTest) -> None:
    frame, key = f.v6_udp("fd00:66::2", 53), program.key_v6("fd00:66::2", 53, UDP)
    sent = _burst_with_pending(program, frame, key)
    keys, values, _ = program.datapath.read_sources()
    first_seen = int(values["first_seen"][0])
    # The entry was seen at or after the cutoff: it is taken out and put back.
    assert program.datapath.expire(keys, int(values["last_seen"][0])) == 0
    assert program.counts() == {key: (sent, sent * frame.ip_length)}
    assert program.sources()[key].first_seen == first_seen


def test_a_removed_entrys_pending_counts_do_not_join_a_new_entry(
    program: ProgramUnderTest,
) -> None:
    frame, key = f.v4_tcp("10.67.0.2", 22), program.key_v4("10.67.0.2", 22)
    _burst_with_pending(program, frame, key)
    keys, values, _ = program.datapath.read_sources()
    old_last_seen = int(values["last_seen"][0])
    assert program.datapath.expire(keys, CUTOFF_FAR_FUTURE) == 1
    assert program.sources() == {}
    assert _pending(program, key) > 0, "the old pending counts are still in the cache"
    program.expect(frame, "recorded_new", {key: (1, frame.ip_length)})
    assert program.sources()[key].first_seen > old_last_seen


def _colliding_sources(program: ProgramUnderTest, port: int) -> tuple[str, str]:
    """Two IPv4 sources whose keys (UDP to port, this ifindex) share a cache slot."""
    base = int(ipaddress.IPv4Address("10.68.0.0"))
    candidates = np.zeros(65536, KEY_DTYPE)
    addresses = np.zeros((65536, 16), np.uint8)
    addresses[:, 10:12] = 0xFF
    addresses[:, 12:16] = (
        (base + np.arange(65536, dtype=np.uint32)).astype(">u4").view(np.uint8).reshape(-1, 4)
    )
    candidates["addr"] = addresses.view("V16").ravel()
    candidates["ifindex"] = program.default_ifindex
    candidates["port"] = port
    candidates["proto"] = UDP
    candidates["family"] = 4
    index = cache_index(candidates, program.datapath.cache.bits)
    first_index = index[0]
    other = int(np.flatnonzero(index[1:] == first_index)[0]) + 1
    return str(ipaddress.IPv4Address(base)), str(ipaddress.IPv4Address(base + other))


def test_keys_sharing_a_slot_are_counted_apart(program: ProgramUnderTest) -> None:
    a, b = _colliding_sources(program, 5353)
    frame_a, frame_b = f.v4_udp(a, 5353), f.v4_udp(b, 5353)
    key_a, key_b = program.key_v4(a, 5353, UDP), program.key_v4(b, 5353, UDP)
    for _ in range(50):
        bpf_syscall.prog_test_run(program.datapath.prog_fd, frame_a.data, repeat=3)
        bpf_syscall.prog_test_run(program.datapath.prog_fd, frame_b.data, repeat=2)
    assert program.counts() == {
        key_a: (150, 150 * frame_a.ip_length),
        key_b: (100, 100 * frame_b.ip_length),
    }


def test_reads_while_the_program_runs_neither_lose_nor_double_count(
    program: ProgramUnderTest,
) -> None:
    """The program runs in bursts on one thread (it releases the GIL in the syscall) while the
    other reads the map over and over: every read must show at least what was sent before it
    began and at most what was sent by its end, across many tick changes."""
    frame, key = f.v4_udp("10.69.0.2", 53), program.key_v4("10.69.0.2", 53, UDP)
    burst = 200
    done = threading.Event()
    completed = [0]

    def send() -> None:
        try:
            while not done.is_set():
                bpf_syscall.prog_test_run(program.datapath.prog_fd, frame.data, repeat=burst)
                completed[0] += 1
        finally:
            done.set()

    sender = threading.Thread(target=send, name="test-run-sender")
    sender.start()
    seen = []
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not done.is_set():
            sent_before = completed[0] * burst
            packets = _packets_read(program, key)
            sent_by_end = (completed[0] + 1) * burst
            assert sent_before <= packets <= sent_by_end, (sent_before, packets, sent_by_end)
            seen.append(packets)
    finally:
        done.set()
        sender.join(timeout=10)
    assert not sender.is_alive()
    assert seen == sorted(seen), "a later read showed fewer packets"
    assert len(seen) > 100
    sent = completed[0] * burst
    assert program.counts() == {key: (sent, sent * frame.ip_length)}


def test_close_moves_pending_counts_into_the_map() -> None:
    datapath = DataPath(64)
    sources_fd = -1
    try:
        datapath.set_ports(PortFilter.all())
        program = ProgramUnderTest(datapath, default_ifindex=socket.if_nametoindex("lo"))
        frame, key = f.v4_udp("10.70.0.2", 53), program.key_v4("10.70.0.2", 53, UDP)
        sent = _burst_with_pending(program, frame, key)
        sources_fd = os.dup(datapath.sources_fd)
    finally:
        datapath.close()
    try:
        raw = bpf_syscall.map_lookup(sources_fd, _key_array(key).tobytes(), VALUE_DTYPE.itemsize)
    finally:
        os.close(sources_fd)
    assert raw is not None
    value = np.frombuffer(raw, dtype=VALUE_DTYPE)[0]
    assert (int(value["packets"]), int(value["bytes"])) == (sent, sent * frame.ip_length)


def test_kernel_clock_is_monotonic_at_the_start_of_the_tick(require_root: None) -> None:
    clock_ticks = kernel_clock().tick_ns
    for _ in range(20):
        before = time.monotonic_ns()
        now = kernel_clock_ns()
        after = time.monotonic_ns()
        assert now % clock_ticks == 0
        assert now <= after
        # jiffies may lag a moment behind a tick boundary, never a whole second
        assert now > before - 2 * clock_ticks - 1_000_000_000
        time.sleep(0.001)


def test_frames_are_stamped_with_the_kernel_clock(program: ProgramUnderTest) -> None:
    frame, key = f.v4_udp("10.71.0.2", 53), program.key_v4("10.71.0.2", 53, UDP)
    before = kernel_clock_ns()
    program.expect(frame, "recorded_new", {key: (1, frame.ip_length)})
    after = kernel_clock_ns()
    stamped = program.sources()[key]
    assert before <= stamped.first_seen == stamped.last_seen <= after
    later = wait_for_clock_after(after)
    program.expect(frame, "recorded", {key: (2, 2 * frame.ip_length)})
    assert program.sources()[key].last_seen >= later
