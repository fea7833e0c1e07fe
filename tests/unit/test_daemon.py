"""The daemon's loop without a kernel: signals, dying threads, and what a rejected reload
tells systemd (no root, no bcc needed)."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_systemd import NotifySocket  # tests/unit is on sys.path

from xdp_ip_counter import cli
from xdp_ip_counter.config import Settings
from xdp_ip_counter.daemon import EXIT_FAILURE, EXIT_OK, Daemon, EvictionCount, RejectedReload
from xdp_ip_counter.layout import KEY_DTYPE, VALUE_DTYPE


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    saved_hook = threading.excepthook
    settings = Settings(interfaces=("lo",), window=60, refresh_interval=60)
    d = Daemon(settings, lambda: settings)
    try:
        yield d
    finally:
        threading.excepthook = saved_hook
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_dead_background_thread_takes_the_process_down(daemon: Daemon) -> None:
    daemon.install_handlers()  # here, not in the fixture: pytest sets its own excepthook per test

    def crash() -> None:
        raise RuntimeError("the HTTP thread died")

    thread = threading.Thread(target=crash)
    thread.start()
    thread.join()
    assert daemon.loop() == EXIT_FAILURE


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_end_the_loop_cleanly(daemon: Daemon, sig: int) -> None:
    daemon.install_handlers()
    threading.Timer(0.2, os.kill, (os.getpid(), sig)).start()
    assert daemon.loop() == EXIT_OK


def test_evictions_are_derived_from_inserts_expiries_and_entries() -> None:
    count = EvictionCount()
    # 5 entries carried over from a pinned map, 3 inserted so far: nothing evicted
    assert count.update(entries=8, inserted=3, removed_now=2) == 0
    # 2 expired by us, 10 more inserted, map holds 12: 8 - 2 + 10 - 12 = 4 evicted
    assert count.update(entries=12, inserted=13, removed_now=0) == 4
    # an insert that the stats do not show yet (read before the map): never counted down
    assert count.update(entries=13, inserted=13, removed_now=0) == 4
    assert count.update(entries=13, inserted=15, removed_now=0) == 5


class RacedDataPath:
    """A data path whose batch read raced a flood: more rows than the map's capacity, each a
    distinct source seen just now."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def read_stats(self) -> dict[str, int]:
        return {"recorded_new": self.rows}

    def read_sources(self) -> tuple[np.ndarray, np.ndarray, int]:
        now = time.monotonic_ns()
        keys = np.zeros(self.rows, KEY_DTYPE)
        keys["addr"] = [n.to_bytes(16, "big") for n in range(self.rows)]
        keys["ifindex"], keys["port"], keys["proto"], keys["family"] = 1, 22, 6, 6
        values = np.zeros(self.rows, VALUE_DTYPE)
        values["first_seen"] = values["last_seen"] = now
        values["packets"] = 1
        return keys, values, now

    def close(self) -> None:
        pass


def test_map_entries_never_exceed_capacity_when_a_read_races_a_flood() -> None:
    settings = Settings(interfaces=("lo",), max_entries=8)
    d = Daemon(settings, lambda: settings, datapath=RacedDataPath(11))  # type: ignore[arg-type]
    d.refresh()
    view = d.current_view()
    assert view is not None
    assert len(view.active) == 11  # every source seen is reported
    assert view.entries_in_map == 8  # the map never held more than its capacity


# -- a rejected reload in STATUS= ----------------------------------------------------------------

# 2023-11-14 22:13:20 UTC
WALL_TIME = 1_700_000_000.0
GOOD_CONFIG = 'interfaces = ["lo"]\nwindow = 60\nrefresh_interval = 60\n'
BAD_CONFIG = 'interfaces = ["lo"]\nwindow = 15\nrefresh_interval = 60\n'
WATCHING = "watching lo ports all: 0 sources in the last 60s"


class EmptyDataPath:
    """A data path whose maps stay empty: what refresh() and a reload that changes no interface
    and no port need of it."""

    def read_stats(self) -> dict[str, int]:
        return {}

    def read_sources(self) -> tuple[np.ndarray, np.ndarray, int]:
        return np.empty(0, KEY_DTYPE), np.empty(0, VALUE_DTYPE), time.monotonic_ns()

    def close(self) -> None:
        pass


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """A bound notify socket exported as NOTIFY_SOCKET; no watchdog asked for."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    # A short directory of our own: tmp_path can exceed the 107 bytes a socket path may have.
    with tempfile.TemporaryDirectory(prefix="xic-notify-", dir="/tmp") as directory:
        try:
            address = os.path.join(directory, "notify")
            sock.bind(address)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            yield NotifySocket(sock, address)
        finally:
            sock.close()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(GOOD_CONFIG)
    return path


@pytest.fixture
def reloadable(config_file: Path, notify_socket: NotifySocket) -> Iterator[Daemon]:
    """A Daemon started from config_file (as far as it can be without a kernel), that reloads
    from it as the service does, and dates reloads at WALL_TIME."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    arguments = ["-c", str(config_file)]
    d = Daemon(
        cli.reload_settings(arguments),
        lambda: cli.reload_settings(arguments),
        datapath=EmptyDataPath(),  # type: ignore[arg-type]
        wall_time=lambda: WALL_TIME,
    )
    try:
        yield d
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def window_error(config_file: Path) -> str:
    return f"{config_file}: key 'window': must be a positive multiple of 10 (seconds), got 15"


def rejected(reason: str) -> str:
    return (
        f"reload rejected at 2023-11-14 22:13:20 UTC: {reason}; serving the previous "
        f"configuration: {WATCHING}"
    )


def receive_reload(notify_socket: NotifySocket) -> str:
    """The notifications of one reload: RELOADING=1 (checked), then READY=1 with STATUS=."""
    assert notify_socket.receive().startswith("RELOADING=1\nMONOTONIC_USEC=")
    return notify_socket.receive()


def test_a_rejected_reload_is_in_status_until_a_good_one(
    reloadable: Daemon, config_file: Path, notify_socket: NotifySocket
) -> None:
    config_file.write_text(BAD_CONFIG)
    reloadable.reload()
    assert receive_reload(notify_socket) == (
        "READY=1\nSTATUS=" + rejected(window_error(config_file))
    )
    # the configuration in use is the previous one
    assert reloadable.settings.window == 60
    assert not reloadable.reload_successful

    # another rejected reload: its own reason replaces the first one's
    config_file.write_text('interfaces = ["nosuch0"]\nwindow = 60\nrefresh_interval = 60\n')
    reloadable.reload()
    assert receive_reload(notify_socket) == (
        "READY=1\nSTATUS="
        + rejected(f"{config_file}: key 'interfaces': interface 'nosuch0' does not exist")
    )

    config_file.write_text(GOOD_CONFIG)
    reloadable.reload()
    assert receive_reload(notify_socket) == f"READY=1\nSTATUS={WATCHING}"
    assert notify_socket.nothing_queued()
    assert reloadable.reload_successful


def test_every_status_update_names_the_rejected_reload(
    reloadable: Daemon, config_file: Path, notify_socket: NotifySocket
) -> None:
    """Through the loop, as the service runs: SIGHUP, then the refresh and its STATUS=."""
    reloadable.install_handlers()
    received: list[str] = []
    failure: list[BaseException] = []

    def operator() -> None:
        try:
            config_file.write_text(BAD_CONFIG)
            os.kill(os.getpid(), signal.SIGHUP)
            received.extend(notify_socket.receive() for _ in range(3))
            config_file.write_text(GOOD_CONFIG)
            os.kill(os.getpid(), signal.SIGHUP)
            received.extend(notify_socket.receive() for _ in range(3))
        except BaseException as error:  # pytest.fail included: reported below
            failure.append(error)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=operator)
    thread.start()
    assert reloadable.loop() == EXIT_OK
    thread.join()
    assert not failure, failure
    status_rejected = "STATUS=" + rejected(window_error(config_file))
    assert received[0].startswith("RELOADING=1\n"), received
    assert received[1:3] == [f"READY=1\n{status_rejected}", status_rejected]
    assert received[3].startswith("RELOADING=1\n"), received
    assert received[4:] == [f"READY=1\nSTATUS={WATCHING}", f"STATUS={WATCHING}"]


def test_a_long_reason_is_cut_to_keep_status_short() -> None:
    text = RejectedReload(WALL_TIME, "x" * 300 + "\nsecond line").describe()
    assert text == (
        "reload rejected at 2023-11-14 22:13:20 UTC: "
        + "x" * (RejectedReload.REASON_LIMIT - 1)
        + "\u2026; serving the previous configuration"
    )
    two_lines = RejectedReload(WALL_TIME, "first\nsecond").describe()
    assert "first second;" in two_lines
