"""packaging/prometheus/xdp-ip-counter.rules.yml: `promtool check rules`, and the rules evaluated
by a real Prometheus (no root) scraping two made-up hosts served by the test on 127.0.0.1.

Why not `promtool test rules`: its query engine is built with a fixed limit of 10,000 samples
per query (promtool 2.42; prometheus/prometheus#17237 asks for a flag), and a single host's
4096 registers plus the 4096 of the max already exceed it ("query processing would load too
many samples into memory"). A real Prometheus has no such limit (--query.max-samples is 50M).

The hosts export active_users_hll_register (p = 12) for known sets of IPv4 sources, built with
the daemon's hash and registers (xdp_ip_counter/sketch.py).
The test reads what the rules recorded and checks:

- fleet:active_users_hll_register:max is the register-wise max, 4096 series per (ip, proto,
  port), with no instance or job label;
- fleet:active_users:union equals sketch.estimate_classic of that max (to 1e-9) and is within 5 %
  of the true union, for two overlapping large sets (60,000 + 60,000, 20,000 of them shared:
  the raw estimate), two overlapping small sets (600 + 600, 200 shared: linear counting), and
  12,000 sources where some registers are still 0 but the raw estimate is above 2.5 m (raw, not
  linear counting: they differ by more than 1e-9 there);
- each large host alone (its sketch exported under a port of its own) gives that host's own
  estimate, and the sum of the two (about 120,000 for 100,000 sources) is far off the union.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require
from tests.support.netns import inside
from xdp_ip_counter import sketch

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "packaging" / "prometheus" / "xdp-ip-counter.rules.yml"
P = sketch.FLEET_P  # the precision the daemon folds its sketches to for export (12)
M = 1 << P
UNION = "fleet:active_users:union"
MAX = "fleet:active_users_hll_register:max"
TOLERANCE = 0.05  # the union within 5 % of the truth (the standard error is 1.63 %)
SAME = 1e-9  # the rule's value against the same formula in Python
DEADLINE_S = 60  # for Prometheus to start, scrape both hosts and evaluate the rules after that


@dataclass(frozen=True)
class Case:
    """Two hosts' sources to one (ip, proto, port)."""

    proto: str
    port: int
    only_a: int
    only_b: int
    shared: int
    seed: int

    @property
    def true_union(self) -> int:
        return self.only_a + self.only_b + self.shared

    def sketches(self) -> tuple[np.ndarray, np.ndarray]:
        """Host a's and host b's sketches of distinct host-order IPv4 addresses, `shared` of
        them in both."""
        wanted = self.true_union
        rng = np.random.default_rng(self.seed)
        drawn = np.unique(rng.integers(1, 2**32, size=wanted + wanted // 10 + 100, dtype=np.uint32))
        assert len(drawn) >= wanted
        drawn = rng.permutation(drawn)[:wanted]
        a = drawn[: self.shared + self.only_a]
        b = np.concatenate([drawn[: self.shared], drawn[self.shared + self.only_a :]])
        return sketch.ipv4_sketch(a, p=P), sketch.ipv4_sketch(b, p=P)


OVERLAPPING = Case("udp", 53, only_a=40_000, only_b=40_000, shared=20_000, seed=12)
SMALL = Case("tcp", 22, only_a=400, only_b=400, shared=200, seed=13)
RAW_WITH_ZEROS = Case("tcp", 443, only_a=5_000, only_b=5_000, shared=2_000, seed=14)
CASES = (OVERLAPPING, SMALL, RAW_WITH_ZEROS)
# OVERLAPPING's hosts once more, each alone under a port of its own: their own estimates.
ALONE_PORTS = (1053, 2053)


def exposition(sketches: dict[tuple[str, int], np.ndarray]) -> bytes:
    """A host's /metrics: the registers of each (proto, port) sketch, as the daemon exports them."""
    lines = [
        "# HELP active_users_hll_register HyperLogLog register (p=12) of the sources",
        "# TYPE active_users_hll_register gauge",
    ]
    for (proto, port), registers in sketches.items():
        labels = f'ip="v4",port="{port}",proto="{proto}"'
        lines += [
            f'active_users_hll_register{{{labels},register="{index}"}} {int(rank)}'
            for index, rank in enumerate(registers)
        ]
    return ("\n".join(lines) + "\n").encode()


@contextlib.contextmanager
def serving(body: bytes) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 answering every GET with body; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="made-up-host", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen
    log_path: Path
    netns: str | None = None  # where it runs; queries are made from there too

    def query(self, expr: str) -> list[dict]:
        """An instant query's result vector ([] while Prometheus does not answer)."""
        url = f"{self.url}/api/v1/query?query={urllib.parse.quote(expr)}"

        def fetch() -> dict | None:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    return json.load(answer)
            except (OSError, ValueError):
                return None

        reply = fetch() if self.netns is None else inside(self.netns, fetch)
        if reply is None:
            return []
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def wait(
        self, what: str, condition: Callable[[], object], timeout: float = DEADLINE_S
    ) -> object:
        """condition()'s first truthy answer; fails after timeout s naming what, with the log."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log_path.read_text()}"
            last = condition()
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what} (last: {last!r}); prometheus log:\n"
            f"{self.log_path.read_text()[-3000:]}"
        )


@contextlib.contextmanager
def prometheus(
    targets: list[str], tmp_path: Path, netns: str | None = None
) -> Iterator[Prometheus]:
    """/usr/bin/prometheus with the rules file, scraping targets (job xdp-ip-counter) and
    evaluating every second, on 127.0.0.1 (of netns, when given); its TSDB in tmp_path; killed
    whatever happens. tests/e2e/test_fleet_union.py runs it in a namespace of its own."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    require(Path(binary).exists(), "prometheus not found (Debian package 'prometheus')")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "xdp-ip-counter", "static_configs": [{"targets": targets}]}
                ],
            }
        )
    )
    port = free_port() if netns is None else inside(netns, free_port)
    prefix = [] if netns is None else ["ip", "netns", "exec", netns]
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *prefix,
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", process, log_path, netns)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def by_labels(result: list[dict], *names: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"][n] for n in names): float(r["value"][1]) for r in result}


def settled_union(server: Prometheus, ports: set[str]) -> dict[str, float]:
    """fleet:active_users:union per port, once evaluated after both hosts (the job's two
    targets) had been scraped: before that, it may be one host's estimate."""

    def both_up() -> float | None:
        up = server.query('count(up{job="xdp-ip-counter"} == 1) == 2')
        return float(up[0]["value"][0]) if up else None  # the server's time of the answer

    both_up_at = server.wait("both hosts to be up", both_up)

    def evaluated_after() -> bool:
        stamps = by_labels(server.query(f"timestamp({UNION})"), "port")
        return set(p for (p,) in stamps) == ports and min(stamps.values()) > both_up_at

    server.wait(f"{UNION} evaluated after both hosts were scraped", evaluated_after)
    return {port: value for (port,), value in by_labels(server.query(UNION), "port").items()}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool") or "/usr/bin/promtool"
    require(Path(path).exists(), "promtool not found (Debian package 'prometheus')")
    return path


def test_the_rules_file_is_valid(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rules found" in result.stdout


def test_the_cases_are_in_the_ranges_they_are_meant_for() -> None:
    """So that each case tests the branch of the estimator it claims to."""
    for case, linear in ((OVERLAPPING, False), (SMALL, True), (RAW_WITH_ZEROS, False)):
        union = sketch.union(case.sketches())
        alpha = 0.7213 / (1 + 1.079 / M)
        raw = alpha * M * M / float(np.sum(np.exp2(-union.astype(np.float64))))
        zeros = int(np.count_nonzero(union == 0))
        assert (raw <= 2.5 * M and zeros > 0) == linear, (case, raw, zeros)
        if case is RAW_WITH_ZEROS:
            assert zeros > 0  # linear counting would be defined, and must not be used
            assert abs(M * math.log(M / zeros) / raw - 1) > 1000 * SAME


def test_rules_estimate_the_union_of_two_hosts(tmp_path: Path) -> None:
    hosts: tuple[dict, dict] = ({}, {})
    expected: dict[str, float] = {}
    union_sketches: dict[str, np.ndarray] = {}
    for case in CASES:
        sketch_a, sketch_b = case.sketches()
        hosts[0][(case.proto, case.port)] = sketch_a
        hosts[1][(case.proto, case.port)] = sketch_b
        union_sketches[str(case.port)] = sketch.union([sketch_a, sketch_b])
        expected[str(case.port)] = sketch.estimate_classic(union_sketches[str(case.port)])
        assert abs(expected[str(case.port)] / case.true_union - 1) < TOLERANCE  # not unlucky data
    own_a, own_b = OVERLAPPING.sketches()
    hosts[0][("udp", ALONE_PORTS[0])] = own_a
    hosts[1][("udp", ALONE_PORTS[1])] = own_b
    expected[str(ALONE_PORTS[0])] = sketch.estimate_classic(own_a)
    expected[str(ALONE_PORTS[1])] = sketch.estimate_classic(own_b)

    with (
        serving(exposition(hosts[0])) as port_a,
        serving(exposition(hosts[1])) as port_b,
        prometheus([f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"], tmp_path) as server,
    ):
        union = settled_union(server, set(expected))
        maxima = server.query(f'{MAX}{{port="{OVERLAPPING.port}"}}')
        labels = server.query(f"group by (__name__, ip, proto, port, instance, job) ({UNION})")

    # The max rule: the register-wise max, one series per register, no host labels left.
    assert len(maxima) == M
    assert {frozenset(r["metric"]) for r in maxima} == {
        frozenset({"__name__", "ip", "proto", "port", "register"})
    }
    recorded = np.zeros(M, dtype=np.uint8)
    for r in maxima:
        recorded[int(r["metric"]["register"])] = int(r["value"][1])
    assert np.array_equal(recorded, union_sketches[str(OVERLAPPING.port)])
    # The union rule: labels ip, proto, port only.
    assert {frozenset(r["metric"]) for r in labels} == {
        frozenset({"__name__", "ip", "proto", "port"})
    }

    for port, value in union.items():
        assert abs(value / expected[port] - 1) < SAME, (port, value, expected[port])
    for case in CASES:
        value = union[str(case.port)]
        assert abs(value / case.true_union - 1) < TOLERANCE, (case, value)
    # Each host alone: its own estimate. Their sum counts the 20,000 shared sources twice:
    # 120,000 for 100,000, off by four times the tolerance the union is held to.
    own = union[str(ALONE_PORTS[0])] + union[str(ALONE_PORTS[1])]
    assert own / OVERLAPPING.true_union - 1 > 3 * TOLERANCE, (own, OVERLAPPING.true_union)
    print(
        f"union {union[str(OVERLAPPING.port)]:.0f} of {OVERLAPPING.true_union} true, "
        f"sum of own estimates {own:.0f}; small {union[str(SMALL.port)]:.1f} of "
        f"{SMALL.true_union}; raw with zeros {union[str(RAW_WITH_ZEROS.port)]:.0f} of "
        f"{RAW_WITH_ZEROS.true_union}"
    )
