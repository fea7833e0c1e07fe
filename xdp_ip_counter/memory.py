"""How this process gives memory back to the kernel: large frees at once, and what compiling
the program left behind. No bcc here: glibc (malloc_trim, mallopt) and madvise through ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

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


def return_large_frees_to_the_kernel() -> None:
    """Allocations of 1 MiB and more (the snapshot and window arrays) get their own mappings, so
    that freeing them gives the memory back at once instead of keeping it in glibc's heap: the
    peak RSS at a million sources drops by 12-34 MB (bench/README.md)."""
    m_mmap_threshold = -3
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(m_mmap_threshold, 1 << 20)
