"""The HTTP server against clients that are not Prometheus (issue 7, "Hostile requests").

A real server on 127.0.0.1 port 0, no root. Every answer is checked exactly: status line, the
headers that matter and the JSON error body. Bad requests get their 4xx (or, when they never
finish, the connection is cut at the deadline), the server keeps answering others meanwhile,
and its memory stays bounded. Then TLS and basic authentication through a web configuration
file, with certificates made by the test and clients that verify them, and the listen address.

No test may leave the server logging above debug level: a hostile request is not news, and a
traceback would mean a handler failed (the `no_warnings` fixture checks every test).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.http import IFNAMES, NOW, PKI, WALL, S, basic, bcrypt_hash, make_pki, sample_view
from xdp_ip_counter.layout import KEY_DTYPE, VALUE_DTYPE
from xdp_ip_counter.metrics import Exposition, View
from xdp_ip_counter.routes import MAX_LIST_RENDERS, MetricsServer
from xdp_ip_counter.web.config import NO_WEB_CONFIG, WebConfig, load_web_config
from xdp_ip_counter.web.server import Limits
from xdp_ip_counter.window import Snapshot, active_set

FIXTURES = Path(__file__).parent / "fixtures"
JSON = "application/json"
DEFAULT_LIMITS = Limits()
MAX_CONNECTIONS = DEFAULT_LIMITS.max_connections
MAX_HEADERS = DEFAULT_LIMITS.max_headers
MAX_REQUEST_LINE = DEFAULT_LIMITS.max_request_line
SHORT_DEADLINE_S = 1.0  # request_timeout_s in the tests that wait for it


@pytest.fixture(autouse=True)
def no_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO, logger="xdp_ip_counter")
    yield
    loud = [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.get_records("call")
        if r.levelno > logging.DEBUG and r.name.startswith("xdp_ip_counter")
    ]
    assert loud == [], "the server logged above debug level"


@pytest.fixture
def serve() -> Iterator[Callable[..., MetricsServer]]:
    """Start servers (on 127.0.0.1 port 0 unless told otherwise); all closed at the end."""
    servers: list[MetricsServer] = []

    def start(
        web: WebConfig = NO_WEB_CONFIG, address: str = "127.0.0.1", limits: Limits = DEFAULT_LIMITS
    ) -> MetricsServer:
        server = MetricsServer.bind(
            address, 0, sample_view, Exposition(False), web_config=web, limits=limits
        )
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def server(serve: Callable[..., MetricsServer]) -> MetricsServer:
    return serve()


# -- talking to it ----------------------------------------------------------------------------


@dataclass
class Answer:
    status: str  # the status line
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"] == JSON
        assert int(self.headers["Content-Length"]) == len(self.body)
        return json.loads(self.body)


def parse(raw: bytes) -> Answer:
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"not an HTTP answer: {raw[:200]!r}"
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return Answer(status, headers, body)


def send(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send raw bytes; everything the server answers, until it closes."""
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(data)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def ok(port: int, request: bytes = b"GET / HTTP/1.0\r\n\r\n", host: str = "127.0.0.1") -> bool:
    """Whether `request` gets a 200."""
    return parse(send(port, request, host)).status == "HTTP/1.0 200 OK"


def closed_by_server(conn: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """Wait up to `timeout` for the server to close `conn`: (closed, what it sent before)."""
    received = b""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def still_open(conn: socket.socket) -> bool:
    conn.setblocking(False)
    try:
        return conn.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        conn.setblocking(True)


def get_status(port: int, path: str = "/metrics") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


# -- malformed requests -----------------------------------------------------------------------

BAD_REQUEST = "HTTP/1.0 400 Bad Request"


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"garbage\r\n\r\n", BAD_REQUEST, "Bad request syntax ('garbage')"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", BAD_REQUEST,
         "Bad request syntax ('\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01ü\\x03\\x03')"),
        (b"GET /metrics\r\n\r\n", BAD_REQUEST, "HTTP/0.9 is not supported"),
        (b"GET / HTTP/1.0 trailing\r\n\r\n", BAD_REQUEST, "Bad request version ('trailing')"),
        (b"GET / HTTP/x.y\r\n\r\n", BAD_REQUEST, "Bad request version ('HTTP/x.y')"),
        (b"GET / HTTP/9.9\r\n\r\n", "HTTP/1.0 505 HTTP Version Not Supported",
         "Invalid HTTP version (9.9)"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/1.0 505 HTTP Version Not Supported",
         "Invalid HTTP version (2.0)"),
        (b"GET / HTTP/1.0\x00\r\n\r\n", BAD_REQUEST, "Bad request version ('HTTP/1.0\\x00')"),
        (b"G\x00T / HTTP/1.0\r\n\r\n", BAD_REQUEST, "malformed method 'G\\x00T'"),
        (b"GET /\x00 HTTP/1.0\r\n\r\n", BAD_REQUEST, "malformed request target '/\\x00'"),
        (b"GET /metrics\x7f HTTP/1.0\r\n\r\n", BAD_REQUEST,
         "malformed request target '/metrics\\x7f'"),
        (b"GET /m\xc3\xa9trics HTTP/1.0\r\n\r\n", BAD_REQUEST,
         "malformed request target '/mÃ©trics'"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.0\r\n\r\n", "HTTP/1.0 414 Request-URI Too Long",
         "request line too long"),
    ],
)  # fmt: skip
def test_malformed_request_line(
    server: MetricsServer, request_bytes: bytes, status: str, error: str
) -> None:
    answer = parse(send(server.port, request_bytes))
    assert answer.status == status
    assert answer.json() == {"error": error}
    assert answer.headers["Connection"] == "close"


def test_the_request_line_limit_is_exact(server: MetricsServer) -> None:
    def line_of(length: int) -> bytes:
        prefix, suffix = b"GET /", b" HTTP/1.0\r\n"
        return prefix + b"a" * (length - len(prefix) - len(suffix)) + suffix

    at_limit = parse(send(server.port, line_of(MAX_REQUEST_LINE) + b"\r\n"))
    assert at_limit.status == "HTTP/1.0 404 Not Found"
    over = parse(send(server.port, line_of(MAX_REQUEST_LINE + 1) + b"\r\n"))
    assert over.status == "HTTP/1.0 414 Request-URI Too Long"


@pytest.mark.parametrize("request_bytes", [b"", b"\r\n", b"\r\n\r\n"])
def test_nothing_or_an_empty_line_gets_no_answer(
    server: MetricsServer, request_bytes: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(request_bytes)
        conn.shutdown(socket.SHUT_WR)
        assert closed_by_server(conn, 5) == (True, b"")


HEADER_LIMIT = "HTTP/1.0 431 Request Header Fields Too Large"


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        (b"".join(b"X-Filler-%d: %s\r\n" % (i, b"b" * 1000) for i in range(40)), HEADER_LIMIT,
         "Line too long"),
        (b"X-Huge: " + b"h" * 40000 + b"\r\n", HEADER_LIMIT, "Line too long"),
        (b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1)), HEADER_LIMIT,
         "too many headers"),
        (b"".join(b"X-%d: 1\r\n" % i for i in range(101)), HEADER_LIMIT, "Too many headers"),
        (b"NoColonHere\r\n", BAD_REQUEST, "malformed header line 'NoColonHere'"),
        (b": no name\r\n", BAD_REQUEST, "malformed header line ': no name'"),
        (b"Bad Name: x\r\n", BAD_REQUEST, "malformed header line 'Bad Name: x'"),
        (b"X-A: 1\r\n folded\r\n", BAD_REQUEST, "obsolete line folding in the headers"),
        (b"X-Nul: a\x00b\r\n", BAD_REQUEST, "control character in the value of header 'X-Nul'"),
        (b"X-Cr: a\rb\r\n", BAD_REQUEST, "control character in the value of header 'X-Cr'"),
    ],
)  # fmt: skip
def test_bad_headers(server: MetricsServer, headers: bytes, status: str, error: str) -> None:
    answer = parse(send(server.port, b"GET /metrics HTTP/1.0\r\n" + headers + b"\r\n"))
    assert answer.status == status
    assert answer.json() == {"error": error}


def test_headers_at_the_limits_are_answered(server: MetricsServer) -> None:
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS))
    assert ok(server.port, b"GET / HTTP/1.0\r\n" + many + b"\r\n")
    # obs-text (bytes >= 0x80) and tabs are allowed in values
    legal = b"X-Latin: caf\xe9\tau lait\r\n"
    assert ok(server.port, b"GET / HTTP/1.0\r\n" + legal + b"\r\n")


# -- paths, methods, queries ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/nope", "/metrics/", "/list/", "/%6detrics", "/../metrics", "/./metrics", "*"]
)
def test_unknown_path_is_404(server: MetricsServer, path: str) -> None:
    answer = parse(send(server.port, f"GET {path} HTTP/1.0\r\n\r\n".encode()))
    assert answer.status == "HTTP/1.0 404 Not Found"
    assert answer.json() == {"error": f"no such page: {path}"}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "get"])
def test_other_methods_are_405_with_allow(server: MetricsServer, method: str) -> None:
    answer = parse(send(server.port, f"{method} /metrics HTTP/1.0\r\n\r\n".encode()))
    assert answer.status == "HTTP/1.0 405 Method Not Allowed"
    assert answer.headers["Allow"] == "GET, HEAD"
    assert answer.json() == {"error": f"{method} is not allowed here; use GET"}


def test_a_post_body_is_never_waited_for(server: MetricsServer) -> None:
    """A request announcing a gigabyte is answered at once, without reading the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        conn.sendall(b"x" * 1000)
        started = time.monotonic()
        closed, received = closed_by_server(conn, 5)
    assert closed
    assert time.monotonic() - started < 3
    assert parse(received).status == "HTTP/1.0 405 Method Not Allowed"


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("port=65536", "port: '65536' is not a port number 0..65535"),
        ("port=-1", "port: '-1' is not a port number 0..65535"),
        ("port=%00", "port: '\\x00' is not a port number 0..65535"),
        ("port=%zz", "port: '%zz' is not a port number 0..65535"),
        ("port=0x16", "port: '0x16' is not a port number 0..65535"),
        ("port=" + "9" * 100, "port: '" + "9" * 100 + "' is not a port number 0..65535"),
        ("proto=gre", "proto: 'gre' is not one of tcp, udp, icmp, icmpv6, sctp, udplite, dccp"),
        ("scanners=2", "scanners: '2' is not 0 or 1"),
        ("scanners=1&scanners=1", "scanners: one value, 0 or 1"),
        ("type=v5", "type: 'v5' is not v4 or v6"),
        ("iface=a/b", "iface: 'a/b' is not an interface name"),
        ("port=", "port: empty value"),
        ("ip=10.0.0.1", "unknown query parameter 'ip' (known: iface, port, proto, scanners, type)"),
        ("port", "malformed query string: bad query field: 'port'"),
        ("&".join(["port=1"] * 65), "malformed query string: Max number of fields exceeded"),
    ],
)
def test_bad_query_values_are_400(server: MetricsServer, query: str, error: str) -> None:
    answer = parse(send(server.port, f"GET /list?{query} HTTP/1.0\r\n\r\n".encode()))
    assert answer.status == BAD_REQUEST
    assert answer.json() == {"error": error}


# -- slow clients and many connections --------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", b"GET /metrics HTTP/1.0\r\nX-Slow: "])
def test_a_client_that_never_finishes_is_cut_off(
    serve: Callable[..., MetricsServer], sent: bytes
) -> None:
    short_deadline = SHORT_DEADLINE_S
    server = serve(limits=Limits(request_timeout_s=short_deadline))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
        slow.sendall(sent)
        started = time.monotonic()
        wait_for(lambda: server.connections == 1, 5, "the slow client accepted")
        # Meanwhile, others are answered.
        for _ in range(5):
            assert get_status(server.port) == 200
        assert still_open(slow), "cut off before its deadline"
        closed, received = closed_by_server(slow, short_deadline + 5)
        elapsed = time.monotonic() - started
    assert closed, "a client that never finished its request was not cut off"
    assert received == b""  # no answer at all: the request never arrived
    assert short_deadline * 0.9 <= elapsed < short_deadline + 2
    wait_for(lambda: server.connections == 0, 5, "the slot of the slow client freed")


def test_many_connections_are_limited_and_memory_is_bounded(
    serve: Callable[..., MetricsServer],
) -> None:
    """200 clients each hold a connection with a request that never ends (30 KiB of headers,
    just under the limit). max_connections of them are admitted, the others closed at once
    without a byte; a newcomer is closed while the slots are full and answered as soon as one
    frees; at the deadline the server cuts the rest off by itself, without an answer.

    Memory, as the test process's RSS (server and clients are one process; the clients' part is
    a few socket objects): at the peak of the first round it may be at most 16 MiB above the
    baseline (measured here: 3.5 to 6 MiB; the server holds at most 64 request buffers of at
    most 32 KiB and 64 thread stacks). Three more rounds follow, and between the first and the
    last of them RSS may grow by at most 3 MiB (measured: under 1 MiB; keeping one request
    buffer per admitted connection would be 2 MiB a round).
    """
    # Long enough to open the 200 connections and look at them, short enough for the test.
    deadline_s = 4.0
    server = serve(limits=Limits(request_timeout_s=deadline_s))
    # Warm up: the first thread, the first request, the allocator's first arenas.
    assert get_status(server.port) == 200
    baseline = rss_bytes()
    peak = _one_round_of_200(server, deadline_s, wait_for_the_deadline=True)
    assert peak - baseline < 16 << 20, f"RSS grew by {(peak - baseline) >> 20} MiB"
    after_rounds = []
    for _ in range(3):
        _one_round_of_200(server, deadline_s, wait_for_the_deadline=False)
        after_rounds.append(rss_bytes())
    growth = after_rounds[-1] - after_rounds[0]
    assert growth < 3 << 20, f"RSS grew by {growth >> 10} KiB over two rounds"


def _one_round_of_200(server: MetricsServer, deadline_s: float, wait_for_the_deadline: bool) -> int:
    """Returns the RSS with the connections held."""
    partial = b"GET /metrics HTTP/1.0\r\nX-Pad: " + b"p" * (30 * 1024)
    held: list[socket.socket] = []
    try:
        # One after the other, each seen admitted or closed before the next: a burst would
        # overflow the listen queue, and a dropped SYN is only sent again a second later.
        for number in range(200):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            held.append(conn)
            with contextlib.suppress(ConnectionError):  # closed at once if over the limit
                conn.sendall(partial)
            if number < MAX_CONNECTIONS:
                wait_for(lambda n=number: server.connections == n + 1, 5, "admitted")
            else:
                assert closed_by_server(conn, 5) == (True, b""), "over the limit, not closed"
        assert server.connections == MAX_CONNECTIONS
        # The admitted ones are still waiting, without an answer (anything received would
        # count as open here).
        assert sum(still_open(conn) for conn in held) == MAX_CONNECTIONS
        peak = rss_bytes()
        if not wait_for_the_deadline:
            return peak
        # Full: a newcomer is closed without an answer.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as newcomer:
            assert closed_by_server(newcomer, 5) == (True, b"")
        # One slot freed by its client: a newcomer is answered within a deadline.
        next(conn for conn in held if still_open(conn)).close()
        wait_for(lambda: _answered(server.port), 5, "a newcomer answered after a slot freed")
        # The rest are cut off at their deadline by the server itself, without an answer.
        wait_for(lambda: server.connections == 0, deadline_s + 5, "the held connections cut")
        for conn in held:
            if conn.fileno() != -1:
                assert closed_by_server(conn, 1) == (True, b"")
        assert get_status(server.port) == 200
        return peak
    finally:
        for conn in held:
            conn.close()
        wait_for(lambda: server.connections == 0, 10, "every connection of the round closed")


def big_view(rows: int) -> View:
    """A view with `rows` sources (10.0.0.0 upwards, port 22): about 170 bytes each in /list."""
    addresses = np.zeros((rows, 16), np.uint8)
    addresses[:, 10:12] = 0xFF
    addresses[:, 12:16] = (np.arange(rows, dtype=">u4") + 0x0A000000).view(np.uint8).reshape(-1, 4)
    keys = np.zeros(rows, KEY_DTYPE)
    keys["addr"] = addresses.view("V16").ravel()
    keys["ifindex"], keys["port"], keys["proto"], keys["family"] = 2, 22, 6, 4
    values = np.zeros(rows, VALUE_DTYPE)
    values["first_seen"] = values["last_seen"] = NOW - S
    values["packets"], values["bytes"] = 1, 60
    snapshot = Snapshot(keys, values, NOW, WALL, {}, rows, rows)
    return sample_view(active=active_set(snapshot, 60, IFNAMES), snapshot=snapshot)


def test_a_client_that_never_reads_its_answer_is_cut_off() -> None:
    """A /list of ~17 MB to a client that reads nothing: more than the socket buffers hold, so
    the server's writes block. The answer's own clock (response_timeout_s, 1 s here) cuts the
    connection, long before the 10 s that each socket operation may take; meanwhile the other
    /list slot serves others, and afterwards both slots are free again. (What the cut-off
    client got is a truncated array: with no Content-Length, only the JSON says so.)"""
    view = big_view(100_000)
    server = MetricsServer.bind(
        "127.0.0.1", 0, lambda: view, Exposition(False), limits=Limits(response_timeout_s=1.0)
    )
    server.start()
    try:
        with socket.socket() as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.settimeout(10)
            stalled.connect(("127.0.0.1", server.port))
            stalled.sendall(b"GET /list HTTP/1.0\r\n\r\n")
            started = time.monotonic()
            wait_for(lambda: server.connections == 1, 5, "the stalled client accepted")
            # The other slot answers (a small selection: the 1 s clock applies to it too).
            assert _get_list(server.port, "/list?port=23") == (200, b"[]\n")
            wait_for(lambda: server.connections == 0, 5, "the stalled client cut off")
            elapsed = time.monotonic() - started
            assert 0.9 <= elapsed < 4, f"cut off after {elapsed:.1f} s"
            with contextlib.suppress(ConnectionResetError):
                received = b""
                while chunk := stalled.recv(1 << 20):
                    received += chunk
                assert 0 < len(received) < 100_000 * 170  # a beginning, then the end
        for _ in range(MAX_LIST_RENDERS):
            assert server.routes.list_renders.acquire(blocking=False), (
                "a /list slot was not released"
            )
        for _ in range(MAX_LIST_RENDERS):
            server.routes.list_renders.release()
    finally:
        server.close()


def _get_list(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _answered(port: int) -> bool:
    try:
        return get_status(port) == 200
    except (ConnectionError, http.client.RemoteDisconnected):
        return False


# -- the listen address -----------------------------------------------------------------------


def _refused(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect((host, port))
        except ConnectionRefusedError:
            return True
    return False


def test_a_loopback_listen_address_is_not_reachable_on_other_addresses(
    serve: Callable[..., MetricsServer],
) -> None:
    """127.0.0.1 and 127.0.0.2 are both this host's (all of 127/8 is loopback): a server on
    one is not reachable through the other, while a server on the other is (so the refusal is
    the listen address's doing, not an unusable address)."""
    first = serve(address="127.0.0.1")
    second = serve(address="127.0.0.2")
    assert ok(first.port, host="127.0.0.1")
    assert ok(second.port, host="127.0.0.2")
    assert _refused("127.0.0.2", first.port)
    assert _refused("127.0.0.1", second.port)


def test_ipv4_loopback_is_not_reachable_over_ipv6_and_back(
    serve: Callable[..., MetricsServer], require: Callable[[object, str], None]
) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        require(False, "IPv6 loopback (::1) is not available here")
    v4 = serve(address="127.0.0.1")
    v6 = serve(address="::1")
    assert ok(v6.port, host="::1")
    assert _refused("::1", v4.port)
    assert _refused("127.0.0.1", v6.port)


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def web_file(tmp_path: Path, pki: PKI) -> Callable[[str], WebConfig]:
    """A web configuration from YAML text; {cert}, {key}, {client_ca} are filled in."""

    def load(text: str) -> WebConfig:
        path = tmp_path / "web.yml"
        path.write_text(
            text.format(cert=pki.server_cert, key=pki.server_key, client_ca=pki.client_ca)
        )
        return load_web_config(path)

    return load


TLS = "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"


def client_context(pki: PKI, ca: Path | None = None, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that verifies the server (the test CA unless told otherwise)."""
    context = ssl.create_default_context(cafile=str(ca or pki.ca))
    for name, version in versions.items():
        setattr(context, name, version)
    return context


def https(
    port: int,
    context: ssl.SSLContext,
    path: str = "/metrics",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_tls_serves_a_verifying_client(
    serve: Callable[..., MetricsServer], web_file: Callable[[str], WebConfig], pki: PKI
) -> None:
    server = serve(web_file(TLS))
    status, headers, body = https(server.port, client_context(pki))
    assert status == 200
    assert body == Exposition(False).render(sample_view(), None)[0]
    assert int(headers["Content-Length"]) == len(body)


def test_tls_is_refused_by_a_client_that_does_not_trust_the_certificate(
    serve: Callable[..., MetricsServer], web_file: Callable[[str], WebConfig], pki: PKI
) -> None:
    server = serve(web_file(TLS))
    with pytest.raises(ssl.SSLCertVerificationError):
        https(server.port, client_context(pki, ca=pki.stranger_ca))
    assert https(server.port, client_context(pki))[0] == 200


def test_plain_http_to_the_tls_port_gets_nothing(
    serve: Callable[..., MetricsServer], web_file: Callable[[str], WebConfig], pki: PKI
) -> None:
    server = serve(web_file(TLS))
    assert send(server.port, b"GET /metrics HTTP/1.0\r\n\r\n") == b""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        with pytest.raises(http.client.RemoteDisconnected):
            connection.getresponse()
    finally:
        connection.close()
    assert https(server.port, client_context(pki))[0] == 200


def test_a_tls_list_ends_with_close_notify(
    serve: Callable[..., MetricsServer], web_file: Callable[[str], WebConfig], pki: PKI
) -> None:
    """/list has no Content-Length: its end is the end of the stream, which over TLS only
    close_notify makes distinguishable from a cut (suppress_ragged_eofs=False would raise)."""
    server = serve(web_file(TLS))
    context = client_context(pki)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as conn,
    ):
        conn.sendall(b"GET /list HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    answer = parse(b"".join(chunks))
    assert answer.status == "HTTP/1.0 200 OK"
    assert answer.body == (FIXTURES / "list.json").read_bytes()


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01"])  # nothing; half a record header
def test_a_tls_client_that_never_says_hello_blocks_nobody(
    serve: Callable[..., MetricsServer],
    web_file: Callable[[str], WebConfig],
    pki: PKI,
    sent: bytes,
) -> None:
    short_deadline = SHORT_DEADLINE_S
    server = serve(web_file(TLS), limits=Limits(request_timeout_s=short_deadline))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
        silent.sendall(sent)
        started = time.monotonic()
        wait_for(lambda: server.connections == 1, 5, "the silent client accepted")
        for _ in range(3):
            assert https(server.port, client_context(pki))[0] == 200
        assert still_open(silent)
        closed, received = closed_by_server(silent, short_deadline + 5)
        elapsed = time.monotonic() - started
    assert (closed, received) == (True, b"")
    assert short_deadline * 0.9 <= elapsed < short_deadline + 2


def test_tls_versions_are_enforced(
    serve: Callable[..., MetricsServer], web_file: Callable[[str], WebConfig], pki: PKI
) -> None:
    server = serve(web_file(TLS + "  min_version: TLS13\n"))
    with pytest.raises(ssl.SSLError):
        https(server.port, client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2))
    assert https(server.port, client_context(pki, minimum_version=ssl.TLSVersion.TLSv1_3))[0] == 200


def test_cipher_suites_are_applied(
    serve: Callable[..., MetricsServer], web_file: Callable[[str], WebConfig], pki: PKI
) -> None:
    suite = "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
    text = TLS + f"  max_version: TLS12\n  cipher_suites: [{suite}]\n"
    server = serve(web_file(text))
    context = client_context(pki)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        assert conn.version() == "TLSv1.2"
        assert conn.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_client_certificates(
    serve: Callable[..., MetricsServer], web_file: Callable[[str], WebConfig], pki: PKI
) -> None:
    text = TLS + "  client_auth_type: RequireAndVerifyClientCert\n"
    text += "  client_ca_file: {client_ca}\n"
    server = serve(web_file(text))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https(server.port, client_context(pki))  # no certificate
    stranger = client_context(pki)
    stranger.load_cert_chain(str(pki.stranger_cert), str(pki.stranger_key))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https(server.port, stranger)  # a certificate from a CA the server does not trust
    client = client_context(pki)
    client.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    assert https(server.port, client)[0] == 200


# -- basic auth ---------------------------------------------------------------------------------

REALM = 'Basic realm="xdp-ip-counter"'


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return bcrypt_hash("wonderland")


@pytest.fixture(params=["plain", "tls"])
def auth_server(
    request: pytest.FixtureRequest,
    serve: Callable[..., MetricsServer],
    web_file: Callable[[str], WebConfig],
    pki: PKI,
    alice_hash: str,
) -> Callable[..., tuple[int, http.client.HTTPMessage, bytes]]:
    """A server that wants alice's password, over plain HTTP and over TLS; returns a function
    making one request to it."""
    users = f"basic_auth_users:\n  alice: '{alice_hash}'\n"
    headers = "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    if request.param == "tls":
        server = serve(web_file(TLS + users + headers))

        def ask(path: str, authorization: str | None = None, method: str = "GET") -> Any:
            extra = {"Authorization": authorization} if authorization else {}
            return https(server.port, client_context(pki), path, method, extra)

        return ask
    server = serve(web_file(users + headers))

    def ask_plain(path: str, authorization: str | None = None, method: str = "GET") -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            extra = {"Authorization": authorization} if authorization else {}
            connection.request(method, path, headers=extra)
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    return ask_plain


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/metrics"), ("GET", "/list"), ("GET", "/list?port=bad"),
     ("GET", "/nope"), ("POST", "/metrics"), ("HEAD", "/metrics")],
)  # fmt: skip
@pytest.mark.parametrize(
    "authorization",
    [None, basic("alice", "wrong"), basic("alice", "wonderland "), basic("mallory", "wonderland"),
     "Basic bm90IGJhc2U2NA", "Bearer d29uZGVybGFuZA=="],
)  # fmt: skip
def test_without_valid_credentials_everything_is_401(
    auth_server: Callable[..., Any], method: str, path: str, authorization: str | None
) -> None:
    status, headers, body = auth_server(path, authorization, method)
    assert status == 401
    assert headers["WWW-Authenticate"] == REALM
    assert headers["X-Frame-Options"] == "deny"
    assert headers["Content-Type"] == JSON
    expected = b'{"error": "authentication required"}\n'
    assert int(headers["Content-Length"]) == len(expected)
    assert body == (b"" if method == "HEAD" else expected)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/", 200), ("GET", "/metrics", 200), ("GET", "/list", 200), ("HEAD", "/", 200),
     ("GET", "/list?port=bad", 400), ("GET", "/nope", 404), ("POST", "/metrics", 405)],
)  # fmt: skip
def test_with_the_right_password_everything_is_served(
    auth_server: Callable[..., Any], method: str, path: str, status: int
) -> None:
    got, headers, body = auth_server(path, basic("alice", "wonderland"), method)
    assert got == status
    assert "WWW-Authenticate" not in headers
    assert headers["X-Frame-Options"] == "deny"
    if path == "/list":
        assert body == (FIXTURES / "list.json").read_bytes()


def test_a_scrape_after_the_first_costs_no_bcrypt(
    serve: Callable[..., MetricsServer], web_file: Callable[[str], WebConfig], alice_hash: str
) -> None:
    server = serve(web_file(f"basic_auth_users:\n  alice: '{alice_hash}'\n"))
    request = b"GET /metrics HTTP/1.0\r\nAuthorization: " + basic("alice", "wonderland").encode()
    for _ in range(10):
        assert parse(send(server.port, request + b"\r\n\r\n")).status == "HTTP/1.0 200 OK"
    assert server.verified_passwords.bcrypt_runs == 1
