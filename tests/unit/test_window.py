"""window.py: the sliding window and the aggregation, with injected times."""

from __future__ import annotations

import ipaddress
import random
import threading

import numpy as np
import pytest

from xdp_ip_counter.layout import KEY_DTYPE, VALUE_DTYPE
from xdp_ip_counter.window import (
    ActiveSet,
    DeferredActiveSet,
    Snapshot,
    active_set,
    count_sources,
    format_addresses,
    rfc3339_ms,
    stale_keys,
)

S = 1_000_000_000
NOW = 5000 * S  # kernel monotonic ns at the snapshot
WALL = 1714564800.0  # 2024-05-01T12:00:00Z at the same moment
IFNAMES = {2: "eth0", 3: "eth1"}


def packed(ip: str) -> bytes:
    """The key's address bytes: IPv4 stored IPv4-mapped."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return ipaddress.IPv6Address(f"::ffff:{ip}").packed
    return address.packed


def entry(
    ip: str,
    *,
    port: int = 22,
    proto: int = 6,
    ifindex: int = 2,
    first: int = NOW - 10 * S,
    last: int = NOW - 1 * S,
    packets: int = 1,
    size: int = 60,
) -> tuple[tuple, tuple]:
    family = ipaddress.ip_address(ip).version
    return (packed(ip), ifindex, port, proto, family), (first, last, packets, size)


def snapshot(*entries: tuple[tuple, tuple], taken_at_ns: int = NOW) -> Snapshot:
    keys = np.array([k for k, _ in entries], KEY_DTYPE)
    values = np.array([v for _, v in entries], VALUE_DTYPE)
    return Snapshot(keys, values, taken_at_ns, WALL, {}, len(keys), 1024)


def rows_as_dicts(active: ActiveSet) -> list[dict]:
    texts = active.ip_texts()
    interfaces = active.interface_lists()
    return [
        {
            "ip": texts[i],
            "family": int(row["family"]),
            "proto": int(row["proto"]),
            "port": int(row["port"]),
            "interfaces": interfaces[i],
            "first_seen": int(row["first_seen"]),
            "last_seen": int(row["last_seen"]),
            "packets": int(row["packets"]),
            "bytes": int(row["bytes"]),
        }
        for i, row in enumerate(active.rows)
    ]


# -- the window edge --------------------------------------------------------------------------


def test_seen_exactly_at_the_window_edge_is_active() -> None:
    snap = snapshot(entry("10.1.0.1", last=NOW - 60 * S))
    assert [r["ip"] for r in rows_as_dicts(active_set(snap, 60, IFNAMES))] == ["10.1.0.1"]
    assert len(stale_keys(snap, 60)) == 0


def test_seen_one_nanosecond_before_the_window_is_stale() -> None:
    snap = snapshot(entry("10.1.0.1", last=NOW - 60 * S - 1), entry("10.1.0.2"))
    assert [r["ip"] for r in rows_as_dicts(active_set(snap, 60, IFNAMES))] == ["10.1.0.2"]
    stale = stale_keys(snap, 60)
    assert stale.dtype == KEY_DTYPE
    assert stale["addr"].tolist() == [packed("10.1.0.1")]


def test_window_longer_than_the_uptime_keeps_everything() -> None:
    snap = snapshot(entry("10.1.0.1", first=0, last=0), taken_at_ns=30 * S)
    assert len(active_set(snap, 60, IFNAMES)) == 1
    assert len(stale_keys(snap, 60)) == 0


def test_seen_after_the_snapshot_time_is_active() -> None:
    # The batch read takes a while; an entry updated during it is newer than taken_at_ns.
    snap = snapshot(entry("10.1.0.1", last=NOW + S))
    assert len(active_set(snap, 60, IFNAMES)) == 1


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        active_set(snapshot(entry("10.1.0.1")), 0, IFNAMES)


def test_empty_snapshot() -> None:
    snap = snapshot()
    active = active_set(snap, 60, IFNAMES)
    assert len(active) == 0
    assert active.count_map() == {}
    assert len(stale_keys(snap, 60)) == 0


def test_snapshot_rejects_other_dtypes() -> None:
    with pytest.raises(TypeError, match="KEY_DTYPE"):
        Snapshot(np.zeros(1, VALUE_DTYPE), np.zeros(1, VALUE_DTYPE), NOW, WALL)
    with pytest.raises(ValueError, match="do not match"):
        Snapshot(np.zeros(2, KEY_DTYPE), np.zeros(1, VALUE_DTYPE), NOW, WALL)


# -- aggregation across interfaces --------------------------------------------------------


def test_one_source_on_two_interfaces_is_one_row() -> None:
    snap = snapshot(
        entry("10.1.0.1", ifindex=2, first=NOW - 50 * S, last=NOW - 20 * S, packets=2, size=100),
        entry("10.1.0.1", ifindex=3, first=NOW - 40 * S, last=NOW - 5 * S, packets=3, size=200),
    )
    [row] = rows_as_dicts(active_set(snap, 60, IFNAMES))
    assert row == {
        "ip": "10.1.0.1",
        "family": 4,
        "proto": 6,
        "port": 22,
        "interfaces": ("eth0", "eth1"),
        "first_seen": NOW - 50 * S,
        "last_seen": NOW - 5 * S,
        "packets": 5,
        "bytes": 300,
    }


def test_an_interface_outside_the_window_does_not_count() -> None:
    snap = snapshot(
        entry("10.1.0.1", ifindex=2, first=NOW - 90 * S, last=NOW - 61 * S, packets=7),
        entry("10.1.0.1", ifindex=3, first=NOW - 30 * S, last=NOW - 5 * S, packets=1),
    )
    [row] = rows_as_dicts(active_set(snap, 60, IFNAMES))
    assert row["interfaces"] == ("eth1",)
    assert row["packets"] == 1
    assert row["first_seen"] == NOW - 30 * S


def test_unknown_ifindex_is_named_by_number() -> None:
    snap = snapshot(entry("10.1.0.1", ifindex=2), entry("10.1.0.1", ifindex=77))
    [row] = rows_as_dicts(active_set(snap, 60, IFNAMES))
    assert row["interfaces"] == ("eth0", "if77")


def test_large_ifindexes() -> None:
    snap = snapshot(entry("10.1.0.1", ifindex=3_000_000), entry("10.1.0.1", ifindex=2))
    [row] = rows_as_dicts(active_set(snap, 60, {3_000_000: "big0", 2: "eth0"}))
    assert row["interfaces"] == ("big0", "eth0")


def test_same_address_other_port_or_protocol_are_separate_rows() -> None:
    snap = snapshot(
        entry("10.1.0.1", port=22, proto=6),
        entry("10.1.0.1", port=22, proto=17),
        entry("10.1.0.1", port=80, proto=6),
    )
    rows = rows_as_dicts(active_set(snap, 60, IFNAMES))
    assert [(r["port"], r["proto"]) for r in rows] == [(22, 6), (22, 17), (80, 6)]


# -- order and counts ---------------------------------------------------------------------


def test_order_is_port_proto_family_then_numeric_address() -> None:
    snap = snapshot(
        entry("2001:db8::2", port=22),
        entry("10.0.0.10", port=22),
        entry("10.0.0.9", port=22),
        entry("9.255.255.255", port=22),
        entry("2001:db8::10", port=22),
        entry("::ffff:1.2.3.4", port=22),  # an IPv6 packet with a mapped source: family 6
        entry("10.0.0.1", port=22, proto=17),
        entry("10.0.0.1", port=21),
        entry("10.0.0.1", port=443),
    )
    order = [(r["port"], r["proto"], r["ip"]) for r in rows_as_dicts(active_set(snap, 60, {}))]
    assert order == [
        (21, 6, "10.0.0.1"),
        (22, 6, "9.255.255.255"),
        (22, 6, "10.0.0.9"),
        (22, 6, "10.0.0.10"),
        (22, 6, "::ffff:1.2.3.4"),
        (22, 6, "2001:db8::2"),
        (22, 6, "2001:db8::10"),
        (22, 17, "10.0.0.1"),
        (443, 6, "10.0.0.1"),
    ]


def test_counts_are_distinct_addresses_per_family_proto_port() -> None:
    snap = snapshot(
        entry("10.1.0.1", ifindex=2),
        entry("10.1.0.1", ifindex=3),  # same source on two interfaces counts once
        entry("10.1.0.2"),
        entry("2001:db8::1"),
        entry("10.1.0.1", proto=17),
        entry("10.1.0.3", port=80),
        entry("10.1.0.4", last=NOW - 61 * S),  # outside the window
    )
    assert active_set(snap, 60, IFNAMES).count_map() == {
        (4, 6, 22): 2,
        (6, 6, 22): 1,
        (4, 17, 22): 1,
        (4, 6, 80): 1,
    }


def test_matches_a_plain_python_reference_on_random_data() -> None:
    """Many sources, both families, duplicates over 70 interfaces (more than one bit word)."""
    rng = random.Random(6)
    addresses = [f"10.{rng.randrange(3)}.0.{rng.randrange(256)}" for _ in range(60)]
    addresses += [f"2001:db8:{rng.randrange(3):x}::{rng.randrange(65536):x}" for _ in range(40)]
    addresses += ["::1", "::ffff:10.0.0.1", "fe80::1"]
    ifnames = {index: f"veth{index}" for index in range(1, 71)}
    entries = {}
    for _ in range(3000):
        key = (rng.choice(addresses), rng.choice([22, 80, 5353]), rng.choice([6, 17]))
        ifindex = rng.randrange(1, 72)  # 71 has no name
        last = NOW - rng.randrange(0, 120 * S)
        first = last - rng.randrange(0, 30 * S)
        entries[(*key, ifindex)] = (first, last, rng.randrange(1, 9), rng.randrange(40, 1500))
    snap = snapshot(
        *(
            entry(
                ip,
                port=port,
                proto=proto,
                ifindex=ifindex,
                first=first,
                last=last,
                packets=packets,
                size=size,
            )
            for (ip, port, proto, ifindex), (first, last, packets, size) in entries.items()
        )
    )

    expected: dict[tuple, dict] = {}
    for (ip, port, proto, ifindex), (first, last, packets, size) in entries.items():
        if last < NOW - 60 * S:
            continue
        address = ipaddress.ip_address(ip)
        row = expected.setdefault(
            (port, proto, address.version, address.packed, ip),
            {"interfaces": set(), "first": first, "last": last, "packets": 0, "bytes": 0},
        )
        row["interfaces"].add(ifnames.get(ifindex, f"if{ifindex}"))
        row["first"] = min(row["first"], first)
        row["last"] = max(row["last"], last)
        row["packets"] += packets
        row["bytes"] += size
    reference = [
        {
            "ip": ipaddress.ip_address(ip).compressed,
            "family": family,
            "proto": proto,
            "port": port,
            "interfaces": tuple(sorted(row["interfaces"])),
            "first_seen": row["first"],
            "last_seen": row["last"],
            "packets": row["packets"],
            "bytes": row["bytes"],
        }
        for (port, proto, family, _, ip), row in sorted(expected.items())
    ]
    # Python's ipaddress writes mapped addresses in hex; RFC 5952 (and we) use the dotted tail.
    for row in reference:
        if row["ip"] == "::ffff:a00:1":
            row["ip"] = "::ffff:10.0.0.1"

    active = active_set(snap, 60, ifnames)
    assert rows_as_dicts(active) == reference
    assert len(stale_keys(snap, 60)) == sum(
        1 for (first, last, _, _) in entries.values() if last < NOW - 60 * S
    )


# -- selection ----------------------------------------------------------------------------


def test_select_filters_and_recounts() -> None:
    snap = snapshot(
        entry("10.1.0.1", port=22, ifindex=2),
        entry("10.1.0.2", port=22, ifindex=3),
        entry("2001:db8::1", port=22, proto=17, ifindex=3),
        entry("10.1.0.1", port=80, ifindex=2),
    )
    active = active_set(snap, 60, IFNAMES)

    def ips(selected: ActiveSet) -> list[tuple[int, str]]:
        return list(zip(selected.rows["port"].tolist(), selected.ip_texts(), strict=True))

    assert ips(active.select(ports=[80])) == [(80, "10.1.0.1")]
    assert ips(active.select(ports=[22, 80], protos=[17])) == [(22, "2001:db8::1")]
    assert ips(active.select(families=[4], interfaces=["eth1"])) == [(22, "10.1.0.2")]
    assert ips(active.select(interfaces=["eth0", "nope"])) == [(22, "10.1.0.1"), (80, "10.1.0.1")]
    assert ips(active.select(interfaces=["nope"])) == []
    assert active.select(ports=[22]).count_map() == {(4, 6, 22): 2, (6, 17, 22): 1}
    assert active.select() is active


# -- counts without rows (what /metrics needs), rows when /list asks ------------------------


def random_snapshot(seed: int, interfaces: int) -> tuple[Snapshot, dict[int, str]]:
    """Sources of both families (an IPv6 ::ffff: address among them: not its IPv4 twin) on up
    to `interfaces` interfaces, some outside the window; each key once, as the table reads."""
    rng = random.Random(seed)
    addresses = [f"10.{rng.randrange(3)}.0.{rng.randrange(256)}" for _ in range(80)]
    addresses += [f"2001:db8:{rng.randrange(3):x}::{rng.randrange(65536):x}" for _ in range(40)]
    addresses += ["::ffff:10.0.0.1", "10.0.0.1", "::1"]
    entries = {}
    for _ in range(2000):
        key = (rng.choice(addresses), rng.choice([22, 80, 5353, 65535]), rng.choice([6, 17]))
        last = NOW - rng.randrange(0, 120 * S)
        entries[(*key, rng.randrange(1, interfaces + 1))] = last
    snap = snapshot(
        *(
            entry(ip, port=port, proto=proto, ifindex=ifindex, last=last, first=last - S)
            for (ip, port, proto, ifindex), last in entries.items()
        )
    )
    return snap, {index: f"veth{index}" for index in range(1, interfaces + 1)}


@pytest.mark.parametrize("interfaces", [1, 2, 70])
def test_count_sources_counts_what_active_set_counts(interfaces: int) -> None:
    snap, ifnames = random_snapshot(interfaces, interfaces)
    counts, rows = count_sources(snap, 60)
    active = active_set(snap, 60, ifnames)
    assert counts.dtype == active.counts.dtype
    assert counts.tolist() == active.counts.tolist()
    assert rows == len(active)


def test_count_sources_of_nothing_within_the_window() -> None:
    old = snapshot(entry("10.1.0.1", last=NOW - 61 * S, first=NOW - 62 * S))
    for snap in (old, snapshot()):
        counts, rows = count_sources(snap, 60)
        assert (counts.tolist(), rows) == ([], 0)


def test_a_deferred_active_set_is_the_active_set_made_when_first_asked() -> None:
    snap, ifnames = random_snapshot(7, 3)
    active = active_set(snap, 60, ifnames)
    deferred = DeferredActiveSet(snap, 60, ifnames)
    assert len(deferred) == len(active)
    assert deferred.count_map() == active.count_map()
    assert (deferred.window_s, deferred.taken_at_ns, deferred.taken_at_wall) == (60, NOW, WALL)
    assert rows_as_dicts(deferred.resolve()) == rows_as_dicts(active)
    assert deferred.rows.tolist() == active.rows.tolist()
    assert rows_as_dicts(deferred.select(ports=[22], families=[6])) == rows_as_dicts(
        active.select(ports=[22], families=[6])
    )


def test_a_deferred_active_set_makes_its_rows_once_for_every_thread() -> None:
    snap, ifnames = random_snapshot(8, 2)
    deferred = DeferredActiveSet(snap, 60, ifnames)
    made: list[ActiveSet] = []
    threads = [threading.Thread(target=lambda: made.append(deferred.resolve())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 8
    assert all(rows is made[0] for rows in made)


# -- text -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "family", "text"),
    [
        ("::ffff:10.20.30.40", 4, "10.20.30.40"),  # IPv4 is stored mapped, shown dotted
        ("::ffff:0.0.0.0", 4, "0.0.0.0"),
        ("::ffff:255.255.255.255", 4, "255.255.255.255"),
        ("2001:db8::1", 6, "2001:db8::1"),
        ("2001:DB8:0:0:1:0:0:1", 6, "2001:db8::1:0:0:1"),  # first longest run compressed
        ("2001:db8:0:1:1:1:1:1", 6, "2001:db8:0:1:1:1:1:1"),  # a single 0 is not compressed
        ("::", 6, "::"),
        ("::1", 6, "::1"),
        ("::2:3", 6, "::2:3"),  # ::/96: glibc would write ::0.2.0.3
        ("::ffff:1.2.3.4", 6, "::ffff:1.2.3.4"),  # a mapped address in an IPv6 header
        ("fe80::a:b", 6, "fe80::a:b"),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
    ],
)
def test_address_text(ip: str, family: int, text: str) -> None:
    rows = np.zeros(1, KEY_DTYPE)
    rows["addr"] = ipaddress.IPv6Address(ip).packed
    rows["family"] = family
    assert format_addresses(rows) == [text]


def test_times_are_rfc3339_utc_milliseconds() -> None:
    snap = snapshot(entry("10.1.0.1", first=NOW - 59 * S - 1_500_000, last=NOW + 2_999_999))
    active = active_set(snap, 60, IFNAMES)
    first = rfc3339_ms(active.wall_ms(active.rows["first_seen"]))
    last = rfc3339_ms(active.wall_ms(active.rows["last_seen"]))
    assert first == ["2024-05-01T11:59:00.998Z"]  # floored to the millisecond
    assert last == ["2024-05-01T12:00:00.002Z"]
    assert rfc3339_ms(np.array([0, 999_999_999_999], np.int64)) == [
        "1970-01-01T00:00:00.000Z",
        "2001-09-09T01:46:39.999Z",
    ]
