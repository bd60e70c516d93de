"""Keep freed memory in the process instead of handing it back to the OS.

A forward pass allocates and frees the same activation sizes (a few MB to
tens of MB) for every layer of every batch. glibc's malloc serves blocks over
its mmap threshold with fresh mappings and trims the heap top after frees, so
each batch faults its pages in again: on the 2-core development machine that
was up to 3 s of system time in a 12 s SmolLM2 pass, and the pass switched
between a fast and a slow mode from one run to the next (docs/benchmarks.md).
Raising the thresholds makes the memory stay mapped and be reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
_TRIM_THRESHOLD = 1 << 30
_TOP_PAD = 64 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc once per process; False where there is no glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD),
        )
    )
