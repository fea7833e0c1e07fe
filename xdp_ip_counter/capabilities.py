"""Give up the capabilities the daemon no longer needs once it runs.

Loading the program needs CAP_BPF, CAP_PERFMON (variable-offset packet access for IPv4 options
and IPv6 extension headers) and CAP_NET_ADMIN (an XDP program type). Once it is loaded and
attached, the daemon keeps only:

  CAP_BPF        kernels before 6.5 refuse every bpf(2) command, map reads included, to a
                 process without it (kernel.unprivileged_bpf_disabled); newer kernels let the
                 holder of a map or program fd use it without any capability
  CAP_NET_ADMIN  attaching to an interface added by a reload (SIGHUP)

Everything else (CAP_PERFMON, CAP_SYS_ADMIN and all the rest a root process has) is dropped
from the effective, permitted and inheritable sets, so it cannot be regained.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

log = logging.getLogger(__name__)

CAP_NET_ADMIN = 12
CAP_BPF = 39
KEPT_AFTER_START = (CAP_BPF, CAP_NET_ADMIN)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _get() -> tuple[int, int]:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capget: {os.strerror(err)}")
    effective = data[0].effective | data[1].effective << 32
    permitted = data[0].permitted | data[1].permitted << 32
    return effective, permitted


def keep_only(capabilities: tuple[int, ...] = KEPT_AFTER_START) -> int:
    """Reduce this process's capabilities to those given (of those it has); returns the mask
    kept. Never raises: a failure is logged and the process keeps what it had."""
    others = [t for t in os.listdir("/proc/self/task") if int(t) != threading.get_native_id()]
    if others:
        log.warning("threads %s started before capabilities were dropped keep them", others)
    wanted = 0
    for cap in capabilities:
        wanted |= 1 << cap
    try:
        _effective, permitted = _get()
        keep = permitted & wanted
        header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_Data * 2)()
        for i in range(2):
            word = (keep >> (32 * i)) & 0xFFFFFFFF
            data[i].effective = word
            data[i].permitted = word
            data[i].inheritable = 0
        if _libc.capset(ctypes.byref(header), data) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"capset: {os.strerror(err)}")
    except OSError as exc:
        log.warning("could not drop capabilities, keeping them: %s", exc)
        return -1
    return keep
