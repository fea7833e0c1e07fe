"""End-to-end fixtures: a client network namespace joined to the root namespace by two veth
pairs the test makes, and the real daemon (a subprocess) attached to the host-side ends.

Everything is removed whatever happens: the namespace (its veth ends go with it, and the host
ends with them), the daemon process (SIGTERM, then SIGKILL), the notify socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.netns import ip, namespace

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
SEND = Path(__file__).with_name("send.py")


def wait_for(condition: Callable[[], object], timeout: float, what: str, step: float = 0.1):
    """Poll condition until it returns something truthy; fail naming what after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class VethPair:
    host_if: str
    client_if: str
    host_v4: str
    host_v6: str
    client_v4: list[str]
    client_v6: list[str]


@dataclass
class Lab:
    """A client namespace with several source addresses on each of two links to the host."""

    ns: str
    links: list[VethPair]

    def send(self, proto: str, src: str, dst: str, port: int, count: int = 1) -> None:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                PYTHON,
                str(SEND),
                proto,
                src,
                dst,
                str(port),
                str(count),
            ],
            check=True,
            timeout=30,
        )


@pytest.fixture
def lab(require_root) -> Iterator[Lab]:
    tag = os.getpid() % 40000
    ns = f"xic-e2e-{tag}"
    octet = 200 + os.getpid() % 50
    links = []
    for i, side in enumerate("ab", start=1):
        links.append(
            VethPair(
                host_if=f"xic{tag}{side}",
                client_if=f"xc{tag}{side}",
                host_v4=f"10.{octet}.{i}.1",
                host_v6=f"fd7a:{octet}:{i}::1",
                client_v4=[f"10.{octet}.{i}.{n}" for n in (11, 12, 13)],
                client_v6=[f"fd7a:{octet}:{i}::{n}" for n in (11, 12, 13)],
            )
        )
    # The host ends live in the root namespace (the daemon attaches there): deleted here too,
    # although the namespace's deletion takes them with their peers.
    with namespace(ns):
        try:
            for link in links:
                ip("link", "add", link.host_if, "type", "veth",
                   "peer", "name", link.client_if, "netns", ns)  # fmt: skip
                ip("addr", "add", f"{link.host_v4}/24", "dev", link.host_if)
                ip("-6", "addr", "add", f"{link.host_v6}/64", "dev", link.host_if, "nodad")
                ip("link", "set", link.host_if, "up")
                for addr in link.client_v4:
                    ip("-n", ns, "addr", "add", f"{addr}/24", "dev", link.client_if)
                for addr in link.client_v6:
                    ip("-n", ns, "-6", "addr", "add", f"{addr}/64", "dev", link.client_if, "nodad")
                ip("-n", ns, "link", "set", link.client_if, "up")
            yield Lab(ns=ns, links=links)
        finally:
            for link in links:
                ip("link", "del", link.host_if, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


@dataclass
class DaemonProcess:
    """The real daemon, started from the checkout with a config file and a notify socket."""

    config_path: Path
    port: int
    proc: subprocess.Popen
    notify: socket.socket
    log_path: Path
    messages: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, **settings: object) -> None:
        text = "".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items())
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def read_notifications(self) -> list[str]:
        """Drain the notify socket; returns every message received so far."""
        while True:
            try:
                data = self.notify.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode())

    def wait_notification(self, text: str, timeout: float, after: int = 0) -> int:
        """Wait until a message containing text arrives at index >= after; returns its index."""

        def seen() -> int | None:
            for i, msg in enumerate(self.read_notifications()[after:], start=after):
                if text in msg:
                    return i + 1
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}; its log:\n{self.log()}"
                )
            return None

        return wait_for(seen, timeout, f"{text!r} from the daemon") - 1

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def list(self, query: str = "") -> list[dict]:
        status, _, body = self.get("/list" + query)
        assert status == 200, body
        return json.loads(body)

    def metrics(self) -> str:
        status, _, body = self.get("/metrics")
        assert status == 200, body
        return body.decode()

    def reload(self) -> None:
        after = len(self.read_notifications())
        self.proc.send_signal(signal.SIGHUP)
        idx = self.wait_notification("RELOADING=1", 30, after)
        self.wait_notification("READY=1", 30, idx + 1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def active_users(metrics_text: str) -> dict[tuple[str, str, str], float]:
    """The active_users samples of a /metrics text: (ip, proto, port) -> value."""
    out = {}
    for line in metrics_text.splitlines():
        if not line.startswith("active_users{"):
            continue
        labels, value = line[len("active_users{") :].rsplit("} ", 1)
        parsed = dict(part.split("=", 1) for part in labels.split(","))
        parsed = {k: v.strip('"') for k, v in parsed.items()}
        out[(parsed["ip"], parsed["proto"], parsed["port"])] = float(value)
    return out


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """start(**settings) runs the daemon with those config keys; `prefix` is a command to run
    it under (setpriv, ...); with `world_readable` its files live in a directory any user can
    read (pytest's own tmp_path is root's alone)."""
    started: list[DaemonProcess] = []
    shared_dirs: list[Path] = []

    def start(
        *,
        extra_args: tuple[str, ...] = (),
        wait_ready: bool = True,
        prefix: tuple[str, ...] = (),
        world_readable: bool = False,
        **settings: object,
    ) -> DaemonProcess:
        directory = tmp_path
        if world_readable:
            directory = Path(tempfile.mkdtemp(prefix="xic-e2e-", dir="/tmp"))
            directory.chmod(0o755)
            shared_dirs.append(directory)
        port = free_port()
        settings.setdefault("listen_address", "127.0.0.1")
        settings.setdefault("server_port", port)
        port = int(settings["server_port"])  # type: ignore[arg-type]
        config_path = directory / f"config-{len(started)}.toml"
        sock_path = directory / f"notify-{len(started)}.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(sock_path))
        notify.setblocking(False)
        if world_readable:
            sock_path.chmod(0o666)
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONPATH=str(REPO))
        if world_readable:
            # The checkout may sit where another user cannot read it (a 0700 temp dir): run
            # from a copy of the package and the BPF source beside the other files.
            if not (directory / "xdp_ip_counter").exists():
                skip = shutil.ignore_patterns("__pycache__")
                for part in ("xdp_ip_counter", "bpf"):
                    shutil.copytree(REPO / part, directory / part, ignore=skip)
                    for path in (directory / part).rglob("*"):
                        path.chmod(0o755 if path.is_dir() else 0o644)
            env.update(PYTHONPATH=str(directory), XDP_IP_COUNTER_BPF_DIR=str(directory / "bpf"))
        env.pop("WATCHDOG_USEC", None)
        env.update({k: str(v) for k, v in settings.pop("env", {}).items()})  # type: ignore[union-attr]
        log_path = directory / f"daemon-{len(started)}.log"
        daemon = DaemonProcess(
            config_path=config_path,
            port=port,
            proc=None,
            notify=notify,
            log_path=log_path,  # type: ignore[arg-type]
        )
        daemon.write_config(**settings)
        if world_readable:
            config_path.chmod(0o644)
        with log_path.open("w") as log:
            daemon.proc = subprocess.Popen(
                [*prefix, PYTHON, "-m", "xdp_ip_counter", "-c", str(config_path), *extra_args],
                env=env,
                cwd=directory if world_readable else None,  # bcc returns to the cwd: readable
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        started.append(daemon)
        if wait_ready:
            daemon.wait_notification("READY=1", 90)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGTERM)
            try:
                daemon.proc.wait(20)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait(10)
        with contextlib.suppress(OSError):
            daemon.notify.close()
    for directory in shared_dirs:
        shutil.rmtree(directory, ignore_errors=True)
