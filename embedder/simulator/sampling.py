"""Fast draws from ``random.Random`` for the hot loops (``random.choices`` builds a list per
call)."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def pick(rng: random.Random, items: Sequence[T]) -> T:
    """One uniform draw from a non-empty sequence."""
    return items[int(rng.random() * len(items))]


def pick_cum(rng: random.Random, items: Sequence[T], cum: Sequence[float]) -> T:
    """One draw with cumulative weights ``cum`` (aligned with ``items``)."""
    return items[min(bisect_right(cum, rng.random() * cum[-1]), len(items) - 1)]


def sample_cum(rng: random.Random, items: Sequence[T], cum: Sequence[float], k: int) -> list[T]:
    """``k`` draws with replacement with cumulative weights ``cum``."""
    total, last, r = cum[-1], len(items) - 1, rng.random
    return [items[min(bisect_right(cum, r() * total), last)] for _ in range(k)]
