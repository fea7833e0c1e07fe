"""routes.py: /list rendering against a golden file, and the routes served by a real server on
127.0.0.1 port 0.

UPDATE_GOLDEN=1 rewrites the golden file (tests/unit/fixtures/list.json).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest

from tests.conftest import assert_golden
from tests.support.http import IFNAMES, NOW, WALL, key, sample_view
from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.layout import KEY_DTYPE, VALUE_DTYPE
from xdp_ip_counter.metrics import CLASSIC, OPENMETRICS, Exposition, View
from xdp_ip_counter.routes import (
    MAX_LIST_RENDERS,
    BadQuery,
    ListQuery,
    MetricsServer,
    list_json_chunks,
    parse_list_query,
    scanner_json_chunks,
)
from xdp_ip_counter.web.server import Limits, ListenError
from xdp_ip_counter.window import SCANNER_DTYPE, Snapshot, active_set

FIXTURES = Path(__file__).parent / "fixtures"


def golden_rows() -> list[dict[str, Any]]:
    return json.loads((FIXTURES / "list.json").read_bytes())


# -- /list rendering ------------------------------------------------------------------------


def test_list_matches_golden() -> None:
    body = b"".join(list_json_chunks(sample_view().active))
    assert_golden(FIXTURES / "list.json", body)
    rows = json.loads(body)
    assert [r["ip"] for r in rows] == [
        "10.8.0.9",
        "10.8.0.10",
        "fd00:8::1",
        "10.8.0.9",
        "10.8.0.11",
        "fd00:8::abcd:0:0:1",  # of two equal zero runs the first is compressed
        "10.8.0.12",
    ]
    assert rows[0] == {
        "ip": "10.8.0.9",
        "type": "v4",
        "port": 22,
        "proto": "tcp",
        "interfaces": ["eth0", "eth1"],
        "first_seen": "2024-05-01T11:59:24.999Z",
        "last_seen": "2024-05-01T11:59:50.000Z",
        "packets": 3,
        "bytes": 180,
    }
    assert rows[4]["interfaces"] == ["if9"]


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 7, 100])
def test_list_chunks_join_to_the_same_document(chunk_rows: int) -> None:
    active = sample_view().active
    assert b"".join(list_json_chunks(active, chunk_rows)) == b"".join(list_json_chunks(active))


def test_empty_list_is_an_empty_array() -> None:
    empty = sample_view().active.select(ports=[1])
    assert b"".join(list_json_chunks(empty)) == b"[]\n"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {}),
        ("port=22", {"ports": [22]}),
        ("port=22&port=443", {"ports": [22, 443]}),
        ("port=22,443", {"ports": [22, 443]}),
        ("port=0&port=65535", {"ports": [0, 65535]}),
        ("proto=UDP", {"protos": [17]}),
        ("proto=icmp,ICMPv6&proto=sctp", {"protos": [1, 58, 132]}),
        ("proto=udplite,dccp,tcp", {"protos": [136, 33, 6]}),
        ("type=v6&iface=eth1", {"families": [6], "interfaces": ["eth1"]}),
        ("scanners=0&port=22", {"ports": [22]}),  # 0: the rows
    ],
)
def test_list_filters(query: str, expected: dict[str, list[object]]) -> None:
    assert parse_list_query(query) == ListQuery(expected, scanners=False)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("scanners=1", {}),
        ("scanners=1&type=v6", {"families": [6]}),
        ("type=V4,v6&scanners=1", {"families": [4, 6]}),
    ],
)
def test_list_scanners_query(query: str, expected: dict[str, list[object]]) -> None:
    assert parse_list_query(query) == ListQuery(expected, scanners=True)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("eth0", True),
        ("x" * 15, True),  # IFNAMSIZ - 1 bytes
        ("\u00e9" * 7 + "x", True),  # 15 bytes in UTF-8
        ("x" * 16, False),
        ("\u00e9" * 8, False),  # 8 characters, 16 bytes
        ("eth0:1", False),  # an address label, not an interface (dev_valid_name refuses ':')
        (".", False),
        ("..", False),
        ("...", True),
        ("a/b", False),
        ("a\tb", False),
    ],
)
def test_list_iface_is_a_kernel_interface_name(name: str, valid: bool) -> None:
    """The kernel's dev_valid_name(): 1..15 bytes, no '/', ':' or whitespace, not '.' or '..'."""
    query = urlencode({"iface": name})
    if valid:
        assert parse_list_query(query).filters == {"interfaces": [name]}
    else:
        with pytest.raises(BadQuery, match=r"^iface: .* is not an interface name$"):
            parse_list_query(query)


# -- a real server --------------------------------------------------------------------------


@dataclass
class Served:
    server: MetricsServer
    view: View | None

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, headers, body = self.request("GET", path)
        assert headers["Content-Type"] == "application/json"
        return status, json.loads(body)


@pytest.fixture
def served() -> Iterator[Served]:
    state = Served(server=None, view=sample_view())  # type: ignore[arg-type]
    server = MetricsServer.bind("127.0.0.1", 0, lambda: state.view, Exposition(False))
    state.server = server
    server.start()
    try:
        yield state
    finally:
        server.close()


def raw_exchange(port: int, data: bytes, family: int = socket.AF_INET) -> bytes:
    """Send bytes, read the whole answer until the server closes."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(data)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_index_page(served: Served) -> None:
    status, headers, body = served.request("GET", "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert '<a href="metrics">' in page
    assert '<a href="list">' in page
    assert "eth0, eth1" in page
    assert "<td>60 s</td>" in page
    served.view = sample_view(ports=PortFilter.of([22, 80, 81, 82]), serve_ip_list=False)
    page = served.request("GET", "/")[2].decode()
    assert '<a href="list">' not in page
    assert "<td>22,80-82</td>" in page


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, CLASSIC),
        ("text/plain", CLASSIC),
        ("application/openmetrics-text;version=1.0.0,text/plain;q=0.5", OPENMETRICS),
    ],
)
def test_metrics_negotiates_the_format(
    served: Served, accept: str | None, content_type: str
) -> None:
    status, headers, body = served.request("GET", "/metrics", {"Accept": accept} if accept else {})
    assert status == 200
    assert headers["Content-Type"] == content_type
    assert body == Exposition(False).render(served.view, accept)[0]  # type: ignore[arg-type]
    assert int(headers["Content-Length"]) == len(body)


def test_metrics_follow_the_view_swap(served: Served) -> None:
    assert b"xdp_ip_counter_refresh_failures_total 0.0" in served.request("GET", "/metrics")[2]
    served.view = replace(served.view, refresh_failures=3)  # type: ignore[type-var]
    assert b"xdp_ip_counter_refresh_failures_total 3.0" in served.request("GET", "/metrics")[2]


def test_list_over_http_is_the_golden_document(served: Served) -> None:
    status, headers, body = served.request("GET", "/list")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert "Content-Length" not in headers  # streamed; the body ends with the connection
    assert body == (FIXTURES / "list.json").read_bytes()


def test_list_keeps_ports_no_longer_watched(served: Served) -> None:
    """After a reload narrows the ports, sources seen before stay until they leave the window."""
    served.view = sample_view(ports=PortFilter.of([443, 8080]))
    status, rows = served.get_json("/list")
    assert status == 200
    assert rows == golden_rows()


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        ("port=22", lambda r: r["port"] == 22),
        ("port=443&port=5353", lambda r: r["port"] in (443, 5353)),
        ("port=443,5353", lambda r: r["port"] in (443, 5353)),
        ("proto=udp", lambda r: r["proto"] == "udp"),
        ("type=v6", lambda r: r["type"] == "v6"),
        (
            "type=v4&proto=tcp&port=22",
            lambda r: (r["type"], r["proto"], r["port"]) == ("v4", "tcp", 22),
        ),
        ("iface=eth1", lambda r: "eth1" in r["interfaces"]),
        ("iface=if9", lambda r: "if9" in r["interfaces"]),
        ("iface=eth0&iface=if9", lambda r: {"eth0", "if9"} & set(r["interfaces"])),
        ("iface=wlan7", lambda r: False),
        ("port=1", lambda r: False),
    ],
)
def test_list_filters_over_http(
    served: Served, query: str, keep: Callable[[dict[str, Any]], bool]
) -> None:
    status, rows = served.get_json(f"/list?{query}")
    assert status == 200
    expected = [r for r in golden_rows() if keep(r)]
    assert rows == expected
    assert query.startswith(("iface=wlan7", "port=1")) or 0 < len(rows) < len(golden_rows())


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("port=65536", "port"),
        ("port=-1", "port"),
        ("port=22x", "port"),
        ("port=+22", "port"),
        ("port=", "port"),
        ("port=22,,80", "port"),
        ("proto=gre", "proto"),
        ("proto=icmp6", "proto"),
        ("scanners=2", "scanners"),
        ("scanners=", "scanners"),
        ("scanners=yes", "scanners"),
        ("scanners=1,1", "scanners"),
        ("scanners=1&scanners=0", "scanners"),
        ("scanners=1&port=22", "scanners"),
        ("scanners=1&proto=tcp", "scanners"),
        ("scanners=1&iface=eth0", "scanners"),
        ("type=v5", "type"),
        ("type=", "type"),
        ("iface=a/b", "iface"),
        ("iface=waytoolonginterfacename", "iface"),
        ("ip=10.0.0.1", "ip"),
        ("port", "malformed"),
        ("&".join(f"port={p}" for p in range(100)), "malformed"),
    ],
)
def test_bad_list_query_is_400_with_a_json_error(served: Served, query: str, names: str) -> None:
    status, body = served.get_json(f"/list?{query}")
    assert status == 400
    assert set(body) == {"error"}
    assert names in body["error"]


def test_a_bad_protocol_names_every_protocol() -> None:
    with pytest.raises(BadQuery) as raised:
        parse_list_query("proto=tcp,gre")
    assert str(raised.value) == (
        "proto: 'gre' is not one of tcp, udp, icmp, icmpv6, sctp, udplite, dccp"
    )


def test_scanners_with_another_filter_names_it() -> None:
    with pytest.raises(BadQuery) as raised:
        parse_list_query("type=v4&scanners=1&port=22&iface=eth0")
    assert str(raised.value) == (
        "scanners: combines with type only, not iface, port (a scanner's ports are counted "
        "over every protocol with ports and every interface)"
    )


# Sources for /list?scanners=1 with scan_ports 3: (address, [(port, proto, ifindex)], seconds ago)
SCANNING = [
    ("10.8.1.1", [(p, 6, 2) for p in (1, 2, 3, 4, 5)], 1),  # 5 ports
    ("10.8.1.10", [(22, 6, 2), (80, 6, 2), (53, 17, 3)], 2),  # 3
    ("10.8.1.9", [(22, 6, 2), (22, 17, 2), (80, 132, 2), (53, 136, 3)], 3),  # 3: 22 once
    ("10.8.1.2", [(22, 6, 2), (22, 6, 3), (80, 6, 3)], 4),  # 2: 22 on two interfaces
    ("10.8.1.3", [(22, 6, 2), (80, 33, 2)] + [(t, 1, 2) for t in range(8)], 5),  # 2: ICMP
    ("10.8.1.4", [(p, 6, 2) for p in (1, 2, 3)], 61),  # outside the window
    ("fd00:8::5", [(7, 136, 2), (8, 33, 2), (9, 6, 3)], 6),  # 3
    ("fd00:8::6", [(7, 6, 2), (8, 6, 2), (128, 58, 2), (129, 58, 2)], 7),  # 2: ICMPv6
]


def scanner_view(scan_ports: int = 3) -> View:
    entries = [
        (key(ip, port, proto, ifindex), NOW - ago * 1_000_000_000)
        for ip, tried, ago in SCANNING
        for port, proto, ifindex in tried
    ]
    keys = np.array([k for k, _ in entries], KEY_DTYPE)
    values = np.array([(last, last, 1, 60) for _, last in entries], VALUE_DTYPE)
    snap = Snapshot(keys, values, NOW, WALL, {}, len(keys), 4096)
    view = sample_view(active=active_set(snap, 60, IFNAMES, scan_ports=scan_ports), snapshot=snap)
    return replace(view, settings=replace(view.settings, scan_ports=scan_ports))


SCANNERS = [
    {"ip": "10.8.1.1", "type": "v4", "ports": 5},
    {"ip": "10.8.1.9", "type": "v4", "ports": 3},  # numeric order: .9 before .10
    {"ip": "10.8.1.10", "type": "v4", "ports": 3},
    {"ip": "fd00:8::5", "type": "v6", "ports": 3},
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("scanners=1", SCANNERS),
        ("scanners=1&type=v4", SCANNERS[:3]),
        ("type=v6&scanners=1", SCANNERS[3:]),
        ("scanners=1&type=v4,v6", SCANNERS),
    ],
)
def test_list_scanners(served: Served, query: str, expected: list[dict[str, Any]]) -> None:
    served.view = scanner_view()
    assert served.get_json(f"/list?{query}") == (200, expected)


def test_list_scanners_document(served: Served) -> None:
    served.view = scanner_view(scan_ports=5)
    status, headers, body = served.request("GET", "/list?scanners=1")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert body == b'[\n{"ip":"10.8.1.1","type":"v4","ports":5}\n]\n'
    served.view = scanner_view(scan_ports=6)
    assert served.request("GET", "/list?scanners=1")[2] == b"[]\n"
    head = served.request("HEAD", "/list?scanners=1")
    assert (head[0], head[1]["Content-Type"], head[2]) == (200, "application/json", b"")


def test_list_scanners_0_is_the_list(served: Served) -> None:
    served.view = scanner_view()
    assert served.get_json("/list?scanners=0") == served.get_json("/list")


def test_list_scanners_when_scan_ports_is_off_is_404(served: Served) -> None:
    served.view = scanner_view(scan_ports=0)
    status, body = served.get_json("/list?scanners=1")
    assert status == 404
    assert body == {"error": "scanner detection is off: set scan_ports (--scan-ports) above 0"}
    assert served.get_json("/list?scanners=0")[0] == 200


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100])
def test_scanner_chunks_join_to_the_same_document(chunk_rows: int) -> None:
    scanners = scanner_view().active.scanners
    assert len(scanners) == 4
    joined = b"".join(scanner_json_chunks(scanners, chunk_rows))
    assert json.loads(joined) == SCANNERS
    assert b"".join(scanner_json_chunks(np.zeros(0, SCANNER_DTYPE))) == b"[]\n"


def test_list_disabled_is_404(served: Served) -> None:
    served.view = sample_view(serve_ip_list=False)
    status, body = served.get_json("/list")
    assert status == 404
    assert "--serve-ip-list" in body["error"]


@pytest.mark.parametrize("path", ["/nope", "/list/", "/metrics/", "/index.html", "/metrics.txt"])
def test_unknown_path_is_404(served: Served, path: str) -> None:
    status, body = served.get_json(path)
    assert status == 404
    assert "no such page" in body["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
@pytest.mark.parametrize("path", ["/", "/metrics", "/list"])
def test_other_methods_are_405(served: Served, method: str, path: str) -> None:
    status, headers, body = served.request(method, path)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert headers["Content-Type"] == "application/json"
    assert method in json.loads(body)["error"]


@pytest.mark.parametrize("path", ["/", "/metrics", "/list", "/list?port=22", "/list?port=x", "/no"])
def test_head_is_get_without_a_body(served: Served, path: str) -> None:
    get_status, get_headers, get_body = served.request("GET", path)
    head_status, head_headers, head_body = served.request("HEAD", path)
    assert head_body == b""
    assert head_status == get_status
    assert head_headers["Content-Type"] == get_headers["Content-Type"]
    assert head_headers.get("Content-Length") == get_headers.get("Content-Length")
    if "Content-Length" in get_headers:
        assert int(get_headers["Content-Length"]) == len(get_body)


def test_list_renders_at_once_are_limited(served: Served) -> None:
    for _ in range(MAX_LIST_RENDERS):
        assert served.server.routes.list_renders.acquire(blocking=False)
    try:
        status, headers, body = served.request("GET", "/list")
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert "busy" in json.loads(body)["error"]
        assert served.request("GET", "/metrics")[0] == 200
    finally:
        for _ in range(MAX_LIST_RENDERS):
            served.server.routes.list_renders.release()
    assert served.request("GET", "/list")[0] == 200


def test_no_view_yet_is_503(served: Served) -> None:
    served.view = None
    for path in ("/", "/metrics", "/list"):
        status, headers, _ = served.request("GET", path)
        assert status == 503
        assert headers["Retry-After"] == "1"


def test_requests_are_not_logged_above_debug(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="xdp_ip_counter"):
        served.request("GET", "/metrics")
        served.request("GET", "/nope")
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    assert any("GET /metrics" in r.getMessage() for r in caplog.records)


# -- limits ---------------------------------------------------------------------------------


def test_long_request_line_is_414(served: Served) -> None:
    answer = raw_exchange(served.server.port, b"GET /" + b"a" * 9000 + b" HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 414 ")
    assert b'{"error": "request line too long"}' in answer


def test_large_headers_are_431(served: Served) -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"b" * 1000) for i in range(40))
    answer = raw_exchange(served.server.port, b"GET / HTTP/1.0\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.0 431 ")


def test_many_headers_are_431(served: Served) -> None:
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(Limits().max_headers + 1))
    answer = raw_exchange(served.server.port, b"GET / HTTP/1.0\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.0 431 ")


@pytest.mark.parametrize(
    "request_line", [b"HELLO THERE GENERAL KENOBI", b"GET /metrics", b"GET / HTTP/x.y", b"\x00\xff"]
)
def test_bad_request_line_is_400(served: Served, request_line: bytes) -> None:
    answer = raw_exchange(served.server.port, request_line + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400 ")
    assert b"Content-Type: application/json" in answer


def test_one_request_per_connection(served: Served) -> None:
    two = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = raw_exchange(served.server.port, two)
    assert answer.count(b"HTTP/1.0 200 OK") == 1
    assert b"Connection: close" in answer


def test_a_slow_request_is_cut_off() -> None:
    server = MetricsServer.bind(
        "127.0.0.1", 0, sample_view, Exposition(False), limits=Limits(request_timeout_s=1.0)
    )
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n")
            started = time.monotonic()
            closed = False
            # A header byte every 0.2 s: each read is quick, the request never completes.
            while time.monotonic() - started < 5:
                try:
                    conn.sendall(b"X")
                except OSError:
                    closed = True
                    break
                with contextlib.suppress(TimeoutError):
                    conn.settimeout(0.2)
                    if conn.recv(65536) == b"":
                        closed = True
                        break
            assert closed, "a request trickling in for 5 s was not cut off"
            assert time.monotonic() - started < 3
    finally:
        server.close()


def test_connections_beyond_the_limit_are_closed() -> None:
    server = MetricsServer.bind(
        "127.0.0.1", 0, sample_view, Exposition(False), limits=Limits(max_connections=2)
    )
    server.start()
    idle = []
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
        for conn in idle:  # make sure both are accepted (being served) before the third
            conn.sendall(b"GET / HTTP/1.0\r\n")
        deadline = time.monotonic() + 5
        while server.connections < 2:
            assert time.monotonic() < deadline, "the two connections were not accepted"
            time.sleep(0.01)
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as third,
            contextlib.suppress(ConnectionResetError),
        ):
            assert third.recv(65536) == b""  # closed without an answer
        idle.pop().close()
        deadline = time.monotonic() + 5
        while server.connections == 2:
            assert time.monotonic() < deadline, "a closed connection did not free its slot"
            time.sleep(0.01)
        assert raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200")
    finally:
        for conn in idle:
            conn.close()
        server.close()


# -- binding --------------------------------------------------------------------------------


def test_port_in_use_is_a_listen_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ListenError, match=rf"cannot listen on 127\.0\.0\.1:{port}: .*in use"):
            MetricsServer.bind("127.0.0.1", port, sample_view)


def test_address_not_on_this_host_is_a_listen_error() -> None:
    with pytest.raises(ListenError, match=r"cannot listen on 192\.0\.2\.1:0: "):
        MetricsServer.bind("192.0.2.1", 0, sample_view)


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv6_listen_address(require: Callable[[object, str], None]) -> None:
    require(ipv6_loopback_works(), "IPv6 loopback (::1) is not available here")
    server = MetricsServer.bind("::1", 0, sample_view, Exposition(False))
    server.start()
    try:
        answer = raw_exchange(server.port, b"GET /metrics HTTP/1.0\r\n\r\n", socket.AF_INET6)
        assert answer.startswith(b"HTTP/1.0 200 ")
    finally:
        server.close()


def test_any_ipv6_address_also_serves_ipv4(require: Callable[[object, str], None]) -> None:
    require(ipv6_loopback_works(), "IPv6 is not available here")
    server = MetricsServer.bind("::", 0, sample_view, Exposition(False))
    server.start()
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            answer = raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n", family)
            assert answer.startswith(b"HTTP/1.0 200 ")
    finally:
        server.close()


def test_close_releases_the_port() -> None:
    server = MetricsServer.bind("127.0.0.1", 0, sample_view)
    server.start()
    port = server.port
    server.close()
    again = MetricsServer.bind("127.0.0.1", port, sample_view)
    again.close()
