"""The sources table (bpf/xdp_ip_counter.c): sets of WAYS tag words and slots in an array map,
read through mmap (xdp_ip_counter/table.py).

- Where keys go: in the set table.key_hash names, under the tag word the C describes; and
  table.place writes entries where the kernel then finds them.
- Exact counts: many sources, several frames each, also from two CPUs at once while another
  thread reads; two slots of one key (what a race between CPUs leaves) merged by the reader.
- The replacement rule: one-packet slots go first, so sources that keep sending survive a flood
  of one-packet sources many times the capacity; every live entry given up is counted (evicted)
  and marks its port's sketch as lossy, while a port that lost nothing stays exact.
- Lazy expiry: a slot not seen for a window is free, and a key that comes back starts anew.

The sources of each test are chosen with the kernel's placement (program.spread, sharing_a_set),
so that what must fit in a set does, and what must overflow one does.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from tests.conftest import require
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.layout import ESTABLISHED, OUTCOMES, SET_DTYPE, VALUE_DTYPE, WAYS
from xdp_ip_counter.sketch import SketchCounts, SketchWindow
from xdp_ip_counter.table import key_hash, place, set_bits_for

from .conftest import FLOODED_PORT, QUIET_PORT, SMALL_CAPACITY, WIDE_CAPACITY
from .program import (
    TCP,
    UDP,
    WINDOW,
    XDP_PASS,
    ProgramUnderTest,
    Source,
    SourceValue,
    addresses,
    key_array,
    only,
    set_index,
    sharing_a_set,
    source_key,
    spread,
    stamp_of,
    wait_for_stamp_after,
)

pytestmark = pytest.mark.root

FLOOD_FACTOR = 8  # one-packet sources in the flood, in multiples of the capacity
ESTIMATE_TOLERANCE = 0.03  # the sketch's standard error is 0.81 %


def sets_of(program: ProgramUnderTest) -> np.ndarray:
    """The table as SET_DTYPE records: a view of the map (writes go to the kernel's memory)."""
    return program.datapath.table_words().reshape(-1).view(SET_DTYPE)


def outcomes(delta: dict[str, int]) -> dict[str, int]:
    return {name: delta[name] for name in OUTCOMES}


def mixed(count: int, first_v4: str, first_v6: str, ports: tuple[int, ...] = (53, 443)) -> list:
    """count sources of every (family, protocol), spread over the ports."""
    sources = []
    for first, protocols in ((first_v4, (UDP, TCP)), (first_v6, (TCP, UDP))):
        for n, address in enumerate(addresses(first, 2 * count)):
            sources.append(Source(address, ports[n // 2 % len(ports)], protocols[n % 2]))
    return sources


def expected_counts(program: ProgramUnderTest, sent: dict[Source, int]) -> dict:
    return {
        program.key(source): (frames, frames * source.frame.ip_length)
        for source, frames in sent.items()
    }


def the_slot(program: ProgramUnderTest, table: np.ndarray, source: Source) -> tuple[int, np.void]:
    """(tag word, value) of the source's one slot in the set key_hash names."""
    key = key_array([program.key(source)])
    index = int(set_index(key, program.datapath.set_bits)[0])
    ways = [w for w, k in enumerate(table[index]["way"]["key"]) if k.tobytes() == key.tobytes()]
    assert len(ways) == 1, f"{source} is not once in set {index}: ways {ways}"
    return int(table[index]["tag"][ways[0]]), table[index]["way"][ways[0]]["value"]


def tag_word(program: ProgramUnderTest, source: Source, last_seen: int, packets: int) -> int:
    """The tag word the C describes: (the hash's low 32 bits | 1) << 32, ESTABLISHED when seen
    in two frames or more, the stamp of last seen."""
    hash_ = int(key_hash(key_array([program.key(source)]))[0])
    established = ESTABLISHED if packets > 1 else 0
    return ((hash_ & 0xFFFF_FFFF) | 1) << 32 | established | stamp_of(last_seen)


# -- where the kernel puts keys ---------------------------------------------------------------


def test_keys_are_in_the_set_key_hash_names(wide: ProgramUnderTest) -> None:
    datapath = wide.datapath
    assert datapath.set_bits == set_bits_for(WIDE_CAPACITY)
    assert datapath.sets == 1 << datapath.set_bits == WIDE_CAPACITY // WAYS
    assert datapath.capacity == WIDE_CAPACITY
    candidates = mixed(400, "10.80.0.0", "fd00:80::", ports=(53, 443, 8080, 0, 65535))
    sources = spread(candidates, wide.default_ifindex, datapath.set_bits, WAYS)
    twice = sources[1::2]  # the others are sent once

    first = wide.send(s.frame for s in sources)
    second = wide.send(s.frame for s in twice)
    assert outcomes(first) == only("recorded_new", len(sources))
    assert outcomes(second) == only("recorded", len(twice))

    table = sets_of(wide).copy()
    for source in sources:
        frames = 2 if source in twice else 1
        tag, value = the_slot(wide, table, source)
        assert (int(value["packets"]), int(value["bytes"])) == (
            frames,
            frames * source.frame.ip_length,
        )
        want = tag_word(wide, source, int(value["last_seen"]), frames)
        assert tag == want, f"{source}: tag {tag:#x}, the C's rule says {want:#x}"
    assert np.count_nonzero(table["tag"]) == len(sources), "slots used that no key explains"
    assert {source_key(row) for row in table["way"]["key"][table["tag"] != 0]} == {
        wide.key(s) for s in sources
    }


def test_place_writes_entries_where_the_kernel_finds_them(wide: ProgramUnderTest) -> None:
    datapath = wide.datapath
    candidates = mixed(150, "10.81.0.0", "fd00:81::")
    sources = spread(candidates, wide.default_ifindex, datapath.set_bits, WAYS)
    keys = key_array([wide.key(s) for s in sources])
    now = wide.started_ns
    values = np.zeros(len(sources), VALUE_DTYPE)
    values["packets"] = 1 + np.arange(len(sources)) % 4  # one-packet and established entries
    values["bytes"] = values["packets"] * [s.frame.ip_length for s in sources]
    values["first_seen"] = now - np.arange(len(sources)) % 3 * 1_000_000
    values["last_seen"] = now
    assert place(datapath.table_words(), keys, values) == len(sources)
    placed = {
        wide.key(s): SourceValue(*(int(values[n][name]) for name in SourceValue._fields))
        for n, s in enumerate(sources)
    }
    assert wide.sources() == placed
    table = sets_of(wide).copy()
    for source, value in zip(sources, values, strict=True):
        tag, _ = the_slot(wide, table, source)
        want = tag_word(wide, source, int(value["last_seen"]), int(value["packets"]))
        assert tag == want, f"{source}: tag {tag:#x}, the C's rule says {want:#x}"

    delta = wide.send(s.frame for s in sources)
    assert outcomes(delta) == only("recorded", len(sources)), "a placed key was not found"
    assert delta["evicted"] == 0
    after = wide.sources()
    assert set(after) == set(placed)
    for source in sources:
        key, before, ip_length = wide.key(source), placed[wide.key(source)], source.frame.ip_length
        assert after[key].first_seen == before.first_seen, key
        assert after[key].last_seen >= before.last_seen, key
        assert (after[key].packets, after[key].bytes) == (
            before.packets + 1,
            before.bytes + ip_length,
        ), key


# -- exact counts ------------------------------------------------------------------------------


def test_many_sources_several_frames_each_are_counted_exactly(wide: ProgramUnderTest) -> None:
    candidates = mixed(1500, "10.82.0.0", "fd00:82::", ports=(22, 53, 443))
    sources = spread(candidates, wide.default_ifindex, wide.datapath.set_bits, WAYS)
    frames = {source: 1 + n % 5 for n, source in enumerate(sources)}
    total = sum(frames.values())
    delta = dict.fromkeys((*OUTCOMES, "evicted"), 0)
    for round_ in range(max(frames.values())):  # interleaved: every source once per round
        sent = wide.send(s.frame for s, count in frames.items() if count > round_)
        for name in delta:
            delta[name] += sent[name]
    assert outcomes(delta) == {
        **only("recorded_new", len(sources)),
        "recorded": total - len(sources),
    }
    assert delta["evicted"] == 0
    counts = wide.counts()
    assert counts == expected_counts(wide, frames)
    assert sum(packets for packets, _ in counts.values()) == total


def test_two_cpus_sending_and_a_reader_neither_lose_nor_double_count(
    wide: ProgramUnderTest,
) -> None:
    """Two threads, each pinned to its own CPU, run the same sources through the program at
    once (BPF_PROG_TEST_RUN runs on the calling CPU) while this thread reads the table over and
    over: each read shows at least what was sent before it began and at most what was sent by
    its end, no key twice and no key with fewer packets than an earlier read. At the end every
    source has exactly its frames, from both CPUs. Claims of one new key raced by both CPUs
    leave duplicate slots: the reader merges them; there is room for a duplicate of every key
    (at most WAYS / 2 sources per set), so nothing is evicted."""
    cpus = sorted(os.sched_getaffinity(0))
    require(len(cpus) >= 2, "needs two CPUs to run the program on two at once")
    datapath = wide.datapath
    candidates = mixed(1500, "10.83.0.0", "fd00:83::", ports=(53, 8443))
    sources = spread(candidates, wide.default_ifindex, datapath.set_bits, WAYS // 2)
    frames = [s.frame.data for s in sources]
    repeat, passes = 3, 6
    completed = [0, 0]
    errors: list[BaseException] = []
    start = threading.Barrier(3, timeout=10)

    def send(index: int, cpu: int) -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # this thread only
            assert os.sched_getaffinity(0) == {cpu}
            start.wait()
            for number in range(passes):
                for data in frames if number % 2 == 0 else frames[::-1]:
                    for _ in range(repeat):  # one run each: repeat > 1 costs ~25 ms a call
                        result = bpf_syscall.prog_test_run(datapath.prog_fd, data)
                        assert result.retval == XDP_PASS
                        completed[index] += 1
        except BaseException as exc:  # handed to the test below
            errors.append(exc)
            start.abort()

    before = {**wide.stats(), **wide.events()}
    senders = [
        threading.Thread(target=send, args=(i, cpus[i]), name=f"sender-cpu{cpus[i]}")
        for i in range(2)
    ]
    for sender in senders:
        sender.start()
    # Each source's packets in the latest read, by the source's position in `sources`.
    position = {key.tobytes(): n for n, key in enumerate(key_array([wide.key(s) for s in sources]))}
    seen = np.zeros(len(sources), np.int64)
    reads = 0
    try:
        start.wait()
        deadline = time.monotonic() + 60
        while any(sender.is_alive() for sender in senders):
            assert time.monotonic() < deadline, "the senders did not finish in 60 s"
            done_before = sum(completed)
            keys, values, _ = datapath.read_sources()
            done_after = sum(completed)
            total = int(values["packets"].sum())
            assert done_before <= total <= done_after + 2, (
                f"read {reads}: {total} packets, but {done_before} were sent before the read "
                f"began and {done_after} (+ 2 under way) by its end"
            )
            where = np.array([position[key.tobytes()] for key in keys], np.int64)
            assert len(np.unique(where)) == len(where), f"read {reads}: a key read twice"
            now_seen = np.zeros_like(seen)
            now_seen[where] = values["packets"]
            fewer = np.flatnonzero(now_seen < seen)
            assert not len(fewer), (
                f"read {reads}: {sources[fewer[0]]} has {now_seen[fewer[0]]} packets after "
                f"{seen[fewer[0]]} in an earlier read ({len(fewer)} sources like it)"
            )
            seen = now_seen
            reads += 1
            time.sleep(0.005)  # the senders need the GIL between their runs
    finally:
        start.abort()
        for sender in senders:
            sender.join(timeout=60)
    assert not errors, errors
    assert not any(sender.is_alive() for sender in senders)
    assert reads >= 5, f"only {reads} reads while the program ran"

    after = {**wide.stats(), **wide.events()}
    delta = {name: after[name] - before[name] for name in after}
    runs = 2 * passes * len(sources) * repeat
    assert delta["recorded"] + delta["recorded_new"] == runs
    assert sum(delta[name] for name in OUTCOMES) == runs
    assert delta["evicted"] == 0
    frames_each = 2 * passes * repeat
    assert wide.counts() == expected_counts(wide, dict.fromkeys(sources, frames_each))
    # every claim is a slot: the keys claimed twice are the duplicates the reader merged
    slots = int(np.count_nonzero(datapath.table_words()[:, :WAYS] >> np.uint64(32)))
    assert slots == delta["recorded_new"] >= len(sources)
    print(f"\n{reads} reads; {slots - len(sources)} keys were claimed by both CPUs")


def test_duplicate_slots_are_merged_and_a_frame_counts_in_one(wide: ProgramUnderTest) -> None:
    """Two slots of one set with the same key and tag, as two CPUs claiming a new key at once
    leave them: read as one entry (counts added, earliest first seen, latest last seen), a frame
    of that key counted in one of them; another key of the set stays apart."""
    datapath = wide.datapath
    candidates = [Source(a, 5353) for a in addresses("10.84.0.0", 40_000)]
    index, (doubled, other) = sharing_a_set(candidates, wide.default_ifindex, datapath.set_bits, 2)
    keys = key_array([wide.key(doubled), wide.key(other)])
    tags = ((key_hash(keys) & np.uint64(0xFFFF_FFFF)) | np.uint64(1)) << np.uint64(32)
    now = wide.started_ns
    length = doubled.frame.ip_length
    written = {  # way: (key, first seen, last seen, packets)
        2: (0, now - 3_000_000, now - 2_000_000, 5),
        5: (0, now - 4_000_000, now - 1_000_000, 2),
        6: (1, now - 2_000_000, now, 3),
    }
    table = sets_of(wide)
    for way, (which, first_seen, last_seen, packets) in written.items():
        slot = table["way"][index, way]
        slot["key"] = keys[which]
        slot["value"] = (first_seen, last_seen, packets, packets * length)
    for way, (which, _, last_seen, _) in written.items():  # published last, as the kernel does
        table["tag"][index, way] = tags[which] | np.uint64(ESTABLISHED | stamp_of(last_seen))

    assert wide.sources() == {
        wide.key(doubled): SourceValue(now - 4_000_000, now - 1_000_000, 7, 7 * length),
        wide.key(other): SourceValue(now - 2_000_000, now, 3, 3 * other.frame.ip_length),
    }
    packets_before = table["way"]["value"]["packets"][index].copy()
    result = wide.run(doubled.frame)
    assert result.retval == XDP_PASS
    assert result.stats_delta == only("recorded")
    grown = table["way"]["value"]["packets"][index] - packets_before
    assert sorted(grown.tolist()) == [0] * (WAYS - 1) + [1]
    assert int(np.flatnonzero(grown)[0]) in (2, 5), "counted outside the key's slots"
    merged = wide.sources()[wide.key(doubled)]
    assert (merged.packets, merged.bytes) == (8, 8 * length)
    assert merged.first_seen == now - 4_000_000
    assert merged.last_seen >= now


# -- the replacement rule ----------------------------------------------------------------------


def test_one_packet_slots_are_given_up_first(wide: ProgramUnderTest) -> None:
    """A full set of seven established entries and one one-packet entry: a new key takes the
    one-packet slot, and the next new key takes that one, not an established one."""
    candidates = [Source(a, 7000) for a in addresses("10.85.0.0", 65_536)]
    _, members = sharing_a_set(candidates, wide.default_ifindex, wide.datapath.set_bits, 10)
    established, single, newcomers = members[:7], members[7], members[8:]
    wide.send(s.frame for s in established)
    wide.send(s.frame for s in [*established, single])
    state = {wide.key(s): (2, 2 * s.frame.ip_length) for s in established}
    assert wide.counts() == {**state, wide.key(single): (1, single.frame.ip_length)}

    for newcomer in newcomers:
        delta = wide.send([newcomer.frame])
        assert outcomes(delta) == only("recorded_new")
        assert delta["evicted"] == 1
        assert wide.counts() == {**state, wide.key(newcomer): (1, newcomer.frame.ip_length)}


def test_established_sources_survive_a_flood(small: ProgramUnderTest) -> None:
    """Established sources (two frames each, at most three per set), then one-packet sources
    FLOOD_FACTOR times the capacity, all to FLOODED_PORT: every established source is still
    there with its counts; exactly the one-packet entries that did not fit were given up, each
    counted as evicted and as lost by the flooded port's sketch, whose count is then an estimate
    (not exact); QUIET_PORT, which lost nothing, stays exact."""
    datapath = small.datapath
    set_bits = datapath.set_bits
    assert datapath.capacity == SMALL_CAPACITY
    candidates = [Source(a, FLOODED_PORT) for a in addresses("10.90.0.0", 1500)]
    candidates += [Source(a, QUIET_PORT) for a in addresses("fd00:90::", 100)]
    established = spread(candidates, small.default_ifindex, set_bits, 3)
    flooded_established = [s for s in established if s.port == FLOODED_PORT]
    flood = [Source(a, FLOODED_PORT) for a in addresses("10.91.0.0", FLOOD_FACTOR * SMALL_CAPACITY)]

    assert outcomes(small.send(s.frame for s in established)) == only(
        "recorded_new", len(established)
    )
    assert outcomes(small.send(s.frame for s in established)) == only("recorded", len(established))
    kept = expected_counts(small, dict.fromkeys(established, 2))
    assert small.counts() == kept

    # What must happen, set by set: the flood fills the free slots, then gives up one-packet
    # entries only (no set has fewer than WAYS - 3 of those or free slots).
    sets = 1 << set_bits
    established_in = np.bincount(
        set_index(key_array([small.key(s) for s in established]), set_bits), minlength=sets
    )
    flood_in = np.bincount(
        set_index(key_array([small.key(s) for s in flood]), set_bits), minlength=sets
    )
    free = WAYS - established_in
    evictions = int(np.maximum(flood_in - free, 0).sum())
    entries_after = int(np.minimum(established_in + flood_in, WAYS).sum())
    assert evictions > len(flood) // 2, "the flood should overflow the table many times"

    delta = small.send(s.frame for s in flood)
    assert outcomes(delta) == only("recorded_new", len(flood))
    assert delta["evicted"] == evictions

    table = small.counts()
    missing = [key for key in kept if table.get(key) != kept[key]]
    assert not missing, f"{len(missing)} established sources lost or changed, e.g. {missing[0]}"
    assert len(table) == entries_after
    assert {counts for key, counts in table.items() if key not in kept} == {(1, 28)}

    plan = datapath.plan
    now = datapath.clock.now_ns()
    union = SketchWindow(plan.sketches).update(datapath.read_sketches(), now, WINDOW)
    sketches = SketchCounts.of(union, plan, [])
    flooded = (4, UDP, FLOODED_PORT)
    assert int(union.lost[plan.sketch_id(*flooded)]) == evictions
    assert sketches.exact[flooded] is False
    assert all(exact for label, exact in sketches.exact.items() if label != flooded), sketches
    assert all(sketches.other_exact.values()), sketches.other_exact
    assert int(union.lost.sum()) == evictions
    distinct = len(flood) + len(flooded_established)
    assert sketches.estimates[flooded] == pytest.approx(distinct, rel=ESTIMATE_TOLERANCE)
    quiet = len(established) - len(flooded_established)
    assert sketches.estimates[(6, UDP, QUIET_PORT)] == pytest.approx(quiet, rel=0.03)


# -- lazy expiry -------------------------------------------------------------------------------


def test_a_slot_older_than_the_window_is_free(wide: ProgramUnderTest) -> None:
    """Within the window a full set gives a live entry up for a new key (evicted). With a window
    of 0 s (0 stamps: a slot is free once the clock is in a later stamp of 2**30 ns), every
    slot of the set is free a stamp later: nothing is read as live, a key that comes back
    starts a new entry in its old slot (first seen anew, one packet), and a new key takes a
    free slot without evicting anything."""
    datapath = wide.datapath
    candidates = [Source(a, 7001, TCP) for a in addresses("10.86.0.0", 65_536)]
    index, members = sharing_a_set(candidates, wide.default_ifindex, datapath.set_bits, 10)
    filling, newcomer, late = members[:WAYS], members[WAYS], members[WAYS + 1]
    assert outcomes(wide.send(s.frame for s in filling)) == only("recorded_new", WAYS)
    delta = wide.send([newcomer.frame])
    assert (outcomes(delta), delta["evicted"]) == (only("recorded_new"), 1)
    before = wide.sources()
    assert len(before) == WAYS and wide.key(newcomer) in before
    back = next(s for s in reversed(filling) if wide.key(s) in before)
    table = sets_of(wide)
    way_of_back = [k.tobytes() for k in table["way"]["key"][index]].index(
        key_array([wide.key(back)])[0].tobytes()
    )

    wide.watch(PortFilter.all(), window=0)
    try:
        wait_for_stamp_after(stamp_of(max(v.last_seen for v in before.values())))
        assert wide.sources() == {}, "entries of an earlier stamp read as live"
        delta = wide.send([back.frame])
        assert (outcomes(delta), delta["evicted"]) == (only("recorded_new"), 0)
        again = wide.sources()[wide.key(back)]
        assert (again.packets, again.bytes) == (1, back.frame.ip_length)
        assert again.first_seen > before[wide.key(back)].last_seen
        assert table["way"]["value"]["first_seen"][index, way_of_back] == again.first_seen
        delta = wide.send([late.frame])
        assert (outcomes(delta), delta["evicted"]) == (only("recorded_new"), 0)
        assert set(wide.sources()) == {wide.key(back), wide.key(late)}
    finally:
        wide.watch(PortFilter.all())


def test_an_entry_stamped_a_moment_ahead_is_live(wide: ProgramUnderTest) -> None:
    """CPUs read the clock at different moments: one that read it just after a stamp boundary
    publishes a tag a stamp ahead of another CPU (or the reader) that read it just before. That
    entry is the newest there is: it must be read as live and found by the next frame, not
    taken for 2**31 - 1 stamps old (expired: the reader leaves it out, and the kernel starts
    the key anew, dropping its counts without an eviction). Written here with table.place,
    last seen one stamp (2**30 ns) after the kernel clock."""
    source = Source("10.87.0.2", 53)
    key = wide.key(source)
    now = wide.datapath.clock.now_ns()
    ahead = now + (1 << 30)
    values = np.zeros(1, VALUE_DTYPE)
    values[0] = (now - 1_000_000, ahead, 100, 100 * source.frame.ip_length)
    assert place(wide.datapath.table_words(), key_array([key]), values) == 1
    assert stamp_of(ahead) != stamp_of(wide.datapath.clock.now_ns()), "the clock caught up"

    assert wide.sources() == {key: SourceValue(now - 1_000_000, ahead, 100, 2800)}
    delta = wide.send([source.frame])
    assert (outcomes(delta), delta["evicted"]) == (only("recorded"), 0)
    assert wide.sources()[key] == SourceValue(now - 1_000_000, ahead, 101, 2828)
