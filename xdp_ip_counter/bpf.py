"""The only module that imports bcc: find the program's C source, compile and load it, attach
it to interfaces through BPF links, and reach its maps.

Reading the sources map goes through the per-CPU cache's protocol (cache.SourceCache), and the
program is compiled with the clock calibrated in clock.py; neither needs bcc.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import sys
import sysconfig
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import bpf_syscall
from .bpf_syscall import BPFSyscallError
from .cache import CACHE_SLOT_DTYPE, SourceCache
from .clock import KernelClock, kernel_clock
from .config import PortFilter
from .layout import KEY_DTYPE, OUTCOMES, VALUE_DTYPE
from .memory import release_compiler_memory

log = logging.getLogger(__name__)

PROGRAM_FILE = "xdp_ip_counter.c"
FUNCTION = "xdp_ip_counter"
BPF_F_NO_COMMON_LRU = 1 << 1


class CompileError(RuntimeError):
    """bcc could not compile or load the program; the message says what to install or check."""


class AttachError(RuntimeError):
    """The program could not be attached to an interface; the message names it and what to try."""


def source_dir() -> Path:
    """Where the C source is: $XDP_IP_COUNTER_BPF_DIR, the checkout (bpf/ next to the package),
    or the copy installed with the package (pyproject's data-files: share/xdp-ip-counter/bpf
    under the installation's prefix, such as a venv, or /usr in the .deb)."""
    candidates = []
    if os.environ.get("XDP_IP_COUNTER_BPF_DIR"):
        candidates.append(Path(os.environ["XDP_IP_COUNTER_BPF_DIR"]))
    candidates.append(Path(__file__).resolve().parent.parent / "bpf")
    for prefix in (sys.prefix, sysconfig.get_path("data"), "/usr"):
        candidate = Path(prefix) / "share" / "xdp-ip-counter" / "bpf"
        if candidate not in candidates:
            candidates.append(candidate)
    for candidate in candidates:
        if (candidate / PROGRAM_FILE).is_file():
            log.info("XDP program source: %s", candidate / PROGRAM_FILE)
            return candidate
    raise CompileError(f"cannot find {PROGRAM_FILE} in any of: {', '.join(map(str, candidates))}")


def _headers_hint() -> str:
    build = Path("/lib/modules") / os.uname().release / "build"
    try:
        if build.exists():
            return ""
    except OSError:  # hidden from us (a sandbox): say nothing rather than mask the real error
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
    """The loaded program and its maps: sources (LRU hash), port_filter, stats (per CPU) and
    source_cache (per CPU, read through `cache`). `clock` is the calibrated kernel clock the
    program is compiled with and reads are stamped with (default: the process's)."""

    def __init__(
        self, max_entries: int, lru_flags: int = 0, *, clock: KernelClock | None = None
    ) -> None:
        from bcc import BPF  # noqa: PLC0415 - imported here so that --help works without bcc
        from bcc.utils import get_possible_cpus  # noqa: PLC0415

        directory = source_dir()
        self.clock = clock if clock is not None else kernel_clock()
        cflags = [
            f"-I{directory}",
            f"-DMAX_ENTRIES={int(max_entries)}",
            f"-DLRU_FLAGS={int(lru_flags)}",
            f"-DCLOCK_JIFFY_ZERO={self.clock.jiffy_zero}ULL",
            f"-DCLOCK_TICK_NS={self.clock.tick_ns}ULL",
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
        release_compiler_memory()
        self._sources = self._bpf[b"sources"]
        self._port_filter = self._bpf[b"port_filter"]
        self._stats = self._bpf[b"stats"]
        cache_table = self._bpf[b"source_cache"]
        self.sources_fd: int = self._sources.get_fd()
        self._cache = SourceCache(
            cache_fd=cache_table.get_fd(),
            slots=cache_table.max_entries,
            cpus=len(get_possible_cpus()),
            sources_fd=self.sources_fd,
            max_entries=max_entries,
        )
        self.links: dict[str, Link] = {}
        self.ports: PortFilter | None = None
        assert ctypes.sizeof(self._sources.Key) == KEY_DTYPE.itemsize
        assert ctypes.sizeof(self._sources.Leaf) == VALUE_DTYPE.itemsize
        assert ctypes.sizeof(cache_table.sLeaf) == CACHE_SLOT_DTYPE.itemsize

    @property
    def cache(self) -> SourceCache:
        """The per-CPU cache of recent sources, as its protocol reads it."""
        return self._cache

    def table(self, name: str) -> Any:
        """One of the program's maps as bcc's table object (its generated ctypes Key and Leaf,
        max_entries, flags), for checking the Python layouts against the compiled C."""
        return self._bpf[name.encode()]

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
        """Detach from every interface, move the cache's pending counts into the sources map
        (which may be pinned and outlive us), and release the program and maps."""
        for ifname in list(self.links):
            self.detach(ifname)
        try:
            self._cache.flush()
        except BPFSyscallError as exc:
            log.warning("could not move the last pending counts into the sources map: %s", exc)
        self._bpf.cleanup()

    # -- reading ----------------------------------------------------------------------------

    def read_sources(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Every entry of the sources map as (keys, values) numpy arrays, with the counts still
        pending in the per-CPU cache added (SourceCache.read_sources), and the kernel clock
        just before the read."""
        now = self.clock.now_ns()
        keys, values = self.cache.read_sources()
        return keys, values, now

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
        rows = np.require(keys, KEY_DTYPE, ["C_CONTIGUOUS", "WRITEABLE"])  # copied if need be
        raw_values, found = bpf_syscall.map_lookup_and_delete_each(
            self.sources_fd, memoryview(rows).cast("B"), KEY_DTYPE.itemsize, VALUE_DTYPE.itemsize
        )
        taken = np.frombuffer(found, dtype=np.uint8).astype(bool)
        values = np.frombuffer(raw_values, dtype=VALUE_DTYPE, count=len(rows))
        gone = taken & (values["last_seen"] < np.uint64(max(cutoff_ns, 0)))
        removed = int(gone.sum())
        latest_removed = int(values["last_seen"][gone].max()) if removed else 0
        # Seen at or after the cutoff since the snapshot: put back, merged with anything a
        # frame inserted for the key meanwhile.
        for index in np.flatnonzero(taken & ~gone).tolist():
            self._put_back(rows[index].tobytes(), values[index])
        # An entry removed in the tick it was last seen in (only with a cutoff in the future:
        # the daemon's cutoff is a window ago) may still be the key of a cache slot stamped with
        # this tick, which would count the key's next frames as pending for the entry just
        # removed. Once the tick is over, the next frame goes to the map and starts a new entry.
        deadline = time.monotonic() + 1.0
        while self.clock.now_ns() <= latest_removed and time.monotonic() < deadline:
            time.sleep(0.0005)
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
