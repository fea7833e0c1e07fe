"""The daemon's loop without a kernel: signals and dying threads (no root, no bcc needed)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from xdp_ip_counter.config import Settings
from xdp_ip_counter.daemon import EXIT_FAILURE, EXIT_OK, Daemon, EvictionCount


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
