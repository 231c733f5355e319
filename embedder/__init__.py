"""Multilingual profile embeddings: profile -> assembled text -> encoder -> vector (+ cache, index).

Public names are re-exported here lazily (PEP 562), so ``import embedder.errors`` (done by the CLI
before parsing flags) does not import torch, transformers or faiss.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedder.cache import CachedEncoder, EmbeddingCache
    from embedder.encoder import ProfileEncoder
    from embedder.errors import (
        ArtifactError,
        EmbedderError,
        InvalidInputError,
        NotConfiguredError,
        NotReadyError,
        OverloadedError,
        UnknownHeadError,
        UnknownIdError,
        VersionMismatchError,
    )
    from embedder.index import SimilarityIndex
    from embedder.profile import AssemblyConfig, Profile, assemble_texts, text_hash

_EXPORTS = {
    "ProfileEncoder": "embedder.encoder",
    "EmbeddingCache": "embedder.cache",
    "CachedEncoder": "embedder.cache",
    "SimilarityIndex": "embedder.index",
    "Profile": "embedder.profile",
    "AssemblyConfig": "embedder.profile",
    "assemble_texts": "embedder.profile",
    "text_hash": "embedder.profile",
    "EmbedderError": "embedder.errors",
    "InvalidInputError": "embedder.errors",
    "ArtifactError": "embedder.errors",
    "VersionMismatchError": "embedder.errors",
    "UnknownHeadError": "embedder.errors",
    "UnknownIdError": "embedder.errors",
    "OverloadedError": "embedder.errors",
    "NotConfiguredError": "embedder.errors",
    "NotReadyError": "embedder.errors",
}

__all__ = [
    "ArtifactError",
    "AssemblyConfig",
    "CachedEncoder",
    "EmbedderError",
    "EmbeddingCache",
    "InvalidInputError",
    "NotConfiguredError",
    "NotReadyError",
    "OverloadedError",
    "Profile",
    "ProfileEncoder",
    "SimilarityIndex",
    "UnknownHeadError",
    "UnknownIdError",
    "VersionMismatchError",
    "assemble_texts",
    "text_hash",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embedder' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
