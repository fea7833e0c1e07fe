"""Debian VMs under qemu for the fleet tests: boot from a copy-on-write overlay, reach over SSH.

Each VM has two NICs:
  eth0  qemu user-mode network; 127.0.0.1:<ssh_port> and 127.0.0.1:<http_port> on the host are
        forwarded to its ports 22 and 3031. It can reach Debian's archive through it.
  eth1  a private link to the other VM: qemu's socket netdev, one side listening on a 127.0.0.1
        port and the other connecting to it (a point-to-point Ethernet carried over TCP on the
        host's loopback; nothing leaves the host).
qemu runs in software emulation (-accel tcg): this machine's /dev/kvm cannot boot a stock kernel.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from debian_image import DebianImage

QEMU = "qemu-system-x86_64"
MEMORY_MIB = 1536
SSH_BOOT_TIMEOUT_SECONDS = 300.0
PR_SET_PDEATHSIG = 1


class VirtualMachineError(Exception):
    """A VM failed to start or to answer; the message names the VM and its console log."""


@dataclass(frozen=True)
class SshKey:
    private_key: Path
    public_key_line: str


def make_ssh_key(directory: Path) -> SshKey:
    """A fresh ed25519 key pair for one test run."""
    private_key = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f", str(private_key)],
        check=True,
        timeout=30,
    )
    return SshKey(private_key, Path(f"{private_key}.pub").read_text().strip())


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_listening_on_loopback(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc (connecting would use up
    qemu's single accept of the socket netdev)."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A: TCP_LISTEN
            return True
    return False


def _die_with_parent() -> None:
    # qemu must not outlive the test run, even when pytest itself is killed.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class VirtualMachine:
    """One running qemu VM."""

    name: str
    index: int  # 1, 2, ...: picks MAC addresses
    eth1_addresses: tuple[str, ...]  # with prefix length, e.g. "10.55.0.1/24"
    workdir: Path
    ssh_key: SshKey
    ssh_port: int = field(default_factory=free_tcp_port)
    http_port: int = field(default_factory=free_tcp_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def console_log(self) -> Path:
        return self.workdir / f"{self.name}-console.log"

    @property
    def overlay(self) -> Path:
        return self.workdir / f"{self.name}.qcow2"

    @property
    def eth1_ipv4(self) -> str:
        return next(a.split("/")[0] for a in self.eth1_addresses if ":" not in a)

    @property
    def eth1_ipv6(self) -> str:
        return next(a.split("/")[0] for a in self.eth1_addresses if ":" in a)

    def start(self, image: DebianImage, link_netdev: str) -> None:
        """Start qemu. link_netdev is "listen=127.0.0.1:P" or "connect=127.0.0.1:P"."""
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(image.rootfs),
                "-F",
                "raw",
                str(self.overlay),
            ],
            check=True,
            timeout=60,
        )
        authorized_key = base64.b64encode(self.ssh_key.public_key_line.encode()).decode()
        kernel_command_line = " ".join(
            [
                "console=ttyS0",
                "net.ifnames=0",
                "root=/dev/vda",
                "rw",
                f"systemd.hostname={self.name}",
                f"fleettest.authorized_key={authorized_key}",
                f"fleettest.eth1={','.join(self.eth1_addresses)}",
            ]
        )
        command = [
            QEMU,
            "-accel", "tcg",
            "-smp", "1",
            "-m", str(MEMORY_MIB),
            "-nodefaults",
            "-no-user-config",
            "-display", "none",
            "-no-reboot",
            "-monitor", "none",
            "-serial", f"file:{self.console_log}",
            "-kernel", str(image.kernel),
            "-initrd", str(image.initrd),
            "-append", kernel_command_line,
            "-drive", f"file={self.overlay},if=virtio,format=qcow2,cache=unsafe",
            "-object", "rng-random,id=rng,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng",
            "-netdev",
            (
                f"user,id=mgmt,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
                f"hostfwd=tcp:127.0.0.1:{self.http_port}-:3031"
            ),
            "-device", f"virtio-net-pci,netdev=mgmt,addr=0x3,mac=52:54:00:12:00:{self.index:02x}",
            "-netdev", f"socket,id=link,{link_netdev}",
            "-device", f"virtio-net-pci,netdev=link,addr=0x4,mac=52:54:00:55:00:{self.index:02x}",
        ]  # fmt: skip
        with (self.workdir / f"{self.name}-qemu.log").open("wb") as qemu_log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads started here)
            )

    def describe_failure(self, message: str) -> str:
        lines = []
        if self.process is not None and self.process.poll() is not None:
            lines.append(f"qemu exited with {self.process.returncode}")
            qemu_log = self.workdir / f"{self.name}-qemu.log"
            if qemu_log.exists():
                lines.append(qemu_log.read_text(errors="replace")[-2000:])
        if self.console_log.exists():
            console = self.console_log.read_text(errors="replace").splitlines()[-40:]
            lines.append(f"last lines of {self.console_log}:")
            lines.extend(console)
        return f"{self.name}: {message}\n" + "\n".join(lines)

    def ssh_command(self, remote_command: str) -> list[str]:
        return [
            "ssh",
            "-F", "none",
            "-i", str(self.ssh_key.private_key),
            "-p", str(self.ssh_port),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10",
            "root@127.0.0.1",
            remote_command,
        ]  # fmt: skip

    def ssh(
        self, remote_command: str, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the VM as root."""
        result = subprocess.run(
            self.ssh_command(remote_command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise VirtualMachineError(
                f"{self.name}: `{remote_command}` exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def wait_for_ssh(self, deadline: float) -> None:
        while True:
            if self.process is None or self.process.poll() is not None:
                raise VirtualMachineError(self.describe_failure("qemu is not running"))
            with contextlib.suppress(subprocess.TimeoutExpired):
                # is-system-running --wait: SSH answers before boot has finished
                result = self.ssh("systemctl is-system-running --wait", timeout=120, check=False)
                if result.stdout.strip() in {"running", "degraded"}:
                    if result.stdout.strip() == "degraded":
                        failed = self.ssh("systemctl --failed --no-legend", check=False).stdout
                        raise VirtualMachineError(
                            self.describe_failure(f"booted degraded; failed units:\n{failed}")
                        )
                    return
            if time.monotonic() > deadline:
                raise VirtualMachineError(self.describe_failure("no SSH before the deadline"))
            time.sleep(1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # qemu shuts down on SIGTERM
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.overlay.unlink(missing_ok=True)


@contextlib.contextmanager
def running_pair(
    image: DebianImage, workdir: Path, ssh_key: SshKey, subnet: int = 55
) -> Iterator[tuple[VirtualMachine, VirtualMachine]]:
    """Two VMs joined by a private link (10.<subnet>.0.0/24, fd00:<subnet>::/64); both are
    stopped and their overlays removed on the way out, whatever happens."""
    machines = tuple(
        VirtualMachine(
            name=f"fleet{index}",
            index=index,
            eth1_addresses=(f"10.{subnet}.0.{index}/24", f"fd00:{subnet}::{index}/64"),
            workdir=workdir,
            ssh_key=ssh_key,
        )
        for index in (1, 2)
    )
    first, second = machines
    try:
        link_port = free_tcp_port()
        first.start(image, f"listen=127.0.0.1:{link_port}")
        deadline = time.monotonic() + 30
        while not is_listening_on_loopback(link_port):
            if first.process is not None and first.process.poll() is not None:
                raise VirtualMachineError(first.describe_failure("qemu exited at start"))
            if time.monotonic() > deadline:
                raise VirtualMachineError(first.describe_failure(f"not listening on {link_port}"))
            time.sleep(0.1)
        second.start(image, f"connect=127.0.0.1:{link_port}")
        boot_deadline = time.monotonic() + SSH_BOOT_TIMEOUT_SECONDS
        for machine in machines:
            machine.wait_for_ssh(boot_deadline)
        yield first, second
    finally:
        for machine in machines:
            machine.stop()
