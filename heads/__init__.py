"""Task heads on the shared embedding: interface, registry, the built-in heads.

Built-in kinds: ``softmax_abstain`` (``heads.softmax``) and ``knn`` (``heads.knn``); the registry
imports a kind's module the first time that kind is looked up (``heads.registry.BUILTIN_HEADS``).

Public names are re-exported here lazily (PEP 562), as in ``embedder``: importing any ``heads.*``
module runs this file, and ``heads.base`` (``Prediction``, used by ``profile-embed client``) must
not pull in torch, which ``heads.softmax`` imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from heads.base import Head, Prediction
    from heads.knn import KnnConfig, KnnHead
    from heads.registry import (
        available_kinds,
        build_head,
        get_head_class,
        load_head,
        register_head,
    )
    from heads.softmax import (
        STANDARD_HEADS,
        SoftmaxAbstainConfig,
        SoftmaxAbstainHead,
        standard_head,
    )

_EXPORTS = {
    "Head": "heads.base",
    "Prediction": "heads.base",
    "KnnConfig": "heads.knn",
    "KnnHead": "heads.knn",
    "available_kinds": "heads.registry",
    "build_head": "heads.registry",
    "get_head_class": "heads.registry",
    "load_head": "heads.registry",
    "register_head": "heads.registry",
    "STANDARD_HEADS": "heads.softmax",
    "SoftmaxAbstainConfig": "heads.softmax",
    "SoftmaxAbstainHead": "heads.softmax",
    "standard_head": "heads.softmax",
}

__all__ = [
    "STANDARD_HEADS",
    "Head",
    "KnnConfig",
    "KnnHead",
    "Prediction",
    "SoftmaxAbstainConfig",
    "SoftmaxAbstainHead",
    "available_kinds",
    "build_head",
    "get_head_class",
    "load_head",
    "register_head",
    "standard_head",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'heads' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
