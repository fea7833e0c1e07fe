"""The unit's sandbox lets the daemon work, and each capability it keeps is needed.

No systemd runs here (PID 1 is not systemd), so the test builds the unit's sandbox from the unit
file itself and starts the real daemon from the checkout inside it:
  CapabilityBoundingSet=, NoNewPrivileges=   setpriv (uid 0, bounding set, no_new_privs)
  SystemCallFilter=, SystemCallErrorNumber=, SystemCallArchitectures=, RestrictAddressFamilies=,
  MemoryDenyWriteExecute=                     sandbox_exec.py (seccomp, PR_SET_MDWE)
  ProtectSystem=strict, ReadOnlyPaths=, InaccessiblePaths=, ReadWritePaths=/sys/fs/bpf (and
  ProtectKernelTunables=, ProtectKernelModules= if the unit had them)   a private mount
      namespace with read-only bind mounts, unreadable files over hidden ones, and a BPF
      filesystem of its own at /sys/fs/bpf
The daemon attaches to a veth in a network namespace the test made, and must send READY=1 and
answer /metrics there. With any one capability of the set taken away it must fail to start.
ExecReload='s `xdp-ip-counter --check-config` runs in the same sandbox, with no capability at all.
The fleet tests run the same unit under a real systemd, in VMs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.netns import namespace

from .deb import REPO

pytestmark = pytest.mark.root

UNIT_PATH = REPO / "systemd" / "xdp-ip-counter.service"
SANDBOX_EXEC = Path(__file__).with_name("sandbox_exec.py")
PYTHON = "/usr/bin/python3"
HOST_IF, PEER_IF = "xhard0", "xhard1"
START_TIMEOUT = 90.0  # bcc compiles at start-up


def config_text() -> str:
    return (REPO / "packaging" / "config.toml").read_text()


def unit_value(key: str) -> str | None:
    values = [
        line.partition("=")[2]
        for line in UNIT_PATH.read_text().splitlines()
        if line.startswith(key + "=")
    ]
    return values[-1] if values else None


def unit_paths(key: str) -> list[str]:
    """The paths of every `key=` line (ReadOnlyPaths=, ...), a leading "-" kept."""
    return [
        path
        for line in UNIT_PATH.read_text().splitlines()
        if line.startswith(key + "=")
        for path in line.partition("=")[2].split()
    ]


def mount_sandbox_script() -> str:
    """Shell commands that show the unit's file system protections, as far as a mount
    namespace can; "$1" is an unreadable file, "$2" an unreadable directory."""
    steps = ["set -e"]
    if unit_value("ProtectSystem") == "strict":
        steps.append("mount -o remount,bind,ro /")
    read_only = unit_paths("ReadOnlyPaths")
    inaccessible = unit_paths("InaccessiblePaths")
    if unit_value("ProtectKernelTunables") == "yes":
        read_only += ["/sys", "/proc/sys"]
        inaccessible += ["-/proc/kallsyms"]
    if unit_value("ProtectKernelModules") == "yes":
        inaccessible += ["/usr/lib/modules"]
    for entry in read_only:
        path = entry.removeprefix("-")
        if entry.startswith("-") and not Path(path).exists():
            continue
        steps.append(f"mount --bind {path} {path}; mount -o remount,bind,ro {path}")
    for entry in inaccessible:
        path = entry.removeprefix("-")
        if entry.startswith("-") and not Path(path).exists():
            continue
        source = '"$2"' if Path(path).is_dir() else '"$1"'
        steps.append(f"mount --bind {source} {path}")
    # A BPF filesystem of its own at /sys/fs/bpf, as systemd mounts one at boot (`ip netns
    # exec` leaves none on its fresh /sys), mounted last so that no read-only bind mount of
    # /sys covers it; it vanishes with the namespace. Writable, as ReadWritePaths= makes it,
    # unless ProtectKernelTunables=yes, which makes it read-only whatever ReadWritePaths= says.
    steps.append("mount -t bpf bpf /sys/fs/bpf")
    if unit_value("ProtectKernelTunables") == "yes":
        steps.append("mount -o remount,bind,ro /sys/fs/bpf")
    steps.append('shift 2; exec "$@"')
    return "; ".join(steps)


def unit_capabilities() -> list[str]:
    capabilities = unit_value("CapabilityBoundingSet")
    assert capabilities, "the unit has no CapabilityBoundingSet="
    return capabilities.split()


def capability_mask(names: list[str]) -> int:
    numbers = {"CAP_NET_ADMIN": 12, "CAP_PERFMON": 38, "CAP_BPF": 39}
    return sum(1 << numbers[name] for name in names)


@dataclass
class SandboxedDaemon:
    process: subprocess.Popen[bytes]
    notify: socket.socket
    log_path: Path

    def wait_ready(self, timeout: float) -> bool:
        """True once READY=1 arrives; False if the daemon exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                if b"READY=1" in self.notify.recv(4096).split(b"\n"):
                    return True
            if self.process.poll() is not None:
                return False
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with a veth pair, both ends inside; removed whatever happens."""
    addresses = {HOST_IF: ["10.231.0.1/24"], PEER_IF: ["10.231.0.2/24"]}
    with namespace(f"xic-hardening-{os.getpid()}", [(HOST_IF, PEER_IF)], addresses) as created:
        yield created.name


def in_sandbox(
    netns: str, tmp_path: Path, capabilities: list[str], arguments: list[str]
) -> list[str]:
    """The command that runs `xdp-ip-counter ARGUMENTS` (from the checkout) in the network
    namespace, inside the unit's sandbox with these capabilities in the bounding set."""
    inaccessible_file = tmp_path / "inaccessible-file"
    inaccessible_dir = tmp_path / "inaccessible-dir"
    if not inaccessible_file.exists():
        inaccessible_file.write_text("")
        inaccessible_file.chmod(0)
        inaccessible_dir.mkdir(mode=0)
    bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in capabilities)])
    return [
        "ip", "netns", "exec", netns,
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", mount_sandbox_script(), "sh", str(inaccessible_file), str(inaccessible_dir),
        "setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs",
        PYTHON, str(SANDBOX_EXEC), str(UNIT_PATH),
        PYTHON, "-m", "xdp_ip_counter", *arguments,
    ]  # fmt: skip


@pytest.fixture
def start_sandboxed(netns: str, tmp_path: Path) -> Iterator:
    started: list[SandboxedDaemon] = []
    # The configuration the package ships (and so the service reads), flags overriding
    # where the daemon attaches and listens.
    config = REPO / "packaging" / "config.toml"

    def start(capabilities: list[str]) -> SandboxedDaemon:
        notify_path = tmp_path / f"notify-{len(started)}.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        command = in_sandbox(
            netns,
            tmp_path,
            capabilities,
            ["-c", str(config), "--iface", HOST_IF,
             "--listen-address", "127.0.0.1", "--server-port", "3031"],
        )  # fmt: skip
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONPATH=str(REPO))
        env.pop("WATCHDOG_USEC", None)
        log_path = tmp_path / f"daemon-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        daemon = SandboxedDaemon(process, notify, log_path)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGTERM)
                try:
                    daemon.process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.process.pid, signal.SIGKILL)
                    daemon.process.wait(10)
            daemon.notify.close()


def test_daemon_works_inside_the_units_sandbox(netns: str, start_sandboxed) -> None:
    capabilities = unit_capabilities()
    daemon = start_sandboxed(capabilities)
    assert daemon.wait_ready(START_TIMEOUT), f"no READY=1 in the sandbox:\n{daemon.log()}"
    status = dict(
        line.split(":\t", 1)
        for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines()
        if ":\t" in line
    )
    # The sandbox really was in force for the process that answered (the daemon may drop
    # capabilities it no longer needs, never gain one).
    assert int(status["CapBnd"], 16) == capability_mask(capabilities), status["CapBnd"]
    assert int(status["CapEff"], 16) & ~capability_mask(capabilities) == 0, status["CapEff"]
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    metrics = subprocess.run(
        ["ip", "netns", "exec", netns, "curl", "-sf", "--max-time", "10",
         "http://127.0.0.1:3031/metrics"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert metrics.returncode == 0, f"/metrics: {metrics.stderr}\n{daemon.log()}"
    assert "xdp_ip_counter_" in metrics.stdout, metrics.stdout[:2000]
    # ReadWritePaths=/sys/fs/bpf: the shipped configuration pins the map there; look through
    # the daemon's own root, where that BPF filesystem is mounted.
    pin_path = tomllib.loads(config_text())["pin_path"]
    pins = Path(f"/proc/{daemon.process.pid}/root{pin_path}")
    assert any(pins.glob("sources_v*")), f"nothing pinned in {pins}:\n{daemon.log()}"
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(30) == 0, daemon.log()


@pytest.mark.parametrize("dropped", unit_capabilities())
def test_each_capability_of_the_unit_is_needed(dropped: str, start_sandboxed) -> None:
    capabilities = [c for c in unit_capabilities() if c != dropped]
    daemon = start_sandboxed(capabilities)
    assert not daemon.wait_ready(START_TIMEOUT), f"started without {dropped}:\n{daemon.log()}"
    assert daemon.process.wait(30) != 0, daemon.log()


def test_check_config_works_inside_the_units_sandbox(netns: str, tmp_path: Path) -> None:
    """ExecReload='s check runs as the service's control process: in the unit's sandbox, here
    with no capability at all (it needs none). It accepts the shipped file and refuses a bad
    one with exit code 2 and the reason."""
    good = tmp_path / "good.toml"
    good.write_text(config_text())
    bad = tmp_path / "bad.toml"
    bad_text, replaced = re.subn(r"(?m)^window\s*=.*$", "window = 15", config_text())
    assert replaced == 1, "the shipped configuration has no window = line"
    bad.write_text(bad_text)
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        command = in_sandbox(
            netns, tmp_path, [], ["--check-config", "-c", str(path), "--iface", HOST_IF]
        )
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=60, check=False
        )

    accepted = check(good)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert accepted.stdout.startswith(f"configuration OK: interfaces {HOST_IF};"), accepted.stdout
    refused = check(bad)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr == (
        f"xdp-ip-counter: error: {bad}: key 'window': must be a positive multiple of 10 "
        "(seconds), got 15\n"
    )
