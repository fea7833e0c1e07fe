"""Child process for test_attach.py, run inside the test namespace with `ip netns exec`.

attach_child.py hold MODE IFNAME [IFNAME ...]
    attach one program to every IFNAME in MODE (skb|native), print "attached", then sleep
    until killed: the test SIGKILLs it and checks that the links went with it.
attach_child.py twice IFNAME
    attach to IFNAME, then try again with the same program and with a second one; print
    one line "refused: <AttachError message>" per refusal, or "accepted" if one succeeds.
"""

from __future__ import annotations

import sys
import time

from xdp_ip_counter.bpf import AttachError, DataPath
from xdp_ip_counter.config import PortFilter


def hold(mode: str, ifnames: list[str]) -> None:
    datapath = DataPath(64)
    datapath.configure(PortFilter.of({22, 80}), 60)
    for ifname in ifnames:
        datapath.attach(ifname, mode)
    print("attached", flush=True)
    while True:
        time.sleep(60)


def twice(ifname: str) -> None:
    first = DataPath(64)
    first.configure(PortFilter.all(), 60)
    first.attach(ifname, "skb")
    second = DataPath(64)
    second.configure(PortFilter.all(), 60)
    for datapath, mode in ((first, "skb"), (second, "skb"), (second, "native")):
        try:
            datapath.attach(ifname, mode)
        except AttachError as exc:
            print(f"refused: {exc}", flush=True)
        else:
            print("accepted", flush=True)
    first.close()
    second.close()


if __name__ == "__main__":
    if sys.argv[1] == "hold":
        hold(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "twice":
        twice(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}")
