"""Allocator settings of the server: fixed malloc thresholds, free heap pages returned on a timer.

glibc's malloc serves a request above ``M_MMAP_THRESHOLD`` with its own mmap and unmaps it on
free; below, it carves the request out of a heap arena and keeps the freed space, giving the top
of the heap back once more than ``M_TRIM_THRESHOLD`` is free there. Both start low (128 KiB) and
rise, after the first large free, to the size freed (mmap up to 32 MiB, trim twice that). A server
runs forward passes of ever different shapes (rows x longest input), so its activation buffers then
come from the arenas, never fit the holes earlier passes left, and the free-but-kept memory grows:
measured with the torch fp32 encoder under a 150 s load, in-use memory flat at about 430 MB while
free arena memory grew from 100 to 440 MB (docs/BENCHMARKS.md). :class:`Trimmer` (``malloc_trim``,
at most once a second, after a batch) returns those free pages to the kernel.

The thresholds are fixed (which also turns the rise off) at ``MMAP_THRESHOLD_BYTES`` and
``TRIM_THRESHOLD_BYTES``, both above every activation buffer of a pass, so a pass reuses heap
memory instead of faulting fresh pages in. An earlier setting (mmap threshold 4 MiB, trim
threshold left at its 128 KiB default once fixed) had every large buffer mmapped and zero-filled
anew and the heap top returned after each free: the load-time numerics probe measured the bf16
encoder at 580-593 profiles/s in ``serve`` against 1,070-1,128 in a plain process, fp32 238-250
against 305-318; with these thresholds ``serve``'s probe measured 999 and 310
(docs/BENCHMARKS.md, "The allocator setting that halved the served speed").
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

#: ``mallopt`` parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Buffers from this size up are mmapped and returned on free: above the largest activation of a
#: pass (64 rows x 192 tokens x 1,536 fp32 = 72 MiB is the most a default-sized pass allocates).
MMAP_THRESHOLD_BYTES = 128 * 1024 * 1024
#: Free memory at the heap top kept before malloc returns it by itself (the Trimmer does earlier).
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024
#: glibc's own environment settings of the same values; when either is set, they win.
ENV = "MALLOC_MMAP_THRESHOLD_"
TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"


def fix_malloc_thresholds(
    mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES
) -> bool:
    """Fix glibc's mmap and trim thresholds (bytes; no longer rising); return if done.

    Does nothing (False) when ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` is set, or
    when the C library is not glibc (no ``mallopt``).
    """
    if os.environ.get(ENV) or os.environ.get(TRIM_ENV):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        mallopt(M_TRIM_THRESHOLD, int(trim_threshold))
    )
    if done:
        logger.info(
            "malloc: buffers of %d MiB and more are mmapped; heap top kept up to %d MiB",
            mmap_threshold >> 20,
            trim_threshold >> 20,
        )
    return done


class Trimmer:
    """``malloc_trim(0)`` at most once per ``interval_s``; thread-safe, a no-op off glibc.

    Args:
        interval_s: least time between two trims.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.trims = 0
        self._trim = _libc_function("malloc_trim")
        if self._trim is not None:
            self._trim.argtypes = (ctypes.c_size_t,)
            self._trim.restype = ctypes.c_int
        self._lock = threading.Lock()
        self._last = float("-inf")

    def __call__(self) -> bool:
        """Trim unless one ran less than ``interval_s`` ago (or runs now); return if trimmed."""
        if self._trim is None or time.monotonic() - self._last < self.interval_s:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._trim(0)
            self._last = time.monotonic()
            self.trims += 1
        finally:
            self._lock.release()
        return True


def _libc_function(name: str) -> Any:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
