"""Network namespaces made by a test or a benchmark, always removed, and running code inside them.

Nothing here touches the host's interfaces: every namespace is made here and deleted in a
`finally` (its veth ends go with it, and their peers with them); a veth made here has both ends
in namespaces made here, unless the caller puts one end in the root namespace itself (the e2e lab
does, for the daemon) and removes it.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
Result = TypeVar("Result")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def link(namespace: str, ifname: str) -> dict:
    """`ip -d link show dev ifname` inside the namespace, as JSON."""
    return json.loads(ip("-n", namespace, "-j", "-d", "link", "show", "dev", ifname).stdout)[0]


def inside(namespace: str, function: Callable[[], Result], timeout: float = 120) -> Result:
    """Run function in a thread that entered the namespace (setns changes only the calling
    thread): interface names, ifindexes, sockets and /proc/thread-self/net are the namespace's."""
    outcome: dict[str, object] = {}

    def body() -> None:
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
            outcome["value"] = function()
        except BaseException as exc:  # handed to the calling thread below
            outcome["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=body, name=f"in-{namespace}")
    thread.start()
    thread.join(timeout=timeout)
    if thread.is_alive():
        raise RuntimeError(f"the thread inside {namespace} did not finish within {timeout} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


@dataclass(frozen=True)
class Namespace:
    name: str
    veths: tuple[str, ...]  # the first end of each pair made with it

    def link(self, ifname: str) -> dict:
        """`ip -d link show dev ifname` inside the namespace, as JSON."""
        return link(self.name, ifname)

    def ifindex(self, ifname: str) -> int:
        return int(self.link(ifname)["ifindex"])

    def xdp_attachment(self, ifname: str) -> dict | None:
        """The "xdp" object iproute2 reports for ifname (mode, prog), or None when none."""
        return self.link(ifname).get("xdp")

    def call_inside(self, function: Callable[[], Result]) -> Result:
        """function's result, run in a thread inside this namespace (see `inside`)."""
        return inside(self.name, function, timeout=60)


@contextmanager
def namespace(
    name: str,
    veths: Sequence[tuple[str, str]] = (),
    addresses: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[Namespace]:
    """A fresh namespace `name` with lo up and the given veth pairs (end, peer), both ends inside
    and up, with `addresses` (interface -> CIDRs) added; deleted whatever happens."""
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        for end, peer in veths:
            ip("-n", name, "link", "add", end, "type", "veth", "peer", "name", peer)
        for ifname, cidrs in (addresses or {}).items():
            for cidr in cidrs:
                ip("-n", name, "addr", "add", cidr, "dev", ifname)
        for end, peer in veths:
            ip("-n", name, "link", "set", end, "up")
            ip("-n", name, "link", "set", peer, "up")
        yield Namespace(name, tuple(end for end, _ in veths))
    finally:
        ip("netns", "del", name, check=False)


@contextmanager
def namespace_with_veths(tag: str, pairs: int) -> Iterator[Namespace]:
    """A fresh namespace xic-<tag> with `pairs` veth pairs xic<tag>N / xic<tag>Np, all up."""
    ends = [f"xic{tag}{n}" for n in range(pairs)]
    with namespace(f"xic-{tag}", [(end, f"{end}p") for end in ends]) as created:
        yield created


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
        return int(link(self.receiver, self.receiver_if)["ifindex"])


@contextmanager
def veth_lab(tag: str) -> Iterator[VethLab]:
    """Namespaces xicb-<tag>-tx and xicb-<tag>-rx with a veth pair between them, up, the
    receiver at 10.201.0.1/16 with reverse-path filtering off (the sources are made up)."""
    sender, receiver = f"xicb-{tag}-tx", f"xicb-{tag}-rx"
    sender_if, receiver_if = f"xicbt{tag}"[:15], f"xicbr{tag}"[:15]
    with ExitStack() as made:
        made.enter_context(namespace(sender))
        made.enter_context(namespace(receiver))
        ip("-n", sender, "link", "add", sender_if, "type", "veth",
           "peer", "name", receiver_if, "netns", receiver)  # fmt: skip
        ip("-n", sender, "link", "set", sender_if, "up")
        ip("-n", receiver, "link", "set", receiver_if, "up")
        ip("-n", receiver, "addr", "add", "10.201.0.1/16", "dev", receiver_if)
        ip("-n", sender, "addr", "add", "10.201.0.2/16", "dev", sender_if)
        for key in ("all", "default", receiver_if):
            subprocess.run(
                ["ip", "netns", "exec", receiver, "sysctl", "-qw",
                 f"net.ipv4.conf.{key}.rp_filter=0"],
                check=True, timeout=30,
            )  # fmt: skip
        yield VethLab(
            sender=sender,
            receiver=receiver,
            sender_if=sender_if,
            receiver_if=receiver_if,
            sender_mac=link(sender, sender_if)["address"],
            receiver_mac=link(receiver, receiver_if)["address"],
            receiver_v4="10.201.0.1",
        )
