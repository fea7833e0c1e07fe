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
    count_prefixes,
    count_window,
    find_scanners,
    format_addresses,
    prefix_map,
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
def test_count_window_counts_what_active_set_counts(interfaces: int) -> None:
    snap, ifnames = random_snapshot(interfaces, interfaces)
    lengths = ((4, 8), (4, 23), (4, 24), (6, 8), (6, 33), (6, 64), (6, 100), (6, 128))
    counted = count_window(snap, 60, lengths, 2)
    active = active_set(snap, 60, ifnames, lengths, 2)
    assert counted.sources.dtype == active.counts.dtype
    assert counted.sources.tolist() == active.counts.tolist()
    assert counted.rows == len(active)
    assert counted.prefixes.tolist() == active.prefixes.tolist()
    assert counted.scanners.tolist() == active.scanners.tolist()
    assert len(counted.prefixes) and len(counted.scanners)  # something to compare


def test_count_window_of_nothing_within_the_window() -> None:
    old = snapshot(entry("10.1.0.1", last=NOW - 61 * S, first=NOW - 62 * S))
    for snap in (old, snapshot()):
        counted = count_window(snap, 60, ((4, 24),), 1)
        assert (counted.sources.tolist(), counted.rows) == ([], 0)
        assert (counted.prefixes.tolist(), counted.scanners.tolist()) == ([], [])


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


def test_a_deferred_active_set_counts_prefixes_and_scanners_at_once() -> None:
    snap, ifnames = random_snapshot(9, 2)
    lengths = ((4, 24), (6, 48))
    active = active_set(snap, 60, ifnames, lengths, 3)
    deferred = DeferredActiveSet(snap, 60, ifnames, prefix_lengths=lengths, scan_ports=3)
    assert deferred.prefix_map() == active.prefix_map() != {}
    assert deferred.scanners.tolist() == active.scanners.tolist() != []
    resolved = deferred.resolve()  # the rows made later carry what was counted
    assert resolved.prefix_map() == active.prefix_map()
    assert resolved.scanners.tolist() == active.scanners.tolist()
    selected = resolved.select(ports=[22])  # counts of the selection; prefixes of the whole
    assert (len(selected.prefixes), len(selected.scanners)) == (0, 0)
    plain = DeferredActiveSet(snap, 60, ifnames)  # the daemon's default: neither
    assert (plain.prefix_map(), len(plain.scanners)) == ({}, 0)


# -- prefixes ---------------------------------------------------------------------------------

LENGTHS = ((4, 16), (4, 24), (4, 32), (6, 46), (6, 47), (6, 48), (6, 49), (6, 128))


def prefix_snapshot() -> Snapshot:
    return snapshot(
        entry("10.1.2.3"),
        entry("10.1.2.200"),
        entry("10.1.3.1", ifindex=2),
        entry("10.1.3.1", ifindex=3),  # the same source on another interface: once
        entry("10.1.4.4", last=NOW - 61 * S),  # outside the window
        entry("2001:db8:1::1"),
        entry("2001:db8:1:ffff::2"),
        entry("2001:db8:2::1", ifindex=3),
        entry("10.1.2.3", port=80, proto=17),
        entry("10.1.2.9", port=8, proto=1),  # ICMP echo request: the port is the type
    )


def test_prefix_counts_of_hand_made_sources() -> None:
    expected = {
        # 10.1.2.3, 10.1.2.200 and 10.1.3.1 on tcp/22: one /16, two /24s, three /32s
        (4, 6, 22, 16): 1,
        (4, 6, 22, 24): 2,
        (4, 6, 22, 32): 3,
        # 2001:db8:1::1, 2001:db8:1:ffff::2, 2001:db8:2::1: 2001:db8:1 and :2 part at bit 47
        (6, 6, 22, 46): 1,
        (6, 6, 22, 47): 2,
        (6, 6, 22, 48): 2,
        (6, 6, 22, 49): 3,  # ffff: the 49th bit is set
        (6, 6, 22, 128): 3,
        **{(4, 17, 80, length): 1 for length in (16, 24, 32)},
        **{(4, 1, 8, length): 1 for length in (16, 24, 32)},
    }
    snap = prefix_snapshot()
    assert prefix_map(count_window(snap, 60, LENGTHS).prefixes) == expected
    assert active_set(snap, 60, IFNAMES, LENGTHS).prefix_map() == expected
    assert DeferredActiveSet(snap, 60, IFNAMES, prefix_lengths=LENGTHS).prefix_map() == expected


def test_prefix_counts_are_sorted_like_the_counts() -> None:
    prefixes = count_window(prefix_snapshot(), 60, LENGTHS).prefixes
    columns = (prefixes[c].tolist() for c in ("port", "proto", "family", "length"))
    order = list(zip(*columns, strict=True))
    assert order == sorted(order)
    assert order[:3] == [(8, 1, 4, 16), (8, 1, 4, 24), (8, 1, 4, 32)]


def test_prefix_counts_only_of_the_lengths_asked() -> None:
    snap = prefix_snapshot()
    assert prefix_map(count_window(snap, 60, ((6, 48),)).prefixes) == {(6, 6, 22, 48): 2}
    assert prefix_map(count_window(snap, 60, ()).prefixes) == {}
    assert count_prefixes(np.zeros(0, KEY_DTYPE), LENGTHS).tolist() == []


def reference_prefixes(snap: Snapshot, lengths: tuple[tuple[int, int], ...]) -> dict:
    """Distinct networks per (family, proto, port, length), with ipaddress."""
    networks: dict[tuple[int, int, int, int], set] = {}
    inside = snap.values["last_seen"] >= NOW - 60 * S
    for key in snap.keys[inside].tolist():
        raw, _, port, proto, family = key
        address = ipaddress.IPv6Address(raw)
        if family == 4:
            address = address.ipv4_mapped
        for f, length in lengths:
            if f == family:
                network = ipaddress.ip_network(f"{address}/{length}", strict=False)
                networks.setdefault((family, proto, port, length), set()).add(network)
    return {label: len(found) for label, found in networks.items()}


@pytest.mark.parametrize("interfaces", [1, 3])
def test_prefix_counts_match_a_plain_python_reference(interfaces: int) -> None:
    """IPv6 prefixes up to 64 bits beside the group in one word, longer ones in two."""
    snap, _ = random_snapshot(20 + interfaces, interfaces)
    lengths = ((4, 1), (4, 8), (4, 23), (4, 24), (4, 31), (6, 8), (6, 33), (6, 64), (6, 100))
    lengths += ((6, 127), (6, 128))
    assert prefix_map(count_window(snap, 60, lengths).prefixes) == reference_prefixes(snap, lengths)


def test_prefix_counts_with_more_groups_than_a_radix_sort_takes() -> None:
    """70,000 (protocol, port) groups: 17 bits of group and a /32 do not fit three 16-bit
    passes; each group's sources counted all the same."""
    ports = np.arange(35_000)
    entries = [entry("10.2.0.1", port=int(p), proto=proto) for p in ports for proto in (6, 17)]
    entries += [entry("10.2.0.2", port=7, proto=6), entry("10.2.1.2", port=7, proto=6)]
    lengths = ((4, 24), (4, 32))
    counted = prefix_map(count_window(snapshot(*entries), 60, lengths).prefixes)
    assert len(counted) == 70_000 * 2
    assert counted[(4, 6, 7, 24)] == 2  # 10.2.0.1, 10.2.0.2 | 10.2.1.2
    assert counted[(4, 6, 7, 32)] == 3
    assert counted[(4, 17, 7, 32)] == 1
    assert {n for label, n in counted.items() if label[2] != 7} == {1}


# -- scanners ---------------------------------------------------------------------------------


def scanners_of(found: np.ndarray) -> list[tuple[str, int]]:
    return list(zip(format_addresses(found), found["ports"].tolist(), strict=True))


def tried(ip: str, *ports: int, proto: int = 6, **fields: int) -> list[tuple[tuple, tuple]]:
    return [entry(ip, port=port, proto=proto, **fields) for port in ports]


def scan_snapshot() -> Snapshot:
    return snapshot(
        *tried("10.3.0.1", 1, 2, 3, 4, 5),  # exactly 5 ports
        *tried("10.3.0.2", 1, 2, 3, 4),  # one fewer
        *tried("10.3.0.3", 1, 2, 3, 4),
        *tried("10.3.0.3", *range(10), proto=1),  # and ten ICMP types: not ports
        *tried("10.3.0.4", 22, 23, 24, 25),
        *tried("10.3.0.4", 22, proto=17),  # the same port over UDP: one port
        *tried("10.3.0.5", 22, 23, 24, ifindex=2),
        *tried("10.3.0.5", 22, 25, 26, ifindex=3),  # across interfaces: 22 once, 5 ports
        *tried("10.3.0.6", 1, 2, 3, 4),
        *tried("10.3.0.6", 5, last=NOW - 61 * S),  # its 5th port left the window
        *tried("fd00:3::1", 1, proto=132),  # sctp, udplite, dccp, tcp and udp together
        *tried("fd00:3::1", 2, proto=136),
        *tried("fd00:3::1", 3, proto=33),
        *tried("fd00:3::1", 4, proto=6),
        *tried("fd00:3::1", 5, 6, proto=17),
        *tried("fd00:3::2", *range(128, 140), proto=58),  # ICMPv6 types
        *tried("::ffff:10.3.0.7", 1, 2, 3),  # an IPv6 header's mapped address ...
        *tried("10.3.0.7", 4, 5, 6),  # ... is not this IPv4 source
    )


@pytest.mark.parametrize("interfaces", ["rows", "keys"])
def test_scanners_at_the_threshold(interfaces: str) -> None:
    snap = scan_snapshot()

    def found(scan_ports: int) -> list[tuple[str, int]]:
        if interfaces == "keys":
            return scanners_of(count_window(snap, 60, (), scan_ports).scanners)
        return scanners_of(active_set(snap, 60, IFNAMES, (), scan_ports).scanners)

    # By ports descending, then v4 before v6, then address.
    assert found(5) == [("fd00:3::1", 6), ("10.3.0.1", 5), ("10.3.0.5", 5)]
    assert found(6) == [("fd00:3::1", 6)]
    assert found(7) == []
    assert found(4) == [
        ("fd00:3::1", 6),
        ("10.3.0.1", 5),
        ("10.3.0.5", 5),
        ("10.3.0.2", 4),
        ("10.3.0.3", 4),
        ("10.3.0.4", 4),
        ("10.3.0.6", 4),
    ]
    assert ("10.3.0.7", 3) in found(3)
    assert ("::ffff:10.3.0.7", 3) in found(3)
    assert found(0) == []


def test_scanners_are_in_numeric_address_order() -> None:
    snap = snapshot(
        *tried("10.4.0.10", 1, 2),
        *tried("10.4.0.9", 1, 2),
        *tried("2001:db8::10", 1, 2),
        *tried("2001:db8::9", 1, 2),
        *tried("10.4.0.200", 1, 2, 3),
    )
    assert scanners_of(find_scanners(snap.keys, 2)) == [
        ("10.4.0.200", 3),
        ("10.4.0.9", 2),
        ("10.4.0.10", 2),
        ("2001:db8::9", 2),
        ("2001:db8::10", 2),
    ]


def reference_scanners(snap: Snapshot, scan_ports: int) -> list[tuple[str, int]]:
    ports: dict[tuple[int, bytes], set[int]] = {}
    inside = snap.values["last_seen"] >= NOW - 60 * S
    for raw, _, port, proto, family in snap.keys[inside].tolist():
        if proto in (6, 17, 132, 136, 33):
            ports.setdefault((family, raw), set()).add(port)
    found = [(family, raw, len(p)) for (family, raw), p in ports.items() if len(p) >= scan_ports]
    found.sort(key=lambda item: (-item[2], item[0], item[1]))
    rows = np.zeros(len(found), KEY_DTYPE)
    rows["addr"] = [raw for _, raw, _ in found]
    rows["family"] = [family for family, _, _ in found]
    return list(zip(format_addresses(rows), [n for _, _, n in found], strict=True))


@pytest.mark.parametrize("scan_ports", [1, 2, 3, 4])
def test_scanners_match_a_plain_python_reference(scan_ports: int) -> None:
    snap, _ = random_snapshot(30 + scan_ports, 3)
    expected = reference_scanners(snap, scan_ports)
    assert expected  # random_snapshot's sources try up to four ports
    assert scanners_of(count_window(snap, 60, (), scan_ports).scanners) == expected


def test_many_sources_few_ports_are_no_scanners() -> None:
    """A flood of sources with a port each: the buckets of the pre-count hold about two rows,
    so none is compared exactly; one scanner among them is found."""
    count = 50_000
    keys = np.zeros(count + 10, KEY_DTYPE)
    raw = np.zeros((count + 10, 16), np.uint8)
    raw[:, 10:12] = 0xFF
    raw[:count, 12:16] = (np.arange(count, dtype=">u4") + 0x0A050000).view(np.uint8).reshape(-1, 4)
    raw[count:, 12:16] = (10, 6, 0, 1)
    keys["addr"] = raw.view("V16").ravel()
    keys["ifindex"], keys["proto"], keys["family"] = 2, 6, 4
    keys["port"][:count] = 443
    keys["port"][count:] = np.arange(10)
    values = np.zeros(len(keys), VALUE_DTYPE)
    values["last_seen"] = NOW
    found = find_scanners(Snapshot(keys, values, NOW, WALL).keys, 10)
    assert scanners_of(found) == [("10.6.0.1", 10)]


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
