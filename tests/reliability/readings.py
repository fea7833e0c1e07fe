"""Reading the daemon from outside, as the reliability tests do: /metrics as a flat dict, the
frame outcomes in it, and the rows of /list by source address."""

from __future__ import annotations

from e2e.conftest import DaemonProcess
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "xdp_ip_counter_"


def scrape(daemon: DaemonProcess) -> dict[str, float]:
    """/metrics as {"name" or "name{label=value,...}": value}, labels sorted by name."""
    values = {}
    for family in text_string_to_metric_families(daemon.metrics()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def frames_seen(metrics: dict[str, float]) -> float:
    """Frames the program saw, every outcome."""
    return sum(v for k, v in metrics.items() if k.startswith(PREFIX + "frames_total{"))


def outcome(metrics: dict[str, float], name: str) -> float:
    return metrics[f"{PREFIX}frames_total{{outcome={name}}}"]


def users_key(name: str, family: str, proto: str, port: int) -> str:
    """The scrape() key of active_users or active_users_exact for one (ip, proto, port)."""
    return f"{name}{{ip={family},port={port},proto={proto}}}"


def listed(daemon: DaemonProcess, query: str) -> dict[str, dict]:
    """The rows of /list?query by source address (one row per address: the query must pin
    the port, protocol and interface down to one row per source)."""
    rows: dict[str, dict] = {}
    for row in daemon.list(f"?{query}"):
        assert row["ip"] not in rows, f"/list?{query} has {row['ip']} twice: {row}"
        rows[row["ip"]] = row
    return rows
