"""The fleet under test: two VMs, the .deb, ansible-playbook runs, and reading the daemon.

Used by conftest.py (the fixtures) and test_fleet.py (the checks).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from qemu_vm import VirtualMachine

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
PLAYBOOK_TIMEOUT_SECONDS = 900
SERVICE = "xdp-ip-counter"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, step: float = 1.0) -> Any:
    """Poll condition until it returns something truthy; fail naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(step)


def record_time(timings: Path, step: str, since: float) -> None:
    """Append "<seconds> <step>" to the timings file."""
    with timings.open("a") as timings_file:
        timings_file.write(f"{time.monotonic() - since:7.1f} s  {step}\n")


@dataclass(frozen=True)
class PlaybookRun:
    returncode: int
    output: str
    log: Path
    recap: dict[str, dict[str, int]]  # host -> {"ok": n, "changed": n, "failed": n, ...}

    def describe(self) -> str:
        return f"ansible-playbook exited {self.returncode}; log {self.log}:\n{self.output[-6000:]}"

    def changed(self, host: str) -> int:
        return self.recap[host]["changed"]

    def handler_outcomes(self, handler: str) -> dict[str, str]:
        """host -> "changed"/"ok"/"skipping"/"failed" for a handler of the role; {} when it was
        not notified at all."""
        outcomes: dict[str, str] = {}
        header = f"RUNNING HANDLER [xdp_ip_counter : {handler}]"
        in_section = False
        for line in self.output.splitlines():
            if line.startswith(("TASK ", "RUNNING HANDLER ", "PLAY ")):
                in_section = line.startswith(header)
                continue
            match = re.match(r"^(changed|ok|skipping|failed|fatal): \[(\S+)\]", line)
            if in_section and match:
                outcomes[match[2]] = match[1]
        return outcomes


_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of ansible-playbook's default output: host -> counters."""
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        match = _RECAP_LINE.match(line.strip()) if in_recap else None
        if match:
            recap[match["host"]] = {
                key: int(value)
                for key, value in (pair.split("=") for pair in match["counts"].split())
            }
    return recap


@dataclass
class Fleet:
    """The two VMs, the .deb and how to run the playbook against them."""

    machines: tuple[VirtualMachine, VirtualMachine]
    deb: Path
    workdir: Path
    control_path_dir: Path
    timings: Path
    role_vars: dict[str, Any] = field(default_factory=dict)
    runs: int = 0

    @property
    def watched(self) -> VirtualMachine:
        return self.machines[0]

    @property
    def peer(self) -> VirtualMachine:
        return self.machines[1]

    def write_inventory(self, role_vars: dict[str, Any]) -> Path:
        hosts = {
            machine.name: {"ansible_host": "127.0.0.1", "ansible_port": machine.ssh_port}
            for machine in self.machines
        }
        connection_vars = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.machines[0].ssh_key.private_key),
            "ansible_ssh_common_args": (
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
            ),
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        inventory = {
            "all": {
                "children": {
                    "xdp_ip_counter": {"hosts": hosts, "vars": connection_vars | role_vars}
                }
            }
        }
        path = self.workdir / "inventory.json"  # JSON is YAML: ansible's yaml plugin reads it
        path.write_text(json.dumps(inventory, indent=2))
        return path

    def diagnostics(self) -> str:
        """The service's state and recent journal on each VM, for failure messages."""
        parts = []
        for machine in self.machines:
            try:
                result = machine.ssh(
                    f"systemctl status --no-pager {SERVICE}; "
                    f"journalctl --no-pager -o cat -n 40 -u {SERVICE}",
                    check=False,
                )
                parts.append(f"--- {machine.name}:\n{result.stdout}{result.stderr}")
            except (OSError, subprocess.SubprocessError) as error:
                parts.append(f"--- {machine.name}: cannot reach it: {error}")
        return "\n".join(parts)

    def check(self, run: PlaybookRun) -> None:
        """Fail the test, with the playbook's output and the services' journals, unless the run
        succeeded on every VM."""
        failed = run.returncode != 0 or any(
            run.recap.get(m.name, {}).get("failed", 1) or run.recap[m.name]["unreachable"]
            for m in self.machines
        )
        if failed:
            raise AssertionError(f"{run.describe()}\n{self.diagnostics()}")

    def ansible_environment(self) -> dict[str, str]:
        return os.environ | {
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_path_dir),
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
        }

    def deploy(self, **changes: Any) -> PlaybookRun:
        """Run ansible/site.yml against both VMs with the role variables changed as given."""
        self.role_vars.update(changes)
        inventory = self.write_inventory(self.role_vars)
        self.runs += 1
        log = self.workdir / f"ansible-run-{self.runs}.log"
        started = time.monotonic()
        result = subprocess.run(
            ["ansible-playbook", "-i", str(inventory), "site.yml"],
            cwd=ANSIBLE_DIR,
            env=self.ansible_environment(),
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT_SECONDS,
            check=False,
        )
        output = result.stdout + result.stderr
        log.write_text(output)
        record_time(self.timings, f"ansible-playbook run {self.runs}", started)
        return PlaybookRun(result.returncode, output, log, parse_recap(result.stdout))

    def run_module(self, host: str, module: str, arguments: str) -> subprocess.CompletedProcess:
        """One module on one VM with `ansible` (ad hoc), as a task of the role would run it."""
        inventory = self.write_inventory(self.role_vars)
        return subprocess.run(
            ["ansible", host, "-i", str(inventory), "-m", module, "-a", arguments],
            cwd=ANSIBLE_DIR,
            env=self.ansible_environment(),
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT_SECONDS,
            check=False,
        )


def service_properties(machine: VirtualMachine) -> dict[str, str]:
    """`systemctl show` of the service: ActiveState, SubState, StatusText, MainPID, NRestarts."""
    result = machine.ssh(
        f"systemctl show -p ActiveState,SubState,StatusText,MainPID,NRestarts {SERVICE}"
    )
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def http_get(machine: VirtualMachine, path: str) -> str:
    """GET http://<vm>:3031<path> through the forwarded port."""
    url = f"http://127.0.0.1:{machine.http_port}{path}"
    with urllib.request.urlopen(url, timeout=15) as response:
        return response.read().decode()


def active_users(machine: VirtualMachine) -> dict[tuple[str, str, str], float]:
    """active_users samples of the VM's /metrics: (ip, proto, port) -> value."""
    samples = {}
    for family in text_string_to_metric_families(http_get(machine, "/metrics")):
        if family.name == "active_users":
            for sample in family.samples:
                labels = sample.labels
                samples[(labels["ip"], labels["proto"], labels["port"])] = sample.value
    return samples


def metric_value(machine: VirtualMachine, name: str) -> float | None:
    for family in text_string_to_metric_families(http_get(machine, "/metrics")):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def source_list(machine: VirtualMachine) -> list[dict[str, Any]]:
    """The VM's /list: one object per (source, proto, port)."""
    return json.loads(http_get(machine, "/list"))


SEND_SCRIPT = """
import socket, sys
targets = [(socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])]
for port in map(int, sys.argv[3:]):
    for family, address in targets:
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.settimeout(3)
        try:
            tcp.connect((address, port))
        except OSError:
            pass  # refused: nobody listens, but the SYN went past the XDP program
        tcp.close()
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.sendto(b"fleet-test", (address, port))
        udp.close()
"""


def send_from(sender: VirtualMachine, receiver: VirtualMachine, ports: list[int]) -> None:
    """From sender, a TCP connection attempt and a UDP datagram to each of receiver's ports,
    over the private link, over IPv4 and IPv6."""
    script = SEND_SCRIPT.replace("'", "'\\''")
    sender.ssh(
        f"python3 -c '{script}' {receiver.eth1_ipv4} {receiver.eth1_ipv6} "
        + " ".join(map(str, ports))
    )
