"""Add a head to an existing model after the fact: train it on cached, frozen embeddings.

The encoder is only read (its ``embedding_version`` stays), embeddings come from an
``EmbeddingCache`` so they are computed once and reused, and the head is written with
``heads.model.add_head`` as ``heads/<name>/v<k+1>``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import VersionMismatchError
from heads.calibration import DEFAULT_TARGET_PRECISION
from heads.training.config import HeadTrainConfig
from heads.training.data import (
    MISSING,
    check_train_targets,
    check_val_targets,
    encode_targets,
    file_sha256,
    label_counts,
    read_split,
    resolve_tasks,
)

logger = logging.getLogger(__name__)


#: The settings of ``HeadTrainConfig`` each kind takes besides the shared ones (``SHARED_OPTIONS``):
#: (those passed to the head's config, those passed to its ``fit``).
KIND_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "softmax_abstain": (
        ("hidden", "seed", "never_assign"),
        ("epochs", "lr", "batch_size", "l2", "class_weight", "class_bias"),
    ),
    "knn": (("k",), ()),
}
#: Settings every kind takes (all passed to ``Head.fit``).
SHARED_OPTIONS = ("cross_fit", "target_precision", "seed")


def check_kind_options(kind: str, given: Sequence[str]) -> None:
    """Refuse settings that the head kind does not take (e.g. ``--hidden`` with ``--kind knn``).

    Raises:
        UnknownHeadError: ``kind`` is not a known kind.
        InvalidInputError: naming the settings and what the kind takes.
    """
    from embedder.errors import InvalidInputError, UnknownHeadError

    if kind not in KIND_OPTIONS:
        raise UnknownHeadError(
            f"unknown head kind {kind!r}; train-head trains {sorted(KIND_OPTIONS)}"
        )
    allowed = {*KIND_OPTIONS[kind][0], *KIND_OPTIONS[kind][1], *SHARED_OPTIONS, "kind"}
    if kind == "softmax_abstain":
        # fitted by train_head itself, not by the head's fit
        allowed |= {
            "language_evidence",
            "language_evidence_only",
            "language_evidence_power",
            "language_evidence_after_calibration",
        }
    extra = sorted(set(given) - allowed)
    if extra:
        raise InvalidInputError(
            f"settings {extra} do not apply to a {kind!r} head; it takes "
            f"{sorted(allowed - {'kind'})}"
        )


def default_cache_path() -> Path:
    """The shared embedding cache file (keys include the embedding_version, so sharing is safe)."""
    from embedder.base_import import cache_home

    return cache_home() / "embeddings.sqlite"


def _with_targets(rows: list[Any], task: Any, path: str | Path) -> tuple[list[Any], np.ndarray]:
    """The rows that carry the task's label, and their targets."""
    y = encode_targets(rows, task, source=str(path))
    keep = y != MISSING
    return [r for r, k in zip(rows, keep, strict=True) if k], y[keep]


def cached_embeddings(
    encoder: Any,
    profile_sets: Sequence[Sequence[Any]],
    cache_path: str | Path | None = None,
    *,
    show_progress: bool = True,
) -> tuple[list[np.ndarray], dict[str, int] | None]:
    """Embed several lists of profiles through the shared embedding cache.

    Args:
        encoder: a ``ProfileEncoder``.
        profile_sets: lists of ``Profile``.
        cache_path: the cache file (None = ``default_cache_path()``; ``""`` = no cache).
        show_progress: progress bars over the misses.

    Returns:
        One ``(n, dim)`` array per list, and the cache's hit/miss counts (None without a cache).
    """
    from embedder.cache import CachedEncoder, EmbeddingCache

    cache = None
    if cache_path != "":
        cache = EmbeddingCache(
            cache_path or default_cache_path(),
            embedding_version=encoder.embedding_version,
            dim=encoder.dim,
        )
    try:
        cached = CachedEncoder(encoder, cache)
        out = [cached.encode(list(p), show_progress=show_progress) for p in profile_sets]
        stats = {"hits": cache.hits, "misses": cache.misses} if cache else None
    finally:
        if cache is not None:
            cache.close()
    return out, stats


def _load_encoder(model_dir: Path, device: str = "cpu") -> Any:
    """The model's encoder in fp32 on ``device``, refusing a folder whose records disagree with it.

    fp32 on any device: the vectors go to the embedding cache that later runs (and other heads)
    read, and fp32 on a GPU gives the CPU's vectors to within ~1e-7 (``bench/gpu_check.py``).
    """
    from embedder.encoder import ProfileEncoder
    from heads.model import read_model_meta

    meta = read_model_meta(model_dir)
    encoder = ProfileEncoder.load(model_dir / "encoder")
    if device != "cpu":
        encoder.to(device)
    version = encoder.embedding_version
    if meta.get("embedding_version") != version:
        raise VersionMismatchError(
            f"{model_dir}/model.json records embedding_version {meta.get('embedding_version')!r} "
            f"but its encoder is {version!r}"
        )
    return encoder


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
    label_field: str | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train, calibrate, evaluate and add one head to a model folder.

    Args:
        model_dir: an existing model folder.
        head_name: a known head (``heads.training.data.HEAD_TASKS``), e.g. ``"category"``, or a new
            head name with ``label_field``.
        train_path: labelled training profiles.
        val_path: labelled validation profiles (early stop, calibration, report).
        config: head settings.
        cache_path: the embedding cache (default ``default_cache_path()``); None-like "" disables.
        skip_invalid: skip invalid rows (counted in the head's fit info under
            ``data.<split>.rows_invalid``) instead of raising on the first one.
        report: called as ``report(path, load_result)`` after each file is read.
        label_field: the data field a new head learns (its labels are the distinct values found
            in the training file), e.g. ``"sentiment"``; None for the known heads.
        progress: progress bars while embedding.
        device: where the encoder runs (``cpu``, ``cuda``, ``cuda:N``; resolved by the caller,
            ``embedder.devices.choose_device``); fp32 everywhere.

    Returns:
        A summary: head folder, head_version, embedding_version, metrics, cache stats, seconds.

    Raises:
        UnknownHeadError: unknown head name.
        InvalidInputError: an invalid row (unless ``skip_invalid``), labels outside the head's
            set, no labels, one class, empty validation.
        VersionMismatchError: the model folder's records disagree with its encoder.
    """
    from heads.evaluation.metrics import evaluate_head
    from heads.model import add_head
    from heads.registry import build_head
    from heads.training.data import task_for_field

    start = time.perf_counter()
    cfg = config or HeadTrainConfig()
    check_kind_options(cfg.kind, ())
    model_dir = Path(model_dir)
    opts: dict[str, Any] = {"skip_invalid": skip_invalid, "report": report}
    all_train, train_bad = read_split(train_path, "training", **opts)
    if label_field is None:
        (task,) = resolve_tasks([head_name])
    else:
        task = task_for_field(head_name, label_field, all_train)
    train_rows, y_train = _with_targets(all_train, task, train_path)
    check_train_targets(y_train, task, source=str(train_path))
    all_val, val_bad = read_split(val_path, "validation", **opts)
    val_rows, y_val = _with_targets(all_val, task, val_path)
    missing = check_val_targets(y_val, y_train, task, source=str(val_path))
    encoder = _load_encoder(model_dir, device)
    version = encoder.embedding_version
    (x_train, x_val), stats = cached_embeddings(
        encoder,
        [[r.profile for r in train_rows], [r.profile for r in val_rows]],
        cache_path,
        show_progress=progress,
    )
    settings, fit_options = KIND_OPTIONS[cfg.kind]
    head = build_head(
        cfg.kind,
        name=task.name,
        labels=task.labels,
        embedding_version=version,
        in_dim=encoder.dim,
        label_field=task.field,
        **{f: getattr(cfg, f) for f in settings},
    )
    after: dict[str, Any] = {}
    if cfg.language_evidence > 0:
        evidence = _fit_language_evidence(head, cfg, x_train, train_rows, str(train_path))
        if cfg.language_evidence_after_calibration:
            after["language_evidence_after_calibration"] = evidence
    head.fit(
        x_train,
        [task.labels[i] for i in y_train],
        val_embeddings=x_val,
        val_labels=[task.labels[i] for i in y_val],
        cross_fit=cfg.cross_fit,
        seed=cfg.seed,
        target_precision=cfg.target_precision,
        missing_classes="abstain",
        **{f: getattr(cfg, f) for f in fit_options},
        **after,
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


def _fit_language_evidence(
    head: Any, cfg: HeadTrainConfig, x_train: np.ndarray, rows: list[Any], source: str
) -> Any:
    """Fit ``heads.language_evidence`` on the training rows' languages for ``head``: attached
    now, before its fit, whose calibration then sees the combined logits, or, with
    ``language_evidence_after_calibration``, returned for the fit to add after calibration."""
    from embedder.errors import InvalidInputError
    from embedder.labels import OTHER
    from heads.language_evidence import LANGUAGE_FIELD, LanguageEvidence

    if cfg.kind != "softmax_abstain" or OTHER not in head.labels:
        raise InvalidInputError(
            f"language_evidence applies to softmax_abstain country heads (labels with "
            f"{OTHER!r}); head {head.name!r} is a {cfg.kind} head over {len(head.labels)} labels",
            field="language_evidence",
        )
    languages = [r.profile.extra.get(LANGUAGE_FIELD) for r in rows]
    try:
        evidence = LanguageEvidence.fit(
            x_train,
            languages,
            head.labels,
            alpha=cfg.language_evidence,
            only=cfg.language_evidence_only,
            power=cfg.language_evidence_power,
        )
    except InvalidInputError as err:
        raise InvalidInputError(f"{source}: {err}", field=LANGUAGE_FIELD) from err
    logger.info(
        "head %s: language evidence over %d languages (alpha %.2f, %d rows%s%s)",
        head.name,
        len(evidence.languages),
        evidence.alpha,
        evidence.n,
        f", for {','.join(evidence.only)} only" if evidence.only else "",
        ", added after calibration" if cfg.language_evidence_after_calibration else "",
    )
    if not cfg.language_evidence_after_calibration:
        head.attach_language_evidence(evidence)
    return evidence


#: Folds of the held-out estimate ``calibrate`` reports.
HELD_OUT_FOLDS = 5


def held_out_scores(
    head: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    target: float,
    class_bias: bool,
    folds: int = HELD_OUT_FOLDS,
    seed: int = 0,
) -> dict[str, Any] | None:
    """What calibrating ``head`` on rows like these gives on new ones, by cross-validation.

    Each row is scored by a copy of ``head`` calibrated (as ``calibrate_head`` does, without
    ``keep_missing``) on the other folds: argmax accuracy and macro-F1, and the coverage and
    precision of the labels it assigns. The figures on the calibration rows themselves are
    optimistic, most with few rows, where the class biases and thresholds fit them.

    Returns:
        ``{"folds", "accuracy", "macro_f1", "coverage", "own_label_precision"}``, or None with
        fewer than two rows per fold.
    """
    import copy

    from heads.evaluation.metrics import score_predictions

    if len(y) < 2 * folds:
        return None
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    probs = np.zeros((len(y), len(head.labels)))
    assigned = np.zeros(len(y), dtype=bool)
    logger.info(
        "held-out estimate: %d copies, each calibrated on %d of %d folds", folds, folds - 1, folds
    )
    # The copies' own calibration lines (temperature, classes that cannot reach the target) are
    # about fold heads nobody keeps; at INFO they read as contradicting the head that is written.
    calibration_log = logging.getLogger("heads.calibration")
    level = calibration_log.level
    calibration_log.setLevel(max(level, logging.WARNING))
    try:
        for f in range(folds):
            test = fold == f
            fitted = copy.deepcopy(head)
            fitted.calibrate(
                x[~test], y[~test], target=target, missing_classes="abstain", class_bias=class_bias
            )
            p = fitted.predict_proba(x[test])
            arg = p.argmax(axis=1)
            ok = p[np.arange(len(p)), arg] >= fitted.thresholds_[arg]
            ind = fitted.in_distribution(x[test])
            probs[test], assigned[test] = p, ok if ind is None else ok & ind
    finally:
        calibration_log.setLevel(level)
    # per-fold thresholds: the rows each fold's head assigned go in as the accepted rows
    m = score_predictions(y, probs, in_distribution=assigned)
    return {
        "folds": folds,
        "accuracy": round(m["accuracy"], 4),
        "macro_f1": round(m["macro_f1"], 4),
        "coverage": round(m["coverage"], 4),
        "own_label_precision": None
        if m["selective_accuracy"] is None
        else round(m["selective_accuracy"], 4),
    }


def calibrate_head(
    model_dir: str | Path,
    data_path: str | Path,
    *,
    head_name: str = "geolocation",
    target_precision: float = DEFAULT_TARGET_PRECISION,
    keep_missing: bool = False,
    class_bias: bool = True,
    cache_path: str | Path | None = None,
    skip_invalid: bool = False,
    report: Callable[[str, Any], None] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Re-fit a head's temperature, class biases and thresholds on the user's labelled profiles.

    The head's weights and the encoder stay as they are (``embedding_version`` unchanged); the
    result is written as a new head version ``heads/<name>/v<k+1>``, which the server and the CLI
    load from then on.

    Args:
        model_dir: an existing model folder.
        data_path: labelled profiles in the project schema (the head's label field set).
        head_name: the head to re-calibrate.
        target_precision: the per-class precision target.
        keep_missing: classes absent from the data keep their previous thresholds (default: they
            assign nothing, since their precision on this kind of data is unproven).
        class_bias: also fit one bias per class (the data's label mix becomes the head's
            prior); False: temperature and thresholds only.
        cache_path: the embedding cache (None = the shared one; ``""`` = none).
        skip_invalid: skip invalid rows instead of raising on the first one.
        report: called as ``report(path, load_result)`` after the file is read.
        device: where the encoder runs, as in :func:`train_head`.

    Returns:
        A summary: head folder, versions, own-label precision and coverage before and after on the
        calibration rows, a 5-fold held-out estimate of them (``held_out_scores``), the classes
        that assign.

    Raises:
        InvalidInputError: no labelled rows, labels outside the head's set.
        UnknownHeadError: the model has no such head.
    """
    import copy
    import math

    from heads.evaluation.metrics import evaluate
    from heads.model import add_head, load_heads
    from heads.training.data import HeadTask

    start = time.perf_counter()
    model_dir = Path(model_dir)
    encoder = _load_encoder(model_dir, device)
    head = load_heads(model_dir, [head_name], embedding_version=encoder.embedding_version)[
        head_name
    ]
    field = getattr(getattr(head, "config", None), "label_field", None) or head_name
    task = HeadTask(head_name, field, tuple(head.labels))
    rows, n_bad = read_split(data_path, "calibration", skip_invalid=skip_invalid, report=report)
    rows, y = _with_targets(rows, task, data_path)
    check_train_targets(y, task, source=str(data_path))
    (x,), stats = cached_embeddings(encoder, [[r.profile for r in rows]], cache_path)
    before = evaluate(
        head.predict_proba(x),
        y,
        head.labels,
        thresholds=head.thresholds_,
        in_distribution=head.in_distribution(x),
    )
    old = None if head.thresholds_ is None else head.thresholds_.copy()
    new = copy.deepcopy(head)
    new.calibrate(x, y, target=target_precision, missing_classes="abstain", class_bias=class_bias)
    thresholds = new.thresholds_
    assert thresholds is not None  # calibrate sets them
    present = set(np.unique(y).tolist())
    if keep_missing and old is not None:
        for c in range(len(head.labels)):
            if c not in present:
                thresholds[c] = old[c]
    new.fit_info_ = {
        **head.fit_info_,
        "recalibrated": {
            "from_head_version": head.head_version,
            "data": {"path": str(data_path), "sha256": file_sha256(data_path)},
            "rows": len(y),
            "rows_invalid": n_bad,
            "keep_missing": keep_missing,
            "class_bias": class_bias,
            "label_counts": label_counts(y, task),
        },
    }
    after = evaluate(
        new.predict_proba(x),
        y,
        new.labels,
        thresholds=new.thresholds_,
        in_distribution=new.in_distribution(x),
    )
    folder = add_head(model_dir, new, evaluation=after)
    held_out = held_out_scores(head, x, y, target=target_precision, class_bias=class_bias)

    def own(ev: Any) -> dict[str, Any]:
        m = ev.metrics
        # how far the figure could move on another sample like these rows (95%, Wilson)
        span = (m.get("intervals") or {}).get("selective_accuracy")
        return {
            "coverage": round(m["coverage"], 4),
            "own_label_precision": None
            if m["selective_accuracy"] is None
            else round(m["selective_accuracy"], 4),
            "own_label_precision_interval": None if span is None else [round(v, 4) for v in span],
            "accuracy": round(m["accuracy"], 4),
        }

    return {
        "head": head_name,
        "head_version": new.head_version,
        "from_head_version": head.head_version,
        "path": str(folder),
        "embedding_version": encoder.embedding_version,
        "rows": len(y),
        "temperature": round(float(getattr(new, "temperature_", 1.0)), 4),
        "assigning_classes": [
            lab for lab, t in zip(new.labels, thresholds, strict=True) if not math.isinf(t)
        ],
        "on_calibration_rows": {"before": own(before), "after": own(after)},
        "held_out": held_out,
        "cache": stats,
        "seconds": round(time.perf_counter() - start, 1),
    }
