"""Keep the sources map across restarts: pin it in bpffs, and carry a pinned map's entries over
into the map a new process creates.

The new process always creates its own map (its capacity may differ, and bcc creates the maps it
compiles); at start-up it copies the entries of the map pinned by the previous process into it,
then pins its own in the old one's place. The pinned name carries the layout version, and the
pinned map's type and key/value sizes are checked before anything is read from it: a map of
another layout is removed with a log line, never misread.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from pathlib import Path

import numpy as np

from . import bpf_syscall
from .bpf_syscall import BPFSyscallError, MapInfo, map_info, map_update_batch
from .layout import KEY_DTYPE, LAYOUT_VERSION, VALUE_DTYPE

log = logging.getLogger(__name__)

BPF_MAP_TYPE_LRU_HASH = 9
BPF_FS_MAGIC = 0xCAFE4A11

SOURCES = f"sources_v{LAYOUT_VERSION}"


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


def restore_and_pin(directory: Path, sources_fd: int, capacity: int) -> int:
    """Copy the entries of the sources map pinned in directory (if any, and of our layout)
    into the map sources_fd, then pin sources_fd there instead. Returns the entries carried."""
    check_bpffs(directory)
    for stale in sorted(directory.glob("sources_v*")):
        if stale.name != SOURCES:
            log.warning("removing %s: pinned by a version with another map layout", stale)
            stale.unlink()
    path = directory / SOURCES
    carried = 0
    if path.exists():
        carried = _carry_over(path, sources_fd, capacity)
        path.unlink()
    bpf_syscall.obj_pin(sources_fd, str(path))
    return carried


def _carry_over(path: Path, sources_fd: int, capacity: int) -> int:
    try:
        old_fd = bpf_syscall.obj_get(str(path))
    except BPFSyscallError as exc:
        log.warning("cannot open %s (%s): starting with an empty map", path, exc)
        return 0
    try:
        info = map_info(old_fd)
        wanted = MapInfo(
            BPF_MAP_TYPE_LRU_HASH, KEY_DTYPE.itemsize, VALUE_DTYPE.itemsize, info.max_entries
        )
        if info != wanted:
            log.warning(
                "replacing %s: its layout (type %d, key %d bytes, value %d bytes) is not this "
                "version's (type %d, key %d, value %d); its entries are not read",
                path,
                info.type,
                info.key_size,
                info.value_size,
                wanted.type,
                wanted.key_size,
                wanted.value_size,
            )
            return 0
        keys, values, count = bpf_syscall.map_lookup_batch(
            old_fd, info.key_size, info.value_size, info.max_entries
        )
    finally:
        os.close(old_fd)
    if count == 0:
        return 0
    k = np.frombuffer(keys, dtype=KEY_DTYPE, count=count)
    v = np.frombuffer(values, dtype=VALUE_DTYPE, count=count)
    if count > capacity:  # a smaller map now: keep the most recently seen
        keep = np.argsort(v["last_seen"], kind="stable")[-capacity:]
        k, v, count = k[keep], v[keep], capacity
    try:
        map_update_batch(sources_fd, k.tobytes(), v.tobytes(), count)
    except BPFSyscallError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        log.warning("the map filled up while restoring %s", path)
    log.info("carried %d entries over from %s", count, path)
    return count
