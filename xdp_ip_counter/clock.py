"""The clock the XDP program stamps first and last seen with, as userspace reads it.

The program reads jiffies (bpf_jiffies64, which the verifier inlines); userspace reads the same
counter through a tiny program of its own (bpf_syscall.load_jiffies_reader) and turns it into
CLOCK_MONOTONIC nanoseconds at the start of the current jiffy, once the tick rate and the
boot's jiffy zero are calibrated. No bcc here: calibrating needs only bpf(2).
"""

from __future__ import annotations

import gzip
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import bpf_syscall


class ClockError(RuntimeError):
    """The kernel's tick rate could not be determined; the message says what was tried."""


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
