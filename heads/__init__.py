"""Task heads on the shared embedding: interface, registry, the built-in softmax_abstain head."""

from __future__ import annotations

from heads.base import Head, Prediction
from heads.registry import available_kinds, build_head, get_head_class, load_head, register_head
from heads.softmax import (
    STANDARD_HEADS,
    SoftmaxAbstainConfig,
    SoftmaxAbstainHead,
    standard_head,
)

__all__ = [
    "STANDARD_HEADS",
    "Head",
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
