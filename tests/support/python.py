"""Debian's Python (the one that sees bcc) run on the checkout in a process of its own, as the
CLI tests need it: the module's exit code, stdout and stderr, without systemd's notify socket."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"


def run_python(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`/usr/bin/python3 ARGS` in the checkout, its output captured (60 s at most)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    environment.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [PYTHON, *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
