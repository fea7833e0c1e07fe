"""Fill a sources map with many distinct entries from userspace (BPF_MAP_UPDATE_BATCH), without
sending a frame: the state a large fleet of sources leaves behind."""

from __future__ import annotations

import numpy as np

from xdp_ip_counter.bpf_syscall import map_update_batch
from xdp_ip_counter.clock import kernel_clock_ns
from xdp_ip_counter.layout import KEY_DTYPE, VALUE_DTYPE

FIRST_V4 = 0x0A400000  # 10.64.0.0: clear of the benchmark's frames (10.1.0.0/16, 10.128.0.0/9)
PORTS = (22, 25, 53, 80, 110, 123, 143, 443, 465, 587, 993, 995, 3306, 5432, 8080, 8443)
CHUNK = 131072


def source_keys(count: int, start: int = 0, mixed: bool = False, ifindex: int = 1) -> np.ndarray:
    """count distinct keys (KEY_DTYPE), numbered from start.

    Plain: IPv4 sources from 10.64.0.0 up, UDP to port 53. Mixed (what a busy server sees): one
    in four an IPv6 source, TCP and UDP alternating, sixteen ports; still all distinct.
    """
    number = np.arange(start, start + count, dtype=np.uint64)
    addresses = np.zeros((count, 16), np.uint8)
    v6 = (number % 4 == 3) if mixed else np.zeros(count, bool)
    v4_rows = ~v6
    addresses[v4_rows, 10:12] = 0xFF
    v4_addr = (FIRST_V4 + number[v4_rows]).astype(">u4")
    addresses[v4_rows, 12:16] = v4_addr.view(np.uint8).reshape(-1, 4)
    # IPv6: fd00:64::/32 with the number in the low 64 bits
    addresses[v6, 0:4] = (0xFD, 0x00, 0x00, 0x64)
    addresses[v6, 8:16] = number[v6].astype(">u8").view(np.uint8).reshape(-1, 8)
    keys = np.zeros(count, KEY_DTYPE)
    keys["addr"] = addresses.view("V16").ravel()
    keys["ifindex"] = ifindex
    keys["family"] = np.where(v6, 6, 4)
    if mixed:
        keys["port"] = np.asarray(PORTS, np.uint16)[(number // 2) % len(PORTS)]
        keys["proto"] = np.where(number % 2 == 0, 6, 17)
    else:
        keys["port"] = 53
        keys["proto"] = 17
    return keys


def fill(
    map_fd: int,
    count: int,
    *,
    start: int = 0,
    mixed: bool = False,
    ifindex: int = 1,
    age_s: float = 0.0,
) -> None:
    """Insert (or overwrite) count distinct entries, last seen age_s ago and first seen a
    second before that, a chunk at a time so that the buffers stay small."""
    for offset in range(0, count, CHUNK):
        size = min(CHUNK, count - offset)
        keys = source_keys(size, start + offset, mixed=mixed, ifindex=ifindex)
        values = np.zeros(size, VALUE_DTYPE)
        seen = kernel_clock_ns() - int(age_s * 1e9)
        values["first_seen"] = seen - 1_000_000_000
        values["last_seen"] = seen
        values["packets"] = 1
        values["bytes"] = 46
        map_update_batch(map_fd, keys.tobytes(), values.tobytes(), size)
