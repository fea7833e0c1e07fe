"""Traffic for the flood test: a spoofed-source flood with trafgen, and one steady client.

The flood: UDP to one port, half IPv4 and half IPv6, each frame with a random source address
(trafgen's drnd(), drawn per frame) and a destination MAC address that is not the host's, so
the host's stack drops every frame as PACKET_OTHERHOST right after XDP saw it: nothing answers
(no ICMP to made-up addresses), nothing reaches conntrack or a socket.

The steady client is this file run as a script inside the client namespace:

    flood.py steady SRC DST PORT INTERVAL

sends one UDP datagram from SRC to DST:PORT every INTERVAL seconds until killed, and prints
"sent N" after each.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
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

    def finish(self, timeout: float) -> FloodReport:
        """Wait for trafgen to exit (killing it after timeout s); the frames it sent."""
        try:
            code = self.proc.wait(max(timeout - (time.monotonic() - self.started), 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"trafgen did not send {self.frames} frames within {timeout:.0f} s: "
                f"{self.log.read_text()[-500:]}"
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
    """One datagram every `interval` s from src to dst:port, from inside the namespace."""

    def __init__(
        self, ns: str, *, src: str, dst: str, port: int, interval: float, log: Path
    ) -> None:
        self.log = log
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
                    src,
                    dst,
                    str(port),
                    str(interval),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def sent(self) -> int:
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


def _steady(src: str, dst: str, port: int, interval: float) -> int:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((src, 0))
        sent = 0
        next_send = time.monotonic()
        while True:
            try:
                sock.sendto(b"xdp-ip-counter steady client", (dst, port))
                sent += 1
                print(f"sent {sent}", flush=True)
            except OSError as exc:  # e.g. ECONNREFUSED from the last ICMP: keep going
                print(f"error {exc}", flush=True)
            next_send += interval
            time.sleep(max(next_send - time.monotonic(), 0))


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "steady":
        sys.exit("usage: flood.py steady SRC DST PORT INTERVAL")
    sys.exit(_steady(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))


# -- the kernel map, seen from outside the daemon ---------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_MAP_GET_FD_BY_ID = 14


def _bpftool_json(*args: str) -> object:
    out = subprocess.run(
        ["bpftool", "-j", *args], check=True, capture_output=True, text=True, timeout=30
    )
    return json.loads(out.stdout)


@dataclass(frozen=True)
class KernelMap:
    """The sources map of the program attached to an interface, as bpftool shows it."""

    map_id: int
    max_entries: int
    bytes_memlock: int

    @classmethod
    def of_interface(cls, ifname: str, name: str = "sources") -> KernelMap:
        (net,) = _bpftool_json("net", "show", "dev", ifname)  # type: ignore[misc]
        (xdp,) = net["xdp"]
        prog = _bpftool_json("prog", "show", "id", str(xdp["id"]))
        for map_id in prog["map_ids"]:  # type: ignore[index]
            info = _bpftool_json("map", "show", "id", str(map_id))
            if info.get("name") == name:  # type: ignore[union-attr]
                return cls(map_id, int(info["max_entries"]), int(info["bytes_memlock"]))  # type: ignore[index]
        raise AssertionError(f"no map named {name!r} used by the XDP program on {ifname}")

    def memlock(self) -> int:
        return int(_bpftool_json("map", "show", "id", str(self.map_id))["bytes_memlock"])  # type: ignore[index]

    def count_entries(self, key_size: int, value_size: int) -> int:
        """Entries in the map now, read in one batch call into buffers twice its capacity (so
        that a map holding more than its capacity would show it)."""
        from xdp_ip_counter import bpf_syscall  # noqa: PLC0415 - not needed by the script mode

        fd = _map_fd_by_id(self.map_id)
        try:
            room = 2 * self.max_entries
            _, _, count = bpf_syscall.map_lookup_batch(fd, key_size, value_size, room, chunk=room)
            return count
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
