"""web/server.py on its own: any WSGI application, with an authentication hook and a policy it
is handed. (Its limits against hostile clients: test_http_hostile.py, with the app's routes.)"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from xdp_ip_counter.web.server import Policy, Server


class Answer:
    """An iterable answer that records whether the server closed it (PEP 3333)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed = True


class Application:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answers: list[Answer] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Answer:
        self.calls.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])
        self.answers.append(Answer([b"hello ", b"world\n"]))
        return self.answers[-1]


class Refuse:
    """An authentication hook that lets in only 'Token yes'."""

    def allows(self, authorization: str | None) -> bool:
        return authorization == "Token yes"

    def challenge(self) -> str:
        return 'Token realm="test"'


@pytest.fixture
def app() -> Application:
    return Application()


@pytest.fixture
def server(app: Application) -> Iterator[Server]:
    server = Server.bind("127.0.0.1", 0, app, software="test-server/1")
    server.start()
    try:
        yield server
    finally:
        server.close()


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split(raw: bytes) -> tuple[list[str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), body


def test_any_wsgi_application_is_served(server: Server, app: Application) -> None:
    lines, body = split(exchange(server.port, b"GET /a/%62?x=1 HTTP/1.0\r\nAccept: t\r\n\r\n"))
    assert lines[0] == "HTTP/1.0 200 OK"
    assert lines[1] == "Server: test-server/1 "  # http.server's, with an empty sys_version
    assert lines[2].startswith("Date: ")
    assert lines[3:] == [
        "Content-Type: text/plain",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
        "X-App: 1",
    ]
    assert body == b"hello world\n"
    environ = app.calls[0]
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"]) == (
        "GET",
        "/a/%62",
        "x=1",
    )
    assert environ["REQUEST_URI"] == "/a/%62?x=1"
    assert environ["HTTP_ACCEPT"] == "t"
    assert app.answers[0].closed


def test_head_gets_no_body(server: Server, app: Application) -> None:
    lines, body = split(exchange(server.port, b"HEAD / HTTP/1.0\r\n\r\n"))
    assert lines[0] == "HTTP/1.0 200 OK"
    assert body == b""
    assert app.answers[0].closed


def test_the_authentication_hook_comes_first(app: Application) -> None:
    server = Server.bind("127.0.0.1", 0, app, policy=Policy(auth=Refuse()))
    server.start()
    try:
        lines, body = split(exchange(server.port, b"GET / HTTP/1.0\r\n\r\n"))
        assert lines[0] == "HTTP/1.0 401 Unauthorized"
        assert 'WWW-Authenticate: Token realm="test"' in lines
        assert json.loads(body) == {"error": "authentication required"}
        assert app.calls == []
        request = b"GET / HTTP/1.0\r\nAuthorization: Token yes\r\n\r\n"
        assert split(exchange(server.port, request))[0][0] == "HTTP/1.0 200 OK"
        assert len(app.calls) == 1
    finally:
        server.close()


def test_a_new_policy_applies_to_the_next_connections(server: Server) -> None:
    headers = (("X-Frame-Options", "deny"), ("X-Content-Type-Options", "nosniff"))
    server.set_policy(Policy(headers=headers))
    assert server.policy.headers == headers
    lines, _ = split(exchange(server.port, b"GET / HTTP/1.0\r\n\r\n"))
    assert "X-Frame-Options: deny" in lines
    assert lines.count("X-Content-Type-Options: nosniff") == 1  # configured: not added twice
