"""The only module that imports bcc: compile the XDP program, configure its maps, attach it to
interfaces through BPF links, and read its maps into numpy arrays.

The program counts a source's frames within one clock tick in a per-CPU cache (source_cache,
see bpf/xdp_ip_counter.c) before they reach the sources map; read_sources() adds those pending
counts to what it read from the map, and close() moves them into the map, so that every reader
sees exact packets and bytes.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import logging
import os
import re
import socket
import sys
import sysconfig
import threading
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

# struct cache_slot of bpf/xdp_ip_counter.c: one slot of the per-CPU cache of recent keys.
CACHE_SLOT_DTYPE = np.dtype(
    [
        ("packets", "<u8"),  # pending: counted in the slot, not yet in the sources map
        ("bytes", "<u8"),
        ("stamp", "<u8"),  # the clock tick every pending count is from
        ("key", KEY_DTYPE),  # family 0: empty
        ("seq", "<u8"),  # odd while pending counts move out of the slot
    ]
)
CACHE_BITS = 10  # the program's default (1024 slots per CPU); DataPath reads the real one
_HASH_MULTIPLIERS = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xC2B2AE3D27D4EB4F),
    np.uint64(0x165667B19E3779F9),
)
REREAD_ATTEMPTS = 20
# Entries per BPF_MAP_LOOKUP_BATCH call: the kernel walks buckets without yielding the CPU, so
# a call of 16384 entries (a few ms) keeps a non-preemptible kernel responsive.
READ_CHUNK = 16384


class ClockError(RuntimeError):
    """The kernel's tick rate could not be determined; the message says what was tried."""


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


@dataclass(frozen=True)
class KernelClock:
    """The clock the program stamps first/last seen with: CLOCK_MONOTONIC at the start of the
    current jiffy, i.e. (jiffies - jiffy_zero) * tick_ns.

    Jiffies, because the program reads them for free (the verifier inlines bpf_jiffies64), and a
    cached source is re-stamped exactly when the tick changes; the coarse clock is a helper call
    that costs as much as the rest of the hot path, and it does not change in step with jiffies.
    The kernel starts jiffy boundaries at multiples of the tick in CLOCK_MONOTONIC, so
    jiffy_zero is a constant for the boot: every process computes the same one.
    """

    reader_fd: int  # the program that reads jiffies (bpf_syscall.load_jiffies_reader)
    hz: int
    tick_ns: int
    jiffy_zero: int

    def jiffies(self) -> int:
        return bpf_syscall.read_jiffies(self.reader_fd)

    def now_ns(self) -> int:
        return (self.jiffies() - self.jiffy_zero) * self.tick_ns


_KNOWN_HZ = (100, 250, 300, 1000)
_clock: KernelClock | None = None
_clock_lock = threading.Lock()


def kernel_clock() -> KernelClock:
    """The process's KernelClock, calibrated on first use (needs CAP_BPF and CAP_NET_ADMIN)."""
    global _clock  # noqa: PLW0603 - one clock per process
    with _clock_lock:
        if _clock is None:
            _clock = _calibrate()
        return _clock


def kernel_clock_ns() -> int:
    """The clock the program stamps first/last seen with (see KernelClock), now."""
    return kernel_clock().now_ns()


def _calibrate() -> KernelClock:
    reader = bpf_syscall.load_jiffies_reader()
    hz = _configured_hz() or _measured_hz(reader)
    tick_ns = (1_000_000_000 + hz // 2) // hz  # the kernel's TICK_NSEC
    # jiffies = zero + floor(monotonic / tick) at any moment, or less when read just after a
    # boundary that jiffies have not caught up with yet: the largest of a few samples is zero.
    zero = 0
    for _ in range(16):
        jiffies = bpf_syscall.read_jiffies(reader)
        zero = max(zero, jiffies - time.monotonic_ns() // tick_ns)
        time.sleep(0.0003)
    return KernelClock(reader_fd=reader, hz=hz, tick_ns=tick_ns, jiffy_zero=zero)


def _configured_hz() -> int | None:
    """CONFIG_HZ of the running kernel, from /proc/config.gz or /boot/config-<release>."""
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        try:
            raw = path.read_bytes()
            text = gzip.decompress(raw) if path.suffix == ".gz" else raw
        except (OSError, gzip.BadGzipFile):
            continue
        match = re.search(rb"^CONFIG_HZ=([0-9]+)$", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


def _measured_hz(reader: int) -> int:
    """The tick rate from jiffies counted against CLOCK_MONOTONIC, snapped to a rate Linux
    offers."""
    estimate = 0.0
    for seconds in (0.05, 0.2, 1.0):
        start_jiffies, start_ns = bpf_syscall.read_jiffies(reader), time.monotonic_ns()
        time.sleep(seconds)
        end_jiffies, end_ns = bpf_syscall.read_jiffies(reader), time.monotonic_ns()
        estimate = (end_jiffies - start_jiffies) * 1e9 / (end_ns - start_ns)
        nearest = min(_KNOWN_HZ, key=lambda hz: abs(hz - estimate))
        if abs(nearest - estimate) < 0.06 * nearest:
            return nearest
    raise ClockError(
        f"cannot tell the kernel's tick rate: no CONFIG_HZ in /proc/config.gz or /boot, and "
        f"jiffies advance at {estimate:.0f}/s, which is none of {_KNOWN_HZ}"
    )


def cache_index(keys: np.ndarray, cache_bits: int = CACHE_BITS) -> np.ndarray:
    """The cache slot of each key (KEY_DTYPE array), as the program's cache_index() computes it.
    In place on one array: a million keys cost 8 MB, not a temporary per step."""
    words = np.ascontiguousarray(keys).view(np.uint64).reshape(-1, 3)
    first, second, third = _HASH_MULTIPLIERS
    h = np.multiply(words[:, 0], first)
    np.bitwise_xor(h, words[:, 1], out=h)
    np.multiply(h, second, out=h)
    np.bitwise_xor(h, words[:, 2], out=h)
    np.multiply(h, third, out=h)
    np.right_shift(h, np.uint64(64 - cache_bits), out=h)
    return h.view(np.intp)


def _key_words(keys: np.ndarray) -> np.ndarray:
    """KEY_DTYPE array (any shape) -> its keys as rows of three uint64 words."""
    return np.ascontiguousarray(keys).view(np.uint64).reshape(-1, 3)


_COMPILER_LIBRARIES = ("libLLVM", "libclang", "libbcc")
_MADV_DONTNEED = 4


def release_compiler_memory() -> None:
    """Give back the memory compiling took, once the program is loaded.

    A process that has compiled with bcc holds ~130 MB more than before: glibc keeps the heap
    LLVM freed (malloc_trim returns it), and the pages of libLLVM, libclang and libbcc read while
    compiling stay mapped. Those are dropped from this process's page tables where they are
    clean and read-only (code and constants, no relocated or written page): they stay in the
    page cache, and a later compile (none, in the daemon) reads them back on first touch.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for start, end in _clean_library_ranges(Path("/proc/self/smaps")):
        libc.madvise(start, end - start, _MADV_DONTNEED)


def _clean_library_ranges(smaps: Path) -> list[tuple[int, int]]:
    """(start, end) of the compiler libraries' mappings that are read-only and hold no
    anonymous (copied-on-write) page."""
    ranges: list[tuple[int, int]] = []
    candidate: tuple[int, int] | None = None
    try:
        lines = smaps.read_text().splitlines()
    except OSError:
        return ranges
    for line in lines:
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            addresses, perms = fields[0], fields[1]
            path = fields[5] if len(fields) > 5 else ""
            candidate = None
            if "w" not in perms and any(name in path for name in _COMPILER_LIBRARIES):
                low, high = (int(part, 16) for part in addresses.split("-"))
                candidate = (low, high)
        elif candidate is not None and fields[:1] == ["Anonymous:"]:
            if int(fields[1]) == 0:
                ranges.append(candidate)
            candidate = None
    return ranges


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
    """The loaded program and its maps: sources (LRU hash), port_filter, stats (per CPU)."""

    def __init__(self, max_entries: int, lru_flags: int = 0) -> None:
        from bcc import BPF  # noqa: PLC0415 - imported here so that --help works without bcc
        from bcc.utils import get_possible_cpus  # noqa: PLC0415

        directory = source_dir()
        clock = kernel_clock()
        cflags = [
            f"-I{directory}",
            f"-DMAX_ENTRIES={int(max_entries)}",
            f"-DLRU_FLAGS={int(lru_flags)}",
            f"-DCLOCK_JIFFY_ZERO={clock.jiffy_zero}ULL",
            f"-DCLOCK_TICK_NS={clock.tick_ns}ULL",
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
        self._cache = self._bpf[b"source_cache"]
        self.sources_fd: int = self._sources.get_fd()
        self._cache_fd: int = self._cache.get_fd()
        self._cache_slots = self._cache.max_entries
        self._cache_bits = self._cache_slots.bit_length() - 1
        self._cpus = len(get_possible_cpus())
        self.links: dict[str, Link] = {}
        self.ports: PortFilter | None = None
        assert ctypes.sizeof(self._sources.Key) == KEY_DTYPE.itemsize
        assert ctypes.sizeof(self._sources.Leaf) == VALUE_DTYPE.itemsize
        assert ctypes.sizeof(self._cache.sLeaf) == CACHE_SLOT_DTYPE.itemsize

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
            self._flush_cache()
        except BPFSyscallError as exc:
            log.warning("could not move the last pending counts into the sources map: %s", exc)
        self._bpf.cleanup()

    # -- reading ----------------------------------------------------------------------------

    def read_sources(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Every entry of the sources map as (keys, values) numpy arrays, with the counts still
        pending in the per-CPU cache added, and the kernel clock just before the read.

        The cache is read before and after the map. A slot whose seq is the same (and even) both
        times moved no counts into the map in between, so its pending counts are added to the
        map's value as read; the keys of a slot that did move counts are read again, one by one,
        until the slot holds still around the read.
        """
        now = kernel_clock_ns()
        before = self._read_cache()
        raw_keys, raw_values, count = bpf_syscall.map_lookup_batch(
            self.sources_fd,
            KEY_DTYPE.itemsize,
            VALUE_DTYPE.itemsize,
            self.max_entries,
            chunk=READ_CHUNK,
        )
        after = self._read_cache()
        keys = np.frombuffer(raw_keys, dtype=KEY_DTYPE, count=count)
        values = np.frombuffer(raw_values, dtype=VALUE_DTYPE, count=count)
        keys, values = self._add_pending(keys, values, before, after)
        return keys, values, now

    # -- the per-CPU cache ----------------------------------------------------------------

    def _read_cache(self) -> np.ndarray:
        """The cache as an array of CACHE_SLOT_DTYPE, shape (slots, CPUs)."""
        _, raw, count = bpf_syscall.map_lookup_batch(
            self._cache_fd, 4, CACHE_SLOT_DTYPE.itemsize * self._cpus, self._cache_slots
        )
        slots = np.frombuffer(raw, dtype=CACHE_SLOT_DTYPE, count=count * self._cpus)
        return slots.reshape(count, self._cpus)

    def _read_slot(self, index: int) -> np.ndarray:
        """One slot on every CPU (CACHE_SLOT_DTYPE, shape (CPUs,))."""
        raw = bpf_syscall.map_lookup(
            self._cache_fd, index.to_bytes(4, "little"), CACHE_SLOT_DTYPE.itemsize * self._cpus
        )
        assert raw is not None, "an array map has every index"
        return np.frombuffer(raw, dtype=CACHE_SLOT_DTYPE).copy()

    def _add_pending(
        self, keys: np.ndarray, values: np.ndarray, before: np.ndarray, after: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        held_still = (before["seq"] == after["seq"]) & (after["seq"] % 2 == 0)
        moved = np.flatnonzero(~held_still.all(axis=1))
        pending = after["packets"] > 0
        pending[moved] = False
        if not pending.any() and len(moved) == 0:
            return keys, values
        index = cache_index(keys, self._cache_bits)
        _add_slot_counts(keys, values, index, after, pending)
        if len(moved):
            keys, values = self._reread(keys, values, index, moved, before=before, after=after)
        return keys, values

    def _reread(
        self,
        keys: np.ndarray,
        values: np.ndarray,
        index: np.ndarray,
        moved: np.ndarray,
        *,
        before: np.ndarray,
        after: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read again the entries whose slot moved counts into the map during the batch read:
        every key of the slot's rows and of the slot itself, bracketed by two reads of the
        slot, until the slot held still."""
        rows_of = {int(i): [] for i in moved.tolist()}
        for row in np.flatnonzero(np.isin(index, moved)).tolist():
            rows_of[int(index[row])].append(row)
        drop: list[int] = []
        extra_keys: list[bytes] = []
        extra_values: list[bytes] = []
        for slot_index, rows in rows_of.items():
            wanted = {keys[row].tobytes(): row for row in rows}
            for state in (before[slot_index], after[slot_index]):
                for slot in state:
                    if slot["key"]["family"]:
                        wanted.setdefault(slot["key"].tobytes(), -1)
            found, slot_state = self._read_around_slot(slot_index, wanted)
            for key, value in found.items():
                row = wanted.get(key, -1)
                if value is None:
                    if row >= 0:
                        drop.append(row)
                    continue
                counted = _with_slot_counts(key, value, slot_state)
                if row >= 0:
                    values[row] = np.frombuffer(counted, dtype=VALUE_DTYPE)[0]
                else:
                    extra_keys.append(key)
                    extra_values.append(counted)
        if drop or extra_keys:
            keep = np.ones(len(keys), bool)
            keep[drop] = False
            keys = np.concatenate(
                [keys[keep], np.frombuffer(b"".join(extra_keys), dtype=KEY_DTYPE)]
            )
            values = np.concatenate(
                [values[keep], np.frombuffer(b"".join(extra_values), dtype=VALUE_DTYPE)]
            )
        return keys, values

    def _read_around_slot(
        self, slot_index: int, wanted: dict[bytes, int]
    ) -> tuple[dict[bytes, bytes | None], np.ndarray]:
        """{key: map value or None} for every wanted key and every key pending in the slot,
        read while the slot moved nothing; and the slot's state at the end of that read."""
        keys = set(wanted)
        found: dict[bytes, bytes | None] = {}
        state = self._read_slot(slot_index)
        for _ in range(REREAD_ATTEMPTS):
            first = state
            keys |= {slot["key"].tobytes() for slot in first if slot["packets"]}
            found = {
                key: bpf_syscall.map_lookup(self.sources_fd, key, VALUE_DTYPE.itemsize)
                for key in keys
            }
            state = self._read_slot(slot_index)
            held_still = bool(np.all((first["seq"] == state["seq"]) & (state["seq"] % 2 == 0)))
            pending_known = all(slot["key"].tobytes() in found for slot in state if slot["packets"])
            if held_still and pending_known:
                return found, state
        log.debug("cache slot %d kept moving counts; its pending counts may be off", slot_index)
        return found, state

    def _flush_cache(self) -> None:
        """Move every pending count into the sources map. Only when no program runs any more
        (after detaching): the program would race with these writes."""
        cache = self._read_cache()
        for slot_index, cpu in zip(*np.nonzero(cache["packets"]), strict=True):
            slot = cache[slot_index, cpu]
            key = slot["key"].tobytes()
            raw = bpf_syscall.map_lookup(self.sources_fd, key, VALUE_DTYPE.itemsize)
            if raw is None:
                continue
            value = np.frombuffer(raw, dtype=VALUE_DTYPE)[0].copy()
            if value["first_seen"] > slot["stamp"]:
                continue
            value["packets"] += slot["packets"]
            value["bytes"] += slot["bytes"]
            bpf_syscall.map_update(self.sources_fd, key, value.tobytes(), bpf_syscall.BPF_EXIST)

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
        while kernel_clock_ns() <= latest_removed and time.monotonic() < deadline:
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


def _add_slot_counts(
    keys: np.ndarray, values: np.ndarray, index: np.ndarray, cache: np.ndarray, use: np.ndarray
) -> None:
    """values += the pending counts of the cache slots marked in use (shape (slots, CPUs)) that
    hold the row's key and belong to its entry (first_seen <= the slot's stamp)."""
    if not use.any():
        return
    row_words = _key_words(keys)
    for cpu in range(cache.shape[1]):
        rows = np.flatnonzero(use[index, cpu])
        if len(rows) == 0:
            continue
        slots = cache[index[rows], cpu]
        same = (row_words[rows] == _key_words(slots["key"])).all(axis=1)
        same &= values["first_seen"][rows] <= slots["stamp"]
        rows, slots = rows[same], slots[same]
        values["packets"][rows] += slots["packets"]
        values["bytes"][rows] += slots["bytes"]


def _with_slot_counts(key: bytes, raw_value: bytes, slots: np.ndarray) -> bytes:
    """A map value with the pending counts of the slots (one per CPU) that belong to it."""
    value = np.frombuffer(raw_value, dtype=VALUE_DTYPE)[0].copy()
    for slot in slots:
        if (
            slot["packets"]
            and slot["key"].tobytes() == key
            and value["first_seen"] <= slot["stamp"]
        ):
            value["packets"] += slot["packets"]
            value["bytes"] += slot["bytes"]
    return value.tobytes()
