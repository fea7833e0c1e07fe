"""The HTTP server: ``/`` (a landing page), ``/metrics`` (Prometheus) and ``/list`` (JSON).

Nothing else. Every request reads the View the daemon swapped in last (one attribute read, no
lock held while rendering); no request ever touches the kernel.

Limits, because the port may be reachable by clients that are not Prometheus:
- one request per connection (HTTP/1.0, ``Connection: close``);
- the request line at most 8 KiB (414), the request line and headers together at most 32 KiB
  (431), at most 64 headers (431); a body is never read;
- the whole request must arrive within 10 s of the connection (a client trickling headers is cut
  off), every later socket operation (each write of the response) within 10 s, and the whole
  response within 300 s (a client reading a large /list a byte at a time is cut off too);
- at most 64 connections at once; beyond that new connections are closed at once;
- at most 2 /list answers rendered at once (a million rows is ~2 s of CPU); more get 503;
- what HTTP forbids and http.server lets through is 400: a method that is not a token, a target
  with spaces, controls or non-ASCII bytes, a header line without a name and a colon, obsolete
  line folding, control characters in a header value.
Requests are logged at debug level only: a scrape every few seconds is not news.

With a web configuration file (webconfig.py), the TLS handshake happens in the connection's own
thread, within the same 10 s as the request (a client that connects and never says hello holds
one connection slot, never the accept loop), and basic authentication comes before everything
else: without valid credentials every path is 401, unknown ones included.
"""

from __future__ import annotations

import contextlib
import errno
import html
import ipaddress
import json
import logging
import re
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.client import LineTooLong
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

from xdp_ip_counter import __version__
from xdp_ip_counter.metrics import Exposition, View
from xdp_ip_counter.webconfig import NO_WEB_CONFIG, BasicAuth, WebConfig, challenge
from xdp_ip_counter.window import ActiveSet, family_name, protocol_name, rfc3339_ms

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0  # to receive the whole request; also each socket operation after it
# To send the whole answer. /list can be ~200 MB for a million sources: 300 s is ~5 Mbit/s.
RESPONSE_TIMEOUT_S = 300.0
MAX_REQUEST_LINE = 8 * 1024
MAX_REQUEST_BYTES = 32 * 1024  # request line + headers
MAX_HEADERS = 64
MAX_CONNECTIONS = 64
MAX_QUERY_FIELDS = 64
LINGER_S = 1.0  # after answering, how long to wait for the client to close
LINGER_BYTES = 64 * 1024  # and how much of its unread input to drop meanwhile
LIST_CHUNK_ROWS = 16384  # rows of /list rendered (and held as text) at a time
MAX_LIST_RENDERS = 2  # /list answers being rendered at once (each costs CPU and a row copy)

ALLOWED_METHODS = "GET, HEAD"
HTML = "text/html; charset=utf-8"
JSON = "application/json"

LIST_PARAMETERS = ("iface", "port", "proto", "type")
_PORT = re.compile(r"[0-9]{1,5}")
# RFC 9110 tokens (methods, header names); a request target is visible ASCII (RFC 9112, 3.2).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"[\x21-\x7e]+")
_CONTROL_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17}
_FAMILY_NUMBERS = {"v4": 4, "v6": 6}


class ListenError(Exception):
    """The HTTP port could not be bound; the message names address:port and the reason."""


class BadQuery(ValueError):
    """A /list query that cannot be answered; the message says which parameter and why."""


# -- /list ------------------------------------------------------------------------------------


def list_filters(query: str) -> dict[str, list[Any]]:
    """Parse a /list query string into ActiveSet.select() arguments.

    Parameters: ``port`` (0..65535), ``proto`` (tcp, udp), ``type`` (v4, v6), ``iface`` (an
    interface name). Each may be repeated or take a comma-separated list: values of one parameter
    are alternatives (OR), different parameters must all match (AND). Anything else is a BadQuery.
    """
    try:
        pairs = parse_qsl(
            query,
            keep_blank_values=True,
            strict_parsing=bool(query),
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except ValueError as exc:
        raise BadQuery(f"malformed query string: {exc}") from None
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in LIST_PARAMETERS:
            raise BadQuery(
                f"unknown query parameter {name!r} (known: {', '.join(LIST_PARAMETERS)})"
            )
        for item in value.split(","):
            if not item:
                raise BadQuery(f"{name}: empty value")
            values.setdefault(name, []).append(item)
    filters: dict[str, list[Any]] = {}
    for item in values.get("port", []):
        if not _PORT.fullmatch(item) or int(item) > 65535:
            raise BadQuery(f"port: {item!r} is not a port number 0..65535")
        filters.setdefault("ports", []).append(int(item))
    for item in values.get("proto", []):
        if item.lower() not in _PROTOCOL_NUMBERS:
            raise BadQuery(f"proto: {item!r} is not tcp or udp")
        filters.setdefault("protos", []).append(_PROTOCOL_NUMBERS[item.lower()])
    for item in values.get("type", []):
        if item.lower() not in _FAMILY_NUMBERS:
            raise BadQuery(f"type: {item!r} is not v4 or v6")
        filters.setdefault("families", []).append(_FAMILY_NUMBERS[item.lower()])
    for item in values.get("iface", []):
        # As the kernel's dev_valid_name(): 1..15 bytes, no '/', ':' or whitespace.
        if len(item.encode()) > 15 or item in (".", "..") or re.search(r"[/:\s]", item):
            raise BadQuery(f"iface: {item!r} is not an interface name")
        filters.setdefault("interfaces", []).append(item)
    return filters


_ROW = (
    '{"ip":"%s","type":"%s","port":%d,"proto":"%s","interfaces":%s,'
    '"first_seen":"%s","last_seen":"%s","packets":%d,"bytes":%d}'
)


def list_json_chunks(active: ActiveSet, chunk_rows: int = LIST_CHUNK_ROWS) -> Iterator[bytes]:
    """The /list body, a JSON array with one object per line, a slice of rows at a time.

    Joined, the chunks are ``[\\n{...},\\n{...}\\n]\\n`` (``[]\\n`` when empty).
    """
    if len(active) == 0:
        yield b"[]\n"
        return
    interface_json: dict[tuple[str, ...], str] = {}
    family_text = {f: family_name(f) for f in set(active.rows["family"].tolist())}
    proto_text = {p: protocol_name(p) for p in set(active.rows["proto"].tolist())}
    for start in range(0, len(active), chunk_rows):
        stop = min(start + chunk_rows, len(active))
        rows = active.rows[start:stop]
        interface_lists = active.interface_lists(start, stop)
        for names in set(interface_lists) - interface_json.keys():
            interface_json[names] = json.dumps(list(names), separators=(",", ":"))
        lines = [
            _ROW % fields
            for fields in zip(
                active.ip_texts(start, stop),
                [family_text[f] for f in rows["family"].tolist()],
                rows["port"].tolist(),
                [proto_text[p] for p in rows["proto"].tolist()],
                [interface_json[names] for names in interface_lists],
                rfc3339_ms(active.wall_ms(rows["first_seen"])),
                rfc3339_ms(active.wall_ms(rows["last_seen"])),
                rows["packets"].tolist(),
                rows["bytes"].tolist(),
                strict=True,
            )
        ]
        head = "[\n" if start == 0 else ",\n"
        tail = "\n]\n" if stop == len(active) else ""
        yield (head + ",\n".join(lines) + tail).encode()


# -- the landing page -------------------------------------------------------------------------


def landing_page(view: View) -> bytes:
    """The small HTML page at /: what is watched and where the data is."""
    s = view.settings
    e = html.escape
    if s.serve_ip_list:
        list_item = '<li><a href="list">/list</a>: the active sources as JSON</li>'
    else:
        list_item = "<li>/list is disabled (enable it with --serve-ip-list or serve_ip_list)</li>"
    refreshed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(view.last_refresh_time))
    page = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>xdp-ip-counter</title></head>
<body>
<h1>xdp-ip-counter {e(view.version)}</h1>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus metrics</li>
{list_item}
</ul>
<table>
<tr><th align="left">Interfaces</th><td>{e(", ".join(s.interfaces))}</td></tr>
<tr><th align="left">XDP mode</th><td>{e(s.xdp_mode)}</td></tr>
<tr><th align="left">Ports</th><td>{e(str(s.ports))}</td></tr>
<tr><th align="left">Window</th><td>{s.window} s</td></tr>
<tr><th align="left">Active sources</th><td>{len(view.active)}</td></tr>
<tr><th align="left">Map entries</th><td>{view.entries_in_map} of {view.capacity}</td></tr>
<tr><th align="left">Last refresh</th><td>{refreshed}</td></tr>
</table>
</body>
</html>
"""
    return page.encode()


# -- the server -------------------------------------------------------------------------------


class _Deadline:
    """The clock of one connection: the handshake (with TLS) and the request must be done by the
    time the server's reaper looks at it; if not, the reaper shuts the socket down, and the read
    in progress ends."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.expired = False

    def cut_off(self) -> None:
        self.expired = True
        with contextlib.suppress(OSError):
            # socket.socket's own shutdown, also for an SSLSocket: it shuts the descriptor down
            # without touching the TLS state the connection's thread is using.
            socket.socket.shutdown(self.connection, socket.SHUT_RDWR)


class _RequestReader:
    """The request's input, with a byte budget and the connection's deadline.

    http.server reads the request line and headers with readline(); past the budget this raises
    http.client.LineTooLong, which http.server answers with 431. When the reaper finds the
    request still incomplete at its deadline it shuts the socket down, and the read in progress
    ends with TimeoutError.
    """

    def __init__(self, raw: BinaryIO, deadline: _Deadline, budget: int) -> None:
        self._raw = raw
        self._deadline = deadline
        self._remaining = budget
        self.lines: list[bytes] = []  # as received, for the checks http.server does not make

    def readline(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            raise LineTooLong("request headers")
        limit = self._remaining + 1 if size < 0 else min(size, self._remaining + 1)
        line = self._raw.readline(limit)
        if self._deadline.expired:
            raise TimeoutError(f"request not received within {REQUEST_TIMEOUT_S:g} s")
        self._remaining -= len(line)
        self.lines.append(line)
        return line

    def read(self, size: int = -1) -> bytes:  # http.server never reads a body of GET/HEAD
        raise OSError("reading a request body is not supported")

    def close(self) -> None:
        self._raw.close()


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    rfile: _RequestReader  # type: ignore[assignment]
    protocol_version = "HTTP/1.0"
    server_version = f"xdp-ip-counter/{__version__}"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def __init__(
        self, request: Any, client_address: Any, server: MetricsServer, web: WebConfig
    ) -> None:
        self.web = web  # the web configuration this connection started with, for all of it
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.deadline = _Deadline(self.request)
        self.server.start_clock(self.deadline, REQUEST_TIMEOUT_S)
        super().setup()
        self.rfile = _RequestReader(self.rfile, self.deadline, MAX_REQUEST_BYTES)

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except OSError as exc:  # a timeout, a reset, plain HTTP, a bad hello
                late = " (deadline)" if self.deadline.expired else ""
                log.debug("%s: TLS handshake failed%s: %s", self.address_string(), late, exc)
                self.server.stop_clock(self.deadline)
                return
        super().handle()

    def handle_one_request(self) -> None:
        """http.server's, with our request line limit and our own dispatch (405, not 501)."""
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            # The request is in: from now on the clock runs for the answer.
            self.server.start_clock(self.deadline, RESPONSE_TIMEOUT_S)
            if self.request_version == "HTTP/0.9":
                self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 is not supported")
                return
            problem = _malformed(self.command, self.path, self.rfile.lines[1:])
            if problem:
                self.send_error(HTTPStatus.BAD_REQUEST, problem)
                return
            if len(self.headers) > MAX_HEADERS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
                return
            if not self.server.basic_auth.allows(self.web.users, self.headers.get("Authorization")):
                self.send_error(HTTPStatus.UNAUTHORIZED, "authentication required")
                return
            self._route()
            self.wfile.flush()
        except OSError as exc:  # a timeout, a reset, a TLS error: the client's doing
            log.debug("%s: connection dropped: %s", self.address_string(), exc)
            self.close_connection = True
        finally:
            self.server.stop_clock(self.deadline)

    def _route(self) -> None:
        target = urlsplit(self.path)
        routes: dict[str, Callable[[View, str], None]] = {
            "/": self._index,
            "/metrics": self._metrics,
            "/list": self._list,
        }
        route = routes.get(target.path)
        if route is None:
            self.send_error(HTTPStatus.NOT_FOUND, f"no such page: {target.path}")
            return
        if self.command not in ("GET", "HEAD"):
            self.send_error(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{self.command} is not allowed here; use GET",
            )
            return
        view = self.server.get_view()
        if view is None:
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no data yet: the first refresh runs")
            return
        route(view, target.query)

    def _index(self, view: View, _query: str) -> None:
        self._send(HTTPStatus.OK, HTML, landing_page(view))

    def _metrics(self, view: View, _query: str) -> None:
        body, content_type = self.server.exposition.render(view, self.headers.get("Accept"))
        self._send(HTTPStatus.OK, content_type, body)

    def _list(self, view: View, query: str) -> None:
        if not view.settings.serve_ip_list:
            self.send_error(
                HTTPStatus.NOT_FOUND,
                "the list is disabled: start with --serve-ip-list or set serve_ip_list = true",
            )
            return
        try:
            filters = list_filters(query)
        except BadQuery as exc:
            self.send_error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        if self.command == "HEAD":
            self._list_headers()
            return
        if not self.server.list_renders.acquire(blocking=False):
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "busy rendering /list: try again")
            return
        try:
            selected = view.active.select(**filters)
            self._list_headers()
            for chunk in list_json_chunks(selected):
                self.wfile.write(chunk)
        finally:
            self.server.list_renders.release()

    def _list_headers(self) -> None:
        # The length is not known before the last row is rendered: the body ends when the
        # connection closes (HTTP/1.0), and only one slice of rows is held as text at a time.
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", JSON)
        self._common_headers()
        self.end_headers()

    # -- responses -----------------------------------------------------------------------

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        configured = dict(self.web.headers)
        if "X-Content-Type-Options" not in configured:
            self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in self.web.headers:
            self.send_header(name, value)
        self.send_header("Connection", "close")

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", ALLOWED_METHODS)
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "1")
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", challenge())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every error, ours and http.server's (400, 401, 414, 431, 505), as {"error": "..."}."""
        status = HTTPStatus(code)
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # not known yet (a bad request line): answer 1.0
            self.request_version = "HTTP/1.0"
        body = json.dumps({"error": message or status.phrase}).encode() + b"\n"
        self._send(status, JSON, body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.address_string(), *args)


def _malformed(method: str, target: str, header_lines: list[bytes]) -> str | None:
    """What http.server lets through but HTTP does not allow (RFC 9110, 9112): a method that is
    not a token, a target with spaces, controls or non-ASCII, a header line without a name and
    a colon, obsolete line folding, control characters in a value. None when all is well."""
    if not _TOKEN.fullmatch(method):
        return f"malformed method {method!r}"
    if not _TARGET.fullmatch(target):
        return f"malformed request target {target!r}"
    for received in header_lines:
        line = received.rstrip(b"\r\n")
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            return "obsolete line folding in the headers"
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            return f"malformed header line {line[:40].decode('latin-1')!r}"
        if _CONTROL_IN_VALUE.search(value):
            return f"control character in the value of header {name.decode('latin-1')!r}"
    return None


class MetricsServer(ThreadingHTTPServer):
    """Serves /, /metrics and /list from the View that ``get_view()`` returns at each request,
    with the TLS, authentication and headers of ``web_config`` (swapped by set_web_config)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(
        self,
        address: str,
        port: int,
        get_view: Callable[[], View | None],
        exposition: Exposition | None = None,
        web_config: WebConfig = NO_WEB_CONFIG,
    ) -> None:
        self.get_view = get_view
        self.exposition = exposition if exposition is not None else Exposition()
        self.web_config = web_config
        self.basic_auth = BasicAuth()
        self.address_family = _family_of(address)
        self._connections = 0
        self._connections_lock = threading.Lock()
        self.list_renders = threading.BoundedSemaphore(MAX_LIST_RENDERS)
        self._deadlines: dict[_Deadline, float] = {}
        self._deadlines_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake_reaper = threading.Event()
        self._service_threads: list[threading.Thread] = []
        super().__init__((address, port), _Handler)

    @classmethod
    def bind(
        cls,
        address: str,
        port: int,
        get_view: Callable[[], View | None],
        exposition: Exposition | None = None,
        web_config: WebConfig = NO_WEB_CONFIG,
    ) -> MetricsServer:
        """Bind and listen on address:port (IPv4 or IPv6); ListenError says why not."""
        shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        try:
            return cls(address, port, get_view, exposition, web_config)
        except OSError as exc:
            hint = {
                errno.EADDRINUSE: " (another process listens there: see `ss -ltnp`)",
                errno.EADDRNOTAVAIL: " (no interface of this host has that address)",
                errno.EACCES: " (permission denied)",
            }.get(exc.errno or 0, "")
            raise ListenError(f"cannot listen on {shown}: {exc.strerror or exc}{hint}") from exc

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (getfqdn): a DNS query at start-up.
        if self.address_family == socket.AF_INET6:
            # "::" means every address, IPv4 included, whatever net.ipv6.bindv6only says.
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def set_web_config(self, web_config: WebConfig) -> None:
        """Use another web configuration (a reload) from the next connection on; connections
        in progress finish with the one they started with."""
        self.web_config = web_config

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return int(self.server_address[1])

    def start(self) -> None:
        """Serve in background threads: one accepting, one enforcing request deadlines."""
        for name, target in (("http", self._accept), ("http-deadlines", self._reap)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._service_threads.append(thread)

    def shutdown(self) -> None:
        """Stop accepting (requests in progress are not waited for)."""
        self._stopping.set()
        self._wake_reaper.set()
        with contextlib.suppress(OSError):
            # Wakes the accept() in progress (Linux: it fails with EINVAL).
            self.socket.shutdown(socket.SHUT_RDWR)
        for thread in self._service_threads:
            thread.join(timeout=5)
        self._service_threads = []

    def close(self) -> None:
        """Stop accepting and release the port."""
        self.shutdown()
        self.server_close()

    def _accept(self) -> None:
        """socketserver's serve_forever() without its polling: accept() blocks until a client
        comes or close() shuts the listening socket down."""
        while not self._stopping.is_set():
            try:
                request, client_address = self.socket.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                # Out of file descriptors or a connection aborted before accept: not fatal.
                log.warning("accepting a connection failed: %s", exc)
                self._stopping.wait(0.1)
                continue
            try:
                self.process_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
                self.close_request(request)

    # -- connection limit and request deadlines ------------------------------------------

    @property
    def connections(self) -> int:
        """Connections being served now."""
        with self._connections_lock:
            return self._connections

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            admitted = self._connections < MAX_CONNECTIONS
            if admitted:
                self._connections += 1
        if not admitted:
            log.debug("%s: over %d connections, closed", client_address, MAX_CONNECTIONS)
            self.close_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """socketserver's, with the connection wrapped for TLS (no I/O: the handshake is the
        handler's first step, on the request's clock) and the web configuration read once."""
        web = self.web_config
        try:
            if web.tls is not None:
                request = web.tls.wrap_socket(
                    request, server_side=True, do_handshake_on_connect=False
                )
            _Handler(request, client_address, self, web)
        except OSError as exc:  # the client went away while the connection was being set up
            log.debug("%s: connection dropped: %s", client_address[0], exc)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._release()

    def _release(self) -> None:
        with self._connections_lock:
            self._connections -= 1

    def shutdown_request(self, request: Any) -> None:
        """Close gracefully: send FIN, then read and drop what the client still sends (for at
        most LINGER_S and LINGER_BYTES), so that closing with unread input (a request cut short
        by a limit, a pipelined second request) does not reset the connection and destroy the
        answer before the client has read it. A TLS connection says close_notify first, so that
        a client reading a /list body to the end of the stream knows it was not cut short."""
        if isinstance(request, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                request.settimeout(LINGER_S)
                request = request.unwrap()
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            dropped = 0
            while dropped < LINGER_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                request.settimeout(remaining)
                data = request.recv(65536)
                if not data:
                    break
                dropped += len(data)
        self.close_request(request)

    def start_clock(self, deadline: _Deadline, seconds: float) -> None:
        """(Re)start a connection's clock: what it is doing (the TLS handshake and the request,
        or the answer) must be done within `seconds`, or the reaper cuts it off."""
        due = time.monotonic() + seconds
        with self._deadlines_lock:
            earliest = min(self._deadlines.values(), default=None)
            self._deadlines[deadline] = due
        if earliest is None or due < earliest:  # earlier than what the reaper sleeps towards
            self._wake_reaper.set()

    def stop_clock(self, deadline: _Deadline) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(deadline, None)

    def _reap(self) -> None:
        """Shut down the connections that are late. Sleeps until the next deadline."""
        while not self._stopping.is_set():
            with self._deadlines_lock:
                now = time.monotonic()
                late = [clock for clock, deadline in self._deadlines.items() if deadline <= now]
                for clock in late:
                    del self._deadlines[clock]
                upcoming = min(self._deadlines.values(), default=None)
                self._wake_reaper.clear()
            for deadline in late:
                deadline.cut_off()
            timeout = None if upcoming is None else max(upcoming - time.monotonic(), 0) + 0.01
            self._wake_reaper.wait(timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A bug in a handler: say so once, with the traceback, in the log (not on stdout).
        log.exception("error while serving %s", client_address)


def _family_of(address: str) -> socket.AddressFamily:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET
