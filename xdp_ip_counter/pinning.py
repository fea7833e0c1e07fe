"""Keep the maps across restarts: pin the sources table and the sketches in bpffs, and carry a
pinned map's contents over into the maps a new process creates.

The new process always creates its own maps (its capacity and its sketches may differ, and bcc
creates the maps it compiles); at start-up it reads the maps pinned by the previous process
through mmap, writes what is still live into its own (table.place: where the kernel looks for
each key; sketches by port and class, through the old process's sketch_of_port), then pins its
own in the old ones' place. The pinned names carry the layout version, and a pinned map's type
and sizes are checked before anything is read from it: a map of another layout is removed with
a log line, never misread. A table of an earlier layout that this one can read (layout 2: the
same sets and slots, one set per key) is carried over like one of its own, then removed.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import numpy as np

from . import bpf_syscall
from .bpf import DataPath, MappedArray
from .bpf_syscall import BPFSyscallError, MapInfo, map_info
from .layout import (
    OTHER_SKETCHES,
    RING,
    SET_DTYPE,
    SET_WORDS,
    SKETCH_LAYOUT_VERSION,
    SKETCH_SLOT_DTYPE,
    TABLE_LAYOUT_VERSION,
    TABLE_READABLE_VERSIONS,
)
from .sketch import CLASSES
from .table import live_entries, place

log = logging.getLogger(__name__)

BPF_MAP_TYPE_ARRAY = 2
BPF_FS_MAGIC = 0xCAFE4A11

SOURCES = f"sources_v{TABLE_LAYOUT_VERSION}"
SKETCHES = f"sketches_v{SKETCH_LAYOUT_VERSION}"
SKETCH_OF_PORT = f"sketch_of_port_v{SKETCH_LAYOUT_VERSION}"
PINNED = (SOURCES, SKETCHES, SKETCH_OF_PORT)
# Tables pinned by earlier layouts that this one reads (newest first).
READABLE_SOURCES = tuple(f"sources_v{version}" for version in TABLE_READABLE_VERSIONS)
_PINNED_NAMES = ("sources", "sketches", "sketch_of_port")


class PinError(RuntimeError):
    """The pin path cannot be used; the message says why and what to do."""


def check_bpffs(directory: Path) -> None:
    """The pin directory must be on a BPF filesystem (created if missing)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PinError(f"cannot create pin directory {directory}: {exc.strerror}") from None
    if _fs_magic(directory) != BPF_FS_MAGIC:
        raise PinError(
            f"{directory} is not on a BPF filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`; "
            "systemd does it at boot) or set pin_path to a directory below it"
        )


def _fs_magic(path: Path) -> int:
    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]

    buf = Statfs()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise PinError(f"cannot statfs {path}: {os.strerror(err)}")
    return buf.f_type & 0xFFFFFFFF


def restore_and_pin(directory: Path, datapath: DataPath, window: int) -> int:
    """Carry what the maps pinned in directory hold (if any, and of our layout) into the
    datapath's maps, then pin those there instead. Returns the table entries carried."""
    check_bpffs(directory)
    for stale in sorted(directory.glob("*_v*")):
        if stale.name in PINNED or stale.name in READABLE_SOURCES:
            continue
        if stale.name.rsplit("_v", 1)[0] in _PINNED_NAMES:
            log.warning("removing %s: pinned by a version with another map layout", stale)
            stale.unlink()
    carried = 0
    table = next(
        (directory / name for name in (SOURCES, *READABLE_SOURCES) if (directory / name).exists()),
        directory / SOURCES,
    )
    read_from = None
    with _Pinned(table, SET_DTYPE.itemsize) as old:
        if old.mapped is not None:
            read_from = old.path
            words = old.mapped.words(np.uint64).reshape(-1, SET_WORDS)
            keys, values = live_entries(words, datapath.clock.now_ns(), window)
            del words
            carried = place(datapath.table_words(), keys, values)
            datapath.rebuild_fingerprints()
            datapath.unmap_table()
            log.info("carried %d of %d entries over from %s", carried, len(keys), old.path)
    for name in READABLE_SOURCES:
        if (directory / name).exists():
            read = directory / name == read_from
            log.info(
                "removing %s: %s", directory / name,
                f"its entries are in {SOURCES} now" if read else f"superseded by {SOURCES}",
            )  # fmt: skip
            (directory / name).unlink()
    with (
        _Pinned(directory / SKETCH_OF_PORT, 8) as ids,
        _Pinned(directory / SKETCHES, SKETCH_SLOT_DTYPE.itemsize) as sketches,
    ):
        if ids.mapped is not None and sketches.mapped is not None:
            _carry_sketches(
                datapath,
                ids.mapped.words(np.uint16).reshape(65536, 4),
                sketches.mapped.words(np.uint8).view(SKETCH_SLOT_DTYPE),
            )
    for name, fd in (
        (SOURCES, datapath.sources_fd),
        (SKETCHES, datapath.sketches_fd),
        (SKETCH_OF_PORT, datapath.sketch_of_port_fd),
    ):
        path = directory / name
        if path.exists():
            path.unlink()
        bpf_syscall.obj_pin(fd, str(path))
    return carried


def _carry_sketches(datapath: DataPath, ids: np.ndarray, slots: np.ndarray) -> None:
    """Each old sketch's ring (slots) into the new sketch of the same port and class, by the
    old sketch_of_port (ids), or into the class's other-ports sketch: newer ticks replace
    older ones, equal ticks are unioned."""
    old_sketches = len(slots) // RING
    source_of = {klass: klass for klass in range(OTHER_SKETCHES)}  # old id -> new id
    for port in np.flatnonzero(ids.any(axis=1)).tolist():
        for klass in range(4):
            old_id = int(ids[port, klass])
            if old_id == 0 or old_id >= old_sketches:
                continue
            new_id = datapath.plan.sketch_id(*CLASSES[klass], port)
            source_of[old_id] = klass if new_id is None else new_id
    new = datapath.read_sketches()
    for old_id, new_id in source_of.items():
        for r in range(RING):
            old, into = slots[old_id * RING + r], new[new_id * RING + r]
            if old["tick"] > into["tick"]:
                into["tick"], into["lost"], into["reg"] = old["tick"], old["lost"], old["reg"]
            elif old["tick"] == into["tick"]:
                into["lost"] += old["lost"]
                np.maximum(into["reg"], old["reg"], out=into["reg"])


class _Pinned:
    """A pinned array map of value_size elements, mapped read-only while in the `with`:
    `mapped` is None when there is none, or it is not of our layout (then it is replaced)."""

    def __init__(self, path: Path, value_size: int) -> None:
        self.path = path
        self.value_size = value_size
        self.mapped: MappedArray | None = None

    def __enter__(self) -> _Pinned:
        if not self.path.exists():
            return self
        try:
            fd = bpf_syscall.obj_get(str(self.path))
        except BPFSyscallError as exc:
            log.warning("cannot open %s (%s): starting without it", self.path, exc)
            return self
        try:
            info = map_info(fd)
            wanted = MapInfo(BPF_MAP_TYPE_ARRAY, 4, self.value_size, info.max_entries)
            if info != wanted:
                log.warning(
                    "replacing %s: its layout (type %d, key %d bytes, value %d bytes) is not "
                    "this version's (type %d, key %d, value %d); it is not read",
                    self.path, info.type, info.key_size, info.value_size,
                    wanted.type, wanted.key_size, wanted.value_size,
                )  # fmt: skip
                return self
            self.mapped = MappedArray(fd, self.value_size, info.max_entries, writable=False)
        except (OSError, BPFSyscallError) as exc:
            log.warning("cannot read %s (%s): starting without it", self.path, exc)
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mapped is not None:
            self.mapped.close()
            self.mapped = None
