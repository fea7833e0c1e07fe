"""The loaded XDP program as the kernel tests see it: run a frame, read back exactly what changed.

`ProgramUnderTest.run` runs one frame through BPF_PROG_TEST_RUN and returns the return value and
the stats delta (every outcome, zeros included); `sources()` is the whole sources map as a dict.
`expect` does both and asserts them in one go, which is what almost every test wants.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from tests.support.frames import Frame, ipv4_mapped, ipv6_bytes
from xdp_ip_counter import bpf_syscall
from xdp_ip_counter.bpf import DataPath
from xdp_ip_counter.clock import kernel_clock_ns
from xdp_ip_counter.layout import OUTCOMES

XDP_PASS = 2
TCP = 6
UDP = 17
CUTOFF_FAR_FUTURE = 2**64 - 1


class SourceKey(NamedTuple):
    addr: bytes
    ifindex: int
    port: int
    proto: int
    family: int


class SourceValue(NamedTuple):
    first_seen: int
    last_seen: int
    packets: int
    bytes: int


def v4_key(address: str, port: int, proto: int, ifindex: int) -> SourceKey:
    return SourceKey(ipv4_mapped(address), ifindex, port, proto, 4)


def v6_key(address: str, port: int, proto: int, ifindex: int) -> SourceKey:
    return SourceKey(ipv6_bytes(address), ifindex, port, proto, 6)


def only(outcome: str, count: int = 1) -> dict[str, int]:
    """A stats delta with `count` in one outcome and 0 in every other."""
    assert outcome in OUTCOMES, f"unknown outcome {outcome!r}; known: {OUTCOMES}"
    return {name: (count if name == outcome else 0) for name in OUTCOMES}


@dataclass(frozen=True)
class RunResult:
    retval: int
    stats_delta: dict[str, int]


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll condition until it is truthy; fail naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.001)


def wait_for_clock_after(instant_ns: int, timeout: float = 2.0) -> int:
    """Wait until the kernel's coarse clock has moved past instant_ns (it ticks every few ms);
    returns the clock then."""
    deadline = time.monotonic() + timeout
    while (now := kernel_clock_ns()) <= instant_ns:
        if time.monotonic() > deadline:
            raise AssertionError(f"the coarse clock did not pass {instant_ns} in {timeout}s")
        time.sleep(0.001)
    return now


class ProgramUnderTest:
    """A DataPath whose sources map was emptied when this object was made."""

    def __init__(self, datapath: DataPath, default_ifindex: int) -> None:
        self.datapath = datapath
        self.default_ifindex = default_ifindex  # what test_run reports with no ctx (lo)
        self.started_ns = kernel_clock_ns()

    def stats(self) -> dict[str, int]:
        return self.datapath.read_stats()

    def run(self, frame: Frame | bytes, ifindex: int = 0) -> RunResult:
        data = frame.data if isinstance(frame, Frame) else frame
        before = self.stats()
        result = bpf_syscall.prog_test_run(self.datapath.prog_fd, data, ifindex=ifindex)
        after = self.stats()
        return RunResult(result.retval, {name: after[name] - before[name] for name in OUTCOMES})

    def sources(self) -> dict[SourceKey, SourceValue]:
        keys, values, _ = self.datapath.read_sources()
        table = {}
        for key, value in zip(keys, values, strict=True):
            source_key = SourceKey(
                bytes(key["addr"]),
                int(key["ifindex"]),
                int(key["port"]),
                int(key["proto"]),
                int(key["family"]),
            )
            assert source_key not in table, f"{source_key} read twice"
            table[source_key] = SourceValue(*(int(value[f]) for f in SourceValue._fields))
        return table

    def counts(self) -> dict[SourceKey, tuple[int, int]]:
        """The sources map as key -> (packets, bytes); times checked for sanity on the way."""
        now = kernel_clock_ns()
        table = {}
        for key, value in self.sources().items():
            assert self.started_ns <= value.first_seen <= value.last_seen <= now, (key, value)
            table[key] = (value.packets, value.bytes)
        return table

    def expect(
        self,
        frame: Frame | bytes,
        outcome: str,
        sources: dict[SourceKey, tuple[int, int]] | None = None,
        ifindex: int = 0,
    ) -> RunResult:
        """Run frame; assert XDP_PASS, exactly one `outcome` in the stats and the exact map
        contents afterwards as key -> (packets, bytes). sources=None means "unchanged", which
        only makes sense for outcomes that record nothing."""
        assert sources is not None or not outcome.startswith("recorded"), "say what is recorded"
        before = self.counts()
        result = self.run(frame, ifindex)
        assert result.retval == XDP_PASS
        assert result.stats_delta == only(outcome), f"expected only {outcome}"
        assert self.counts() == (before if sources is None else sources)
        return result

    def key_v4(self, address: str, port: int, proto: int = TCP, ifindex: int = 0) -> SourceKey:
        return v4_key(address, port, proto, ifindex or self.default_ifindex)

    def key_v6(self, address: str, port: int, proto: int = TCP, ifindex: int = 0) -> SourceKey:
        return v6_key(address, port, proto, ifindex or self.default_ifindex)

    def clear(self) -> None:
        keys, _, _ = self.datapath.read_sources()
        self.datapath.expire(keys, CUTOFF_FAR_FUTURE)
        assert self.sources() == {}, "the sources map could not be emptied"
