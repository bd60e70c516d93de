"""The allocator setting applies once and leaves the process working."""

from __future__ import annotations

import ctypes.util
import sys

import numpy as np
import pytest

from embwalk.extraction.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or not ctypes.util.find_library("c"), reason="glibc only")
def test_keep_freed_memory_applies_and_memory_still_works():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # cached: applied once
    big = [np.ones(8 << 20, dtype=np.uint8) for _ in range(4)]  # blocks under and over the old mmap threshold
    del big
    assert np.ones(64 << 20, dtype=np.uint8).sum() == 64 << 20
