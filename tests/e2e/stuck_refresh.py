#!/usr/bin/python3
"""The daemon with a data path that hangs on request: the stuck collaborator of the watchdog test.

    stuck_refresh.py HANG_FILE -- python3 -m xdp_ip_counter ARGS...

(the command after -- is the one tests/e2e/conftest.py's start_daemon runs under a prefix). It
runs that daemon in this process, with a DataPath whose read_stats() blocks while HANG_FILE
exists: the refresh loop is stuck in a refresh, as in a real hang, while the HTTP server's
thread goes on serving. The daemon itself has no such hook.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

# As xdp_ip_counter/__main__.py does, before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from xdp_ip_counter import cli, daemon
from xdp_ip_counter.bpf import DataPath

USAGE = "usage: stuck_refresh.py HANG_FILE -- python3 -m xdp_ip_counter ARGS..."


class StuckDataPath(DataPath):
    """A DataPath whose reads block while hang_file exists."""

    def __init__(self, max_entries: int, hang_file: Path) -> None:
        super().__init__(max_entries)
        self.hang_file = hang_file

    def read_stats(self) -> dict[str, int]:
        while self.hang_file.exists():
            time.sleep(0.05)
        return super().read_stats()


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[1] != "--" or argv[3:5] != ["-m", "xdp_ip_counter"]:
        print(USAGE, file=sys.stderr)
        return 2
    hang_file, arguments = Path(argv[0]), argv[5:]
    settings = cli.reload_settings(arguments)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return daemon.run(
        settings,
        reload_settings=lambda: cli.reload_settings(arguments),
        datapath=StuckDataPath(settings.max_entries, hang_file),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
