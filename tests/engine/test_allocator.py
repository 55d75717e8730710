"""The malloc tuning takes effect: a large buffer gets its own mapping, again after a free.

Checked in a fresh interpreter: in a long-lived one a buffer may be carved from free heap
space instead, whatever the threshold (glibc only maps when the heap cannot serve)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import ctypes, sys
from pathlib import Path
from gemma_worker.engine.allocator import MMAP_THRESHOLD, pin_mmap_threshold

def mappings():
    lines = Path("/proc/self/maps").read_text().splitlines()
    return {line.split()[0] for line in lines if len(line.split()) == 5}

if sys.argv[1] == "pin":
    assert pin_mmap_threshold()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 8 * MMAP_THRESHOLD
libc.free(libc.malloc(size))
before = mappings()
libc.malloc(size // 2)
print("mapped" if mappings() - before else "heap")
"""


def probe(mode: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_large_buffers_keep_their_own_mapping_after_a_free() -> None:
    # Unpinned, freeing the 8 MiB buffer raises glibc's threshold to 8 MiB and the next
    # 4 MiB buffer comes from the heap; pinned, it gets a mapping of its own.
    assert probe("default") == "heap"
    assert probe("pin") == "mapped"
