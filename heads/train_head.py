"""Add a head to an existing model after the fact: train it on cached, frozen embeddings.

The encoder is only read (its ``embedding_version`` stays), embeddings come from an
``EmbeddingCache`` so they are computed once and reused, and the head is written with
``heads.model.add_head`` as ``heads/<name>/v<k+1>``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import VersionMismatchError
from heads.train_data import (
    MISSING,
    check_train_targets,
    check_val_targets,
    encode_targets,
    file_sha256,
    label_counts,
    resolve_tasks,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class HeadTrainConfig:
    """Settings of ``train_head``.

    Attributes:
        hidden: hidden width (0 = linear head).
        epochs: maximum passes (full-batch AdamW on frozen embeddings, early stop on val loss).
        lr: learning rate.
        batch_size: mini-batch size (None = full batch).
        target_precision: per-class precision target of the thresholds.
        seed: initialisation and shuffling seed.
    """

    hidden: int = 0
    epochs: int = 300
    lr: float = 1e-2
    batch_size: int | None = 512
    target_precision: float = 0.90
    seed: int = 0


def default_cache_path() -> Path:
    """The shared embedding cache file (keys include the embedding_version, so sharing is safe)."""
    from embedder.base_import import cache_home

    return cache_home() / "embeddings.sqlite"


def _labelled(
    path: str | Path,
    task: Any,
    label: str,
    *,
    skip_invalid: bool = False,
    report: Callable[[str, Any], None] | None = None,
) -> tuple[list[Any], np.ndarray, int]:
    """The rows of a file that carry the task's label, their targets and the invalid rows skipped.

    Without ``skip_invalid`` the first invalid row raises (``embedder.data.read_profiles``);
    ``report(path, load_result)`` is called once the file is read.
    """
    from embedder.data import read_profiles
    from embedder.errors import InvalidInputError

    loaded = read_profiles(path, skip_invalid=skip_invalid)
    if report is not None:
        report(str(path), loaded)
    rows = loaded.rows
    if not rows:
        what = "no valid rows" if loaded.errors else "no rows"
        raise InvalidInputError(f"the {label} file has {what}", source=str(path))
    y = encode_targets(rows, task, source=str(path))
    keep = y != MISSING
    return [r for r, k in zip(rows, keep, strict=True) if k], y[keep], loaded.n_invalid


def train_head(
    model_dir: str | Path,
    head_name: str,
    train_path: str | Path,
    val_path: str | Path,
    *,
    config: HeadTrainConfig | None = None,
    cache_path: str | Path | None = None,
    skip_invalid: bool = False,
    report: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """Train, calibrate, evaluate and add one head to a model folder.

    Args:
        model_dir: an existing model folder.
        head_name: a known head (``heads.train_data.HEAD_TASKS``), e.g. ``"category"``.
        train_path: labelled training profiles.
        val_path: labelled validation profiles (early stop, calibration, report).
        config: head settings.
        cache_path: the embedding cache (default ``default_cache_path()``); None-like "" disables.
        skip_invalid: skip invalid rows (counted in the head's fit info under
            ``data.<split>.rows_invalid``) instead of raising on the first one.
        report: called as ``report(path, load_result)`` after each file is read.

    Returns:
        A summary: head folder, head_version, embedding_version, metrics, cache stats, seconds.

    Raises:
        UnknownHeadError: unknown head name.
        InvalidInputError: an invalid row (unless ``skip_invalid``), labels outside the head's
            set, no labels, one class, empty validation.
        VersionMismatchError: the model folder's records disagree with its encoder.
    """
    from embedder.cache import CachedEncoder, EmbeddingCache
    from embedder.encoder import ProfileEncoder
    from heads.evaluation import evaluate_head
    from heads.model import add_head, read_model_meta
    from heads.registry import build_head

    start = time.perf_counter()
    cfg = config or HeadTrainConfig()
    (task,) = resolve_tasks([head_name])
    model_dir = Path(model_dir)
    meta = read_model_meta(model_dir)
    opts: dict[str, Any] = {"skip_invalid": skip_invalid, "report": report}
    train_rows, y_train, train_bad = _labelled(train_path, task, "training", **opts)
    check_train_targets(y_train, task, source=str(train_path))
    val_rows, y_val, val_bad = _labelled(val_path, task, "validation", **opts)
    missing = check_val_targets(y_val, y_train, task, source=str(val_path))
    encoder = ProfileEncoder.load(model_dir / "encoder")
    version = encoder.embedding_version
    if meta.get("embedding_version") != version:
        raise VersionMismatchError(
            f"{model_dir}/model.json records embedding_version {meta.get('embedding_version')!r} "
            f"but its encoder is {version!r}"
        )
    cache = None
    if cache_path != "":
        cache = EmbeddingCache(
            cache_path or default_cache_path(), embedding_version=version, dim=encoder.dim
        )
    try:
        cached = CachedEncoder(encoder, cache)
        x_train = cached.encode([r.profile for r in train_rows], show_progress=True)
        x_val = cached.encode([r.profile for r in val_rows], show_progress=True)
        stats = {"hits": cache.hits, "misses": cache.misses} if cache else None
    finally:
        if cache is not None:
            cache.close()
    head = build_head(
        "softmax_abstain",
        name=task.name,
        labels=task.labels,
        embedding_version=version,
        in_dim=encoder.dim,
        hidden=cfg.hidden,
        label_field=task.field,
        seed=cfg.seed,
    )
    head.fit(
        x_train,
        [task.labels[i] for i in y_train],
        val_embeddings=x_val,
        val_labels=[task.labels[i] for i in y_val],
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        target_precision=cfg.target_precision,
        missing_classes="abstain",
    )
    head.fit_info_.update(
        {
            "data": {
                "train": {
                    "path": str(train_path),
                    "sha256": file_sha256(train_path),
                    "rows_invalid": train_bad,
                },
                "val": {
                    "path": str(val_path),
                    "sha256": file_sha256(val_path),
                    "rows_invalid": val_bad,
                },
            },
            "label_counts": {
                "train": label_counts(y_train, task),
                "val": label_counts(y_val, task),
            },
            "val_missing_classes": missing,
        }
    )
    evaluation = evaluate_head(head, x_val, [task.labels[i] for i in y_val], info={"split": "val"})
    folder = add_head(model_dir, head, evaluation=evaluation)
    core = {k: v for k, v in evaluation.metrics.items() if not isinstance(v, (dict, list))}
    return {
        "head": task.name,
        "head_version": head.head_version,
        "path": str(folder),
        "embedding_version": version,
        "val": core,
        "cache": stats,
        "seconds": round(time.perf_counter() - start, 1),
    }
