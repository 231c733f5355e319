"""The closed head registry (timm style): ``kind`` string -> head class, plus build and load.

``kind`` is stored in head_config.json; no dotted import paths are ever written to disk.

Adding a head kind takes three touches: a module in ``heads/`` whose class carries
``@register_head("<kind>")``, its line in ``BUILTIN_HEADS`` below, and a test (see
``docs/ARCHITECTURE.md``, "Adding a head"). A built-in module is imported the first time its kind
is looked up, so loading a ``knn`` head never imports torch and ``profile-embed --help`` stays
light.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from embedder.errors import ArtifactError, UnknownHeadError, VersionMismatchError
from heads.base import (
    CONFIG_FILE,
    HEAD_FORMAT_VERSION,
    LABELS_FILE,
    WEIGHTS_FILE,
    Head,
)

logger = logging.getLogger(__name__)

_HEADS: dict[str, type[Head]] = {}

#: The built-in kinds and the module that registers each (imported on first use).
BUILTIN_HEADS: dict[str, str] = {
    "softmax_abstain": "heads.softmax",
    "knn": "heads.knn",
}

H = TypeVar("H", bound=type[Head])


def register_head(kind: str) -> Callable[[H], H]:
    """Class decorator: register a ``Head`` subclass under ``kind``.

    Args:
        kind: short key stored as "kind" in head_config.json (e.g. ``"softmax_abstain"``).

    Returns:
        The decorator, which sets ``cls.kind`` and returns the class unchanged.

    Raises:
        ValueError: when ``kind`` is already taken by another class.
    """

    def deco(cls: H) -> H:
        existing = _HEADS.get(kind)
        if existing is not None and existing is not cls:
            raise ValueError(f"head kind {kind!r} is already registered by {existing.__name__}")
        cls.kind = kind
        _HEADS[kind] = cls
        return cls

    return deco


def available_kinds() -> list[str]:
    """Return the registered head kinds (every built-in one included), sorted."""
    for kind in BUILTIN_HEADS:
        _import_builtin(kind)
    return sorted(_HEADS)


def get_head_class(kind: str) -> type[Head]:
    """Return the class registered under ``kind``.

    Raises:
        UnknownHeadError: naming the kind and the registered kinds.
    """
    _import_builtin(kind)
    try:
        return _HEADS[kind]
    except KeyError:
        raise UnknownHeadError(
            f"unknown head kind {kind!r}; registered kinds: {available_kinds()}"
        ) from None


def build_head(
    kind: str,
    *,
    name: str,
    labels: Sequence[str],
    embedding_version: str,
    in_dim: int,
    **cfg: Any,
) -> Head:
    """Build an unfitted head of a registered kind (validated through its ``from_config``).

    Args:
        kind: a registered kind.
        name: the head's name in the model ("geolocation").
        labels: output labels in column order.
        embedding_version: the encoder version the head will be trained on.
        in_dim: embedding width.
        **cfg: kind-specific settings (e.g. ``hidden``, ``label_field``).

    Returns:
        The head, with freshly initialised weights.
    """
    cls = get_head_class(kind)
    return cls.from_config(
        {"name": name, "embedding_version": embedding_version, "in_dim": in_dim, **cfg}, labels
    )


def load_head(path: str | Path, *, embedding_version: str | None = None) -> Head:
    """Load a saved head folder, refusing anything inconsistent.

    Args:
        path: a folder written by ``Head.save``.
        embedding_version: the encoder's version; when given, a head of another version is refused.

    Returns:
        The fitted head.

    Raises:
        ArtifactError: missing files, unknown format, in_dim or label count not matching the
            weights.
        VersionMismatchError: the head was trained for another embedding_version.
        UnknownHeadError: the stored kind is not registered.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    for fname in (CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE):
        if not (path / fname).is_file():
            raise ArtifactError(f"head folder {path} has no {fname}")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        labels = json.loads((path / LABELS_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"corrupt JSON in head folder {path}: {err}") from err
    fmt = config.get("format_version")
    if fmt != HEAD_FORMAT_VERSION:
        raise ArtifactError(
            f"head {path} has format_version {fmt!r}; this code reads {HEAD_FORMAT_VERSION}"
        )
    stored = config.get("embedding_version")
    if embedding_version is not None and stored != embedding_version:
        raise VersionMismatchError(
            f"head {path} was trained for embedding_version {stored!r} but the encoder has "
            f"{embedding_version!r}; retrain the head (train-head) on this encoder's embeddings"
        )
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ArtifactError(f"{path / LABELS_FILE} must be a JSON list of strings")
    cls = get_head_class(str(config.get("kind")))
    tensors = load_file(str(path / WEIGHTS_FILE))
    try:
        head = cls._from_saved(config, labels, tensors)
    except ArtifactError as err:
        raise ArtifactError(f"head {path}: {err}") from err
    logger.info(
        "loaded head %s v%s (%s, %s)",
        head.name,
        head.head_version,
        head.kind,
        head.embedding_version,
    )
    return head


def _import_builtin(kind: str) -> None:
    # Importing a built-in head's module registers it; done lazily to avoid an import cycle.
    module = BUILTIN_HEADS.get(kind)
    if module is not None and kind not in _HEADS:
        importlib.import_module(module)
