"""Waiting for a state instead of sleeping for a guessed time: poll it, fail at a deadline.

The deadlines only bound a hang; no test asserts latency with them, so a slow shared machine
makes a test slower, never wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate()`` from a thread until it holds; AssertionError naming ``what`` if not."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"never happened within {timeout} s: {what}")
        time.sleep(0.01)


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """``wait_for`` on an event loop: yields to the loop's other tasks between polls."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"never happened within {timeout} s: {what}")
        await asyncio.sleep(0.001)
