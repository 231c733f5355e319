"""How far the headline figures could move on another sample: bootstrap intervals.

A labelled set is a sample. Accuracy 0.615 on 3,204 profiles and 0.616 for a competitor on the same
profiles say "level", not "worse", and a change of half a point on a few thousand rows is noise.
These intervals put that in the reports instead of in prose:

- :func:`figure_intervals`: percentile bootstrap intervals of accuracy and macro-F1, resampling
  the profiles, and (with an ``assigned`` mask) Wilson's interval of the precision of the
  assigned labels;
- :func:`paired_differences`: the difference between two predictors scored on the same
  profiles, each bootstrap replicate drawing the same rows for both (paired), which is far
  narrower than the two separate intervals suggest when the predictors agree on most rows.

Macro-F1 follows ``heads.evaluation.metrics``: the mean F1 over the classes present or predicted
in each replicate, or over fixed ``classes`` when given (``bench/real_eval.py``: those present in
the set).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from embedder.errors import InvalidInputError

#: Bootstrap replicates and interval level of the reports.
N_BOOTSTRAP = 1000
CONFIDENCE = 0.95
#: Fewest assigned rows for a paired interval of two own-label precisions: with a handful, every
#: replicate draws the same few rows and the interval collapses to a point.
MIN_ASSIGNED = 30
#: Row indices drawn at once (replicates x rows): a few arrays of this many int64 (~40 MB each),
#: whatever the set's size.
CHUNK_ELEMENTS = 5_000_000


def _replicate_counts(
    y: np.ndarray, pred: np.ndarray, idx: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Support, predicted and true-positive counts per replicate: three ``(b, k)`` arrays."""
    b = len(idx)
    offset = (np.arange(b) * k)[:, None]
    ys, ps = y[idx] + offset, pred[idx] + offset
    support = np.bincount(ys.ravel(), minlength=b * k).reshape(b, k)
    predicted = np.bincount(ps.ravel(), minlength=b * k).reshape(b, k)
    tp = np.bincount(ys[ys == ps], minlength=b * k).reshape(b, k)
    return support, predicted, tp


def _macro_f1(
    support: np.ndarray, predicted: np.ndarray, tp: np.ndarray, classes: np.ndarray | None
) -> np.ndarray:
    f1 = 2 * tp / np.maximum(predicted + support, 1)
    if classes is not None:
        return f1[:, classes].mean(axis=1)
    present = (support > 0) | (predicted > 0)
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _replicates(
    y: np.ndarray,
    preds: list[np.ndarray],
    *,
    k: int,
    classes: np.ndarray | None,
    assigned: list[np.ndarray] | None,
    n_bootstrap: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Each predictor's figures on the same resampled rows: ``(p, n_bootstrap)`` arrays.

    ``selective_accuracy`` (NaN where a replicate assigned nothing) only with ``assigned``, one
    mask per predictor.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    acc = np.empty((len(preds), n_bootstrap))
    mf1 = np.empty((len(preds), n_bootstrap))
    sel = np.full((len(preds), n_bootstrap), np.nan)
    chunk = max(1, min(100, CHUNK_ELEMENTS // n))
    for start in range(0, n_bootstrap, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n))
        span = slice(start, start + len(idx))
        for j, pred in enumerate(preds):
            support, predicted, tp = _replicate_counts(y, pred, idx, k)
            acc[j, span] = tp.sum(axis=1) / n
            mf1[j, span] = _macro_f1(support, predicted, tp, classes)
            if assigned is not None:
                given = assigned[j][idx]
                count = given.sum(axis=1)
                right = ((pred == y)[idx] & given).sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    sel[j, span] = np.where(count > 0, right / count, np.nan)
    return {"accuracy": acc, "macro_f1": mf1, "selective_accuracy": sel}


def _mask(assigned: np.ndarray, y: np.ndarray) -> np.ndarray:
    given = np.asarray(assigned, dtype=bool)
    if given.shape != y.shape:
        raise InvalidInputError(f"assigned has shape {given.shape}, labels {y.shape}")
    return given


def _check(y: np.ndarray, preds: list[np.ndarray], k: int) -> None:
    if len(y) == 0:
        raise InvalidInputError("bootstrap intervals need at least one labelled row")
    for pred in preds:
        if pred.shape != y.shape:
            raise InvalidInputError(f"predictions have shape {pred.shape}, labels {y.shape}")
    for arr in (y, *preds):
        if arr.min() < 0 or arr.max() >= k:
            raise InvalidInputError(f"class indices must be in [0, {k})")


def _interval(values: np.ndarray, confidence: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1.0 - confidence) / 2
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def figure_intervals(
    y: np.ndarray,
    pred: np.ndarray,
    *,
    k: int,
    classes: np.ndarray | None = None,
    assigned: np.ndarray | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of one predictor's headline figures.

    Args:
        y: ``(n,)`` true class indices.
        pred: ``(n,)`` predicted class indices (argmax).
        k: number of classes.
        classes: macro-F1 over these class indices; None: those present or predicted.
        assigned: ``(n,)`` rows given a label (not abstained); adds ``selective_accuracy``.
        n_bootstrap: replicates.
        confidence: two-sided interval level.
        seed: the resampling seed (the same seed draws the same rows).

    Returns:
        ``{"confidence", "n_bootstrap", "accuracy": [lo, hi], "macro_f1": [lo, hi]}`` plus
        ``"selective_accuracy": [lo, hi]``, Wilson's interval (:func:`wilson_interval`; None when
        no row is assigned).
    """
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    _check(y, [pred], k)
    given = None if assigned is None else _mask(assigned, y)
    reps = _replicates(
        y,
        [pred],
        k=k,
        classes=None if classes is None else np.asarray(classes, dtype=np.int64),
        assigned=None,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    out: dict[str, Any] = {
        "confidence": confidence,
        "n_bootstrap": n_bootstrap,
        "accuracy": _interval(reps["accuracy"][0], confidence),
        "macro_f1": _interval(reps["macro_f1"][0], confidence),
    }
    if given is not None:
        out["selective_accuracy"] = wilson_interval(
            int((pred == y)[given].sum()), int(given.sum()), confidence
        )
    return out


def wilson_interval(correct: int, total: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """Two-sided Wilson score interval of a proportion; None when ``total`` is 0.

    The own labels' precision is a proportion of the rows the head assigned: conditional on their
    number, binomial. Wilson's interval stays honest for a few assigned rows (2 of 2 wrong: 0 to
    0.66), where a percentile bootstrap would draw the same two rows and give a point.
    """
    if total <= 0:
        return None
    from heads.calibration import precision_lower_bound  # one-sided Wilson, as thresholds use

    one_sided = 0.5 + confidence / 2
    lo = float(precision_lower_bound(correct, total, confidence=one_sided))
    hi = 1.0 - float(precision_lower_bound(total - correct, total, confidence=one_sided))
    return [max(0.0, lo), min(1.0, hi)]


def whole_set_figures(
    y: np.ndarray, pred: np.ndarray, *, k: int, classes: np.ndarray | None = None
) -> dict[str, float]:
    """Accuracy and macro-F1 on all rows, as the replicates score them."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    support, predicted, tp = _replicate_counts(y, pred, np.arange(len(y))[None, :], k)
    cls = None if classes is None else np.asarray(classes, dtype=np.int64)
    return {
        "accuracy": float(tp.sum() / len(y)),
        "macro_f1": float(_macro_f1(support, predicted, tp, cls)[0]),
    }


def paired_differences(
    y: np.ndarray,
    pred: np.ndarray,
    other: np.ndarray,
    *,
    k: int,
    classes: np.ndarray | None = None,
    assigned: tuple[np.ndarray, np.ndarray] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """``pred`` minus ``other`` in accuracy and macro-F1, with paired bootstrap intervals.

    Args:
        assigned: the rows each predictor gives a label (``pred``'s, ``other``'s); adds the
            difference in ``selective_accuracy`` (precision of the assigned labels).

    Returns:
        ``{"confidence", "n_bootstrap", "accuracy": {"difference", "interval"}, "macro_f1":
        {...}}``; ``difference`` is measured on the whole set, ``interval`` is ``[lo, hi]``
        (for ``selective_accuracy``: no difference when a predictor assigns nothing, no interval
        when one assigns fewer than ``MIN_ASSIGNED`` rows).
    """
    y = np.asarray(y, dtype=np.int64)
    pred, other = np.asarray(pred, dtype=np.int64), np.asarray(other, dtype=np.int64)
    _check(y, [pred, other], k)
    cls = None if classes is None else np.asarray(classes, dtype=np.int64)
    masks = None if assigned is None else [_mask(assigned[0], y), _mask(assigned[1], y)]
    reps = _replicates(
        y, [pred, other], k=k, classes=cls, assigned=masks, n_bootstrap=n_bootstrap, seed=seed
    )
    out: dict[str, Any] = {"confidence": confidence, "n_bootstrap": n_bootstrap}
    mine, theirs = (whole_set_figures(y, p, k=k, classes=cls) for p in (pred, other))
    for name in ("accuracy", "macro_f1"):
        out[name] = {
            "difference": mine[name] - theirs[name],
            "interval": _interval(reps[name][0] - reps[name][1], confidence),
        }
    if masks is not None:
        precision = [
            float((p == y)[m].mean()) if m.any() else math.nan
            for p, m in zip((pred, other), masks, strict=True)
        ]
        both = reps["selective_accuracy"][0] - reps["selective_accuracy"][1]
        gap = precision[0] - precision[1]
        known = not math.isnan(gap)  # NaN: a predictor assigns nothing
        enough = known and min(int(m.sum()) for m in masks) >= MIN_ASSIGNED
        out["selective_accuracy"] = {
            "difference": gap if known else None,
            "interval": _interval(both, confidence) if enough else None,
        }
    return out
