"""glibc malloc tuning for a long-running engine.

A saved KV state is a buffer of several MB whose size changes with each session. glibc serves
such buffers with ``mmap`` and unmaps them when freed, but after each free it raises its mmap
threshold to that size (up to 32 MiB), so the next ones come from the heap, where buffers of
ever-changing sizes fragment it and keep its pages. Pinning the threshold keeps every large
buffer in its own mapping, returned to the system when freed: the soak (bench/soak.py) showed
resident memory about 15 MB lower and without the slow climb.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
#: Buffers from this size up get a mapping of their own.
MMAP_THRESHOLD = 1 << 20


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; ``False`` where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt, nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    log.debug("malloc mmap threshold pinned", extra={"bytes": threshold, "done": done})
    return done
