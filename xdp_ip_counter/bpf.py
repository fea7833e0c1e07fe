"""The only module that imports bcc, and only in a child process: find the program's C source,
compile and load it (in a forked child that hands back the file descriptors), attach it to
interfaces through BPF links, and reach its maps with plain bpf() syscalls and mmap.

The maps that are read in bulk (the sources table, the sketches) are mapped into the process
(BPF_F_MMAPABLE) and read as numpy arrays (table.py, sketch.py); the program is compiled with
the clock calibrated in clock.py. None of those need bcc.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import mmap
import os
import platform
import socket
import struct
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import bpf_syscall
from .bpf_syscall import BPFSyscallError
from .clock import KernelClock, kernel_clock
from .config import MAX_SOURCE_PREFIXES, Network, PortFilter
from .layout import (
    BLOCK_SETS,
    DEFAULT_ICMP_TYPES,
    DEFAULT_PROTOCOLS,
    EVENTS,
    OUTCOMES,
    SET_DTYPE,
    SET_WORDS,
    SKETCH_SLOT_DTYPE,
    WAYS,
    protocol_bits,
)
from .sketch import SketchPlan
from .table import (
    admit_per_tick,
    block_sets,
    fingerprint_words,
    read_live_entries,
    sets_for,
    window_stamps,
)

log = logging.getLogger(__name__)

PROGRAM_FILE = "xdp_ip_counter.c"
_KEY_ZERO = struct.pack("=I", 0)
FUNCTION = "xdp_ip_counter"
# Machines whose stores become visible to other CPUs in program order (x86-TSO): there the
# program publishes a new slot's tag with a plain store after its contents (bpf/, claim()).
ORDERED_STORES_MACHINES = frozenset({"x86_64", "amd64", "i686", "i386"})


class CompileError(RuntimeError):
    """bcc could not compile or load the program; the message says what to install or check."""


class KernelRefused(RuntimeError):
    """The kernel refused a configuration (a source list's prefix: out of memory); nothing of
    it was applied. The message names the prefix and the list."""


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


# Sets per chunk when the table is read: one block (a key's two sets are in one), 1.2 MB,
# whole pages (64 sets of 576 bytes are 9 pages). A chunk's live slots, gathered at once, stay
# below the daemon's 1 MiB mmap threshold (memory.py) while the table holds at most max_entries
# (2/3 of its slots: 0.6 MB of keys and values): glibc reuses that memory instead of
# mapping fresh pages, and taking their faults, for every chunk.
CHUNK_SETS = BLOCK_SETS

MAPS = (
    "sources",
    "fingerprints",
    "port_filter",
    "exclude_sources",
    "include_sources",
    "stats",
    "sketches",
    "sketch_of_port",
)


@dataclass(frozen=True)
class MapDescription:
    """One of the program's maps as the compiler made it: its fd in this process, its size,
    and the fields of the key and value types bcc generated from the C (name, offset, size),
    for checking the Python layouts against the compiled program."""

    name: str
    fd: int
    max_entries: int
    flags: int
    key_size: int
    value_size: int  # of one element (one CPU's, for a per-CPU map)
    key_fields: tuple[tuple[str, int, int], ...]
    value_fields: tuple[tuple[str, int, int], ...]


def _fields(struct_type: Any) -> list[tuple[str, int, int]]:
    if not hasattr(struct_type, "_fields_"):
        return []
    return [
        (name, getattr(struct_type, name).offset, getattr(struct_type, name).size)
        for name, *_ in struct_type._fields_
    ]


def _load_here(source: Path, cflags: list[str]) -> tuple[bytes, list[int]]:
    """Compile and load with bcc in this process: (a JSON description, the fds it names)."""
    from bcc import BPF  # noqa: PLC0415 - only ever in the compiling child

    bpf = BPF(src_file=str(source).encode(), cflags=cflags)
    fn = bpf.load_func(FUNCTION.encode(), BPF.XDP)
    fds = [fn.fd]
    maps = []
    for name in MAPS:
        table = bpf[name.encode()]
        leaf = getattr(table, "sLeaf", table.Leaf)
        maps.append(
            {
                "name": name,
                "max_entries": table.max_entries,
                "flags": table.flags,
                "key_size": ctypes.sizeof(table.Key),
                "value_size": ctypes.sizeof(leaf),
                "key_fields": _fields(table.Key),
                "value_fields": _fields(leaf),
            }
        )
        fds.append(table.get_fd())
    return json.dumps({"maps": maps}).encode(), fds


def _load_in_child(source: Path, cflags: list[str]) -> tuple[int, dict[str, MapDescription]]:
    """Compile and load in a forked child, which passes the program's and maps' fds back over
    a socket (SCM_RIGHTS) and exits: bcc, LLVM and clang (~160 MB) never stay in this process.
    CompileError with bcc's message when it fails."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the child: no logging (a lock held by another thread at fork), no atexit
        status = 0
        try:
            ours.close()
            payload, fds = _load_here(source, cflags)
            socket.send_fds(theirs, [payload], fds)
        except BaseException as exc:  # everything goes back as a message
            status = 1
            with contextlib.suppress(OSError):
                theirs.sendall(json.dumps({"error": f"{exc}"}).encode())
        finally:
            os._exit(status)
    theirs.close()
    try:
        payload, fds, _, _ = socket.recv_fds(ours, 1 << 20, len(MAPS) + 1)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    message = json.loads(payload or b'{"error": "the compiling process died"}')
    if "error" in message:
        for fd in fds:
            os.close(fd)
        raise CompileError(f"cannot compile or load {PROGRAM_FILE}: {message['error']}")
    prog_fd, map_fds = fds[0], fds[1:]
    maps = {
        entry["name"]: MapDescription(
            name=entry["name"],
            fd=fd,
            max_entries=entry["max_entries"],
            flags=entry["flags"],
            key_size=entry["key_size"],
            value_size=entry["value_size"],
            key_fields=tuple(map(tuple, entry["key_fields"])),
            value_fields=tuple(map(tuple, entry["value_fields"])),
        )
        for entry, fd in zip(message["maps"], map_fds, strict=True)
    }
    return prog_fd, maps


def possible_cpus() -> int:
    """How many CPUs per-CPU maps have a value for (/sys/devices/system/cpu/possible)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


ICMPV6 = 58
# port_filter.source_lists (bpf/source_key.h)
EXCLUDE_LIST = 1
INCLUDE_LIST = 2


def source_prefix(network: Network) -> bytes:
    """The source lists' key (struct source_prefix, 24 bytes with its padding) of a prefix: its
    family, then its address as the sources table's key holds it (an IPv4 /n as the IPv4-mapped
    /96+n), the length counting the family's byte."""
    if network.version == 4:
        length = 8 + 96 + network.prefixlen
        address = bytes(10) + b"\xff\xff" + network.network_address.packed
    else:
        length, address = 8 + network.prefixlen, network.network_address.packed
    return struct.pack("=IB16s3x", length, network.version, address)


@dataclass(frozen=True)
class _Filter:
    """What port_filter holds (exclude, include: whether that list is in force; generation:
    changed with every rewrite of the lists, so that a known source is asked again)."""

    ports: PortFilter
    window: int
    new_source_budget: int
    protocols: tuple[int, ...]
    icmp_types: tuple[tuple[int, int], ...]
    exclude: bool
    include: bool
    generation: int = 0

    @property
    def source_lists(self) -> int:
        """port_filter.source_lists: the lists in force and the generation, 0 for none."""
        flags = (EXCLUDE_LIST if self.exclude else 0) | (INCLUDE_LIST if self.include else 0)
        return flags | (self.generation << 8) if flags else 0

    def union(self, other: _Filter, generation: int) -> _Filter:
        """What both record, for the moment between them: the union of the ports, protocols
        and types, the longer window, the exclude list if either has one (its trie then holds
        both lists' prefixes), the include list only if both have one."""
        return _Filter(
            PortFilter.all()
            if self.ports.all_ports or other.ports.all_ports
            else PortFilter.of(self.ports.ports | other.ports.ports),
            max(self.window, other.window),
            other.new_source_budget,
            tuple(sorted(set(self.protocols) | set(other.protocols))),
            tuple(sorted(set(self.icmp_types) | set(other.icmp_types))),
            exclude=self.exclude or other.exclude,
            include=self.include and other.include,
            generation=generation,
        )


class DataPath:
    """The loaded program and its maps: sources (the table of sets) and sketches, both read
    through mmap; port_filter (the configuration), sketch_of_port (mmap), stats (per CPU).
    `clock` is the calibrated kernel clock the program is compiled with and reads are stamped
    with (default: the process's). `plan` says which ports have sketches of their own; its
    capacity sizes the sketch map, once. The program is compiled in a child process: this one
    holds only file descriptors (and never imports bcc)."""

    def __init__(
        self,
        max_entries: int,
        plan: SketchPlan | None = None,
        *,
        clock: KernelClock | None = None,
        defines: Mapping[str, str] | None = None,
    ) -> None:
        directory = source_dir()
        self.clock = clock if clock is not None else kernel_clock()
        self.plan = plan if plan is not None else SketchPlan()
        sets = sets_for(max_entries)
        cflags = [
            f"-I{directory}",
            f"-DSETS={sets}",
            f"-DBLOCK_SETS={block_sets(sets)}",
            f"-DNSKETCH={self.plan.sketches}",
            f"-DCLOCK_JIFFY_ZERO={self.clock.jiffy_zero}ULL",
            f"-DCLOCK_TICK_NS={self.clock.tick_ns}ULL",
            f"-DMAX_SOURCE_PREFIXES={MAX_SOURCE_PREFIXES}",
            "-Wno-unused-function",
        ]
        defines = {
            "ORDERED_STORES": str(int(platform.machine() in ORDERED_STORES_MACHINES))
        } | dict(defines or {})
        cflags += [f"-D{name}={value}" for name, value in defines.items()]
        try:
            self.prog_fd, self._maps = _load_in_child(directory / PROGRAM_FILE, cflags)
        except CompileError as exc:
            raise CompileError(f"{exc}{_headers_hint()}") from None
        sources, sketches = self._maps["sources"], self._maps["sketches"]
        assert sources.value_size == SET_DTYPE.itemsize, sources
        assert sketches.value_size == SKETCH_SLOT_DTYPE.itemsize, sketches
        self._cpus = possible_cpus()
        self.sources_fd: int = sources.fd
        self.sketches_fd: int = sketches.fd
        self.sketch_of_port_fd: int = self._maps["sketch_of_port"].fd
        self.sets = sources.max_entries
        self.slots = self.sets * WAYS
        # What the table holds exactly: max_entries, in SLOTS_PER_ENTRY times as many slots.
        self.capacity = int(max_entries)
        self._sources_map: MappedArray | None = None  # the whole table, for table_words()
        self._last_read: int | None = None  # live entries at the last read: the next one's size
        self._sketches_map = MappedArray(
            self.sketches_fd, SKETCH_SLOT_DTYPE.itemsize, sketches.max_entries
        )
        self._sketch_of_port = MappedArray(self.sketch_of_port_fd, 8, 65536)
        self._fingerprints = MappedArray(self._maps["fingerprints"].fd, 8, self.sets)
        self.links: dict[str, Link] = {}
        self.ports: PortFilter | None = None
        self.window: int | None = None
        self.filter: _Filter | None = None  # what port_filter holds
        self._generation = 0  # of the source lists (_Filter.generation)
        self.source_lists: dict[str, frozenset[Network]] = {
            "exclude_sources": frozenset(),
            "include_sources": frozenset(),
        }

    def table(self, name: str) -> MapDescription:
        """One of the program's maps (MAPS) as the compiler described it."""
        return self._maps[name]

    # -- configuration ---------------------------------------------------------------------

    def _write_filter(self, written: _Filter) -> None:
        """struct port_filter (bpf/source_key.h) as words."""
        value = np.zeros(13 + 1024, np.uint64)
        value[0] = 1 if written.ports.all_ports else 0
        value[1] = window_stamps(written.window)
        value[2] = admit_per_tick(written.new_source_budget)
        value[3] = protocol_bits(written.protocols)
        value[4] = written.source_lists
        for proto, kind in written.icmp_types:
            value[5 + (4 if proto == ICMPV6 else 0) + (kind >> 6)] |= np.uint64(1 << (kind & 63))
        for port in written.ports.ports:
            value[13 + (port >> 6)] |= np.uint64(1 << (port & 63))
        bpf_syscall.map_update(self._maps["port_filter"].fd, _KEY_ZERO, value.tobytes())

    def _write_list(self, name: str, add: Iterable[Network], remove: Iterable[Network]) -> None:
        """Add then remove prefixes of a source list. An addition the kernel refuses takes the
        ones this call added out again and raises KernelRefused: the list is as it was."""
        fd = self._maps[name].fd
        added: list[Network] = []
        for network in add:
            try:
                bpf_syscall.map_update(fd, source_prefix(network), b"\x01")
            except BPFSyscallError as exc:
                for done in added:
                    bpf_syscall.map_delete(fd, source_prefix(done))
                raise KernelRefused(
                    f"{name}: the kernel refused prefix {network}: {exc.strerror or exc}"
                ) from None
            added.append(network)
        for network in remove:
            bpf_syscall.map_delete(fd, source_prefix(network))

    def configure(
        self,
        ports: PortFilter,
        window: int,
        plan: SketchPlan | None = None,
        *,
        new_source_budget: int = 0,
        protocols: tuple[int, ...] = DEFAULT_PROTOCOLS,
        icmp_types: tuple[tuple[int, int], ...] = DEFAULT_ICMP_TYPES,
        exclude_sources: Iterable[Network] = (),
        include_sources: Iterable[Network] = (),
    ) -> None:
        """Write the watched ports, the window (the table's lazy expiry), the new-source budget
        (new sources per second and CPU that enter the table, 0 for no limit), the protocols
        and ICMP types recorded, the source lists and the ports' sketch ids; safe while
        attached: what is recorded before and after is recorded in between (the lists get
        their new prefixes first, then the filter is written as the union of the old and the
        new, the lists lose what they no longer hold, then the filter is written as the new),
        and the longer of the two windows holds meanwhile. A rewrite of the lists changes
        their generation at each of the two writes: the program asks them again for every
        known source (once), and a source judged in between is judged again by the new ones.
        A prefix the kernel refuses (KernelRefused) leaves everything as it was. `plan` must
        keep the sketches the map was made for."""
        if plan is not None and plan.sketches != self.plan.sketches:
            raise ValueError("internal error: a sketch plan of another size")
        lists = {
            "exclude_sources": frozenset(exclude_sources),
            "include_sources": frozenset(include_sources),
        }
        added: dict[str, frozenset[Network]] = {}
        for name, networks in lists.items():
            try:
                self._write_list(name, networks - self.source_lists[name], ())
            except KernelRefused:
                for done, prefixes in added.items():  # the other list as it was, too
                    self._write_list(done, (), prefixes)
                raise
            added[name] = networks - self.source_lists[name]
        between, generation = self._generation, self._generation
        if lists != self.source_lists:
            between, generation = self._generation + 1, self._generation + 2
            self._generation = generation
        if plan is not None:
            self.plan = plan
        ids = self._sketch_of_port.words(np.uint16).reshape(65536, 4)
        ids[:] = self.plan.port_ids()
        new = _Filter(
            ports,
            window,
            new_source_budget,
            tuple(protocols),
            tuple(icmp_types),
            exclude=bool(lists["exclude_sources"]),
            include=bool(lists["include_sources"]),
            generation=generation,
        )
        old = self.filter
        if old is not None and old != new:
            self._write_filter(old.union(new, between))
        for name, networks in lists.items():
            self._write_list(name, (), self.source_lists[name] - networks)
        self._write_filter(new)
        self.source_lists = lists
        self.filter = new
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
        self.unmap_table()
        for mapped in (self._sketches_map, self._sketch_of_port, self._fingerprints):
            mapped.close()
        for fd in [self.prog_fd, *(m.fd for m in self._maps.values())]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._maps = {}
        self.prog_fd = -1

    # -- reading ----------------------------------------------------------------------------

    def table_words(self) -> np.ndarray:
        """The whole sources table as (sets, SET_WORDS) uint64, a view of the map itself, for
        writing (carrying a pinned table over; tests). Mapped until unmap_table(): the kernel
        maps every page at once, so the whole table counts in this process's RSS meanwhile."""
        if self._sources_map is None:
            self._sources_map = MappedArray(self.sources_fd, SET_DTYPE.itemsize, self.sets)
        return self._sources_map.words(np.uint64).reshape(self.sets, SET_WORDS)

    def unmap_table(self) -> None:
        if self._sources_map is not None:
            self._sources_map.close()
            self._sources_map = None

    def _table_chunks(self) -> Iterator[np.ndarray]:
        """The table CHUNK_SETS sets at a time, each mapped only while it is read: reading the
        table never holds more than one chunk of it in this process's RSS."""
        for first in range(0, self.sets, CHUNK_SETS):
            sets = min(CHUNK_SETS, self.sets - first)
            mapped = MappedArray(
                self.sources_fd, SET_DTYPE.itemsize, sets, offset=first * SET_DTYPE.itemsize
            )
            try:
                yield mapped.words(np.uint64).reshape(sets, SET_WORDS)
            finally:
                mapped.close()

    def read_sources(self, window: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """The table's live entries (each key once) as (keys, values) numpy arrays, and the
        kernel clock just before the read. Live: what the kernel has not let go, with the
        window given or configured."""
        now = self.clock.now_ns()
        window = self.window if window is None else window
        keys, values = read_live_entries(
            self._table_chunks, now, window or 0, expected=self._last_read
        )
        self._last_read = len(keys)
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
        """One counter of the per-CPU stats array, summed over the CPUs."""
        raw = bpf_syscall.map_lookup(
            self._maps["stats"].fd, struct.pack("=I", index), 8 * self._cpus
        )
        return int(np.frombuffer(raw, np.uint64).sum()) if raw else 0

    def fingerprints(self) -> np.ndarray:
        """The fingerprints map, (sets,) uint64: a view of the map itself."""
        return self._fingerprints.words(np.uint64)

    def rebuild_fingerprints(self) -> None:
        """Write the fingerprints map from the table, after userspace wrote entries into it
        (carrying a pinned table over; filling it for tests and benchmarks): the kernel keeps it
        only for the slots it claims. Never while frames arrive."""
        self.fingerprints()[:] = fingerprint_words(self.table_words())

    def clear(self) -> None:
        """Forget every entry and sketch (tests, between cases; never while frames arrive)."""
        self.table_words()[:] = 0
        self.fingerprints()[:] = 0
        self._sketches_map.words(np.uint8)[:] = 0


class MappedArray:
    """An array map with BPF_F_MMAPABLE, mapped into this process: `entries` elements of
    value_size bytes (the kernel rounds them up to 8) from byte `offset` (a multiple of the
    page size) as one buffer; read-only unless writable."""

    def __init__(
        self, fd: int, value_size: int, entries: int, offset: int = 0, *, writable: bool = True
    ) -> None:
        self.size = ((value_size + 7) // 8 * 8) * entries
        length = -(-self.size // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mmap: mmap.mmap | None = mmap.mmap(
            fd,
            length,
            flags=mmap.MAP_SHARED,
            prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0),
            offset=offset,
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
