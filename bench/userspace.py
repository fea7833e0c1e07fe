"""Part 3: the daemon's userspace at scale, and its start-up.

- Scale (bench/userspace_worker.py, a process of its own): the table filled with many distinct
  entries (a mix of IPv4 and IPv6 sources, TCP and UDP, sixteen ports), then the daemon's own
  Daemon.refresh() (the table read through mmap, the window's counts with the default settings'
  prefix counts (v4:24, v6:48) and scanners (scan_ports 10), the sketches' window, View),
  /metrics latency while refreshes run back to back, the time to read /list, a refresh
  in which every entry has left the window, and the process's peak RSS.
- Start-up: the real daemon (``python3 -m xdp_ip_counter``) started in a namespace with a veth
  the harness made, timed from exec to READY=1 on a notify socket: interpreter, imports, bcc
  compile and load, attach, first refresh, HTTP server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.netns import veth_lab

from .stats import summary

REPO = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class Config:
    entries: int
    capacity: int
    refreshes: int
    seconds: float  # of /metrics requests during refreshes, over all rounds
    metrics_rounds: int
    list_reads: int
    startups: int


FULL = Config(
    entries=1_000_000,
    capacity=1_200_000,
    refreshes=5,
    seconds=15.0,
    metrics_rounds=5,
    list_reads=2,
    startups=3,
)
SMOKE = Config(
    entries=20_000,
    capacity=32_768,
    refreshes=2,
    seconds=1.0,
    metrics_rounds=1,
    list_reads=1,
    startups=1,
)


def run(config: Config, log: Callable[[str], None] = print) -> dict:
    log(f"userspace: {config.entries} entries")
    env = {name: value for name, value in os.environ.items() if name != "NOTIFY_SOCKET"}
    with veth_lab(f"u{os.getpid() % 10000}") as lab:
        # In the lab's receiving namespace, where the daemon attaches to the veth end (in skb
        # mode; no frame is sent) and serves on that namespace's 127.0.0.1.
        worker = subprocess.run(
            [
                *("ip", "netns", "exec", lab.receiver, PYTHON, "-m", "bench.userspace_worker"),
                json.dumps(config.__dict__ | {"interface": lab.receiver_if}),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    if worker.returncode != 0:
        raise RuntimeError(f"userspace worker failed: {worker.stderr.strip()[-2000:]}")
    result = json.loads(worker.stdout)
    log("userspace: daemon start-up")
    result["startup"] = startup(config.startups)
    return result


def startup(times: int) -> dict:
    """Seconds from starting the daemon to its READY=1, and its RSS once ready."""
    durations, rss = [], []
    with veth_lab(f"s{os.getpid() % 10000}") as lab, tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "config.toml"
        config.write_text("")
        for _ in range(times):
            seconds, rss_mb = _start_once(lab.receiver, lab.receiver_if, config, Path(scratch))
            durations.append(seconds)
            rss.append(rss_mb)
    return {"to_ready_s": summary(durations), "rss_when_ready_mb": summary(rss)}


def _start_once(namespace: str, ifname: str, config: Path, scratch: Path) -> tuple[float, float]:
    notify_path = scratch / "notify"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.5)
    port = _free_port()
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONPATH=str(REPO))
    started = time.monotonic()
    daemon = subprocess.Popen(
        [
            *("ip", "netns", "exec", namespace, PYTHON, "-m", "xdp_ip_counter"),
            *("-c", str(config), "-i", ifname, "-p", "0", "-s", str(port)),
            *("--listen-address", "127.0.0.1"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = started + 60
        while True:
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited: {daemon.stderr.read().strip()[-1000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not send READY=1 within 60 s")
            try:
                message = notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            if "READY=1" in message.split("\n"):
                ready = time.monotonic() - started
                break
        rss = _rss_mb(daemon.pid)
        return ready, rss
    finally:
        notify.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=15)
        if daemon.stderr:
            daemon.stderr.close()


def _rss_mb(pid: int) -> float:
    """VmRSS of the daemon: pid is `ip netns exec`, which exec()s the interpreter in place."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
