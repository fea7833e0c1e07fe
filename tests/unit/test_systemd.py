"""systemd.py against a real notify socket: a Unix datagram socket the test binds and reads."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from xdp_ip_counter.systemd import Notifier, watchdog_interval

RECEIVE_TIMEOUT = 5.0


@dataclass
class NotifySocket:
    sock: socket.socket
    address: str  # as NOTIFY_SOCKET spells it

    def receive(self) -> str:
        """The next notification; fails after RECEIVE_TIMEOUT seconds."""
        self.sock.settimeout(RECEIVE_TIMEOUT)
        try:
            return self.sock.recv(65536).decode()
        except TimeoutError:
            pytest.fail(f"no notification within {RECEIVE_TIMEOUT}s")

    def nothing_queued(self) -> bool:
        """Unix datagrams are queued before send() returns, so an empty queue now means none."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return True
        return False


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[NotifySocket]:
    """A bound notify socket, exported as NOTIFY_SOCKET (a file, or an abstract '@' name)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    # A short directory of our own: tmp_path can exceed the 107 bytes a socket path may have.
    with tempfile.TemporaryDirectory(prefix="xic-notify-", dir="/tmp") as directory:
        try:
            if request.param == "path":
                address = os.path.join(directory, "notify")
                sock.bind(address)
            else:
                name = f"xic-notify-test-{os.getpid()}-{os.path.basename(directory)}"
                sock.bind("\0" + name)
                address = "@" + name
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            yield NotifySocket(sock, address)
        finally:
            sock.close()


def test_ready(notify_socket: NotifySocket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready()
    assert notify_socket.receive() == "READY=1"


def test_ready_with_status(notify_socket: NotifySocket) -> None:
    Notifier().ready("watching lo\nand veth0")
    assert notify_socket.receive() == "READY=1\nSTATUS=watching lo and veth0"


def test_reloading_carries_the_monotonic_clock(notify_socket: NotifySocket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = notify_socket.receive().split("\n")
    assert first == "RELOADING=1"
    name, value = second.split("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_every_notification_in_order(notify_socket: NotifySocket) -> None:
    notifier = Notifier()
    notifier.ready("started")
    notifier.watchdog()
    notifier.status("2 interfaces, 17 sources")
    notifier.reloading()
    notifier.ready()
    notifier.stopping()
    received = [notify_socket.receive() for _ in range(6)]
    assert received[0] == "READY=1\nSTATUS=started"
    assert received[1] == "WATCHDOG=1"
    assert received[2] == "STATUS=2 interfaces, 17 sources"
    assert received[3].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert received[4:] == ["READY=1", "STOPPING=1"]
    assert notify_socket.nothing_queued()


def test_silent_without_notify_socket(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET")
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.reloading()
    notifier.watchdog()
    notifier.status("x")
    notifier.stopping()
    assert notify_socket.nothing_queued()


def test_empty_notify_socket_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready()


def test_unreachable_socket_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/xdp-ip-counter/notify")
    with caplog.at_level(logging.WARNING, logger="xdp_ip_counter.systemd"):
        notifier = Notifier()
        notifier.ready()
        notifier.watchdog()
    assert notifier.enabled
    assert [record.getMessage() for record in caplog.records] == [
        "cannot reach NOTIFY_SOCKET=/nonexistent/xdp-ip-counter/notify: "
        "[Errno 2] No such file or directory"
    ]


def test_failed_sends_are_logged_once(
    notify_socket: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier()
    notify_socket.sock.close()  # systemd went away
    with caplog.at_level(logging.WARNING, logger="xdp_ip_counter.systemd"):
        notifier.watchdog()
        notifier.watchdog()
        notifier.stopping()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("cannot notify systemd (WATCHDOG): ")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ) == expected


def test_watchdog_interval_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 2.0


def test_notifier_watchdog_interval(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval() == 1.5
    # Without a notify socket there is nobody to ping.
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert Notifier().watchdog_interval() is None


def test_a_full_notify_socket_never_blocks(notify_socket: NotifySocket) -> None:
    """Nobody reads the socket: its queue fills, and the sender drops rather than waits (the
    refresh loop sends these; a blocked send would stall it)."""
    notifier = Notifier()
    queue_length = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())

    sender = threading.Thread(
        target=lambda: [notifier.status(f"n{i}") for i in range(queue_length + 50)],
        daemon=True,
    )
    sender.start()
    sender.join(timeout=10)
    assert not sender.is_alive(), "status() blocked on a full notify socket"
    assert notify_socket.receive() == "STATUS=n0"
