"""Allocator settings of the server: big buffers straight from mmap, free heap pages handed back.

glibc's malloc serves a request above ``M_MMAP_THRESHOLD`` with its own mmap and unmaps it on
free; below, it carves the request out of a heap arena and keeps the freed space. The threshold
starts at 128 KiB and rises, after the first large free, to the size freed (up to 32 MiB). A
server runs forward passes of ever different shapes (rows x longest input), so its 1-32 MiB
activation buffers then come from the arenas, never fit the holes earlier passes left, and the
free-but-kept memory grows: measured with the torch fp32 encoder under a 150 s load, in-use memory
flat at about 430 MB while free arena memory grew from 100 to 440 MB (docs/BENCHMARKS.md). A
fixed threshold (which also turns the rise off) hands those buffers back to the kernel on free.
Smaller buffers (short passes, tokenizer and protobuf garbage) still fragment the arenas, more
slowly; :class:`Trimmer` (``malloc_trim``, at most once a second, after a batch) returns their
free pages. CPU per profile was unchanged within noise with both (page faults included); one trim
took 5-9 ms after a 40-profile batch of the fp32 encoder.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

#: ``mallopt`` parameter number of M_MMAP_THRESHOLD (glibc malloc.h).
M_MMAP_THRESHOLD = -3
#: Buffers from this size up are mmapped and returned on free.
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
#: glibc's own environment setting of the same value; when set, it wins.
ENV = "MALLOC_MMAP_THRESHOLD_"


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold to ``threshold`` bytes (fixed, not rising); return if done.

    Does nothing (False) when ``MALLOC_MMAP_THRESHOLD_`` is set, or when the C library is not
    glibc (no ``mallopt``).
    """
    if os.environ.get(ENV):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
    if done:
        logger.info("malloc: buffers of %d KiB and more are mmapped", threshold // 1024)
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
