"""metrics.py: the exposition of a View, against golden files and promtool.

UPDATE_GOLDEN=1 rewrites the golden files (tests/unit/fixtures/) from the current output; review
the diff before committing it.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_classic

from tests.conftest import assert_golden
from xdp_ip_counter.config import PortFilter, Settings
from xdp_ip_counter.layout import HLL_P, KEY_DTYPE, OTHER_SKETCH_IDS, OUTCOMES, VALUE_DTYPE
from xdp_ip_counter.metrics import CLASSIC, OPENMETRICS, Exposition, View, ViewCollector
from xdp_ip_counter.sketch import (
    FLEET_P,
    SketchCounts,
    SketchPlan,
    SketchUnion,
    address_hash,
    address_words,
    estimate_classic,
    registers,
    relative_standard_error,
)
from xdp_ip_counter.window import Snapshot, active_set

FIXTURES = Path(__file__).parent / "fixtures"
S = 1_000_000_000
NOW = 7200 * S
WALL = 1714564800.0  # 2024-05-01T12:00:00Z
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def key(ip: str, port: int, proto: int, ifindex: int = 2) -> tuple:
    address = ipaddress.ip_address(ip)
    raw = ipaddress.IPv6Address(f"::ffff:{ip}").packed if address.version == 4 else address.packed
    return (raw, ifindex, port, proto, address.version)


# Sources within the window, by (family, protocol, port): what the sketches saw of the table.
IN_WINDOW = {
    (4, 6, 22): ["10.7.0.1", "10.7.0.2"],
    (6, 6, 22): ["fd00:7::1"],
    (4, 17, 53): ["10.7.0.3"],
    (6, 6, 8080): ["fd00:7::2"],
    (4, 1, 8): ["10.7.0.5"],  # ICMP echo request: the port is the ICMP type
}
# The sample's protocols: TCP, UDP, ICMP and ICMPv6 (with the default ICMP types, echo
# requests: icmp 8 and icmpv6 128).
PROTOCOLS = (6, 17, 1, 58)
# Sources of v4 tcp/22 that the table gave up (a flood): only its sketch counts them.
LOST = [f"10.9.{n >> 8}.{n & 255}" for n in range(1000)]


def sample_sketches(
    ports: PortFilter, fleet_ports: tuple[int, ...] = (), lost: list[str] = LOST
) -> SketchCounts:
    """The window's sketches of sample_view: each (family, protocol, port) saw the sources the
    table holds within the window, and v4 tcp/22 also `lost` (its sketch, or with all ports its
    (family, protocol)'s "other ports" sketch, says it lost them)."""
    plan = SketchPlan.initial(ports.ports, fleet_ports)
    union = SketchUnion(
        np.zeros((plan.sketches, 1 << HLL_P), np.uint8), np.zeros(plan.sketches, np.uint64)
    )
    seen = {**IN_WINDOW, (4, 6, 22): IN_WINDOW[(4, 6, 22)] + lost}
    for (family, proto, port), sources in seen.items():
        sketch = plan.sketch_id(family, proto, port)
        sketch = OTHER_SKETCH_IDS[(family, proto)] if sketch is None else sketch
        words = np.array([address_words(source) for source in sources], np.uint64)
        hashes = address_hash(words[:, 0], words[:, 1])
        np.maximum(union.registers[sketch], registers(hashes), out=union.registers[sketch])
        if (family, proto, port) == (4, 6, 22):
            union.lost[sketch] = len(lost)
    return SketchCounts.of(union, plan, fleet_ports)


def sample_view(
    ports: PortFilter,
    fleet_ports: tuple[int, ...] = (),
    settings: Settings | None = None,
    **changes: object,
) -> View:
    """The sample's View; `settings` replace the sample's (ports and fleet_ports apart), and
    its prefixes and scanners are counted by them."""
    entries = [
        (key("10.7.0.1", 22, 6), NOW - 5 * S),
        (key("10.7.0.1", 22, 6, ifindex=3), NOW - 3 * S),  # same source, second interface
        (key("10.7.0.2", 22, 6), NOW - 50 * S),
        (key("fd00:7::1", 22, 6), NOW - 1 * S),
        (key("10.7.0.3", 53, 17), NOW - 2 * S),
        (key("fd00:7::2", 8080, 6), NOW - 4 * S),
        (key("10.7.0.4", 22, 6), NOW - 61 * S),  # outside the window
        (key("10.7.0.5", 8, 1), NOW - 7 * S),  # ICMP echo request (type 8)
    ]
    keys = np.array([k for k, _ in entries], KEY_DTYPE)
    values = np.array([(last - S, last, 2, 120) for _, last in entries], VALUE_DTYPE)
    stats = {name: 10 * index for index, name in enumerate(OUTCOMES)}
    snap = Snapshot(keys, values, NOW, WALL, stats, entries_in_map=len(keys), capacity=262144)
    base = Settings(
        interfaces=("eth0", "eth1"),
        ports=ports,
        window=60,
        fleet_ports=fleet_ports,
        serve_ip_list=True,
        xdp_mode="native",
        protocols=PROTOCOLS,
    )
    settings = replace(settings, ports=ports, fleet_ports=fleet_ports) if settings else base
    view = View(
        active=active_set(
            snap, 60, {2: "eth0", 3: "eth1"}, settings.prefix_lengths, settings.scan_ports
        ),
        snapshot=snap,
        sketches=sample_sketches(ports, fleet_ports),
        settings=settings,
        last_refresh_time=WALL,
        refresh_duration=0.125,
        refresh_failures=1,
        reload_successful=False,
        reload_time=WALL - 3600,
        version="0.0.0-test",
    )
    return replace(view, **changes) if changes else view


ALL = PortFilter.all()
LISTED = PortFilter.of([22, 53, 443])


def render(view: View, accept: str | None, process_metrics: bool = False) -> tuple[bytes, str]:
    return Exposition(process_metrics=process_metrics).render(view, accept)


def samples(body: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    parse = parse_om if body.endswith(b"# EOF\n") else parse_classic
    for family in parse(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def active_users(body: bytes, name: str = "active_users") -> dict[tuple[str, str, str], float]:
    return {
        (dict(labels)["ip"], dict(labels)["proto"], dict(labels)["port"]): value
        for labels, value in samples(body, name).items()
    }


def within(value: float, truth: int) -> bool:
    """Within 4 standard errors of the kernel's p = 14 sketch."""
    return abs(value - truth) <= max(1.0, 4 * relative_standard_error(HLL_P) * truth)


# -- golden files ---------------------------------------------------------------------------


@pytest.mark.parametrize(("ports", "label"), [(ALL, "all_ports"), (LISTED, "listed_ports")])
def test_classic_text_matches_golden(ports: PortFilter, label: str) -> None:
    body, content_type = render(sample_view(ports), "text/plain")
    assert content_type == CLASSIC
    assert_golden(FIXTURES / f"metrics_{label}.txt", body)


@pytest.mark.parametrize(("ports", "label"), [(ALL, "all_ports"), (LISTED, "listed_ports")])
def test_openmetrics_matches_golden(ports: PortFilter, label: str) -> None:
    body, content_type = render(sample_view(ports), PROMETHEUS_ACCEPT)
    assert content_type == OPENMETRICS
    assert body.endswith(b"# EOF\n")
    assert_golden(FIXTURES / f"metrics_{label}.om.txt", body)


# -- what the metrics say -------------------------------------------------------------------


def test_all_ports_shows_only_ports_that_were_hit_and_every_icmp_type() -> None:
    body, _ = render(sample_view(ALL), PROMETHEUS_ACCEPT)
    assert active_users(body) == {
        ("v4", "tcp", "22"): 2.0,  # 10.7.0.1 on two interfaces counts once; .4 is too old
        ("v6", "tcp", "22"): 1.0,
        ("v4", "udp", "53"): 1.0,
        ("v6", "tcp", "8080"): 1.0,
        ("v4", "icmp", "8"): 1.0,
        ("v6", "icmpv6", "128"): 0.0,  # ICMP types are a finite list: always shown
    }


def test_listed_ports_show_every_port_family_and_protocol() -> None:
    body, _ = render(sample_view(LISTED, sketches=None), PROMETHEUS_ACCEPT)  # the table's counts
    expected = {
        (family, proto, str(port)): 0.0
        for port in (22, 53, 443)
        for proto in ("tcp", "udp")
        for family in ("v4", "v6")
    }
    expected[("v4", "tcp", "22")] = 2.0
    expected[("v6", "tcp", "22")] = 1.0
    expected[("v4", "udp", "53")] = 1.0
    # 8080 is not watched (any more), but was hit within the window: still shown.
    expected[("v6", "tcp", "8080")] = 1.0
    # ICMP only in IPv4 and ICMPv6 only in IPv6, each with its listed types.
    expected[("v4", "icmp", "8")] = 1.0
    expected[("v6", "icmpv6", "128")] = 0.0
    assert active_users(body) == expected


def test_daemon_metrics() -> None:
    body, _ = render(sample_view(ALL), PROMETHEUS_ACCEPT)
    frames = samples(body, "xdp_ip_counter_frames_total")
    assert frames == {(("outcome", name),): 10.0 * i for i, name in enumerate(OUTCOMES)}
    single = {
        "xdp_ip_counter_map_entries": 8,
        "xdp_ip_counter_map_capacity": 262144,
        "xdp_ip_counter_insert_failures_total": 10 * OUTCOMES.index("insert_failed"),
        "xdp_ip_counter_window_seconds": 60,
        "xdp_ip_counter_last_refresh_timestamp_seconds": WALL,
        "xdp_ip_counter_refresh_duration_seconds": 0.125,
        "xdp_ip_counter_refresh_failures_total": 1,
        "xdp_ip_counter_config_last_reload_successful": 0,
        "xdp_ip_counter_config_last_reload_success_timestamp_seconds": WALL - 3600,
    }
    for name, value in single.items():
        assert samples(body, name) == {(): value}, name
    assert samples(body, "xdp_ip_counter_build_info") == {
        (("interfaces", "eth0,eth1"), ("version", "0.0.0-test"), ("xdp_mode", "native")): 1.0
    }


def sample_settings(**changes: object) -> Settings:
    """The sample's settings (protocols TCP, UDP, ICMP and ICMPv6) with changes."""
    return replace(sample_view(ALL).settings, **changes)


def test_zero_filling_follows_the_chosen_protocols_and_icmp_types() -> None:
    """Only TCP and ICMPv6 chosen (types 128 and 129), ports 22 and 53 listed: TCP's listed
    ports and ICMPv6's types are shown, in the families they are recorded in; UDP/53 and ICMP/8
    (no longer chosen after a reload) stay while their sources are in the window."""
    settings = sample_settings(protocols=(6, 58), icmp_types=((1, 8), (58, 128), (58, 129)))
    view = sample_view(PortFilter.of([22, 53]), settings=settings, sketches=None)
    assert active_users(render(view, PROMETHEUS_ACCEPT)[0]) == {
        ("v4", "tcp", "22"): 2.0,
        ("v6", "tcp", "22"): 1.0,
        ("v4", "tcp", "53"): 0.0,
        ("v6", "tcp", "53"): 0.0,
        ("v4", "udp", "53"): 1.0,  # hit, UDP not chosen
        ("v6", "tcp", "8080"): 1.0,  # hit, not listed
        ("v4", "icmp", "8"): 1.0,  # hit, ICMP not chosen: its type 8 is not zero-filled
        ("v6", "icmpv6", "128"): 0.0,
        ("v6", "icmpv6", "129"): 0.0,
    }


@pytest.mark.parametrize("ports", [LISTED, ALL])
def test_the_other_port_protocols_are_zero_filled_like_tcp(ports: PortFilter) -> None:
    settings = sample_settings(protocols=(132, 136, 33))  # sctp, udplite, dccp
    view = sample_view(ports, settings=settings, sketches=None)
    shown = active_users(render(view, PROMETHEUS_ACCEPT)[0])
    hits = {("v4", "tcp", "22"), ("v6", "tcp", "22"), ("v4", "udp", "53")}
    hits |= {("v6", "tcp", "8080"), ("v4", "icmp", "8")}
    zero_filled = {
        (family, proto, str(port))
        for port in (22, 53, 443)
        for proto in ("sctp", "udplite", "dccp")
        for family in ("v4", "v6")
    }
    assert set(shown) == (hits | zero_filled if ports is LISTED else hits)
    assert {label for label, value in shown.items() if value} == hits


def test_other_ports_are_shown_for_the_chosen_protocols() -> None:
    """And for a protocol no longer chosen while its sketch saw sources in the window."""
    settings = sample_settings(protocols=(6, 58))
    body, _ = render(sample_view(ALL, settings=settings), PROMETHEUS_ACCEPT)
    assert set(other_ports(body)) == {
        ("v4", "tcp"),
        ("v6", "tcp"),
        ("v6", "icmpv6"),
        ("v4", "udp"),  # 10.7.0.3 on 53
        ("v4", "icmp"),  # 10.7.0.5
    }
    assert other_ports(body)[("v6", "icmpv6")] == 0.0
    assert other_ports(body)[("v4", "icmp")] == 1.0


def test_help_says_the_port_of_icmp_is_its_type() -> None:
    body, _ = render(sample_view(ALL), None)
    for name in ("active_users", "active_prefixes"):
        [line] = [x for x in body.decode().splitlines() if x.startswith(f"# HELP {name} ")]
        assert "(for icmp and icmpv6: the ICMP type)" in line


def prefixes_of(body: bytes) -> dict[tuple[str, str, str, str], float]:
    return {
        (label["ip"], label["proto"], label["port"], label["len"]): value
        for label, value in (
            (dict(labels), value) for labels, value in samples(body, "active_prefixes").items()
        )
    }


def test_active_prefixes_per_length_zero_filled_like_active_users() -> None:
    lengths = ((4, 16), (4, 24), (4, 32), (6, 48), (6, 64))
    view = sample_view(LISTED, settings=sample_settings(prefix_lengths=lengths))
    body, _ = render(view, PROMETHEUS_ACCEPT)
    users = active_users(body)
    found = prefixes_of(body)
    assert set(found) == {
        (ip, proto, port, str(length))
        for ip, proto, port in users
        for family, length in lengths
        if ip == f"v{family}"
    }
    nonzero = {label: value for label, value in found.items() if value}
    assert nonzero == {
        # 10.7.0.1 and 10.7.0.2: one /16, one /24, two /32
        ("v4", "tcp", "22", "16"): 1.0,
        ("v4", "tcp", "22", "24"): 1.0,
        ("v4", "tcp", "22", "32"): 2.0,
        ("v6", "tcp", "22", "48"): 1.0,
        ("v6", "tcp", "22", "64"): 1.0,
        ("v4", "udp", "53", "16"): 1.0,
        ("v4", "udp", "53", "24"): 1.0,
        ("v4", "udp", "53", "32"): 1.0,
        ("v6", "tcp", "8080", "48"): 1.0,
        ("v6", "tcp", "8080", "64"): 1.0,
        ("v4", "icmp", "8", "16"): 1.0,
        ("v4", "icmp", "8", "24"): 1.0,
        ("v4", "icmp", "8", "32"): 1.0,
    }


def test_no_prefix_lengths_no_active_prefixes() -> None:
    view = sample_view(ALL, settings=sample_settings(prefix_lengths=()))
    assert b"active_prefixes" not in render(view, None)[0]
    only_v6 = sample_view(ALL, settings=sample_settings(prefix_lengths=((6, 56),)))
    assert {label[0] for label in prefixes_of(render(only_v6, None)[0])} == {"v6"}


def scanning(body: bytes) -> dict[str, float]:
    return {
        dict(labels)["ip"]: value for labels, value in samples(body, "scanning_sources").items()
    }


@pytest.mark.parametrize(
    ("scan_ports", "expected"),
    [
        # Every source with a port: 10.7.0.1-3 (not .4, too old; not .5, ICMP), fd00:7::1, ::2.
        (1, {"v4": 3.0, "v6": 2.0}),
        (2, {"v4": 0.0, "v6": 0.0}),  # both families always there
        (10, {"v4": 0.0, "v6": 0.0}),
    ],
)
def test_scanning_sources(scan_ports: int, expected: dict[str, float]) -> None:
    view = sample_view(ALL, settings=sample_settings(scan_ports=scan_ports))
    for accept in (None, PROMETHEUS_ACCEPT):
        assert scanning(render(view, accept)[0]) == expected


def test_no_scanning_sources_when_scan_ports_is_0() -> None:
    view = sample_view(ALL, settings=sample_settings(scan_ports=0))
    assert b"scanning_sources" not in render(view, None)[0]


def test_reload_success_is_one() -> None:
    body, _ = render(sample_view(ALL, reload_successful=True), PROMETHEUS_ACCEPT)
    assert samples(body, "xdp_ip_counter_config_last_reload_successful") == {(): 1.0}


# -- formats, caching, process metrics ------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, CLASSIC),
        ("", CLASSIC),
        ("*/*", CLASSIC),
        ("text/plain;version=0.0.4", CLASSIC),
        (PROMETHEUS_ACCEPT, OPENMETRICS),
        ("application/openmetrics-text", OPENMETRICS),
    ],
)
def test_format_follows_accept(accept: str | None, content_type: str) -> None:
    assert render(sample_view(ALL), accept)[1] == content_type


def test_cache_serves_the_current_view() -> None:
    exposition = Exposition(process_metrics=False)
    first = sample_view(ALL)
    body_first, _ = exposition.render(first, None)
    assert exposition.render(first, None)[0] == body_first
    second = replace(first, refresh_failures=5)
    body_second, _ = exposition.render(second, None)
    assert samples(body_second, "xdp_ip_counter_refresh_failures_total") == {(): 5.0}
    # Both formats of the same view come from the cache independently.
    assert exposition.render(second, PROMETHEUS_ACCEPT)[0].endswith(b"# EOF\n")
    assert exposition.render(second, None)[0] == body_second


@pytest.mark.parametrize("accept", [None, PROMETHEUS_ACCEPT])
def test_process_metrics_are_appended(accept: str | None) -> None:
    body, _ = render(sample_view(ALL), accept, process_metrics=True)
    assert b"\nprocess_resident_memory_bytes " in body
    assert body.count(b"# EOF") == (1 if accept else 0)
    without, _ = render(sample_view(ALL), accept, process_metrics=False)
    assert body.startswith(without.removesuffix(b"# EOF\n"))


def test_collector_registers_in_a_registry() -> None:
    current: list[View | None] = [None]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ViewCollector(lambda: current[0]))
    assert generate_latest(registry) == b""  # no refresh yet: nothing
    current[0] = sample_view(ALL)
    assert b"active_users{" in generate_latest(registry)


# -- promtool -------------------------------------------------------------------------------

# The required prefix contains "_counter_", which promtool's lint reads as the metric type in the
# name. That one finding, for our own prefix, is expected; anything else fails the test.
_PREFIX_FINDING = re.compile(r"xdp_ip_counter_\w+ metric name should not include type 'counter'")


@pytest.mark.parametrize("ports", [ALL, LISTED])
def test_promtool_check_metrics(ports: PortFilter, require: Callable[[object, str], None]) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    require(Path(promtool).exists(), "promtool not found (Debian package 'prometheus')")
    body, _ = render(sample_view(ports), None, process_metrics=True)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    findings = (result.stdout + result.stderr).decode().splitlines()
    unexpected = [line for line in findings if line and not _PREFIX_FINDING.fullmatch(line)]
    assert result.returncode in (0, 3), findings  # 3: lint findings only, 1: unparsable
    assert unexpected == []
    if result.returncode == 3:
        assert findings, "promtool reported lint problems without naming them"


def test_view_keeps_the_snapshot_summary_not_its_arrays() -> None:
    view = sample_view(ALL)
    assert (view.entries_in_map, view.capacity) == (8, 262144)
    assert view.stats["insert_failed"] == 10 * OUTCOMES.index("insert_failed")
    assert not any(isinstance(v, np.ndarray) for v in vars(view).values())
    failed = replace(view, refresh_failures=2)  # what the daemon does when a refresh fails
    assert (failed.entries_in_map, failed.capacity, failed.stats) == (8, 262144, view.stats)
    assert failed.active is view.active


def test_evictions_are_exported_as_a_counter() -> None:
    body, _ = render(sample_view(ALL, evictions=42), PROMETHEUS_ACCEPT)
    assert samples(body, "xdp_ip_counter_map_evictions_total") == {(): 42.0}


# -- past the table's capacity: the sketches ------------------------------------------------


def exactness(body: bytes) -> dict[tuple[str, str, str], float]:
    return active_users(body, "active_users_exact")


def test_a_lossy_port_shows_its_sketchs_estimate_and_is_not_exact() -> None:
    body, _ = render(sample_view(LISTED), PROMETHEUS_ACCEPT)
    users, exact = active_users(body), exactness(body)
    # v4 tcp/22 lost sources from the table: its sketch saw the 2 the table holds and 1000 more.
    assert within(users[("v4", "tcp", "22")], 1002)
    assert users[("v4", "tcp", "22")] == round(users[("v4", "tcp", "22")])
    assert exact[("v4", "tcp", "22")] == 0.0
    # Everything else is the table's exact count.
    exact_counts = active_users(render(sample_view(LISTED, sketches=None), None)[0])
    del exact_counts[("v4", "tcp", "22")]
    assert {label: users[label] for label in exact_counts} == exact_counts
    assert set(exact) == set(users)
    assert {label for label, value in exact.items() if value != 1.0} == {("v4", "tcp", "22")}


def test_a_lossy_port_never_shows_less_than_the_table_holds() -> None:
    """An estimate below the table's count (its error, or registers lost to a race) is not
    shown: the table's sources were all seen."""
    view = sample_view(LISTED)
    assert view.sketches is not None
    low = replace(
        view.sketches, estimates={**view.sketches.estimates, (4, 6, 22): 1.4, (6, 6, 22): 0.0}
    )
    body, _ = render(replace(view, sketches=low), PROMETHEUS_ACCEPT)
    assert active_users(body)[("v4", "tcp", "22")] == 2.0  # the table's count
    assert exactness(body)[("v4", "tcp", "22")] == 0.0
    assert active_users(body)[("v6", "tcp", "22")] == 1.0  # exact: the estimate is not used


def test_a_port_without_a_sketch_of_its_own_shows_the_lower_bound() -> None:
    """With all ports watched no port has a sketch of its own: v4 tcp/22 lost sources to the
    v4 tcp "other ports" sketch, so every v4 tcp port shows the table's count, a lower bound,
    with active_users_exact 0; active_users_other_ports has the estimate. ICMP types never
    have a sketch of their own."""
    body, _ = render(sample_view(ALL), PROMETHEUS_ACCEPT)
    assert active_users(body)[("v4", "tcp", "22")] == 2.0
    assert exactness(body) == {
        ("v4", "tcp", "22"): 0.0,
        ("v6", "tcp", "22"): 1.0,
        ("v4", "udp", "53"): 1.0,
        ("v6", "tcp", "8080"): 1.0,
        ("v4", "icmp", "8"): 1.0,
        ("v6", "icmpv6", "128"): 1.0,
    }
    assert other_ports(body) == {
        ("v4", "tcp"): other_ports(body)[("v4", "tcp")],
        ("v6", "tcp"): 2.0,  # fd00:7::1 on 22 and fd00:7::2 on 8080
        ("v4", "udp"): 1.0,
        ("v6", "udp"): 0.0,
        ("v4", "icmp"): 1.0,
        ("v6", "icmpv6"): 0.0,
    }
    assert within(other_ports(body)[("v4", "tcp")], 1002)


def other_ports(body: bytes) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["ip"], dict(labels)["proto"]): value
        for labels, value in samples(body, "active_users_other_ports").items()
    }


def test_without_sketches_every_count_is_exact_and_there_is_no_estimate() -> None:
    body, _ = render(sample_view(ALL, sketches=None), PROMETHEUS_ACCEPT)
    assert set(exactness(body).values()) == {1.0}
    assert set(exactness(body)) == set(active_users(body))
    assert b"active_users_other_ports" not in body
    assert b"active_users_hll_register" not in body


def registers_of(body: bytes) -> dict[tuple[str, str, str], list[float]]:
    found: dict[tuple[str, str, str], dict[int, float]] = {}
    for labels, value in samples(body, "active_users_hll_register").items():
        label = dict(labels)
        series = found.setdefault((label["ip"], label["proto"], label["port"]), {})
        series[int(label["register"])] = value
    for series in found.values():
        assert sorted(series) == list(range(len(series)))
    return {label: [series[i] for i in range(len(series))] for label, series in found.items()}


@pytest.mark.parametrize("accept", [None, PROMETHEUS_ACCEPT])
def test_fleet_ports_export_their_registers(accept: str | None) -> None:
    """53 is a fleet port: its v4 udp sketch (the only one of 53 that saw a source) is
    exported at p = 12, register by register; 22 is not a fleet port."""
    body, _ = render(sample_view(LISTED, fleet_ports=(53,)), accept)
    exported = registers_of(body)
    assert set(exported) == {("v4", "udp", "53")}
    words = np.array([address_words("10.7.0.3")], np.uint64)
    expected = registers(address_hash(words[:, 0], words[:, 1]), FLEET_P)
    assert exported[("v4", "udp", "53")] == expected.astype(float).tolist()
    assert len(exported[("v4", "udp", "53")]) == 4096
    assert estimate_classic(np.array(exported[("v4", "udp", "53")])) == pytest.approx(1, abs=0.01)


def test_the_registers_of_a_lossy_fleet_port_estimate_its_sources() -> None:
    body, _ = render(sample_view(LISTED, fleet_ports=(22, 53)), None)
    exported = registers_of(body)
    assert set(exported) == {("v4", "tcp", "22"), ("v6", "tcp", "22"), ("v4", "udp", "53")}
    union = estimate_classic(np.array(exported[("v4", "tcp", "22")]))
    assert abs(union - 1002) <= 4 * relative_standard_error(FLEET_P) * 1002


def test_promtool_accepts_the_fleet_registers(require: Callable[[object, str], None]) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    require(Path(promtool).exists(), "promtool not found (Debian package 'prometheus')")
    body, _ = render(sample_view(LISTED, fleet_ports=(22, 53)), None)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    findings = (result.stdout + result.stderr).decode().splitlines()
    assert [line for line in findings if line and not _PREFIX_FINDING.fullmatch(line)] == []
    assert result.returncode in (0, 3), findings
