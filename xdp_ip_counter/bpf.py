"""The only module that imports bcc: compile the XDP program, configure its maps, attach it to
interfaces through BPF links, and read its maps into numpy arrays."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bpf_syscall
from .bpf_syscall import BPFSyscallError
from .config import PortFilter
from .layout import KEY_DTYPE, OUTCOMES, VALUE_DTYPE

log = logging.getLogger(__name__)

PROGRAM_FILE = "xdp_ip_counter.c"
FUNCTION = "xdp_ip_counter"
BPF_F_NO_COMMON_LRU = 1 << 1
_CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)


class CompileError(RuntimeError):
    """bcc could not compile or load the program; the message says what to install or check."""


class AttachError(RuntimeError):
    """The program could not be attached to an interface; the message names it and what to try."""


def source_dir() -> Path:
    """Where the C source is: $XDP_IP_COUNTER_BPF_DIR, the checkout, or the installed copy."""
    candidates = []
    if os.environ.get("XDP_IP_COUNTER_BPF_DIR"):
        candidates.append(Path(os.environ["XDP_IP_COUNTER_BPF_DIR"]))
    candidates += [
        Path(__file__).resolve().parent.parent / "bpf",
        Path("/usr/share/xdp-ip-counter/bpf"),
    ]
    for candidate in candidates:
        if (candidate / PROGRAM_FILE).is_file():
            return candidate
    raise CompileError(f"cannot find {PROGRAM_FILE} in any of: {', '.join(map(str, candidates))}")


def kernel_clock_ns() -> int:
    """The clock the program stamps first/last seen with (bpf_ktime_get_coarse_ns)."""
    return time.clock_gettime_ns(_CLOCK_MONOTONIC_COARSE)


def _headers_hint() -> str:
    build = Path("/lib/modules") / os.uname().release / "build"
    if build.exists():
        return ""
    return (
        f" — {build} does not exist: bcc compiles against the running kernel's headers. On Debian "
        "install linux-headers-$(uname -r) (or linux-headers-amd64 and link "
        f"{build} and {build.parent / 'source'} to /usr/src/linux-headers-*-amd64 and -common; the "
        "program uses only UAPI structures), or run packaging/bootstrap.sh from the source tree"
    )


@dataclass
class Link:
    """One attachment of the program to an interface; closing the fd detaches it."""

    ifname: str
    ifindex: int
    mode: str
    fd: int

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class DataPath:
    """The loaded program and its maps: sources (LRU hash), port_filter, stats (per CPU)."""

    def __init__(self, max_entries: int, lru_flags: int = 0) -> None:
        from bcc import BPF  # noqa: PLC0415 - imported here so that --help works without bcc

        directory = source_dir()
        cflags = [
            f"-I{directory}",
            f"-DMAX_ENTRIES={int(max_entries)}",
            f"-DLRU_FLAGS={int(lru_flags)}",
            "-Wno-unused-function",
        ]
        self.max_entries = max_entries
        try:
            self._bpf = BPF(src_file=str(directory / PROGRAM_FILE).encode(), cflags=cflags)
            self._fn = self._bpf.load_func(FUNCTION.encode(), BPF.XDP)
        except Exception as exc:  # bcc raises bare Exception for compile and load failures
            raise CompileError(
                f"cannot compile or load {PROGRAM_FILE}: {exc}{_headers_hint()}"
            ) from exc
        self.prog_fd: int = self._fn.fd
        self._sources = self._bpf[b"sources"]
        self._port_filter = self._bpf[b"port_filter"]
        self._stats = self._bpf[b"stats"]
        self.sources_fd: int = self._sources.get_fd()
        self.links: dict[str, Link] = {}
        self.ports: PortFilter | None = None
        assert ctypes.sizeof(self._sources.Key) == KEY_DTYPE.itemsize
        assert ctypes.sizeof(self._sources.Leaf) == VALUE_DTYPE.itemsize

    # -- configuration ---------------------------------------------------------------------

    def _write_filter(self, all_ports: bool, ports: Iterable[int]) -> None:
        value = self._port_filter.Leaf()
        value.all_ports = 1 if all_ports else 0
        for port in ports:
            value.bits[port >> 6] |= 1 << (port & 63)
        self._port_filter[ctypes.c_int(0)] = value

    def set_ports(self, ports: PortFilter) -> None:
        """Write the watched ports; safe while attached: a port watched before and after is
        never filtered out in between (the union is written first, then the new set)."""
        if self.ports is not None and self.ports != ports:
            self._write_filter(
                self.ports.all_ports or ports.all_ports, self.ports.ports | ports.ports
            )
        self._write_filter(ports.all_ports, ports.ports)
        self.ports = ports

    # -- attachment -------------------------------------------------------------------------

    def attach(self, ifname: str, mode: str) -> Link:
        """Attach to ifname in "skb" or "native" mode through a BPF link."""
        if self.ports is None:
            raise AttachError("internal error: ports must be set before attaching")
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise AttachError(f"interface {ifname!r} does not exist") from None
        try:
            fd = bpf_syscall.link_create_xdp(self.prog_fd, ifindex, mode)
        except BPFSyscallError as exc:
            hint = {
                errno.EBUSY: "another XDP program is attached to it already (see `bpftool net "
                "show dev {ifname}`; another xdp-ip-counter?)",
                errno.EEXIST: "another XDP program is attached to it already (see `bpftool net "
                "show dev {ifname}`; another xdp-ip-counter?)",
                errno.EOPNOTSUPP: "its driver has no native XDP: use --xdp-mode skb",
                errno.EINVAL: "the kernel refused the attachment: try --xdp-mode skb",
                errno.EPERM: "permission denied: needs CAP_BPF and CAP_NET_ADMIN (run as root)",
            }.get(exc.errno, "")
            raise AttachError(
                f"cannot attach to {ifname} in {mode} mode: {os.strerror(exc.errno)}"
                + (f"; {hint.format(ifname=ifname)}" if hint else "")
            ) from None
        link = Link(ifname=ifname, ifindex=ifindex, mode=mode, fd=fd)
        self.links[ifname] = link
        return link

    def detach(self, ifname: str) -> None:
        link = self.links.pop(ifname, None)
        if link is not None:
            link.close()

    def close(self) -> None:
        """Detach from every interface and release the program and maps."""
        for ifname in list(self.links):
            self.detach(ifname)
        self._bpf.cleanup()

    # -- reading ----------------------------------------------------------------------------

    def read_sources(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Every entry of the sources map as (keys, values) numpy arrays, and the kernel clock
        just before the read."""
        now = kernel_clock_ns()
        keys, values, count = bpf_syscall.map_lookup_batch(
            self.sources_fd, KEY_DTYPE.itemsize, VALUE_DTYPE.itemsize, self.max_entries
        )
        k = np.frombuffer(keys, dtype=KEY_DTYPE, count=count)
        v = np.frombuffer(values, dtype=VALUE_DTYPE, count=count)
        return k, v, now

    def read_stats(self) -> dict[str, int]:
        """Frames per outcome, summed over CPUs."""
        totals = {}
        for index, name in enumerate(OUTCOMES):
            totals[name] = int(self._stats.sum(ctypes.c_int(index)).value)
        return totals

    def expire(self, keys: np.ndarray, cutoff_ns: int) -> int:
        """Remove the given keys unless they were seen at or after cutoff_ns.

        Each key is taken out atomically (lookup-and-delete); one that a packet refreshed since
        the snapshot is put back, merged with anything inserted for it meanwhile, so no hit is
        lost. Returns how many entries were removed for good.
        """
        removed = 0
        value_size = VALUE_DTYPE.itemsize
        for key in _rows(keys):
            raw = bpf_syscall.map_lookup_and_delete(self.sources_fd, key, value_size)
            if raw is None:
                continue
            value = np.frombuffer(raw, dtype=VALUE_DTYPE)[0]
            if int(value["last_seen"]) < cutoff_ns:
                removed += 1
                continue
            self._put_back(key, value)
        return removed

    def _put_back(self, key: bytes, value: np.void) -> None:
        raw = value.tobytes()
        try:
            bpf_syscall.map_update(self.sources_fd, key, raw, bpf_syscall.BPF_NOEXIST)
            return
        except BPFSyscallError as exc:
            if exc.errno != errno.EEXIST:
                log.warning("could not restore a refreshed entry: %s", exc)
                return
        # A packet re-inserted the key in between: merge the two.
        now_raw = bpf_syscall.map_lookup(self.sources_fd, key, VALUE_DTYPE.itemsize)
        if now_raw is None:
            bpf_syscall.map_update(self.sources_fd, key, raw, bpf_syscall.BPF_ANY)
            return
        new = np.frombuffer(now_raw, dtype=VALUE_DTYPE)[0].copy()
        new["first_seen"] = min(int(new["first_seen"]), int(value["first_seen"]))
        new["packets"] += value["packets"]
        new["bytes"] += value["bytes"]
        bpf_syscall.map_update(self.sources_fd, key, new.tobytes(), bpf_syscall.BPF_ANY)


def _rows(keys: np.ndarray) -> Iterable[bytes]:
    raw = keys.tobytes()
    size = keys.dtype.itemsize
    return (raw[i : i + size] for i in range(0, len(raw), size))
