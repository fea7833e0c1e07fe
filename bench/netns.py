"""Network namespaces the benchmark makes and always removes, and running code inside them.

Nothing here touches the host's interfaces: both ends of the veth pair live in namespaces made
here, and deleting a namespace removes its end of the pair (and with it the other end).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
Result = TypeVar("Result")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def inside(namespace: str, function: Callable[[], Result]) -> Result:
    """Run function in a thread that entered the namespace (setns changes only the calling
    thread): interface names, sockets and /proc/thread-self/net are then the namespace's."""
    outcome: dict[str, object] = {}

    def body() -> None:
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
            outcome["value"] = function()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=body, name=f"in-{namespace}")
    thread.start()
    thread.join(timeout=120)
    if thread.is_alive():
        raise RuntimeError(f"the thread inside {namespace} did not finish")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


@dataclass(frozen=True)
class VethLab:
    """A sender namespace and a receiver namespace joined by one veth pair."""

    sender: str
    receiver: str
    sender_if: str
    receiver_if: str
    sender_mac: str
    receiver_mac: str
    receiver_v4: str

    def receiver_ifindex(self) -> int:
        return int(_link(self.receiver, self.receiver_if)["ifindex"])


def _link(namespace: str, ifname: str) -> dict:
    return json.loads(ip("-n", namespace, "-j", "link", "show", "dev", ifname).stdout)[0]


@contextmanager
def veth_lab(tag: str) -> Iterator[VethLab]:
    """Namespaces xicb-<tag>-tx and xicb-<tag>-rx with a veth pair between them, up, the
    receiver at 10.201.0.1/16 with reverse-path filtering off (the sources are made up)."""
    sender, receiver = f"xicb-{tag}-tx", f"xicb-{tag}-rx"
    sender_if, receiver_if = f"xicbt{tag}"[:15], f"xicbr{tag}"[:15]
    made: list[str] = []
    try:
        for namespace in (sender, receiver):
            ip("netns", "add", namespace)
            made.append(namespace)
        ip(
            "-n",
            sender,
            "link",
            "add",
            sender_if,
            "type",
            "veth",
            "peer",
            "name",
            receiver_if,
            "netns",
            receiver,
        )
        ip("-n", sender, "link", "set", sender_if, "up")
        ip("-n", receiver, "link", "set", "lo", "up")
        ip("-n", receiver, "link", "set", receiver_if, "up")
        ip("-n", receiver, "addr", "add", "10.201.0.1/16", "dev", receiver_if)
        ip("-n", sender, "addr", "add", "10.201.0.2/16", "dev", sender_if)
        for key in ("all", "default", receiver_if):
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    receiver,
                    "sysctl",
                    "-qw",
                    f"net.ipv4.conf.{key}.rp_filter=0",
                ],
                check=True,
                timeout=30,
            )
        yield VethLab(
            sender=sender,
            receiver=receiver,
            sender_if=sender_if,
            receiver_if=receiver_if,
            sender_mac=_link(sender, sender_if)["address"],
            receiver_mac=_link(receiver, receiver_if)["address"],
            receiver_v4="10.201.0.1",
        )
    finally:
        for namespace in reversed(made):
            ip("netns", "del", namespace, check=False)
