"""The only module that imports bcc: find the program's C source, compile and load it, attach
it to interfaces through BPF links, and reach its maps.

The maps that are read in bulk (the sources table, the sketches) are mapped into the process
(BPF_F_MMAPABLE) and read as numpy arrays (table.py, sketch.py); the program is compiled with
the clock calibrated in clock.py. None of those need bcc.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
import socket
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import bpf_syscall
from .bpf_syscall import BPFSyscallError
from .clock import KernelClock, kernel_clock
from .config import PortFilter
from .layout import EVENTS, OUTCOMES, SET_DTYPE, SET_WORDS, SKETCH_SLOT_DTYPE, WAYS
from .memory import release_compiler_memory
from .sketch import SketchPlan
from .table import live_entries, set_bits_for, window_stamps

log = logging.getLogger(__name__)

PROGRAM_FILE = "xdp_ip_counter.c"
FUNCTION = "xdp_ip_counter"


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
    """The loaded program and its maps: sources (the table of sets) and sketches, both read
    through mmap; port_filter (the configuration), sketch_of_port (mmap), stats (per CPU).
    `clock` is the calibrated kernel clock the program is compiled with and reads are stamped
    with (default: the process's). `plan` says which ports have sketches of their own; its
    capacity sizes the sketch map, once."""

    def __init__(
        self,
        max_entries: int,
        plan: SketchPlan | None = None,
        *,
        clock: KernelClock | None = None,
        defines: Mapping[str, str] | None = None,
    ) -> None:
        from bcc import BPF  # noqa: PLC0415 - imported here so that --help works without bcc

        directory = source_dir()
        self.clock = clock if clock is not None else kernel_clock()
        self.plan = plan if plan is not None else SketchPlan()
        self.set_bits = set_bits_for(max_entries)
        cflags = [
            f"-I{directory}",
            f"-DSET_BITS={self.set_bits}",
            f"-DNSKETCH={self.plan.sketches}",
            f"-DCLOCK_JIFFY_ZERO={self.clock.jiffy_zero}ULL",
            f"-DCLOCK_TICK_NS={self.clock.tick_ns}ULL",
            "-Wno-unused-function",
        ]
        cflags += [f"-D{name}={value}" for name, value in (defines or {}).items()]
        try:
            self._bpf = BPF(src_file=str(directory / PROGRAM_FILE).encode(), cflags=cflags)
            self._fn = self._bpf.load_func(FUNCTION.encode(), BPF.XDP)
        except Exception as exc:  # bcc raises bare Exception for compile and load failures
            raise CompileError(
                f"cannot compile or load {PROGRAM_FILE}: {exc}{_headers_hint()}"
            ) from exc
        self.prog_fd: int = self._fn.fd
        release_compiler_memory()
        sources = self._bpf[b"sources"]
        sketches = self._bpf[b"sketches"]
        sketch_of_port = self._bpf[b"sketch_of_port"]
        assert ctypes.sizeof(sources.Leaf) == SET_DTYPE.itemsize
        assert ctypes.sizeof(sketches.Leaf) == SKETCH_SLOT_DTYPE.itemsize
        self._port_filter = self._bpf[b"port_filter"]
        self._stats = self._bpf[b"stats"]
        self.sources_fd: int = sources.get_fd()
        self.sketches_fd: int = sketches.get_fd()
        self.sets = sources.max_entries
        self.capacity = self.sets * WAYS
        self._sources_map = MappedArray(self.sources_fd, SET_DTYPE.itemsize, self.sets)
        self._sketches_map = MappedArray(
            self.sketches_fd, SKETCH_SLOT_DTYPE.itemsize, sketches.max_entries
        )
        self.sketch_of_port_fd: int = sketch_of_port.get_fd()
        self._sketch_of_port = MappedArray(self.sketch_of_port_fd, 8, 65536)
        self.links: dict[str, Link] = {}
        self.ports: PortFilter | None = None
        self.window: int | None = None

    def table(self, name: str) -> Any:
        """One of the program's maps as bcc's table object (its generated ctypes Key and Leaf,
        max_entries, flags), for checking the Python layouts against the compiled C."""
        return self._bpf[name.encode()]

    # -- configuration ---------------------------------------------------------------------

    def _write_filter(self, all_ports: bool, ports: Iterable[int], window: int) -> None:
        value = self._port_filter.Leaf()
        value.all_ports = 1 if all_ports else 0
        value.window_stamps = window_stamps(window)
        for port in ports:
            value.bits[port >> 6] |= 1 << (port & 63)
        self._port_filter[ctypes.c_int(0)] = value

    def configure(self, ports: PortFilter, window: int, plan: SketchPlan | None = None) -> None:
        """Write the watched ports, the window (the table's lazy expiry) and the ports' sketch
        ids; safe while attached: a port watched before and after is never filtered out in
        between (the union is written first, then the new set), and the longer of the two
        windows holds meanwhile. `plan` must keep the sketches the map was made for."""
        if plan is not None:
            if plan.sketches != self.plan.sketches:
                raise ValueError("internal error: a sketch plan of another size")
            self.plan = plan
        ids = self._sketch_of_port.words(np.uint16).reshape(65536, 4)
        ids[:] = self.plan.port_ids()
        if self.ports is not None and (self.ports, self.window) != (ports, window):
            self._write_filter(
                self.ports.all_ports or ports.all_ports,
                self.ports.ports | ports.ports,
                max(self.window or window, window),
            )
        self._write_filter(ports.all_ports, ports.ports, window)
        self.ports = ports
        self.window = window

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
        """Detach from every interface and release the program and maps (a pinned map lives
        on in its pin)."""
        for ifname in list(self.links):
            self.detach(ifname)
        for mapped in (self._sources_map, self._sketches_map, self._sketch_of_port):
            mapped.close()
        self._bpf.cleanup()

    # -- reading ----------------------------------------------------------------------------

    def table_words(self) -> np.ndarray:
        """The sources table as (sets, SET_WORDS) uint64, a view of the map itself."""
        return self._sources_map.words(np.uint64).reshape(self.sets, SET_WORDS)

    def read_sources(self, window: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """The table's live entries (each key once) as (keys, values) numpy arrays, and the
        kernel clock just before the read. Live: what the kernel has not let go, with the
        window given or configured."""
        now = self.clock.now_ns()
        keys, values = live_entries(self.table_words(), now, window or self.window or 0)
        return keys, values, now

    def read_sketches(self) -> np.ndarray:
        """The sketch map's slots (SKETCH_SLOT_DTYPE), sketch * RING + tick % RING: a view of
        the map itself (copy what must not change under you)."""
        return self._sketches_map.words(np.uint8).view(SKETCH_SLOT_DTYPE)

    def read_stats(self) -> dict[str, int]:
        """Frames per outcome, summed over CPUs."""
        return {name: self._stat(index) for index, name in enumerate(OUTCOMES)}

    def read_events(self) -> dict[str, int]:
        """Events (layout.EVENTS) since the program was loaded, summed over CPUs."""
        return {name: self._stat(len(OUTCOMES) + i) for i, name in enumerate(EVENTS)}

    def _stat(self, index: int) -> int:
        return int(self._stats.sum(ctypes.c_int(index)).value)

    def clear(self) -> None:
        """Forget every entry and sketch (tests, between cases; never while frames arrive)."""
        self.table_words()[:] = 0
        self._sketches_map.words(np.uint8)[:] = 0


class MappedArray:
    """An array map with BPF_F_MMAPABLE, mapped into this process: elements of value_size
    bytes (the kernel rounds them up to 8) as one buffer."""

    def __init__(self, fd: int, value_size: int, entries: int) -> None:
        self.size = ((value_size + 7) // 8 * 8) * entries
        length = -(-self.size // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mmap: mmap.mmap | None = mmap.mmap(
            fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )

    def words(self, dtype: type) -> np.ndarray:
        if self._mmap is None:
            raise ValueError("the map is no longer mapped")
        return np.frombuffer(self._mmap, dtype=dtype, count=self.size // np.dtype(dtype).itemsize)

    def close(self) -> None:
        if self._mmap is not None:
            # A view still exported: the mapping goes with the process.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None
