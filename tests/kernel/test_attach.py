"""Attaching through BPF links, in a test namespace: two veths get the program, SIGKILL of the
process removes it from both, and a second attachment to the same interface is refused with an
AttachError that names it.

The attaching process runs inside the namespace (`ip netns exec`), so nothing here can touch the
host's interfaces; the namespace (and its veths) is deleted whatever happens.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import Namespace, namespace_with_veths

from .program import wait_for

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("attach_child.py")
PYTHON = "/usr/bin/python3"
XDP_ATTACHED_MODE = {"native": 1, "skb": 2}  # iproute2's "xdp": {"mode": ...}
START_TIMEOUT = 30.0
DETACH_TIMEOUT = 10.0


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    tag = f"{os.getpid()}{int(time.monotonic() * 1000) % 1000:03d}"[-7:]
    with namespace_with_veths(tag, pairs=2) as created:
        yield created


class Child:
    """attach_child.py inside the namespace; killed (if still running) when the test ends."""

    def __init__(self, namespace: Namespace, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        # `ip netns exec` enters the namespace and execs python: the pid is python's own.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace.name, PYTHON, str(CHILD), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )

    def read_line(self, timeout: float) -> str:
        """The child's next stdout line; fails with its stderr if it exits or stays silent."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.kill()
            _, stderr = self.proc.communicate(timeout=10)
            raise AssertionError(
                f"no line from the child within {timeout}s "
                f"(exit {self.proc.returncode}); stderr:\n{stderr}"
            )
        return line.rstrip("\n")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def start_child(namespace: Namespace) -> Iterator:
    children: list[Child] = []

    def start(*args: str) -> Child:
        child = Child(namespace, *args)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.kill()
            for stream in (child.proc.stdout, child.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.mark.parametrize("mode", ["skb", "native"])
def test_sigkill_leaves_no_program_on_either_interface(
    namespace: Namespace, start_child, mode: str
) -> None:
    for ifname in namespace.veths:
        assert namespace.xdp_attachment(ifname) is None, f"{ifname} has XDP before the test"
    child = start_child("hold", mode, *namespace.veths)
    assert child.read_line(START_TIMEOUT) == "attached"

    attachments = [namespace.xdp_attachment(ifname) for ifname in namespace.veths]
    for ifname, attachment in zip(namespace.veths, attachments, strict=True):
        assert attachment is not None, f"no XDP program on {ifname}"
        assert attachment["mode"] == XDP_ATTACHED_MODE[mode], (ifname, attachment)
        assert attachment["prog"]["name"] == "xdp_ip_counter"
    assert len({attachment["prog"]["id"] for attachment in attachments}) == 1, (
        "one loaded program for every interface"
    )
    for peer in (f"{ifname}p" for ifname in namespace.veths):
        assert namespace.xdp_attachment(peer) is None, f"{peer} should have nothing"

    child.proc.send_signal(signal.SIGKILL)
    assert child.proc.wait(timeout=10) == -signal.SIGKILL
    wait_for(
        lambda: all(namespace.xdp_attachment(ifname) is None for ifname in namespace.veths),
        DETACH_TIMEOUT,
        f"the XDP program to leave {', '.join(namespace.veths)}",
    )


def test_second_attachment_is_refused_naming_the_interface(
    namespace: Namespace, start_child
) -> None:
    ifname = namespace.veths[0]
    child = start_child("twice", ifname)
    lines = [child.read_line(START_TIMEOUT) for _ in range(3)]
    assert child.proc.wait(timeout=30) == 0
    busy = os.strerror(errno.EBUSY)
    # the same program again, then another program, both in skb mode: the link holds it (EBUSY)
    for line in lines[:2]:
        assert line.startswith("refused: "), lines
        assert f"cannot attach to {ifname} in skb mode: {busy}" in line, line
        assert "another XDP program is attached" in line, line
    # another program in native mode, while an skb-mode link holds the interface
    assert lines[2].startswith(f"refused: cannot attach to {ifname} in native mode"), lines
    assert "another XDP program is attached" in lines[2], lines
    # the refused attempts left nothing behind, and close() detached the first
    wait_for(
        lambda: namespace.xdp_attachment(ifname) is None,
        DETACH_TIMEOUT,
        f"no XDP program on {ifname} after the child closed its DataPaths",
    )
