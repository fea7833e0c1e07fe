"""A hardened HTTP/1.0 server for a WSGI application; it knows nothing of the application.

What it is given as constructor arguments: the application (PEP 3333: called once per request,
its answer iterated and closed), the Limits, and a Policy (TLS context, an authentication hook,
extra response headers) that set_policy() swaps for the connections that start afterwards.

Limits, because the port may be reachable by clients that are not well-behaved (the defaults):
- one request per connection (HTTP/1.0, ``Connection: close``);
- the request line at most 8 KiB (414), the request line and headers together at most 32 KiB
  (431), at most 64 headers (431); a body is never read;
- the whole request (and, with TLS, the handshake) must arrive within 10 s of the connection (a
  client trickling headers is cut off), every later socket operation (each write of the
  response) within 10 s, and the whole response within 300 s (a client reading a large answer a
  byte at a time is cut off too);
- at most 64 connections at once; beyond that new connections are closed at once;
- what HTTP forbids and http.server lets through is 400: a method that is not a token, a target
  with spaces, controls or non-ASCII bytes, a header line without a name and a colon, obsolete
  line folding, control characters in a header value.
Every error this server makes is JSON, ``{"error": "..."}`` (error_body(); an application that
wants its errors to look the same uses it too). Requests are logged at debug level only.

With TLS, the handshake happens in the connection's own thread, on the request's clock (a client
that connects and never says hello holds one connection slot, never the accept loop), and the
authentication hook comes before the application: without its consent every path is 401.
"""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import json
import logging
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.client import LineTooLong
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, Protocol

log = logging.getLogger(__name__)

JSON = "application/json"
# Written first, before the server's own headers; the application's other headers come last.
_ENTITY_HEADERS = ("content-type", "content-length")

# RFC 9110 tokens (methods, header names); a request target is visible ASCII (RFC 9112, 3.2).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"[\x21-\x7e]+")
_CONTROL_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

WSGIApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class Limits:
    request_timeout_s: float = 10.0  # to receive the whole request; also each later socket op
    # To send the whole answer (200 MB at ~5 Mbit/s).
    response_timeout_s: float = 300.0
    max_request_line: int = 8 * 1024
    max_request_bytes: int = 32 * 1024  # request line + headers
    max_headers: int = 64
    max_connections: int = 64
    linger_s: float = 1.0  # after answering, how long to wait for the client to close
    linger_bytes: int = 64 * 1024  # and how much of its unread input to drop meanwhile


class Authenticator(Protocol):
    """The authentication hook: whether a request's Authorization header (None if absent) is
    accepted, and the WWW-Authenticate value of the 401 when it is not."""

    def allows(self, authorization: str | None) -> bool: ...

    def challenge(self) -> str: ...


@dataclass(frozen=True)
class Policy:
    """What a connection gets, read once when it starts."""

    tls: ssl.SSLContext | None = None  # None: plain HTTP
    auth: Authenticator | None = None  # None: no authentication
    headers: tuple[tuple[str, str], ...] = ()  # added to every answer


class ListenError(Exception):
    """The HTTP port could not be bound; the message names address:port and the reason."""


def error_body(message: str) -> bytes:
    """The body of every error answer."""
    return json.dumps({"error": message}).encode() + b"\n"


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
            raise TimeoutError("request not received in time")
        self._remaining -= len(line)
        self.lines.append(line)
        return line

    def read(self, size: int = -1) -> bytes:  # http.server never reads a body of GET/HEAD
        raise OSError("reading a request body is not supported")

    def close(self) -> None:
        self._raw.close()


class _Handler(BaseHTTPRequestHandler):
    server: Server
    rfile: _RequestReader  # type: ignore[assignment]
    protocol_version = "HTTP/1.0"
    sys_version = ""

    def __init__(self, request: Any, client_address: Any, server: Server, policy: Policy) -> None:
        self.policy = policy  # what this connection started with, for all of it
        self.limits = server.limits
        self.server_version = server.software
        self.timeout = self.limits.request_timeout_s
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.deadline = _Deadline(self.request)
        self.server.start_clock(self.deadline, self.limits.request_timeout_s)
        super().setup()
        self.rfile = _RequestReader(self.rfile, self.deadline, self.limits.max_request_bytes)

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
        """http.server's, with our request line limit and the application instead of do_GET."""
        limits = self.limits
        try:
            self.raw_requestline = self.rfile.readline(limits.max_request_line + 1)
            if len(self.raw_requestline) > limits.max_request_line:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            # The request is in: from now on the clock runs for the answer.
            self.server.start_clock(self.deadline, limits.response_timeout_s)
            if self.request_version == "HTTP/0.9":
                self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 is not supported")
                return
            problem = _malformed(self.command, self.path, self.rfile.lines[1:])
            if problem:
                self.send_error(HTTPStatus.BAD_REQUEST, problem)
                return
            if len(self.headers) > limits.max_headers:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
                return
            auth = self.policy.auth
            if auth is not None and not auth.allows(self.headers.get("Authorization")):
                self.send_error(
                    HTTPStatus.UNAUTHORIZED,
                    "authentication required",
                    headers=[("WWW-Authenticate", auth.challenge())],
                )
                return
            self._run_application()
            self.wfile.flush()
        except OSError as exc:  # a timeout, a reset, a TLS error: the client's doing
            log.debug("%s: connection dropped: %s", self.address_string(), exc)
            self.close_connection = True
        finally:
            self.server.stop_clock(self.deadline)

    def _run_application(self) -> None:
        """A WSGI gateway for a request without a body; the answer ends with the connection."""
        _, _, query = self.path.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": self.path.partition("?")[0],
            "QUERY_STRING": query,
            "REQUEST_URI": self.path,  # as sent, not percent-decoded
            "SERVER_NAME": self.server.server_name,
            "SERVER_PORT": str(self.server.server_port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self.policy.tls is not None else "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            started[:] = [(status, headers)]
            return self.wfile.write

        answer = self.server.application(environ, start_response)
        try:
            status, headers = started[0]
            self._respond(int(status[:3]), headers)
            for chunk in answer:
                if chunk and self.command != "HEAD":
                    self.wfile.write(chunk)
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()

    def _respond(self, code: int, headers: list[tuple[str, str]]) -> None:
        """The status line and the headers: the application's Content-Type and Content-Length,
        the server's (no caching, nosniff unless configured, the policy's), the application's
        others."""
        self.send_response(code)
        entity = [(n, v) for n, v in headers if n.lower() in _ENTITY_HEADERS]
        for name, value in entity:
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-store")
        configured = dict(self.policy.headers)
        if "X-Content-Type-Options" not in configured:
            self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in self.policy.headers:
            self.send_header(name, value)
        self.send_header("Connection", "close")
        for name, value in headers:
            if name.lower() not in _ENTITY_HEADERS:
                self.send_header(name, value)
        self.end_headers()

    def send_error(
        self,
        code: int,
        message: str | None = None,
        explain: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Every error of this server and of http.server (400, 401, 414, 431, 505), as JSON."""
        status = HTTPStatus(code)
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # not known yet (a bad request line): answer 1.0
            self.request_version = "HTTP/1.0"
        body = error_body(message or status.phrase)
        self._respond(code, [("Content-Type", JSON), ("Content-Length", str(len(body))), *headers])
        if self.command != "HEAD":
            self.wfile.write(body)

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


class Server(ThreadingHTTPServer):
    """Serves `application` on address:port with `limits`, each connection under the `policy`
    that was current when it started. `software` is the Server header's value."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(
        self,
        address: str,
        port: int,
        application: WSGIApplication,
        *,
        limits: Limits = Limits(),
        policy: Policy = Policy(),
        software: str = "",
    ) -> None:
        self.application = application
        self.limits = limits
        self.software = software
        self._policy = policy
        self.address_family = _family_of(address)
        self._connections = 0
        self._connections_lock = threading.Lock()
        self._deadlines: dict[_Deadline, float] = {}
        self._deadlines_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake_reaper = threading.Event()
        self._service_threads: list[threading.Thread] = []
        super().__init__((address, port), _Handler)  # type: ignore[arg-type]

    @classmethod
    def bind(cls, address: str, port: int, *args: Any, **kwargs: Any) -> Any:
        """Bind and listen on address:port (IPv4 or IPv6); ListenError says why not. The other
        arguments are the constructor's."""
        shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        try:
            return cls(address, port, *args, **kwargs)
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

    @property
    def policy(self) -> Policy:
        return self._policy

    def set_policy(self, policy: Policy) -> None:
        """Use another policy from the next connection on; connections in progress finish with
        the one they started with."""
        self._policy = policy

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return int(self.server_address[1])

    def start(self) -> None:
        """Serve in background threads: one accepting, one enforcing deadlines."""
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

    # -- connection limit and deadlines -----------------------------------------------------

    @property
    def connections(self) -> int:
        """Connections being served now."""
        with self._connections_lock:
            return self._connections

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            admitted = self._connections < self.limits.max_connections
            if admitted:
                self._connections += 1
        if not admitted:
            log.debug(
                "%s: over %d connections, closed", client_address, self.limits.max_connections
            )
            self.close_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """socketserver's, with the connection wrapped for TLS (no I/O: the handshake is the
        handler's first step, on the request's clock) and the policy read once."""
        policy = self._policy
        try:
            if policy.tls is not None:
                request = policy.tls.wrap_socket(
                    request, server_side=True, do_handshake_on_connect=False
                )
            _Handler(request, client_address, self, policy)
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
        most linger_s and linger_bytes), so that closing with unread input (a request cut short
        by a limit, a pipelined second request) does not reset the connection and destroy the
        answer before the client has read it. A TLS connection says close_notify first, so that
        a client reading a body to the end of the stream knows it was not cut short."""
        linger_s = self.limits.linger_s
        if isinstance(request, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                request.settimeout(linger_s)
                request = request.unwrap()
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + linger_s
            dropped = 0
            while dropped < self.limits.linger_bytes:
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
