"""The Prometheus exposition: a custom collector over the View the daemon swaps in per refresh.

The collector never touches the kernel: everything it reports was computed by the refresh and is
frozen in a View. Because a View never changes, its exposition is rendered once per format and
served from a cache until the daemon swaps in the next one, so a scrape costs a dictionary lookup
however many series there are.

The process metrics of prometheus_client (``process_resident_memory_bytes``, CPU seconds, open
file descriptors, start time) are included by default: they are what an operator watches to see
the daemon's own cost. They change on every scrape, so they are rendered fresh from a separate
registry and appended to the cached part; the golden-file tests render without them, which keeps
the golden files byte-for-byte deterministic.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import InitVar, dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client import exposition as classic
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics

from xdp_ip_counter import __version__
from xdp_ip_counter.config import Settings
from xdp_ip_counter.layout import FAMILIES, ICMP_PROTOCOLS, OUTCOMES, protocol_families
from xdp_ip_counter.sketch import SketchCounts
from xdp_ip_counter.window import (
    ActiveSet,
    DeferredActiveSet,
    Snapshot,
    family_name,
    protocol_name,
)

PREFIX = "xdp_ip_counter_"


@dataclass(frozen=True, eq=False)
class View:
    """Everything /, /metrics and /list serve, as of one refresh. Swapped whole, never changed.

    Built as ``View(active=..., snapshot=..., settings=..., last_refresh_time=..., ...)``. Of the
    snapshot it keeps only the summary (stats, entries, capacity); the arrays are held by a
    DeferredActiveSet until /list asks for rows, which frees them. ``dataclasses.replace()``
    works without the snapshot (e.g. to count a failed refresh): the summary is carried over.
    """

    active: ActiveSet | DeferredActiveSet  # the daemon's rows are made when /list asks
    settings: Settings  # the settings in force for this refresh (ports, interfaces, window, ...)
    last_refresh_time: float  # wall clock (s since the epoch) of the refresh's snapshot
    snapshot: InitVar[Snapshot | None] = None  # sets stats, entries_in_map and capacity
    refresh_duration: float = 0.0  # s the refresh took (read, window, expiry)
    refresh_failures: int = 0  # refreshes that failed since start
    reload_successful: bool = True  # the last configuration (re)load was applied
    reload_time: float = 0.0  # wall clock of the last successful (re)load (start-up counts)
    version: str = __version__
    stats: Mapping[str, int] = field(default_factory=dict)  # outcome -> frames, all CPUs
    entries_in_map: int = 0
    capacity: int = 0
    evictions: int = 0  # live entries the kernel gave up for new ones since start
    sketches: SketchCounts | None = None  # the window's sketches; None: exact counts only

    def __post_init__(self, snapshot: Snapshot | None) -> None:
        if snapshot is not None:
            object.__setattr__(self, "stats", dict(snapshot.stats))
            object.__setattr__(self, "entries_in_map", snapshot.entries_in_map)
            object.__setattr__(self, "capacity", snapshot.capacity)


class ViewCollector:
    """prometheus_client collector over whatever View ``get_view`` returns (None: nothing yet)."""

    def __init__(self, get_view: Callable[[], View | None]) -> None:
        self._get_view = get_view

    def collect(self) -> Iterator[Metric]:
        view = self._get_view()
        if view is None:
            return
        yield from metric_families(view)


def metric_families(view: View) -> Iterator[Metric]:
    """The metrics of one View, in a fixed order with samples in a fixed order."""
    shown = _shown_counts(view)
    yield from _active_users(view, shown)
    if view.settings.prefix_lengths:
        yield _active_prefixes(view, shown)
    if view.settings.scan_ports:
        yield _scanning_sources(view)

    frames = CounterMetricFamily(
        PREFIX + "frames",
        "Frames seen by the XDP program, by outcome (every frame counts once; all are passed on)",
        labels=["outcome"],
    )
    for outcome in OUTCOMES:  # the kernel's order, documented in layout.py
        frames.add_metric([outcome], view.stats.get(outcome, 0))
    yield frames

    yield _gauge(
        "map_entries",
        "Entries of the kernel sources table seen within the window at the last refresh",
        view.entries_in_map,
    )
    yield _gauge(
        "map_capacity",
        "Sources the kernel table holds exactly (max_entries; it has 1.5 slots for each)",
        view.capacity,
    )
    yield CounterMetricFamily(
        PREFIX + "insert_failures",
        "New sources the kernel table could not take (counted in the sketch only)",
        value=view.stats.get("insert_failed", 0),
    )
    yield CounterMetricFamily(
        PREFIX + "map_evictions",
        "Entries seen within the window that the kernel table gave up for new sources (a full "
        "set: active_users of their ports is the sketch's estimate for a window)",
        value=view.evictions,
    )
    yield _gauge("window_seconds", "Length of the sliding window in seconds", view.settings.window)
    yield _gauge(
        "last_refresh_timestamp_seconds",
        "Unix time of the last successful refresh of the active set",
        view.last_refresh_time,
    )
    yield _gauge(
        "refresh_duration_seconds",
        "Seconds the last successful refresh took (map read, window, expiry)",
        view.refresh_duration,
    )
    yield CounterMetricFamily(
        PREFIX + "refresh_failures",
        "Refreshes that failed (the previous result kept being served)",
        value=view.refresh_failures,
    )
    yield _gauge(
        "config_last_reload_successful",
        "Whether the last configuration reload was applied (1) or rejected (0)",
        1 if view.reload_successful else 0,
    )
    yield _gauge(
        "config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful configuration load or reload",
        view.reload_time,
    )
    build = GaugeMetricFamily(
        PREFIX + "build_info",
        "Version, XDP mode and interfaces of the running daemon (value is always 1)",
        labels=["version", "xdp_mode", "interfaces"],
    )
    build.add_metric([view.version, view.settings.xdp_mode, ",".join(view.settings.interfaces)], 1)
    yield build


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _zero_filled(settings: Settings) -> Iterator[tuple[int, int, int]]:
    """The (family, proto, port) shown even when nobody came: every listed port of each chosen
    protocol with ports (none with all ports) and every ICMP type listed for icmp and icmpv6
    (the port label), in the families the protocol is recorded in."""
    for proto in settings.protocols:
        if proto in ICMP_PROTOCOLS:
            ports: Iterable[int] = [kind for p, kind in settings.icmp_types if p == proto]
        elif settings.ports.all_ports:
            continue
        else:
            ports = settings.ports.ports
        for port in ports:
            for fam in protocol_families(proto):
                yield fam, proto, port


def _shown_counts(view: View) -> dict[tuple[int, int, int], int]:
    """{(family, proto, port): distinct sources} of every series active_users shows: the
    zero-filled ones and those with sources in the window (a port or protocol no longer watched
    after a reload stays while its sources do)."""
    shown = dict.fromkeys(_zero_filled(view.settings), 0)
    shown.update(view.active.count_map())
    return shown


def _active_users(
    view: View, counts: Mapping[tuple[int, int, int], int]
) -> Iterator[GaugeMetricFamily]:
    """active_users{ip, proto, port} and active_users_exact (same labels), samples ordered by
    (port, proto, ip) numerically; active_users_other_ports{ip, proto};
    active_users_hll_register{ip, proto, port, register} of the fleet ports.

    ``counts`` are _shown_counts: with listed ports every listed port appears for every family
    and chosen protocol (0 when nobody came); with all ports only the ports that were hit
    appear; for icmp and icmpv6 the port is the ICMP type, and every listed type appears. A
    port no longer watched after a reload keeps appearing while sources seen on it before are
    in the window: a reload never hides what was seen.

    The count is the exact table's while it held every source of the port in the window;
    after the table gave one up, the port's sketch estimate (never below the table's count),
    and active_users_exact says 0. A port without a sketch of its own (every port of the
    protocols other than TCP and UDP) then shows the table's count, a lower bound
    (active_users_other_ports has the estimate over all such ports of its family and protocol).
    """
    users = GaugeMetricFamily(
        "active_users",
        "Distinct source addresses seen within the window, by address family (ip), "
        "protocol and destination port (for icmp and icmpv6: the ICMP type), across all "
        "interfaces",
        labels=["ip", "proto", "port"],
    )
    exact = GaugeMetricFamily(
        "active_users_exact",
        "Whether active_users is exact (1) or, past the kernel table's capacity, the sketch's "
        "estimate or a lower bound (0)",
        labels=["ip", "proto", "port"],
    )
    sketches = view.sketches
    for (fam, proto, port), sources in sorted(counts.items(), key=_port_proto_family):
        labels = [family_name(fam), protocol_name(proto), str(port)]
        is_exact, value = True, float(sources)
        if sketches is not None:
            if (fam, proto, port) in sketches.exact:
                is_exact = sketches.exact[(fam, proto, port)]
                if not is_exact:
                    value = max(value, float(round(sketches.estimates[(fam, proto, port)])))
            else:
                is_exact = sketches.other_exact.get((fam, proto), True)
        users.add_metric(labels, value)
        exact.add_metric(labels, 1 if is_exact else 0)
    yield users
    yield exact
    if sketches is None:
        return
    other = GaugeMetricFamily(
        "active_users_other_ports",
        "The sketch's estimate of distinct source addresses within the window over all watched "
        "ports without a sketch of their own (for icmp and icmpv6: all watched ICMP types), by "
        "address family (ip) and protocol",
        labels=["ip", "proto"],
    )
    chosen = {(fam, proto) for proto in view.settings.protocols for fam in protocol_families(proto)}
    for (fam, proto), estimate in sorted(sketches.other_estimates.items(), key=_proto_family):
        # The chosen protocols, and one no longer chosen while its sources are in the window.
        if (fam, proto) in chosen or round(estimate) > 0:
            other.add_metric([family_name(fam), protocol_name(proto)], float(round(estimate)))
    yield other
    if not sketches.fleet:
        return
    registers = GaugeMetricFamily(
        "active_users_hll_register",
        "HyperLogLog registers (precision 12) of the sources within the window of each fleet "
        "port; max by (ip, proto, port, register) over hosts is the fleet's union "
        "(recording rule fleet:active_users:union)",
        labels=["ip", "proto", "port", "register"],
    )
    for (fam, proto, port), values in sorted(
        sketches.fleet.items(), key=lambda item: (item[0][2], item[0][1], item[0][0])
    ):
        ip, protocol, port_text = family_name(fam), protocol_name(proto), str(port)
        for index, value in enumerate(values.tolist()):
            registers.add_metric([ip, protocol, port_text, str(index)], value)
    yield registers


def _active_prefixes(view: View, counts: Mapping[tuple[int, int, int], int]) -> GaugeMetricFamily:
    """active_prefixes{ip, proto, port, len}: for each series of active_users (``counts``, so
    zero-filled alike) and each prefix length of its family (settings.prefix_lengths), the
    distinct source prefixes of that length; samples ordered by (port, proto, ip, len). From the
    table: past its capacity a lower bound (as active_users_exact says)."""
    prefixes = GaugeMetricFamily(
        "active_prefixes",
        "Distinct source prefixes of length len seen within the window, by address family "
        "(ip), protocol and destination port (for icmp and icmpv6: the ICMP type), across all "
        "interfaces",
        labels=["ip", "proto", "port", "len"],
    )
    lengths = {
        fam: sorted(length for f, length in view.settings.prefix_lengths if f == fam)
        for fam in FAMILIES
    }
    found = view.active.prefix_map()
    for fam, proto, port in sorted(counts, key=lambda label: (label[2], label[1], label[0])):
        labels = [family_name(fam), protocol_name(proto), str(port)]
        for length in lengths.get(fam, ()):
            prefixes.add_metric(
                [*labels, str(length)], float(found.get((fam, proto, port, length), 0))
            )
    return prefixes


def _scanning_sources(view: View) -> GaugeMetricFamily:
    """scanning_sources{ip}: sources that tried settings.scan_ports destination ports or more
    within the window; both families, 0 when none."""
    scanning = GaugeMetricFamily(
        "scanning_sources",
        "Source addresses that tried at least scan_ports distinct destination ports (TCP, UDP, "
        "SCTP, UDP-Lite and DCCP together) within the window, across all interfaces, by "
        "address family (ip)",
        labels=["ip"],
    )
    families = view.active.scanners["family"]
    for fam in FAMILIES:
        scanning.add_metric([family_name(fam)], float(np.count_nonzero(families == fam)))
    return scanning


def _proto_family(item: tuple[tuple[int, int], float]) -> tuple[int, int]:
    (fam, proto), _ = item
    return proto, fam


def _port_proto_family(item: tuple[tuple[int, int, int], int]) -> tuple[int, int, int]:
    (fam, proto, port), _ = item
    return port, proto, fam


class _FixedCollector:
    """A collector over one View: what the cache renders."""

    def __init__(self, view: View) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        return metric_families(self._view)


OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST
CLASSIC = classic.CONTENT_TYPE_LATEST
_EOF = b"# EOF\n"


class Exposition:
    """Renders a View in the format the scraper asked for (``Accept``), cached per View.

    OpenMetrics when the Accept header lists ``application/openmetrics-text`` (Prometheus does),
    the classic text format otherwise (curl, promtool), as prometheus_client's ``choose_encoder``
    decides.
    """

    def __init__(self, process_metrics: bool = True) -> None:
        self._lock = threading.Lock()
        self._cached_view: weakref.ref[View] | None = None
        self._cache: dict[str, bytes] = {}
        self._process: CollectorRegistry | None = None
        if process_metrics:
            self._process = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=self._process)

    def render(self, view: View, accept_header: str | None) -> tuple[bytes, str]:
        """(body, Content-Type) for this View and Accept header."""
        encoder, content_type = classic.choose_encoder(accept_header or "")
        is_openmetrics = content_type == OPENMETRICS
        body = self._view_part(view, content_type, is_openmetrics)
        if self._process is not None:
            process = encoder(self._process)
            body += process.removesuffix(_EOF) if is_openmetrics else process
        return (body + _EOF if is_openmetrics else body), content_type

    def _view_part(self, view: View, content_type: str, is_openmetrics: bool) -> bytes:
        with self._lock:
            cached = self._cached_view() if self._cached_view is not None else None
            if cached is view and content_type in self._cache:
                return self._cache[content_type]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_FixedCollector(view))
        if is_openmetrics:
            body = openmetrics.generate_latest(registry).removesuffix(_EOF)
        else:
            body = classic.generate_latest(registry)
        with self._lock:
            cached = self._cached_view() if self._cached_view is not None else None
            if cached is not view:
                self._cached_view = weakref.ref(view)
                self._cache = {}
            self._cache[content_type] = body
        return body
