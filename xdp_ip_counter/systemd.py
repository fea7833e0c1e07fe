"""sd_notify(3) for the daemon: READY, RELOADING, WATCHDOG, STATUS, STOPPING.

Outside systemd (no NOTIFY_SOCKET) every call does nothing. A notification that cannot be sent
is logged (once until sending works again) and never raised: the daemon's work does not depend
on it, and systemd itself notices a missing READY or WATCHDOG.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import sdnotify

log = logging.getLogger(__name__)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises), or None when systemd did not ask this process for a watchdog."""
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text and pid_text.strip() != str(os.getpid()):
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec_text)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def _one_line(text: str) -> str:
    # A newline would start another assignment in the notification.
    return " ".join(text.splitlines())


class Notifier:
    """Sends notifications to $NOTIFY_SOCKET (abstract '@' addresses included, via sdnotify)."""

    def __init__(self) -> None:
        self._address = os.environ.get("NOTIFY_SOCKET") or None
        self._notifier: sdnotify.SystemdNotifier | None = None
        self._failing = False
        if self._address is None:
            return
        try:
            self._notifier = sdnotify.SystemdNotifier(debug=True)
            # Never block the refresh loop on a notify socket nobody reads: a message the
            # socket cannot queue is dropped (and logged once), not waited for.
            self._notifier.socket.setblocking(False)
        except OSError as error:
            log.warning("cannot reach NOTIFY_SOCKET=%s: %s", self._address, error)
            self._failing = True

    @property
    def enabled(self) -> bool:
        """Whether systemd asked for notifications (NOTIFY_SOCKET is set)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog() calls, or None when systemd asked for no watchdog."""
        return watchdog_interval() if self.enabled else None

    def _send(self, *assignments: str) -> None:
        if self._notifier is None:
            return
        message = "\n".join(assignments)
        try:
            self._notifier.notify(message)
        except OSError as error:
            if not self._failing:
                log.warning("cannot notify systemd (%s): %s", message.split("=")[0], error)
            self._failing = True
        else:
            if self._failing:
                log.info("notifying systemd works again")
            self._failing = False

    def ready(self, status: str | None = None) -> None:
        """READY=1: the service works (after start-up, and after a reload)."""
        if status is None:
            self._send("READY=1")
        else:
            self._send("READY=1", f"STATUS={_one_line(status)}")

    def reloading(self) -> None:
        """RELOADING=1 with the CLOCK_MONOTONIC time, as Type=notify-reload expects."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def watchdog(self) -> None:
        """WATCHDOG=1: the work loop is alive."""
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """STATUS=: one line shown by systemctl status."""
        self._send(f"STATUS={_one_line(text)}")

    def stopping(self) -> None:
        """STOPPING=1: shutting down."""
        self._send("STOPPING=1")
