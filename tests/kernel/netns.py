"""A network namespace made by a test, with veth pairs that live entirely inside it.

Nothing here touches the host's interfaces: both ends of every veth are created in the test
namespace, and deleting the namespace (always, in the context manager's finally) removes them.
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


@dataclass(frozen=True)
class Namespace:
    name: str
    veths: tuple[str, ...]  # one end of each pair (the other is named with a trailing "p")

    def link(self, ifname: str) -> dict:
        """`ip -d link show dev ifname` inside the namespace, as JSON."""
        return json.loads(ip("-n", self.name, "-j", "-d", "link", "show", "dev", ifname).stdout)[0]

    def ifindex(self, ifname: str) -> int:
        return int(self.link(ifname)["ifindex"])

    def xdp_attachment(self, ifname: str) -> dict | None:
        """The "xdp" object iproute2 reports for ifname (mode, prog), or None when none."""
        return self.link(ifname).get("xdp")

    def call_inside(self, function: Callable[[], Result]) -> Result:
        """Run function in a thread that has entered this namespace (setns affects only the
        calling thread), so that calls resolving ifindexes see the namespace's devices."""
        outcome: dict[str, object] = {}

        def body() -> None:
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
                outcome["value"] = function()
            except BaseException as exc:  # handed to the calling thread below
                outcome["error"] = exc
            finally:
                os.close(fd)

        thread = threading.Thread(target=body, name=f"in-{self.name}")
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), f"the thread inside {self.name} did not finish"
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]


@contextmanager
def namespace_with_veths(tag: str, pairs: int) -> Iterator[Namespace]:
    """A fresh namespace xic-<tag> with `pairs` veth pairs xic<tag>N / xic<tag>Np, all up."""
    name = f"xic-{tag}"
    veths = tuple(f"xic{tag}{n}" for n in range(pairs))
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        for veth in veths:
            ip("-n", name, "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            ip("-n", name, "link", "set", veth, "up")
            ip("-n", name, "link", "set", f"{veth}p", "up")
        yield Namespace(name, veths)
    finally:
        ip("netns", "del", name, check=False)
