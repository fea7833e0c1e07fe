"""Floods: a spoofed-source flood against the real daemon at its default capacity, while one
steady client keeps talking; reading a full table; and what the daemon holds in memory per
table entry. (The sketch's count under a flood: test_sketch_flood.py.)

The flood test (root) sends XIC_FLOOD_FRAMES frames (default 800000, about 30 s with the daemon's
start-up) with trafgen from the client namespace of the e2e lab to the host-side veth, where the
daemon is attached with the default max_entries (262144), watching the steady port and the
flooded port. Afterwards the daemon must be alive and answering, the kernel table full but its
memory as allocated at start, the daemon's RSS within `rss_bound_bytes()`, the steady client in
/list, and the metrics must show the pressure. The full run:

    XIC_FLOOD_FRAMES=10000000 /usr/bin/python3 -m pytest -s tests/reliability/test_flood.py

The bound on RSS is derived from what a refresh holds per map entry; the two pure tests here
measure the parts of it that are Python's (the window's working arrays, a /list slice), so that a
change that makes them bigger fails here and names the bound to revisit.
"""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from e2e.conftest import DaemonProcess, Lab, ip, wait_for

from tests.conftest import env_int
from tests.support.frames import v4_udp
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.config import Settings
from xdp_ip_counter.layout import KEY_DTYPE, SLOT_DTYPE, VALUE_DTYPE, WAYS
from xdp_ip_counter.routes import LIST_CHUNK_ROWS, MAX_LIST_RENDERS, list_json_chunks
from xdp_ip_counter.table import sets_for
from xdp_ip_counter.window import ACTIVE_DTYPE, Snapshot, active_set, stale_keys

from .flood import Flood, KernelTable, SteadyClient, trafgen_config, trafgen_path
from .readings import PREFIX, frames_seen, outcome, scrape

DEFAULT_FRAMES = 800_000
STEADY_PORT = 22
FLOOD_PORT = 53
DAEMON_SETTINGS = {"window": 10, "refresh_interval": 1, "serve_ip_list": True}
SAMPLE_EVERY_S = 0.25  # pacing of the samples taken while the flood runs
KERNEL_COUNT_EVERY_S = 2.0  # pacing of the reads of the kernel table's claimed slots
SLOWEST_FLOOD_RATE = 20_000  # frames/s; the deadline for the flood assumes no less

# -- the memory bound ---------------------------------------------------------------------------
#
# What the daemon holds per entry of the kernel table at the peak of a refresh (bytes):
#   the live entries copied out of the mapped table (table.py): at most a slot each      64
#   (the mapping itself is resident from the first refresh on: in the idle size)
#   the View being served until the new one replaces it: an ActiveSet row (52) and
#   one 64-bit word of interface bits (one word covers up to 64 interfaces)           52 + 8
#   window.active_set()'s working arrays at their peak, the new ActiveSet's 60 bytes
#   included (row indices, the address split into two words, the sort order, group
#   keys, run starts, gathered columns): measured by test_window_working_memory       <= 128
# and per /list answer being rendered (at most MAX_LIST_RENDERS = 2 at once), one slice of
# LIST_CHUNK_ROWS = 16384 rows held as Python text: measured by test_list_slice_memory, <= 1152
# bytes per row. A headroom of 25% on the per-entry part covers glibc keeping freed buffers for
# the next refresh and page rounding.
SNAPSHOT_BYTES_PER_ENTRY = SLOT_DTYPE.itemsize
VIEW_BYTES_PER_ENTRY = ACTIVE_DTYPE.itemsize + 8
WINDOW_WORKING_BYTES_PER_ENTRY = 128
LIST_TEXT_BYTES_PER_ROW = 1152
ALLOCATOR_HEADROOM = 1.25


def rss_bound_bytes(slots: int) -> int:
    """How much the daemon's RSS may grow above its idle size with a full map of so many slots
    (1.5 per entry of max_entries): each slot can hold a live entry past capacity."""
    per_entry = SNAPSHOT_BYTES_PER_ENTRY + VIEW_BYTES_PER_ENTRY + WINDOW_WORKING_BYTES_PER_ENTRY
    lists = MAX_LIST_RENDERS * LIST_CHUNK_ROWS * LIST_TEXT_BYTES_PER_ROW
    return int(ALLOCATOR_HEADROOM * per_entry * slots) + lists


# -- reading the daemon from outside -------------------------------------------------------------


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(rest.split()[0])
    return fields


def reset_peak_rss(pid: int) -> None:
    """Make VmHWM start again from the current RSS (proc(5), clear_refs value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def steady_listed(daemon: DaemonProcess, source: str) -> bool:
    return any(entry["ip"] == source for entry in daemon.list(f"?port={STEADY_PORT}"))


@dataclass
class Sample:
    at: float  # s since the flood started
    rss_kib: int
    entries: float
    capacity: float
    recorded_new: float
    last_refresh: float
    steady_listed: bool
    scrape_seconds: float


@pytest.mark.root
def test_spoofed_source_flood(lab: Lab, start_daemon, spawned: list, tmp_path: Path, require):
    require(trafgen_path(), "needs trafgen (Debian package netsniff-ng)")
    require(shutil.which("bpftool"), "needs bpftool (Debian package bpftool)")
    capacity = Settings().max_entries
    slots = sets_for(capacity) * WAYS  # 1.5 per entry: past capacity, each can hold an entry
    frames = env_int(
        "XIC_FLOOD_FRAMES",
        DEFAULT_FRAMES,
        slots * 3 // 2,
        " (1.5 times the default table's slots), or the map barely fills and the test proves"
        " little",
    )
    link = lab.links[0]
    source = link.client_v4[0]
    daemon = start_daemon(
        interfaces=[link.host_if], ports=[STEADY_PORT, FLOOD_PORT], **DAEMON_SETTINGS
    )
    pid = daemon.proc.pid
    started_metrics = scrape(daemon)
    assert started_metrics[PREFIX + "map_capacity"] == capacity, "not the default capacity"
    table = KernelTable.of_interface(link.host_if)
    assert table.slots == slots, f"{table.sets} sets of {WAYS} slots for {capacity} entries"

    # The steady client's frames must not wait for ARP answers lost in the flood.
    host_mac = json.loads(ip("-j", "link", "show", "dev", link.host_if).stdout)[0]["address"]
    ip(
        "-n",
        lab.ns,
        "neigh",
        "replace",
        link.host_v4,
        "lladdr",
        host_mac,
        "dev",
        link.client_if,
        "nud",
        "permanent",
    )
    steady = SteadyClient(
        lab.ns,
        src=source,
        dst=link.host_v4,
        port=STEADY_PORT,
        interval=1.0,
        log=tmp_path / "steady.log",
    )
    spawned.append(steady)
    wait_for(lambda: steady_listed(daemon, source), 15, "the steady client before the flood")

    baseline_kib = memory_kib(pid)["VmRSS"]
    reset_peak_rss(pid)
    before = scrape(daemon)
    client_mac = json.loads(ip("-n", lab.ns, "-j", "link", "show", "dev", link.client_if).stdout)
    config = tmp_path / "flood.cfg"
    config.write_text(
        trafgen_config(client_mac[0]["address"], link.host_v4, link.host_v6, FLOOD_PORT)
    )
    deadline_s = frames / SLOWEST_FLOOD_RATE + 60
    flood = Flood(lab.ns, link.client_if, config, frames, tmp_path / "trafgen.log")
    spawned.append(flood)

    samples: list[Sample] = []
    kernel_counts: list[int] = []
    next_kernel_count = 0.0
    while flood.running() and time.monotonic() - flood.started < deadline_s:
        asked = time.monotonic()
        daemon.read_notifications()  # keep the notify socket drained: the daemon warns when full
        metrics = scrape(daemon)
        listed = steady_listed(daemon, source)
        answered = time.monotonic()
        samples.append(
            Sample(
                at=asked - flood.started,
                rss_kib=memory_kib(pid)["VmRSS"],
                entries=metrics[PREFIX + "map_entries"],
                capacity=metrics[PREFIX + "map_capacity"],
                recorded_new=outcome(metrics, "recorded_new"),
                last_refresh=metrics[PREFIX + "last_refresh_timestamp_seconds"],
                steady_listed=listed,
                scrape_seconds=answered - asked,
            )
        )
        if answered >= next_kernel_count:
            kernel_counts.append(table.claimed_slots())
            next_kernel_count = time.monotonic() + KERNEL_COUNT_EVERY_S
        time.sleep(SAMPLE_EVERY_S)
    report = flood.finish(deadline_s)
    flood_ended = time.time()
    # Read while nothing churns (a slot past the window stays claimed until a new key takes it).
    quiet_count = table.claimed_slots()

    # -- afterwards ------------------------------------------------------------------------
    assert daemon.proc.poll() is None, f"the daemon died; its log:\n{daemon.log()}"
    assert daemon.get("/")[0] == 200
    wait_for(
        lambda: scrape(daemon)[PREFIX + "last_refresh_timestamp_seconds"] > flood_ended,
        15,
        "a refresh after the flood",
    )
    wait_for(lambda: steady_listed(daemon, source), 10, "the steady client after the flood")
    after = scrape(daemon)
    peak_kib = max([memory_kib(pid)["VmHWM"], *(s.rss_kib for s in samples)])
    growth = (peak_kib - baseline_kib) * 1024
    bound = rss_bound_bytes(slots)
    seen = frames_seen(after) - frames_seen(before)
    inserted = outcome(after, "recorded_new") - outcome(before, "recorded_new")
    insert_failed = outcome(after, "insert_failed") - outcome(before, "insert_failed")
    evictions_name = PREFIX + "map_evictions_total"
    evictions = after[evictions_name] - before[evictions_name]
    refresh_failures = (
        after[PREFIX + "refresh_failures_total"] - before[PREFIX + "refresh_failures_total"]
    )
    refreshes = {}
    for sample in samples:
        refreshes[sample.last_refresh] = refreshes.get(sample.last_refresh, True) and (
            sample.steady_listed
        )
    slowest_scrape = max(s.scrape_seconds for s in samples) if samples else float("nan")
    full_at = [s.at for s in samples if s.entries >= 0.98 * slots]
    entries_after = after[PREFIX + "map_entries"]
    summary = (
        f"flood: {report.sent} frames sent in {report.seconds:.1f} s "
        f"({report.sent / report.seconds:,.0f}/s), {seen:.0f} seen by XDP, {inserted:.0f} new keys "
        f"inserted, {insert_failed:.0f} insert failures, evictions metric {evictions}; map "
        f"entries max {max((s.entries for s in samples), default=0):.0f} of {slots} slots "
        f"(full from "
        f"{min(full_at, default=float('nan')):.1f} s), {entries_after:.0f} after it; "
        f"kernel table {quiet_count} slots claimed after it ({max(kernel_counts, default=0)} at "
        f"most in {len(kernel_counts)} reads racing it), "
        f"memlock {table.bytes_memlock} bytes; "
        f"RSS {baseline_kib} KiB idle, peak {peak_kib} KiB: "
        f"+{growth / 2**20:.1f} MiB, bound +{bound / 2**20:.1f} MiB "
        f"({growth / slots:.0f} of {bound / slots:.0f} bytes per slot); steady client "
        f"({steady.sent()} sent) listed in {sum(refreshes.values())} of {len(refreshes)} "
        f"refreshes seen during the flood; slowest scrape {slowest_scrape:.2f} s; "
        f"{refresh_failures:.0f} failed refreshes"
    )
    print("\n" + summary)

    assert report.sent == frames, summary
    assert seen >= 0.5 * frames, f"most of the flood never reached the program: {summary}"
    assert samples, f"the flood ended before a single sample: {summary}"
    assert all(s.capacity == capacity for s in samples), summary
    assert all(s.entries <= slots for s in samples), f"map above its slots: {summary}"
    assert 0.98 * slots <= quiet_count <= slots, f"kernel table not full: {summary}"
    assert table.memlock() == table.bytes_memlock, f"the table's memory grew: {summary}"
    assert growth <= bound, f"RSS grew beyond the bound: {summary}"
    # The pressure an operator sees: the map full (entries == its slots, past capacity) while
    # new keys keep coming (recorded_new growing far past the slots), or insert failures.
    assert full_at or entries_after >= 0.98 * slots, (
        f"map_entries never reached the table's slots: {summary}"
    )
    assert inserted > slots or insert_failed > 0, f"no sign of the pressure: {summary}"
    # Every new key beyond the free slots gave up a live entry (nothing left the window while the
    # flood ran).
    assert 0.9 * (inserted - slots) <= evictions <= inserted, (
        f"{evictions_name} does not match the new keys the full map took: {summary}"
    )
    assert steady.alive() and steady.sent() > 0, summary
    assert refresh_failures == 0, f"refreshes failed during the flood: {summary}\n{daemon.log()}"


# -- reading a full table ---------------------------------------------------------------------

FULL_TABLE_CAPACITY = 4096


def _udp_frames_from(first_source: int, count: int) -> Iterator[bytes]:
    """IPv4/UDP frames to FLOOD_PORT from `count` consecutive source addresses (the program
    does not check the IP checksum, so a template with the source patched in will do)."""
    template = v4_udp("10.0.0.1", FLOOD_PORT).data
    source_at = 14 + 12
    head, tail = template[:source_at], template[source_at + 4 :]
    for n in range(first_source, first_source + count):
        yield head + n.to_bytes(4, "big") + tail


@pytest.mark.root
def test_a_full_churned_table_reads_every_entry_once() -> None:
    """A refresh reads the table through mmap (DataPath.read_sources); on a table that a flood
    has filled and churned (three new sources per slot, one frame each, all within the window)
    it must give back every claimed slot's entry once, each with its one frame, and every new
    source beyond the free slots must have given up a live entry (the `evicted` event behind
    map_evictions_total). Frames go in one by one (BPF_PROG_TEST_RUN on one CPU): no claim
    races, so no duplicates to merge and no insert failures. (This replaces the check of the
    LRU hash's batch reads, which could fail with ENOSPC on a full map: the table is read
    without syscalls now.)"""
    from xdp_ip_counter.bpf import DataPath  # noqa: PLC0415 - needs bcc
    from xdp_ip_counter.config import PortFilter  # noqa: PLC0415

    first_source = 0x0A000000
    datapath = DataPath(FULL_TABLE_CAPACITY)
    try:
        datapath.configure(PortFilter.all(), window=60)
        sent = 3 * datapath.slots
        for frame in _udp_frames_from(first_source, sent):
            bpf_syscall.prog_test_run(datapath.prog_fd, frame)
        keys, values, _ = datapath.read_sources()
        stats, events = datapath.read_stats(), datapath.read_events()
        tags = datapath.table_words()[:, :WAYS]
        claimed = int(np.count_nonzero(tags >> np.uint64(32)))
        del tags
    finally:
        datapath.close()
    assert datapath.capacity == FULL_TABLE_CAPACITY
    assert (stats["recorded_new"], stats["insert_failed"]) == (sent, 0), stats
    assert claimed >= 0.98 * datapath.slots, f"{claimed} of {datapath.slots} slots claimed"
    assert len(keys) == claimed, f"{len(keys)} entries read from {claimed} claimed slots"
    addresses = np.ascontiguousarray(keys["addr"]).view(np.uint8).reshape(-1, 16)
    sources = np.ascontiguousarray(addresses[:, 12:]).view(">u4").ravel()
    assert len(np.unique(sources)) == len(sources), "an entry read twice"
    assert ((sources >= first_source) & (sources < first_source + sent)).all()
    assert (values["packets"] == 1).all() and (keys["port"] == FLOOD_PORT).all()
    assert events["evicted"] == sent - claimed, (
        f"{events['evicted']} live entries given up for {sent} new sources into {claimed} slots"
    )


# -- what a refresh and a /list slice cost, per entry (pure) ----------------------------------


def _full_snapshot(entries: int) -> Snapshot:
    """A snapshot as a flood leaves it: every entry distinct and seen just now, half IPv4 and
    half IPv6, one interface, one port."""
    rng = np.random.default_rng(7)
    keys = np.zeros(entries, KEY_DTYPE)
    addresses = rng.integers(0, 256, size=(entries, 16), dtype=np.uint8)
    family = np.where(rng.random(entries) < 0.5, 4, 6).astype(np.uint8)
    addresses[family == 4, :10] = 0
    addresses[family == 4, 10:12] = 0xFF
    # distinct: a shuffled serial number in the last four bytes
    addresses[:, 12:] = rng.permutation(entries).astype(">u4").view(np.uint8).reshape(-1, 4)
    keys["addr"] = addresses.view("V16").ravel()
    keys["family"], keys["ifindex"], keys["port"], keys["proto"] = family, 7, FLOOD_PORT, 17
    values = np.zeros(entries, VALUE_DTYPE)
    now = 10**12
    values["first_seen"], values["last_seen"], values["packets"], values["bytes"] = now, now, 1, 28
    return Snapshot(keys=keys, values=values, taken_at_ns=now, taken_at_wall=1.7e9)


def _peak_above_current(work) -> tuple[int, object]:
    """(peak traced bytes while work() ran, above what was traced before it; its result)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        result = work()
        return tracemalloc.get_traced_memory()[1] - start, result
    finally:
        tracemalloc.stop()


def test_window_working_memory() -> None:
    """active_set() and stale_keys() on a full default-size map stay within
    WINDOW_WORKING_BYTES_PER_ENTRY, and the ActiveSet they leave within VIEW_BYTES_PER_ENTRY:
    the figures rss_bound_bytes() is made of (numpy reports its buffers to tracemalloc)."""
    entries = Settings().max_entries
    snapshot = _full_snapshot(entries)

    def refresh() -> object:
        active = active_set(snapshot, 10, {7: "veth0"})
        stale_keys(snapshot, 10)
        return active

    peak, active = _peak_above_current(refresh)
    assert len(active) == entries
    kept = active.rows.nbytes + active.interface_bits.nbytes
    assert kept <= VIEW_BYTES_PER_ENTRY * entries
    assert peak <= WINDOW_WORKING_BYTES_PER_ENTRY * entries, (
        f"the window's working arrays peak at {peak / entries:.0f} bytes per entry, more than the "
        f"{WINDOW_WORKING_BYTES_PER_ENTRY} rss_bound_bytes() counts: revisit the bound (and the "
        "README's 'When the map is full')"
    )


def test_list_slice_memory() -> None:
    """Rendering /list holds one slice of LIST_CHUNK_ROWS rows as text at a time, within
    LIST_TEXT_BYTES_PER_ROW per row."""
    entries = 4 * LIST_CHUNK_ROWS
    active = active_set(_full_snapshot(entries), 10, {7: "veth0"})

    def render() -> int:
        return sum(len(chunk) for chunk in list_json_chunks(active))

    peak, body_bytes = _peak_above_current(render)
    assert body_bytes > 100 * entries  # it did render every row
    assert peak <= LIST_TEXT_BYTES_PER_ROW * LIST_CHUNK_ROWS, (
        f"a /list slice peaks at {peak / LIST_CHUNK_ROWS:.0f} bytes per row, more than the "
        f"{LIST_TEXT_BYTES_PER_ROW} rss_bound_bytes() counts"
    )
