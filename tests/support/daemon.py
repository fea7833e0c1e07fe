"""A daemon started as a whole command (./dev run, a venv's xdp-ip-counter, a fresh root's) in a
network namespace of the test's, waited for until /metrics answers there, and always stopped.

    with serving_daemon(command, netns=name, port=3031, log_path=tmp_path / "log") as daemon:
        assert "xdp_ip_counter_" in daemon.metrics
        assert daemon.stop() == 0

The command runs in a session of its own: whatever it started is killed on the way out, also
when the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.2


@dataclass
class ServingDaemon:
    process: subprocess.Popen
    log_path: Path
    metrics: str = ""  # the first /metrics answer

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then its exit code (a daemon that does not exit in time fails the test)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit {timeout} s after SIGTERM:\n{self.log()}") from None


def get_metrics(netns: str, port: int) -> subprocess.CompletedProcess[str]:
    """GET /metrics on 127.0.0.1:port inside netns (curl; fails fast when nothing listens)."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, "curl", "-sf", "--max-time", "2",
         f"http://127.0.0.1:{port}/metrics"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip


@contextmanager
def serving_daemon(
    command: Sequence[str],
    *,
    netns: str,
    port: int,
    log_path: Path,
    start_deadline_s: float = 90,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[ServingDaemon]:
    """Run command inside netns until its /metrics answers (within start_deadline_s, or the
    test fails with the daemon's log), yield it, and kill what is left of it at the end."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, *command],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd,
        )  # fmt: skip
    daemon = ServingDaemon(process, log_path)
    try:
        deadline = time.monotonic() + start_deadline_s
        answer = None
        while time.monotonic() < deadline and process.poll() is None:
            answer = get_metrics(netns, port)
            if answer.returncode == 0:
                break
            time.sleep(POLL_S)
        assert answer is not None and answer.returncode == 0, (
            f"no /metrics answer within {start_deadline_s} s (exit code {process.poll()}):\n"
            f"{daemon.log()}"
        )
        daemon.metrics = answer.stdout
        yield daemon
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
