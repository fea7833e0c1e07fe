"""The few bpf(2) commands bcc does not offer in the form we need, through ctypes.

- BPF_LINK_CREATE: attach XDP through a link, so that the program is detached when the last fd
  to the link closes — when the daemon dies for any reason (bcc's attach_xdp uses netlink, which
  leaves the program attached after a crash).
- BPF_MAP_LOOKUP_BATCH / BPF_MAP_LOOKUP_AND_DELETE_ELEM / BPF_MAP_UPDATE_ELEM: read a hash map
  straight into contiguous buffers (one syscall per chunk, not two per entry) and expire entries
  without losing a hit that lands between the snapshot and the delete.
- BPF_PROG_TEST_RUN: run the program on a crafted frame (tests and benchmarks).
- BPF_PROG_LOAD of a five-instruction program that reads jiffies: the clock the XDP program
  stamps first/last seen with, read the same way from userspace (see clock.kernel_clock_ns).

No bcc here: only file descriptors and bytes.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct
from dataclasses import dataclass

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_CREATE = 28

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_XDP = 37  # enum bpf_attach_type
BPF_PROG_TYPE_XDP = 6
BPF_FUNC_JIFFIES64 = 118
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_MODES = {"skb": XDP_FLAGS_SKB_MODE, "native": XDP_FLAGS_DRV_MODE}

_ATTR_SIZE = 128


class BPFSyscallError(OSError):
    """A bpf(2) command failed; errno and the command name are kept."""


def _bpf(cmd: int, attr: ctypes.Array, name: str) -> int:
    try:
        nr = _SYS_BPF[platform.machine()]
    except KeyError as exc:  # pragma: no cover - other architectures are not supported yet
        raise BPFSyscallError(errno.ENOSYS, f"bpf(): unknown syscall number on {exc}") from None
    ret = _libc.syscall(nr, cmd, ctypes.byref(attr), _ATTR_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
        raise BPFSyscallError(err, f"bpf({name}): {os.strerror(err)}")
    return ret


def _attr() -> ctypes.Array:
    return ctypes.create_string_buffer(_ATTR_SIZE)


def _addr(buf: ctypes.Array | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def link_create_xdp(prog_fd: int, ifindex: int, mode: str) -> int:
    """Attach an XDP program to ifindex through a BPF link; returns the link fd."""
    attr = _attr()
    struct.pack_into("=IIII", attr, 0, prog_fd, ifindex, BPF_XDP, XDP_MODES[mode])
    return _bpf(BPF_LINK_CREATE, attr, "LINK_CREATE")


def obj_pin(fd: int, path: str) -> None:
    pathname = ctypes.create_string_buffer(os.fsencode(path))
    attr = _attr()
    struct.pack_into("=QI", attr, 0, _addr(pathname), fd)
    _bpf(BPF_OBJ_PIN, attr, "OBJ_PIN")


def obj_get(path: str) -> int:
    pathname = ctypes.create_string_buffer(os.fsencode(path))
    attr = _attr()
    struct.pack_into("=Q", attr, 0, _addr(pathname))
    return _bpf(BPF_OBJ_GET, attr, "OBJ_GET")


def _elem_attr(map_fd: int, key: ctypes.Array, value: ctypes.Array | None, flags: int = 0):
    attr = _attr()
    struct.pack_into("=IxxxxQQQ", attr, 0, map_fd, _addr(key), _addr(value), flags)
    return attr


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _bpf(BPF_MAP_UPDATE_ELEM, _elem_attr(map_fd, k, v, flags), "MAP_UPDATE_ELEM")


def map_delete(map_fd: int, key: bytes) -> bool:
    """Delete key; False when it was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _elem_attr(map_fd, k, None), "MAP_DELETE_ELEM")
    except BPFSyscallError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _elem_value(cmd: int, name: str, map_fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        _bpf(cmd, _elem_attr(map_fd, k, v), name)
    except BPFSyscallError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value under key, or None when there is none."""
    return _elem_value(BPF_MAP_LOOKUP_ELEM, "MAP_LOOKUP_ELEM", map_fd, key, value_size)


def map_lookup_and_delete(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """Atomically take the value under key out of a hash map; None when there is none."""
    return _elem_value(
        BPF_MAP_LOOKUP_AND_DELETE_ELEM, "MAP_LOOKUP_AND_DELETE", map_fd, key, value_size
    )


@dataclass(frozen=True)
class MapInfo:
    type: int
    key_size: int
    value_size: int
    max_entries: int


def map_info(fd: int) -> MapInfo:
    """Type, key and value sizes and capacity of the map behind fd (BPF_OBJ_GET_INFO_BY_FD)."""
    info = ctypes.create_string_buffer(80)
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "OBJ_GET_INFO_BY_FD")
    kind, _id, key_size, value_size, max_entries = struct.unpack_from("=5I", info, 0)
    return MapInfo(kind, key_size, value_size, max_entries)


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int) -> None:
    """Insert or replace count entries from two flat buffers in one BPF_MAP_UPDATE_BATCH."""
    key_buf = ctypes.create_string_buffer(keys, len(keys))
    value_buf = ctypes.create_string_buffer(values, len(values))
    attr = _attr()
    struct.pack_into(
        "=QQQQIIQQ",
        attr,
        0,
        0,
        0,
        ctypes.addressof(key_buf),
        ctypes.addressof(value_buf),
        count,
        fd,
        0,
        0,
    )
    _bpf(BPF_MAP_UPDATE_BATCH, attr, "MAP_UPDATE_BATCH")


def map_lookup_and_delete_each(
    map_fd: int, keys: bytearray | memoryview, key_size: int, value_size: int
) -> tuple[mmap.mmap, bytearray]:
    """map_lookup_and_delete() for every key in a flat, writable buffer of keys, one syscall
    each but without building anything per key: returns (values, found), where values holds
    value i at i*value_size and found[i] is 1 when key i was there (and is now gone)."""
    count = len(keys) // key_size
    values = mmap.mmap(-1, max(count * value_size, 1))
    found = bytearray(count)
    if count == 0:
        return values, found
    keys_at = ctypes.addressof(ctypes.c_char.from_buffer(keys))
    values_at = ctypes.addressof(ctypes.c_char.from_buffer(values))
    attr = _attr()
    struct.pack_into("=I", attr, 0, map_fd)
    pointers = (ctypes.c_uint64 * 2).from_buffer(attr, 8)  # attr.key, attr.value
    nr = _SYS_BPF[platform.machine()]
    attr_ref = ctypes.byref(attr)
    syscall = _libc.syscall
    for index in range(count):
        pointers[0] = keys_at + index * key_size
        pointers[1] = values_at + index * value_size
        if syscall(nr, BPF_MAP_LOOKUP_AND_DELETE_ELEM, attr_ref, _ATTR_SIZE) == 0:
            found[index] = 1
            continue
        err = ctypes.get_errno()
        if err != errno.ENOENT:
            del pointers
            raise BPFSyscallError(err, f"bpf(MAP_LOOKUP_AND_DELETE): {os.strerror(err)}")
    del pointers
    return values, found


def _grown(buffer: mmap.mmap, size: int) -> mmap.mmap:
    """A buffer of size bytes holding what buffer held (buffer is closed)."""
    bigger = mmap.mmap(-1, size)
    bigger[: len(buffer)] = buffer
    buffer.close()
    return bigger


def map_lookup_batch(
    map_fd: int, key_size: int, value_size: int, capacity: int, chunk: int = 65536
) -> tuple[mmap.mmap, mmap.mmap, int]:
    """Every (key, value) of a hash map, read with BPF_MAP_LOOKUP_BATCH into two flat buffers.

    Returns (keys, values, count): entry i is keys[i*key_size:...], values[i*value_size:...].
    One syscall per chunk of entries. The kernel copies a hash map bucket by bucket, each under
    its lock, and a key always hashes to the same bucket, so no key comes twice; one inserted
    into a bucket already copied shows next time. A map that keeps changing can yield more
    entries than its capacity (entries evicted behind the walk replaced ahead of it): the
    buffers grow. The kernel answers ENOSPC when the next bucket holds more entries than a call
    asks for: the call is repeated asking for more.

    The buffers are anonymous mappings (they support the buffer protocol, for np.frombuffer):
    making them costs nothing, and only the pages the kernel writes become resident, so a map
    read far below its capacity costs memory for what it holds, and the interpreter lock is not
    held while a large buffer is zeroed.
    """
    chunk = max(chunk, 1)
    room = max(capacity, 1) + chunk
    keys = mmap.mmap(-1, room * key_size)
    values = mmap.mmap(-1, room * value_size)
    keys_at = ctypes.addressof(ctypes.c_char.from_buffer(keys))
    values_at = ctypes.addressof(ctypes.c_char.from_buffer(values))
    token_in = ctypes.create_string_buffer(max(key_size, 8))
    token_out = ctypes.create_string_buffer(max(key_size, 8))
    total = 0
    first = True
    want = chunk
    while True:
        if total + want > room:
            room = max(room * 2, total + want)
            keys, values = _grown(keys, room * key_size), _grown(values, room * value_size)
            keys_at = ctypes.addressof(ctypes.c_char.from_buffer(keys))
            values_at = ctypes.addressof(ctypes.c_char.from_buffer(values))
        attr = _attr()
        struct.pack_into(
            "=QQQQIIQQ",
            attr,
            0,
            0 if first else _addr(token_in),
            _addr(token_out),
            keys_at + total * key_size,
            values_at + total * value_size,
            want,
            map_fd,
            0,
            0,
        )
        done = False
        try:
            _bpf(BPF_MAP_LOOKUP_BATCH, attr, "MAP_LOOKUP_BATCH")
        except BPFSyscallError as exc:
            if exc.errno == errno.ENOSPC:
                want *= 2  # the next bucket holds more than we asked for
                continue
            if exc.errno != errno.ENOENT:
                raise
            done = True
        total += struct.unpack_from("=I", attr, 32)[0]
        if done:
            return keys, values, total
        ctypes.memmove(token_in, token_out, len(token_in))
        first = False
        want = chunk


@dataclass(frozen=True)
class TestRun:
    """Result of one BPF_PROG_TEST_RUN: the program's return value and the mean ns per run."""

    retval: int
    duration_ns: int


def prog_test_run(prog_fd: int, frame: bytes, ifindex: int = 0, repeat: int = 1) -> TestRun:
    """Run an XDP program on frame, repeat times; ingress_ifindex set when ifindex != 0."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + 512)
    ctx = None
    if ifindex:
        # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        ctx = ctypes.create_string_buffer(struct.pack("=6I", 0, len(frame), 0, ifindex, 0, 0), 24)
    attr = _attr()
    struct.pack_into(
        "=IIIIQQIIIIQQ",
        attr,
        0,
        prog_fd,
        0,
        len(frame),
        len(data_out),
        _addr(data_in),
        _addr(data_out),
        repeat,
        0,
        24 if ctx is not None else 0,
        0,
        _addr(ctx),
        0,
    )
    _bpf(BPF_PROG_TEST_RUN, attr, "PROG_TEST_RUN")
    retval, _, _ = struct.unpack_from("=III", attr, 4)
    duration = struct.unpack_from("=I", attr, 36)[0]
    return TestRun(retval=retval, duration_ns=duration)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


# XDP program: write bpf_jiffies64() into the first 8 bytes of the frame and pass it.
_JIFFIES_READER = b"".join(
    [
        _insn(0xBF, dst=6, src=1),  # r6 = ctx
        _insn(0x85, imm=BPF_FUNC_JIFFIES64),  # r0 = bpf_jiffies64()
        _insn(0x61, dst=2, src=6, off=0),  # r2 = ctx->data
        _insn(0x61, dst=3, src=6, off=4),  # r3 = ctx->data_end
        _insn(0xBF, dst=4, src=2),  # r4 = r2
        _insn(0x07, dst=4, imm=8),  # r4 += 8
        _insn(0x2D, dst=4, src=3, off=1),  # if r4 > r3 goto +1
        _insn(0x7B, dst=2, src=0, off=0),  # *(u64 *)(r2 + 0) = r0
        _insn(0xB7, dst=0, imm=2),  # r0 = XDP_PASS
        _insn(0x95),  # exit
    ]
)
_JIFFIES_FRAME = bytes(64)


def load_jiffies_reader() -> int:
    """Load the jiffies-reading program; returns its fd (for read_jiffies)."""
    insns = ctypes.create_string_buffer(_JIFFIES_READER, len(_JIFFIES_READER))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    name = b"xic_jiffies"
    attr = _attr()
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
    # prog_flags, prog_name[16]
    struct.pack_into(
        "=IIQQIIQII16s",
        attr,
        0,
        BPF_PROG_TYPE_XDP,
        len(_JIFFIES_READER) // 8,
        _addr(insns),
        _addr(license_),
        1,
        len(log),
        _addr(log),
        0,
        0,
        name,
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr, "PROG_LOAD")
    except BPFSyscallError as exc:
        verifier = log.value.decode(errors="replace").strip()
        raise BPFSyscallError(exc.errno, f"{exc.strerror}: {verifier}") from None


def read_jiffies(reader_fd: int) -> int:
    """The kernel's jiffies_64 now, through the program load_jiffies_reader() loaded."""
    data_in = ctypes.create_string_buffer(_JIFFIES_FRAME, len(_JIFFIES_FRAME))
    data_out = ctypes.create_string_buffer(len(_JIFFIES_FRAME))
    attr = _attr()
    struct.pack_into(
        "=IIIIQQI",
        attr,
        0,
        reader_fd,
        0,
        len(_JIFFIES_FRAME),
        len(data_out),
        _addr(data_in),
        _addr(data_out),
        1,
    )
    _bpf(BPF_PROG_TEST_RUN, attr, "PROG_TEST_RUN")
    return struct.unpack_from("<Q", data_out, 0)[0]
