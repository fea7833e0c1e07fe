"""The sources table (bpf/xdp_ip_counter.c): sets of WAYS tag words and slots in an array map,
read through mmap (xdp_ip_counter/table.py).

- Where keys go: in one of the two sets table.key_hash names, the emptier one (the primary on
  a tie), under the tag word the C describes (SECONDARY when in the alternate); and table.place
  writes entries where the kernel then finds them, up to max_entries of them.
- Room for max_entries: as many sources as the table was made for are all kept, counted
  exactly, with nothing evicted and no insert failed (one set per key lost some).
- Exact counts: many sources, several frames each, also from two CPUs at once while another
  thread reads; two slots of one key (what a race between CPUs leaves, in one set or in its
  two) merged by the reader.
- The replacement rule, over a key's two sets when both are full: one-packet slots go first,
  so sources that keep sending survive a flood of one-packet sources many times the capacity;
  every live entry given up is counted (evicted) and marks its port's sketch as lossy, while a
  port that lost nothing stays exact.
- Lazy expiry: a slot not seen for a window is free, and a key that comes back starts anew in
  the lowest-ranked slot of its two sets.

The sources of each test are chosen with the kernel's placement (program.key_sets, choose_sets,
spread, within_reach, sharing_both_sets), so that what must fit in a set does, and what must
overflow a key's two sets does.
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
from xdp_ip_counter.layout import (
    BLOCK_SETS,
    ESTABLISHED,
    OUTCOMES,
    SECONDARY,
    SET_DTYPE,
    VALUE_DTYPE,
    WAYS,
)
from xdp_ip_counter.sketch import SketchCounts, SketchWindow
from xdp_ip_counter.table import SLOTS_PER_ENTRY, key_hash, place, sets_for

from .conftest import CAPACITY, FLOODED_PORT, QUIET_PORT, SMALL_CAPACITY, WIDE_CAPACITY
from .program import (
    TCP,
    UDP,
    WINDOW,
    XDP_PASS,
    ProgramUnderTest,
    Source,
    SourceKey,
    SourceValue,
    addresses,
    choose_sets,
    key_array,
    key_sets,
    only,
    sharing_a_set,
    sharing_both_sets,
    source_key,
    spread,
    stamp_of,
    wait_for_stamp_after,
    within_reach,
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


def the_slot(
    program: ProgramUnderTest, table: np.ndarray, source: Source
) -> tuple[int, int, np.void]:
    """(set, tag word, value) of the source's one slot, in its primary or its alternate set."""
    key = key_array([program.key(source)])
    primary, alternate = (int(index[0]) for index in key_sets(key, program.datapath.sets))
    slots = [
        (index, way)
        for index in (primary, alternate)
        for way, k in enumerate(table[index]["way"]["key"])
        if k.tobytes() == key.tobytes()
    ]
    assert len(slots) == 1, f"{source} is not once in sets {primary} and {alternate}: {slots}"
    index, way = slots[0]
    return index, int(table[index]["tag"][way]), table[index]["way"][way]["value"]


def tag_word(
    program: ProgramUnderTest, source: Source, last_seen: int, packets: int, alternate: bool
) -> int:
    """The tag word the C describes: the tag hash (the hash's low 32 bits, bit 0 set, bit 1
    set in the key's alternate set and clear in its primary) << 32, ESTABLISHED when seen in two
    frames or more, the stamp of last seen."""
    hash_ = int(key_hash(key_array([program.key(source)]))[0])
    tag_hash = ((hash_ & 0xFFFF_FFFF) | 1) & ~(SECONDARY >> 32)
    established = ESTABLISHED if packets > 1 else 0
    return (tag_hash << 32 | (SECONDARY if alternate else 0)) | established | stamp_of(last_seen)


def primary_of(program: ProgramUnderTest, source: Source) -> int:
    return int(key_sets(key_array([program.key(source)]), program.datapath.sets)[0][0])


# -- where the kernel puts keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "capacity", "per_class"),
    [("wide", WIDE_CAPACITY, 3000), ("small", SMALL_CAPACITY, 1000)],
)
def test_keys_are_in_the_set_key_hash_names(
    request: pytest.FixtureRequest, table: str, capacity: int, per_class: int
) -> None:
    """Sources sent one after another into an empty table (wide: six blocks of sets; small: a
    power of two of them, one block): each key is in its primary set if that had ROOMY free
    slots or more when it came, else in the one of its two sets that had more (its primary on
    a tie), once, under the tag word the C describes, SECONDARY set exactly when that is its
    alternate set; both kinds occur (enough sources that primaries get crowded)."""
    under_test: ProgramUnderTest = request.getfixturevalue(table)
    datapath = under_test.datapath
    assert datapath.capacity == capacity
    assert datapath.sets == sets_for(capacity) == datapath.table("sources").max_entries
    assert datapath.slots == datapath.sets * WAYS >= capacity * SLOTS_PER_ENTRY
    candidates = mixed(per_class, "10.80.0.0", "fd00:80::", ports=(53, 443, 8080, 0, 65535))
    sources = spread(candidates, under_test.default_ifindex, datapath.sets, WAYS)
    twice = sources[1::2]  # the others are sent once
    keys = key_array([under_test.key(s) for s in sources])
    chosen = choose_sets(keys, datapath.sets)
    primary, alternate = key_sets(keys, datapath.sets)

    first = under_test.send(s.frame for s in sources)
    second = under_test.send(s.frame for s in twice)
    assert outcomes(first) == only("recorded_new", len(sources))
    assert outcomes(second) == only("recorded", len(twice))
    assert first["evicted"] == second["evicted"] == 0

    table_now = sets_of(under_test).copy()
    for n, source in enumerate(sources):
        frames = 2 if source in twice else 1
        index, tag, value = the_slot(under_test, table_now, source)
        assert index == chosen[n], (
            f"{source}: in set {index}; its sets are {primary[n]} (primary) and "
            f"{alternate[n]}, and it came when the emptier was {chosen[n]}"
        )
        assert (int(value["packets"]), int(value["bytes"])) == (
            frames,
            frames * source.frame.ip_length,
        )
        want = tag_word(under_test, source, int(value["last_seen"]), frames, index != primary[n])
        assert tag == want, f"{source}: tag {tag:#x}, the C's rule says {want:#x}"
    in_alternate = int(np.count_nonzero(chosen != primary))
    assert 0 < in_alternate < len(sources), "both sets of a key should be used"
    assert np.count_nonzero(table_now["tag"]) == len(sources), "slots used that no key explains"
    assert {source_key(row) for row in table_now["way"]["key"][table_now["tag"] != 0]} == {
        under_test.key(s) for s in sources
    }


@pytest.mark.parametrize("table", ["wide", "small"])
def test_as_many_sources_as_max_entries_are_all_kept(
    request: pytest.FixtureRequest, table: str
) -> None:
    """The point of two sets per key: a table made for max_entries holds that many sources.
    max_entries distinct sources (of every family and protocol, over three ports) sent one frame
    each, then a third of them once more: every one of them is read back with its exact counts;
    nothing was evicted and no insert failed. With one set per key (each in its primary set)
    some set would have had more than WAYS of them."""
    under_test: ProgramUnderTest = request.getfixturevalue(table)
    datapath = under_test.datapath
    count = datapath.capacity
    assert count >= 128
    sources = mixed(count // 4, "10.88.0.0", "fd00:88::", ports=(53, 443, 8080))
    assert len(set(sources)) == len(sources) == count
    again = sources[::3]
    primary, _ = key_sets(key_array([under_test.key(s) for s in sources]), datapath.sets)
    assert np.bincount(primary).max() > WAYS, "these sources would not overflow one set a key"

    first = under_test.send(s.frame for s in sources)
    second = under_test.send(s.frame for s in again)
    assert outcomes(first) == only("recorded_new", count), "a source not kept (insert_failed)"
    assert outcomes(second) == only("recorded", len(again)), "a source not found again"
    assert first["evicted"] == second["evicted"] == 0
    sent = {**dict.fromkeys(sources, 1), **dict.fromkeys(again, 2)}
    assert under_test.counts() == expected_counts(under_test, sent)
    tags = datapath.table_words()[:, :WAYS]
    assert int(np.count_nonzero(tags >> np.uint64(32))) == count, "a key in two slots"


def test_place_writes_entries_where_the_kernel_finds_them(wide: ProgramUnderTest) -> None:
    datapath = wide.datapath
    candidates = mixed(150, "10.81.0.0", "fd00:81::")
    sources = within_reach(candidates, wide.default_ifindex, datapath.sets, WAYS)
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
        index, tag, _ = the_slot(wide, table, source)
        in_alternate = index != primary_of(wide, source)
        want = tag_word(wide, source, int(value["last_seen"]), int(value["packets"]), in_alternate)
        assert tag == want, f"{source}: tag {tag:#x}, the C's rule says {want:#x}"
    found_again(wide, sources, placed)


def test_place_fills_a_table_to_max_entries_where_the_kernel_finds_them(
    program: ProgramUnderTest,
) -> None:
    """table.place of max_entries entries into the smallest table (32 sets: many keys share
    a primary set, so place puts some in their alternate set): every entry placed, in one of
    its two sets under the tag word the C describes, and a frame of each is counted in it
    (recorded: found in either set), nothing evicted."""
    datapath = program.datapath
    assert datapath.capacity == CAPACITY
    sources = mixed(CAPACITY // 4, "10.89.0.0", "fd00:89::", ports=(53, 443, 8080))
    keys = key_array([program.key(s) for s in sources])
    now = program.started_ns
    values = np.zeros(len(sources), VALUE_DTYPE)
    values["packets"] = 1 + np.arange(len(sources)) % 3
    values["bytes"] = values["packets"] * [s.frame.ip_length for s in sources]
    values["first_seen"] = now - 5_000_000
    values["last_seen"] = now - np.arange(len(sources)) % 4 * 1_000_000
    assert place(datapath.table_words(), keys, values) == len(sources) == CAPACITY
    placed = {
        program.key(s): SourceValue(*(int(values[n][name]) for name in SourceValue._fields))
        for n, s in enumerate(sources)
    }
    assert program.sources() == placed
    table = sets_of(program).copy()
    in_alternate = 0
    for source, value in zip(sources, values, strict=True):
        index, tag, _ = the_slot(program, table, source)
        alternate = index != primary_of(program, source)
        in_alternate += alternate
        want = tag_word(program, source, int(value["last_seen"]), int(value["packets"]), alternate)
        assert tag == want, f"{source}: tag {tag:#x}, the C's rule says {want:#x}"
    assert 0 < in_alternate < len(sources), "place should use both sets of a key here"
    found_again(program, sources, placed)


def found_again(
    program: ProgramUnderTest, sources: list[Source], placed: dict[SourceKey, SourceValue]
) -> None:
    """A frame of each placed source is counted in its placed entry: recorded, never
    recorded_new; first seen kept, last seen not earlier, one packet more."""
    delta = program.send(s.frame for s in sources)
    assert outcomes(delta) == only("recorded", len(sources)), "a placed key was not found"
    assert delta["evicted"] == 0
    after = program.sources()
    assert set(after) == set(placed)
    for source in sources:
        key, before = program.key(source), placed[program.key(source)]
        ip_length = source.frame.ip_length
        assert after[key].first_seen == before.first_seen, key
        assert after[key].last_seen >= before.last_seen, key
        assert (after[key].packets, after[key].bytes) == (
            before.packets + 1,
            before.bytes + ip_length,
        ), key


# -- exact counts ------------------------------------------------------------------------------


def test_many_sources_several_frames_each_are_counted_exactly(wide: ProgramUnderTest) -> None:
    candidates = mixed(1500, "10.82.0.0", "fd00:82::", ports=(22, 53, 443))
    sources = spread(candidates, wide.default_ifindex, wide.datapath.sets, WAYS)
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
    wide_publishing: ProgramUnderTest,
) -> None:
    """Two threads, each pinned to its own CPU, run the same sources through the program at
    once (BPF_PROG_TEST_RUN runs on the calling CPU) while this thread reads the table over and
    over: each read shows at least what was sent before it began and at most what was sent by
    its end, no key twice and no key with fewer packets than an earlier read. At the end every
    source has exactly its frames, from both CPUs. Claims of one new key raced by both CPUs
    leave duplicate slots (in one set of the key or in each): the reader merges them; there is
    room for a duplicate of every key wherever the CPUs put them (at most WAYS / 2 sources have
    a set among their two), so nothing is evicted. Both ways of publishing a new slot: a plain
    store (x86) and an atomic exchange."""
    wide = wide_publishing
    cpus = sorted(os.sched_getaffinity(0))
    require(len(cpus) >= 2, "needs two CPUs to run the program on two at once")
    datapath = wide.datapath
    candidates = mixed(1500, "10.83.0.0", "fd00:83::", ports=(53, 8443))
    sources = within_reach(candidates, wide.default_ifindex, datapath.sets, WAYS // 2)
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


@pytest.mark.parametrize(
    "where",
    [
        ((0, 2), (0, 5)),  # both in the primary set
        ((1, 2), (1, 5)),  # both in the alternate set
        ((0, 2), (1, 5)),  # one in each
    ],
    ids=["primary", "alternate", "both-sets"],
)
def test_duplicate_slots_are_merged_and_a_frame_counts_in_one(
    wide: ProgramUnderTest, where: tuple[tuple[int, int], tuple[int, int]]
) -> None:
    """Two slots with the same key and tag hash, as two CPUs claiming a new key at once leave
    them (in one of its sets, or one in each: SECONDARY in the alternate): read as one entry
    (counts added, earliest first seen, latest last seen), a frame of that key counted in one
    of them; another key of the primary set stays apart. The sets are past the first block:
    the table is read a block at a time, and finds a SECONDARY slot's primary set within it."""
    datapath = wide.datapath
    candidates = [Source(a, 5353) for a in addresses("10.84.0.0", 40_000)]
    primary, _ = key_sets(key_array([wide.key(s) for s in candidates]), datapath.sets)
    later = [
        c for c, index in zip(candidates, primary.tolist(), strict=True) if index >= BLOCK_SETS
    ]
    index, (doubled, other) = sharing_a_set(later, wide.default_ifindex, datapath.sets, 2)
    keys = key_array([wide.key(doubled), wide.key(other)])
    sets = [int(s[0]) for s in key_sets(keys[:1], datapath.sets)]  # doubled's primary, alternate
    assert sets[0] == index
    tags = (
        ((key_hash(keys) & np.uint64(0xFFFF_FFFF)) | np.uint64(1)) << np.uint64(32)
    ) & ~np.uint64(SECONDARY)
    now = wide.started_ns
    length = doubled.frame.ip_length
    written = {  # (set, way): (key, first seen, last seen, packets)
        (sets[where[0][0]], where[0][1]): (0, now - 3_000_000, now - 2_000_000, 5),
        (sets[where[1][0]], where[1][1]): (0, now - 4_000_000, now - 1_000_000, 2),
        (index, 6): (1, now - 2_000_000, now, 3),
    }
    table = sets_of(wide)
    for (set_, way), (which, first_seen, last_seen, packets) in written.items():
        slot = table["way"][set_, way]
        slot["key"] = keys[which]
        slot["value"] = (first_seen, last_seen, packets, packets * length)
    for (set_, way), (which, _, last_seen, _) in written.items():  # published last, as the kernel
        secondary = SECONDARY if set_ != index else 0
        table["tag"][set_, way] = tags[which] | np.uint64(
            secondary | ESTABLISHED | stamp_of(last_seen)
        )

    assert wide.sources() == {
        wide.key(doubled): SourceValue(now - 4_000_000, now - 1_000_000, 7, 7 * length),
        wide.key(other): SourceValue(now - 2_000_000, now, 3, 3 * other.frame.ip_length),
    }
    packets_before = table["way"]["value"]["packets"][sets].copy()
    result = wide.run(doubled.frame)
    assert result.retval == XDP_PASS
    assert result.stats_delta == only("recorded")
    grown = table["way"]["value"]["packets"][sets] - packets_before
    assert sorted(grown.ravel().tolist()) == [0] * (2 * WAYS - 1) + [1]
    which_set, way = (int(i[0]) for i in np.nonzero(grown))
    assert (which_set, way) in where, "counted outside the key's slots"
    merged = wide.sources()[wide.key(doubled)]
    assert (merged.packets, merged.bytes) == (8, 8 * length)
    assert merged.first_seen == now - 4_000_000
    assert merged.last_seen >= now


# -- the replacement rule ----------------------------------------------------------------------


def test_one_packet_slots_are_given_up_first(program: ProgramUnderTest) -> None:
    """Keys that share both their sets (the smallest table: 32 sets, few pairs of them): fifteen
    established entries and one one-packet entry fill the two sets; a new key of the two takes
    the one-packet slot, and the next new key takes that one, not an established one, in
    either set."""
    candidates = [Source(a, 7000) for a in addresses("10.85.0.0", 8192)]
    pair, members = sharing_both_sets(
        candidates, program.default_ifindex, program.datapath.sets, 2 * WAYS + 3
    )
    established, single = members[: 2 * WAYS - 1], members[2 * WAYS - 1]
    newcomers = members[2 * WAYS :]
    first = program.send(s.frame for s in established)
    second = program.send(s.frame for s in [*established, single])
    assert outcomes(first) == only("recorded_new", len(established))
    assert first["evicted"] == second["evicted"] == 0
    state = {program.key(s): (2, 2 * s.frame.ip_length) for s in established}
    assert program.counts() == {**state, program.key(single): (1, single.frame.ip_length)}
    tags = sets_of(program)["tag"][list(pair)]
    assert np.count_nonzero(tags) == 2 * WAYS, "the two sets are full"

    for newcomer in newcomers:
        delta = program.send([newcomer.frame])
        assert outcomes(delta) == only("recorded_new")
        assert delta["evicted"] == 1
        assert program.counts() == {**state, program.key(newcomer): (1, newcomer.frame.ip_length)}
        keys_there = {k.tobytes() for k in sets_of(program)["way"]["key"][list(pair)].ravel()}
        assert key_array([program.key(newcomer)]).tobytes() in keys_there, "not in its sets"


def test_established_sources_survive_a_flood(small: ProgramUnderTest) -> None:
    """Established sources (two frames each, at most three per set), then one-packet sources
    FLOOD_FACTOR times the capacity, all to FLOODED_PORT: every established source is still
    there with its counts; exactly the one-packet entries that did not fit were given up, each
    counted as evicted and as lost by the flooded port's sketch, whose count is then an estimate
    (not exact); QUIET_PORT, which lost nothing, stays exact."""
    datapath = small.datapath
    sets = datapath.sets
    assert datapath.capacity == SMALL_CAPACITY
    candidates = [Source(a, FLOODED_PORT) for a in addresses("10.90.0.0", 1500)]
    candidates += [Source(a, QUIET_PORT) for a in addresses("fd00:90::", 100)]
    established = spread(candidates, small.default_ifindex, sets, 3)
    flooded_established = [s for s in established if s.port == FLOODED_PORT]
    flood = [Source(a, FLOODED_PORT) for a in addresses("10.91.0.0", FLOOD_FACTOR * SMALL_CAPACITY)]

    assert outcomes(small.send(s.frame for s in established)) == only(
        "recorded_new", len(established)
    )
    assert outcomes(small.send(s.frame for s in established)) == only("recorded", len(established))
    kept = expected_counts(small, dict.fromkeys(established, 2))
    assert small.counts() == kept

    # What must happen, key by key: a flood key takes a free slot of its emptier set while
    # either has one, else gives up a one-packet entry of the two (no set has more than three
    # established entries). Which one it gives up changes no set's count of entries.
    occupied = np.zeros(sets, np.int64)
    assert (choose_sets(key_array([small.key(s) for s in established]), sets, occupied) >= 0).all()
    assert occupied.max() <= 3
    flood_sets = choose_sets(key_array([small.key(s) for s in flood]), sets, occupied)
    evictions = int(np.count_nonzero(flood_sets < 0))
    entries_after = int(occupied.sum())
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
    assert evictions > 0 and int(union.lost[plan.sketch_id(*flooded)]) > 0
    assert sketches.exact[flooded] is False
    assert all(exact for label, exact in sketches.exact.items() if label != flooded), sketches
    assert all(sketches.other_exact.values()), sketches.other_exact
    assert np.flatnonzero(union.lost).tolist() == [plan.sketch_id(*flooded)]
    distinct = len(flood) + len(flooded_established)
    assert sketches.estimates[flooded] == pytest.approx(distinct, rel=ESTIMATE_TOLERANCE)
    quiet = len(established) - len(flooded_established)
    assert sketches.estimates[(6, UDP, QUIET_PORT)] == pytest.approx(quiet, rel=0.03)


# -- lazy expiry -------------------------------------------------------------------------------


def test_a_slot_older_than_the_window_is_free(program: ProgramUnderTest) -> None:
    """Within the window a key's two full sets give a live entry up for a new key (evicted).
    With a window of 0 s (0 stamps: a slot is free once the clock is in a later stamp of 2**30
    ns), every slot of the two sets is free a stamp later: nothing is read as live; a key that
    comes back starts a new entry (first seen anew, one packet) in the lowest-ranked slot, the
    first way of its primary set (every slot free: the lowest way, the primary on a tie), not in
    its old slot, which is not read; and a new key takes a free slot without evicting anything."""
    datapath = program.datapath
    candidates = [Source(a, 7001, TCP) for a in addresses("10.86.0.0", 8192)]
    pair, members = sharing_both_sets(candidates, program.default_ifindex, datapath.sets, 18)
    filling, newcomer, late = members[: 2 * WAYS], members[2 * WAYS], members[2 * WAYS + 1]
    assert outcomes(program.send(s.frame for s in filling)) == only("recorded_new", 2 * WAYS)
    delta = program.send([newcomer.frame])
    assert (outcomes(delta), delta["evicted"]) == (only("recorded_new"), 1)
    before = program.sources()
    assert len(before) == 2 * WAYS and program.key(newcomer) in before
    table = sets_of(program)

    def slot_of(source: Source) -> tuple[int, int]:
        raw = key_array([program.key(source)])[0].tobytes()
        return next(
            (index, way)
            for index in pair
            for way in range(WAYS)
            if table["way"]["key"][index, way].tobytes() == raw
        )

    # one whose old slot is not where it will start anew
    back = next(
        s
        for s in reversed(filling)
        if program.key(s) in before and slot_of(s) != (primary_of(program, s), 0)
    )
    old_slot = slot_of(back)

    program.watch(PortFilter.all(), window=0)
    try:
        wait_for_stamp_after(stamp_of(max(v.last_seen for v in before.values())))
        assert program.sources() == {}, "entries of an earlier stamp read as live"
        delta = program.send([back.frame])
        assert (outcomes(delta), delta["evicted"]) == (only("recorded_new"), 0)
        again = program.sources()[program.key(back)]
        assert (again.packets, again.bytes) == (1, back.frame.ip_length)
        assert again.first_seen > before[program.key(back)].last_seen
        new_slot = (primary_of(program, back), 0)
        assert table["way"]["key"][new_slot].tobytes() == key_array([program.key(back)]).tobytes()
        assert table["way"]["value"]["first_seen"][new_slot] == again.first_seen
        assert int(table["tag"][new_slot]) == tag_word(program, back, again.last_seen, 1, False)
        # the old entry is still in its slot, expired: not read, not counted in
        assert table["way"]["key"][old_slot].tobytes() == key_array([program.key(back)]).tobytes()
        assert table["way"]["value"]["first_seen"][old_slot] == before[program.key(back)].first_seen
        delta = program.send([late.frame])
        assert (outcomes(delta), delta["evicted"]) == (only("recorded_new"), 0)
        assert set(program.sources()) == {program.key(back), program.key(late)}
    finally:
        program.watch(PortFilter.all())


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
