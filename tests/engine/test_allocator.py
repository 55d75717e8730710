"""The malloc tuning takes effect: a large buffer gets its own mapping, again after a free."""

from __future__ import annotations

import ctypes
from pathlib import Path

from gemma_worker.engine.allocator import MMAP_THRESHOLD, pin_mmap_threshold


def _anonymous_mappings() -> set[str]:
    return {
        line.split()[0]
        for line in Path("/proc/self/maps").read_text().splitlines()
        if len(line.split()) == 5  # no path: anonymous
    }


def test_large_buffers_keep_their_own_mapping_after_a_free() -> None:
    assert pin_mmap_threshold()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 8 * MMAP_THRESHOLD
    # Unpinned, this free would raise glibc's threshold to 8 MiB and the next buffer of
    # 4 MiB would come from the heap; pinned, both get a mapping of their own.
    libc.free(libc.malloc(size))
    before = _anonymous_mappings()
    ptr = libc.malloc(size // 2)
    try:
        assert _anonymous_mappings() - before, "the buffer came from the heap"
    finally:
        libc.free(ptr)
