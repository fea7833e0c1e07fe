"""Traffic for the flood tests: spoofed-source floods with trafgen, and steady clients.

The floods: UDP to one port, with a destination MAC address that is not the host's, so the
host's stack drops every frame as PACKET_OTHERHOST right after XDP saw it: nothing answers (no
ICMP to made-up addresses), nothing reaches conntrack or a socket. Two kinds:
- `trafgen_config`: half IPv4 and half IPv6, each frame with a random source address (trafgen's
  drnd(), drawn per frame): sources as an attack sends them.
- `trafgen_counted_config`: IPv4 only, the source address counting up by one per frame from a
  given address (trafgen's dinc() on the whole 32-bit field, carries included): N frames come
  from exactly N distinct sources, so the truth a count is compared with is known.

The steady clients are this file run as a script inside the client namespace:

    flood.py steady SRC[,SRC...] DST PORT INTERVAL

sends one UDP datagram from each SRC to DST:PORT every INTERVAL seconds (the sources spread
evenly over the interval) until killed, and prints "sent N" after each round: N datagrams from
every source so far.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PYTHON = "/usr/bin/python3"
NOT_THE_HOSTS_MAC = "02:00:00:00:00:99"  # no interface has it: frames to it are "other host"


def trafgen_path() -> str | None:
    return shutil.which("trafgen")


def _mac_bytes(mac: str) -> str:
    return ", ".join(f"0x{part}" for part in mac.split(":"))


def _ip_bytes(address: str) -> str:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ", ".join(f"0x{byte:02x}" for byte in socket.inet_pton(family, address))


def trafgen_config(src_mac: str, dst_v4: str, dst_v6: str, port: int) -> str:
    """Two frames, sent in turn: IPv4/UDP and IPv6/UDP to `port`, random source address and
    source port in each frame. Checksums are left 0: the host drops the frames before looking."""
    ethernet = f"{_mac_bytes(NOT_THE_HOSTS_MAC)}, {_mac_bytes(src_mac)}"
    udp = f"drnd(2), c16({port}), c16(8), c16(0)"
    return f"""/* xdp-ip-counter flood test: spoofed sources */
{{
  {ethernet}, c16(0x0800),
  0x45, 0x00, c16(28), drnd(2), c16(0), 64, 17, c16(0),
  drnd(4),
  {_ip_bytes(dst_v4)},
  {udp}
}}
{{
  {ethernet}, c16(0x86dd),
  0x60, 0x00, 0x00, 0x00, c16(8), 17, 64,
  drnd(16),
  {_ip_bytes(dst_v6)},
  {udp}
}}
"""


def trafgen_counted_config(src_mac: str, dst_v4: str, port: int, first_source: str) -> str:
    """IPv4/UDP frames to dst_v4:port whose source address counts up by one per frame from
    first_source (trafgen fills in the IP checksum of a field it changes)."""
    return f"""/* xdp-ip-counter flood test: one spoofed IPv4 source per frame, counting up */
{{
  eth(da={NOT_THE_HOSTS_MAC}, sa={src_mac}),
  ipv4(sa={first_source}, sa=dinc(), da={dst_v4}, ttl=64),
  udp(sp=40000, dp={port})
}}
"""


@dataclass(frozen=True)
class FloodReport:
    sent: int  # frames trafgen says it sent
    seconds: float  # wall time from start to exit


class Flood:
    """trafgen running in a namespace; `finish` waits for it with a deadline."""

    def __init__(self, ns: str, ifname: str, config: Path, frames: int, log: Path) -> None:
        self.log = log
        self.frames = frames
        self.started = time.monotonic()
        with log.open("w") as out:
            # One sender process (--cpus 1): the other core is the daemon's. --no-sock-mem and
            # --notouch-irq: leave the host's socket-memory sysctls and IRQ affinities alone.
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "trafgen",
                    "--dev",
                    ifname,
                    "--conf",
                    str(config),
                    "--num",
                    str(frames),
                    "--cpus",
                    "1",
                    "--no-sock-mem",
                    "--notouch-irq",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float, why: str = "") -> FloodReport:
        """Wait for trafgen to exit (killing it timeout s after it started); the frames it sent.
        `why` says in the failure why that deadline."""
        try:
            code = self.proc.wait(max(timeout - (time.monotonic() - self.started), 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"trafgen did not send {self.frames} frames within {timeout:.0f} s"
                f"{f' ({why})' if why else ''}: {self.log.read_text()[-500:]}"
            ) from None
        seconds = time.monotonic() - self.started
        text = self.log.read_text()
        assert code == 0, f"trafgen exited with {code}: {text[-1000:]}"
        found = re.search(r"(\d+) packets outgoing", text)
        assert found, f"no packet count in trafgen's output: {text[-1000:]}"
        return FloodReport(sent=int(found.group(1)), seconds=seconds)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class SteadyClient:
    """One datagram every `interval` s from src (an address, or several: one datagram from
    each per interval) to dst:port, from inside the namespace."""

    def __init__(
        self, ns: str, *, src: str | Sequence[str], dst: str, port: int, interval: float, log: Path
    ) -> None:
        self.log = log
        sources = src if isinstance(src, str) else ",".join(src)
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    PYTHON,
                    str(Path(__file__).resolve()),
                    "steady",
                    sources,
                    dst,
                    str(port),
                    str(interval),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def sent(self) -> int:
        """Rounds sent so far: datagrams from each source."""
        lines = [line for line in self.log.read_text().splitlines() if line.startswith("sent ")]
        return int(lines[-1].split()[1]) if lines else 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _steady(sources: list[str], dst: str, port: int, interval: float) -> int:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sockets = []
    try:
        for src in sources:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.bind((src, 0))
        sent = 0
        next_send = time.monotonic()
        while True:
            for sock in sockets:
                try:
                    sock.sendto(b"xdp-ip-counter steady client", (dst, port))
                except OSError as exc:  # e.g. ECONNREFUSED from the last ICMP: keep going
                    print(f"error {sock.getsockname()[0]}: {exc}", flush=True)
                next_send += interval / len(sockets)
                time.sleep(max(next_send - time.monotonic(), 0))
            sent += 1
            print(f"sent {sent}", flush=True)
    finally:
        for sock in sockets:
            sock.close()


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "steady":
        sys.exit("usage: flood.py steady SRC[,SRC...] DST PORT INTERVAL")
    sys.exit(_steady(sys.argv[2].split(","), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))


# -- the kernel table, seen from outside the daemon ---------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_MAP_GET_FD_BY_ID = 14


def _bpftool_json(*args: str) -> object:
    out = subprocess.run(
        ["bpftool", "-j", *args], check=True, capture_output=True, text=True, timeout=30
    )
    return json.loads(out.stdout)


@dataclass(frozen=True)
class KernelTable:
    """The sources table of the program attached to an interface, as bpftool shows it: an
    array map with one element per set of WAYS slots (bpf/xdp_ip_counter.c, struct set)."""

    map_id: int
    sets: int  # the map's max_entries
    value_size: int
    bytes_memlock: int

    @classmethod
    def of_interface(cls, ifname: str, name: str = "sources") -> KernelTable:
        (net,) = _bpftool_json("net", "show", "dev", ifname)  # type: ignore[misc]
        (xdp,) = net["xdp"]
        prog = _bpftool_json("prog", "show", "id", str(xdp["id"]))
        for map_id in prog["map_ids"]:  # type: ignore[index]
            info = _bpftool_json("map", "show", "id", str(map_id))
            if info.get("name") == name:  # type: ignore[union-attr]
                return cls(
                    map_id,
                    int(info["max_entries"]),  # type: ignore[index]
                    int(info["bytes_value"]),  # type: ignore[index]
                    int(info["bytes_memlock"]),  # type: ignore[index]
                )
        raise AssertionError(f"no map named {name!r} used by the XDP program on {ifname}")

    @property
    def slots(self) -> int:
        from xdp_ip_counter.layout import WAYS  # noqa: PLC0415 - not needed by the script mode

        return self.sets * WAYS

    def memlock(self) -> int:
        return int(_bpftool_json("map", "show", "id", str(self.map_id))["bytes_memlock"])  # type: ignore[index]

    def claimed_slots(self) -> int:
        """Slots holding an entry now (a tag word whose hash part is set: not free, not being
        written), read through a mapping of the map of our own. An entry past the window
        stays claimed until a new key takes its slot (lazy expiry)."""
        import numpy as np  # noqa: PLC0415 - not needed by the script mode

        from xdp_ip_counter.layout import WAYS  # noqa: PLC0415

        fd = _map_fd_by_id(self.map_id)
        try:
            size = self.sets * self.value_size
            length = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
            with mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as mapped:
                words = np.frombuffer(mapped, "<u8", count=size // 8).reshape(self.sets, -1)
                claimed = int(np.count_nonzero(words[:, :WAYS] >> np.uint64(32)))
                del words  # the mapping cannot close while a view of it is alive
                return claimed
        finally:
            os.close(fd)


def _map_fd_by_id(map_id: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=I", attr, 0, map_id)
    fd = libc.syscall(_SYS_BPF[platform.machine()], BPF_MAP_GET_FD_BY_ID, ctypes.byref(attr), 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(MAP_GET_FD_BY_ID {map_id}): {os.strerror(err)}")
    return fd
