"""The programs the benchmarks measure, built one way for all of them.

- the empty program (`return XDP_PASS`): the baseline of every ratio;
- the first version (bench/programs/first_version.c: the product's parse and port filter, one
  LRU-hash lookup and update per frame, an insert for a new source): issue 12's
  "straightforward program", the baseline of the added cost;
- the product, loaded by the product's own loader (`xdp_ip_counter.bpf.DataPath`) and
  configured as the daemon configures it (`configure(ports, window, plan)`), with the
  benchmark's -D switches when asked (PARSE_ONLY, COARSE_CLOCK, NO_SKETCH);
- any of them wrapped in bench/programs/varying_source.c (`varying=True`): a new IPv4 source
  in every run of one BPF_PROG_TEST_RUN (the flood run).

A wrapped product is still the product: its text, the wrapper's text after it, compiled by
DataPath from a scratch directory that $XDP_IP_COUNTER_BPF_DIR names for that moment (bcc
rewrites map calls only in the file it compiles, so the program cannot be #included).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xdp_ip_counter.bpf import PROGRAM_FILE, DataPath, source_dir
from xdp_ip_counter.config import PortFilter
from xdp_ip_counter.sketch import SketchPlan

PROGRAMS = Path(__file__).resolve().parent / "programs"
FIRST_VERSION = PROGRAMS / "first_version.c"
VARYING_SOURCE = PROGRAMS / "varying_source.c"
ENTRY = "xdp_ip_counter"  # every program's entry point (the wrapper takes the wrapped one's)
EMPTY_SOURCE = f"int {ENTRY}(struct xdp_md *ctx) {{ return XDP_PASS; }}"
HEADERS = ("parsing.h", "source_key.h")


def flood_sources(count: int, start: int = 1) -> np.ndarray:
    """The IPv4 sources (host-order integers) that varying_source.c gives the wrapped program
    in runs start, start + 1, ... of one CPU (its count starts at 1): 10.x.y.z with x.y.z the
    24-bit scramble of the run's number."""
    number = np.arange(start, start + count, dtype=np.uint64)
    scrambled = (number * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFF)
    scrambled ^= scrambled >> np.uint64(12)
    return (np.uint64(0x0A000000) | scrambled).astype(np.uint32)


def wrapped(program_text: str) -> str:
    """program_text with its entry point renamed wrapped_main, then the wrapper."""
    return (
        "#include <uapi/linux/bpf.h>\n"
        "static __always_inline int wrapped_main(struct xdp_md *ctx);\n"
        f"#define {ENTRY} wrapped_main\n{program_text}\n#undef {ENTRY}\n"
        + VARYING_SOURCE.read_text()
    )


class Program:
    """A program compiled by bcc from text or a file, with -I bpf/ and the -D switches."""

    def __init__(
        self,
        text: str,
        defines: Mapping[str, str] | None = None,
        *,
        ports: PortFilter | None = None,
        varying: bool = False,
    ) -> None:
        from bcc import BPF  # noqa: PLC0415 - bcc only where it is needed

        cflags = [f"-I{source_dir()}", "-Wno-unused-function"]
        cflags += [f"-D{name}={value}" for name, value in (defines or {}).items()]
        source = wrapped(text) if varying else text
        self.bpf = BPF(text=source.encode(), cflags=cflags)
        self.fd: int = self.bpf.load_func(ENTRY.encode(), BPF.XDP).fd
        if ports is not None:
            leaf = self.bpf[b"port_filter"].Leaf()
            leaf.all_ports = 1 if ports.all_ports else 0
            for port in ports.ports:
                leaf.bits[port >> 6] |= 1 << (port & 63)
            self.bpf[b"port_filter"][ctypes.c_int(0)] = leaf

    def close(self) -> None:
        self.bpf.cleanup()


def empty(*, varying: bool = False) -> Program:
    return Program(EMPTY_SOURCE, varying=varying)


class FirstVersion(Program):
    """bench/programs/first_version.c with an LRU hash of `capacity` entries."""

    def __init__(self, capacity: int, ports: PortFilter, *, varying: bool = False) -> None:
        super().__init__(
            FIRST_VERSION.read_text(),
            {"MAX_ENTRIES": str(capacity)},
            ports=ports,
            varying=varying,
        )
        self.sources_fd: int = self.bpf[b"sources"].get_fd()

    def stats(self) -> list[int]:
        """Frames per outcome (layout.OUTCOMES order), summed over CPUs."""
        return [int(sum(value)) for value in self.bpf[b"stats"].values()]


def product(
    capacity: int,
    ports: PortFilter,
    window: int = 60,
    *,
    defines: Mapping[str, str] | None = None,
    varying: bool = False,
    new_source_budget: int = 0,
    **recorded: Any,
) -> DataPath:
    """The product with a table of at least `capacity` slots, configured as the daemon would
    for these ports, window and new-source budget (ports listed get sketches of their own),
    and what else DataPath.configure takes (protocols, source lists, ...)."""
    plan = SketchPlan.initial(ports.ports, ())
    with _wrapped_source_dir() if varying else contextlib.nullcontext():
        datapath = DataPath(capacity, plan, defines=defines)
    datapath.configure(ports, window, plan, new_source_budget=new_source_budget, **recorded)
    return datapath


@contextlib.contextmanager
def _wrapped_source_dir() -> Iterator[None]:
    """$XDP_IP_COUNTER_BPF_DIR names a scratch directory holding the wrapped product (and the
    headers it includes) while the block runs."""
    real = source_dir()
    previous = os.environ.get("XDP_IP_COUNTER_BPF_DIR")
    with tempfile.TemporaryDirectory(prefix="xicb-flood-") as scratch:
        for header in HEADERS:
            shutil.copy(real / header, scratch)
        (Path(scratch) / PROGRAM_FILE).write_text(wrapped((real / PROGRAM_FILE).read_text()))
        os.environ["XDP_IP_COUNTER_BPF_DIR"] = scratch
        try:
            yield
        finally:
            if previous is None:
                del os.environ["XDP_IP_COUNTER_BPF_DIR"]
            else:
                os.environ["XDP_IP_COUNTER_BPF_DIR"] = previous
