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
from xdp_ip_counter.layout import KEY_DTYPE, OUTCOMES, VALUE_DTYPE
from xdp_ip_counter.metrics import CLASSIC, OPENMETRICS, Exposition, View, ViewCollector
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


def sample_view(ports: PortFilter, **changes: object) -> View:
    entries = [
        (key("10.7.0.1", 22, 6), NOW - 5 * S),
        (key("10.7.0.1", 22, 6, ifindex=3), NOW - 3 * S),  # same source, second interface
        (key("10.7.0.2", 22, 6), NOW - 50 * S),
        (key("fd00:7::1", 22, 6), NOW - 1 * S),
        (key("10.7.0.3", 53, 17), NOW - 2 * S),
        (key("fd00:7::2", 8080, 6), NOW - 4 * S),
        (key("10.7.0.4", 22, 6), NOW - 61 * S),  # outside the window
    ]
    keys = np.array([k for k, _ in entries], KEY_DTYPE)
    values = np.array([(last - S, last, 2, 120) for _, last in entries], VALUE_DTYPE)
    stats = {name: 10 * index for index, name in enumerate(OUTCOMES)}
    snap = Snapshot(keys, values, NOW, WALL, stats, entries_in_map=len(keys), capacity=262144)
    settings = Settings(
        interfaces=("eth0", "eth1"), ports=ports, window=60, serve_ip_list=True, xdp_mode="native"
    )
    view = View(
        active=active_set(snap, 60, {2: "eth0", 3: "eth1"}),
        snapshot=snap,
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


def active_users(body: bytes) -> dict[tuple[str, str, str], float]:
    return {
        (dict(labels)["ip"], dict(labels)["proto"], dict(labels)["port"]): value
        for labels, value in samples(body, "active_users").items()
    }


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


def test_all_ports_shows_only_ports_that_were_hit() -> None:
    body, _ = render(sample_view(ALL), PROMETHEUS_ACCEPT)
    assert active_users(body) == {
        ("v4", "tcp", "22"): 2.0,  # 10.7.0.1 on two interfaces counts once; .4 is too old
        ("v6", "tcp", "22"): 1.0,
        ("v4", "udp", "53"): 1.0,
        ("v6", "tcp", "8080"): 1.0,
    }


def test_listed_ports_show_every_port_family_and_protocol() -> None:
    body, _ = render(sample_view(LISTED), PROMETHEUS_ACCEPT)
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
    assert active_users(body) == expected


def test_daemon_metrics() -> None:
    body, _ = render(sample_view(ALL), PROMETHEUS_ACCEPT)
    frames = samples(body, "xdp_ip_counter_frames_total")
    assert frames == {(("outcome", name),): 10.0 * i for i, name in enumerate(OUTCOMES)}
    single = {
        "xdp_ip_counter_map_entries": 7,
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
    assert (view.entries_in_map, view.capacity) == (7, 262144)
    assert view.stats["insert_failed"] == 10 * OUTCOMES.index("insert_failed")
    assert not any(isinstance(v, np.ndarray) for v in vars(view).values())
    failed = replace(view, refresh_failures=2)  # what the daemon does when a refresh fails
    assert (failed.entries_in_map, failed.capacity, failed.stats) == (7, 262144, view.stats)
    assert failed.active is view.active


def test_evictions_are_exported_as_a_counter() -> None:
    body, _ = render(sample_view(ALL, evictions=42), PROMETHEUS_ACCEPT)
    assert samples(body, "xdp_ip_counter_map_evictions_total") == {(): 42.0}
