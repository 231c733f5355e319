"""Evaluation of a head: metrics with and without abstention, overall and per slice.

:func:`score_predictions` is the one place predictions are scored (accuracy, macro-F1, coverage,
precision of the assigned labels, ...): :func:`evaluate` runs it on the whole set and on each
slice, training's per-epoch validation runs it on argmax, and ``bench/real_eval.py`` reads
:func:`evaluate`. :func:`evaluate_heads` is the one loop over a model's heads on labelled rows
(rows holding the head's :func:`label_field`, :func:`default_slices`), used by ``profile-embed
evaluate`` and the training run's report.

``heads.evaluation.report`` turns a :class:`HeadEvaluation` into files.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder.errors import InvalidInputError
from heads.calibration import DEFAULT_TARGET_PRECISION
from heads.evaluation.intervals import N_BOOTSTRAP, figure_intervals

logger = logging.getLogger(__name__)


@dataclass
class HeadEvaluation:
    """One head evaluated on one labelled set.

    Attributes:
        name: the head name.
        labels: label names, aligned with the probability columns.
        probs: ``(n, k)`` calibrated probabilities.
        y: ``(n,)`` true class indices.
        thresholds: per-class thresholds used for abstention (None = never abstain).
        metrics: the JSON-ready metrics (see ``evaluate``).
        info: free-form facts for the report (data file, embedding_version, head_version...).
    """

    name: str
    labels: tuple[str, ...]
    probs: np.ndarray
    y: np.ndarray
    thresholds: np.ndarray | None
    metrics: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def _per_class(y: np.ndarray, pred: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Support, predicted count and true positives per class; ``pred == -1`` means abstained."""
    support = np.bincount(y, minlength=k)
    keep = pred >= 0
    predicted = np.bincount(pred[keep], minlength=k)
    tp = np.bincount(y[keep & (pred == y)], minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(predicted > 0, tp / np.maximum(predicted, 1), np.nan)
        rec = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
        f1 = np.where((tp > 0), 2 * tp / np.maximum(predicted + support, 1), 0.0)
    return {
        "support": support,
        "predicted": predicted,
        "tp": tp,
        "precision": prec,
        "recall": rec,
        "f1": f1,
    }


def _macro_f1(stats: Mapping[str, np.ndarray]) -> float:
    present = (stats["support"] > 0) | (stats["predicted"] > 0)
    return float(stats["f1"][present].mean()) if present.any() else 0.0


def score_predictions(
    y: np.ndarray,
    probs: np.ndarray,
    *,
    thresholds: np.ndarray | None = None,
    in_distribution: np.ndarray | None = None,
) -> dict[str, Any]:
    """Score one set of predictions: the headline numbers of every report.

    Args:
        y: ``(n,)`` true class indices.
        probs: ``(n, k)`` calibrated probabilities (any scores whose argmax is the prediction,
            e.g. logits, when there are no thresholds).
        thresholds: per-class abstention thresholds (``inf`` = class assigns nothing); None: none.
        in_distribution: rows the head accepts (False: not assigned, whatever the score).

    Returns:
        n, accuracy and macro_f1 (argmax; macro over the classes present or predicted), coverage,
        selective_accuracy (precision of the assigned labels), correct_assigned_share,
        macro_f1_with_abstention.
    """
    probs = np.asarray(probs)
    return _score(np.asarray(y), probs, assigned_rows(probs, thresholds, in_distribution))[0]


def _score(
    y: np.ndarray, probs: np.ndarray, assigned: np.ndarray
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The summary and per-class counts; ``assigned``: the rows given a label (assigned_rows)."""
    k = probs.shape[1]
    arg = probs.argmax(1)
    pred_abs = np.where(assigned, arg, -1)
    s_all, s_abs = _per_class(y, arg, k), _per_class(y, pred_abs, k)
    n_assigned = int(assigned.sum())
    return (
        {
            "n": len(y),
            "accuracy": float((arg == y).mean()),
            "macro_f1": _macro_f1(s_all),
            "coverage": n_assigned / len(y),
            "selective_accuracy": float((arg == y)[assigned].mean()) if n_assigned else None,
            "correct_assigned_share": float(((arg == y) & assigned).sum() / len(y)),
            "macro_f1_with_abstention": _macro_f1(s_abs),
        },
        s_all,
        s_abs,
    )


def assigned_rows(
    probs: np.ndarray, thresholds: np.ndarray | None, in_distribution: np.ndarray | None
) -> np.ndarray:
    """The rows given a label: top score at its class's threshold, and in distribution."""
    arg = probs.argmax(1)
    score = probs[np.arange(len(probs)), arg]
    assigned = np.ones(len(probs), bool) if thresholds is None else score >= thresholds[arg]
    if in_distribution is not None:  # as heads.base.predictions_from_proba decides
        assigned &= in_distribution
    return assigned


def _calibration_stats(y: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict[str, Any]:
    arg = probs.argmax(1)
    conf = probs[np.arange(len(y)), arg]
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            acc, c = float((arg[m] == y[m]).mean()), float(conf[m].mean())
            ece += m.mean() * abs(acc - c)
            rows.append(
                {
                    "lo": edges[b],
                    "hi": edges[b + 1],
                    "n": int(m.sum()),
                    "accuracy": acc,
                    "confidence": c,
                }
            )
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))
    return {"ece": float(ece), "nll": nll, "bins": rows}


def _precision_coverage(y: np.ndarray, probs: np.ndarray) -> dict[str, list[float]]:
    arg = probs.argmax(1)
    conf = probs[np.arange(len(y)), arg]
    order = np.argsort(-conf, kind="stable")
    correct = (arg == y)[order]
    n = np.arange(1, len(y) + 1)
    precision = np.cumsum(correct) / n
    idx = np.unique(np.linspace(0, len(y) - 1, min(200, len(y))).astype(int))
    return {
        "coverage": (n[idx] / len(y)).tolist(),
        "precision": precision[idx].tolist(),
        "threshold": conf[order][idx].tolist(),
    }


def evaluate(
    probs: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    labels: Sequence[str],
    *,
    thresholds: np.ndarray | None = None,
    slices: Mapping[str, np.ndarray] | None = None,
    name: str = "head",
    target: float = DEFAULT_TARGET_PRECISION,
    info: Mapping[str, Any] | None = None,
    in_distribution: np.ndarray | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
) -> HeadEvaluation:
    """Compute every metric of one head on one labelled set.

    Args:
        probs: ``(n, k)`` calibrated probabilities.
        y: ``n`` true labels (strings in ``labels`` or class indices).
        labels: label names.
        thresholds: per-class abstention thresholds (``inf`` = class assigns nothing); None = none.
        slices: ``{slice name: boolean mask (n,)}``, e.g. ``{"no bio, one caption": mask}``.
        name: head name for the report.
        target: the precision target, to count the classes that meet it.
        info: facts shown at the top of the report.
        in_distribution: the head's out-of-distribution mask (``Head.in_distribution``); a row
            marked False is not assigned, whatever its score. None: no check.
        n_bootstrap: replicates of the bootstrap intervals (``heads.evaluation.intervals``);
            0: no intervals.

    Returns:
        A ``HeadEvaluation`` whose ``metrics`` hold: n, accuracy, macro_f1, coverage,
        selective_accuracy, correct_assigned_share, macro_f1_with_abstention, ece, nll,
        per_class (support, precision, recall, f1 with and without abstention, threshold),
        classes_meeting_target, classes_assigning_nothing, precision_coverage, reliability, slices,
        and ``intervals`` (95% bootstrap intervals of accuracy and macro-F1, Wilson's interval of
        the precision of the assigned labels; absent with ``n_bootstrap=0``).

    Raises:
        InvalidInputError: on empty input, shape mismatches, unknown labels or bad slice masks.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = tuple(labels)
    k = len(labels)
    if probs.ndim != 2 or probs.shape[1] != k or len(probs) == 0:
        raise InvalidInputError(f"probs must have shape (n >= 1, {k}), got {probs.shape}")
    yi = _encode(y, labels)
    if len(yi) != len(probs):
        raise InvalidInputError(f"{len(probs)} probability rows but {len(yi)} labels")
    thr = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    ind = None if in_distribution is None else np.asarray(in_distribution, dtype=bool)
    if ind is not None and ind.shape != (len(yi),):
        raise InvalidInputError(f"in_distribution has shape {ind.shape}, expected ({len(yi)},)")
    assigned = assigned_rows(probs, thr, ind)
    summary, s_all, s_abs = _score(yi, probs, assigned)
    if ind is not None:
        summary["out_of_distribution"] = float((~ind).mean())
    per_class = {}
    for c, lab in enumerate(labels):
        per_class[lab] = {
            "support": int(s_all["support"][c]),
            "precision": _f(s_all["precision"][c]),
            "recall": _f(s_all["recall"][c]),
            "f1": _f(s_all["f1"][c]),
            "assigned": int(s_abs["predicted"][c]),
            "precision_with_abstention": _f(s_abs["precision"][c]),
            "recall_with_abstention": _f(s_abs["recall"][c]),
            "f1_with_abstention": _f(s_abs["f1"][c]),
            "threshold": None if thr is None or math.isinf(thr[c]) else float(thr[c]),
        }
    calibration = _calibration_stats(yi, probs)
    metrics: dict[str, Any] = {
        **summary,
        **{k2: v for k2, v in calibration.items() if k2 != "bins"},
        "target_precision": target,
        "classes_meeting_target": sorted(
            lab
            for lab, r in per_class.items()
            if r["assigned"] and (r["precision_with_abstention"] or 0) >= target
        ),
        "classes_assigning_nothing": sorted(
            lab for lab, r in per_class.items() if not r["assigned"]
        ),
        "per_class": per_class,
        "precision_coverage": _precision_coverage(yi, probs),
        "reliability": calibration["bins"],
        "slices": {},
    }
    if n_bootstrap > 0:
        metrics["intervals"] = figure_intervals(
            yi,
            probs.argmax(1),
            k=k,
            assigned=assigned,
            n_bootstrap=n_bootstrap,
        )
    for sname, mask in (slices or {}).items():
        m = np.asarray(mask, dtype=bool)
        if m.shape != (len(yi),):
            raise InvalidInputError(
                f"slice {sname!r} mask has shape {m.shape}, expected ({len(yi)},)"
            )
        metrics["slices"][sname] = (
            score_predictions(
                yi[m], probs[m], thresholds=thr, in_distribution=None if ind is None else ind[m]
            )
            if m.any()
            else {"n": 0}
        )
    return HeadEvaluation(name, labels, probs, yi, thr, metrics, dict(info or {}))


def evaluate_head(
    head: Any,
    embeddings: np.ndarray,
    y: Sequence[Any],
    *,
    slices: Mapping[str, np.ndarray] | None = None,
    info: Mapping[str, Any] | None = None,
) -> HeadEvaluation:
    """Evaluate a fitted head on embeddings with known labels (thresholds from the head).

    Args:
        head: a fitted ``heads.base.Head``.
        embeddings: ``(n, in_dim)`` embeddings.
        y: ``n`` true labels.
        slices: optional named boolean masks.
        info: facts shown in the report (head version and embedding version are added).

    Returns:
        The ``HeadEvaluation``.
    """
    cal = getattr(head, "calibration_", None) or {}
    facts = {
        "head_version": head.head_version,
        "embedding_version": head.embedding_version,
        "kind": head.kind,
        **dict(info or {}),
    }
    x = np.asarray(embeddings, dtype=np.float32)
    return evaluate(
        head.predict_proba(x),
        y,
        head.labels,
        thresholds=head.thresholds_,
        slices=slices,
        name=head.name,
        target=cal.get("target_precision", DEFAULT_TARGET_PRECISION),
        info=facts,
        in_distribution=head.in_distribution(x),
    )


def label_field(head: Any) -> str:
    """The data field holding a head's labels (config ``label_field``, else the standard one)."""
    from heads.softmax import STANDARD_HEADS

    field = getattr(getattr(head, "config", None), "label_field", None)
    return field or STANDARD_HEADS.get(head.name, ((), head.name))[1]


def default_slices(rows: Sequence[Any], top_languages: int = 5) -> dict[str, np.ndarray]:
    """Boolean masks: 'no bio, <= 1 caption' and the most frequent 'language' extra values.

    Args:
        rows: ``LabelledProfile``-like rows (``.profile``).
        top_languages: how many 'language' slices at most (0: none).
    """
    masks = {
        "no bio, <= 1 caption": np.array(
            [not r.profile.biography.strip() and len(r.profile.captions) <= 1 for r in rows],
            dtype=bool,
        )
    }
    langs = [r.profile.extra.get("language") for r in rows]
    if top_languages > 0 and any(isinstance(x, str) for x in langs):
        for lang, _ in Counter(x for x in langs if isinstance(x, str)).most_common(top_languages):
            masks[f"language={lang}"] = np.array([x == lang for x in langs], dtype=bool)
    return masks


def evaluate_heads(
    heads: Mapping[str, Any],
    rows: Sequence[Any],
    embeddings: np.ndarray,
    *,
    fields: Mapping[str, str] | None = None,
    slices: Callable[[Sequence[Any]], Mapping[str, np.ndarray]] = default_slices,
    info: Mapping[str, Any] | None = None,
    head_facts: Sequence[str] = (),
) -> dict[str, HeadEvaluation]:
    """Evaluate each head on the rows that hold its label: the one evaluation loop.

    Args:
        heads: ``{name: fitted head}``.
        rows: ``LabelledProfile``-like rows; a row's label is read as training reads it
            (``heads.training.data.row_label``: the labels, else the profile's extra field).
        embeddings: ``(len(rows), dim)``, aligned with ``rows``.
        fields: head name -> label field; default :func:`label_field` of each head.
        slices: rows -> named masks, computed on each head's labelled rows.
        info: facts shown in every head's report.
        head_facts: per-head facts to add to ``info``: ``"label_field"``, ``"rows"``.

    Returns:
        ``{name: HeadEvaluation}``, without the heads that no row has a label for.

    Raises:
        InvalidInputError: embeddings not aligned with rows, a label outside a head's set.
    """
    from heads.training.data import row_label  # what training reads as a row's label

    if len(embeddings) != len(rows):
        raise InvalidInputError(f"{len(embeddings)} embeddings but {len(rows)} rows")
    out = {}
    for name, head in heads.items():
        field = (fields or {}).get(name) or label_field(head)
        values = [row_label(r, field) for r in rows]
        idx = [i for i, v in enumerate(values) if v is not None]
        if not idx:
            continue
        mine = [rows[i] for i in idx]
        facts = {"label_field": field, "rows": len(idx)}
        out[name] = evaluate_head(
            head,
            np.asarray(embeddings)[idx],
            [values[i] for i in idx],
            slices=slices(mine),
            info={**dict(info or {}), **{k: facts[k] for k in head_facts}},
        )
    return out


def evaluate_model(
    model: Any,
    rows: Sequence[Any],
    *,
    source: str = "the data",
    batch_size: int = 64,
    info: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    skip_unlabelled: bool = False,
) -> list[HeadEvaluation]:
    """Evaluate every head of a ``ProfileModel`` on labelled rows (``profile-embed evaluate``).

    Each profile that any head has a label for is embedded once (through the model's cache),
    then :func:`evaluate_heads` scores each head on its own labelled rows.

    Args:
        skip_unlabelled: leave out, with a log line, a head that none of the rows has a label
            for (a file of country labels scored by a model with a category head too); without
            it such a head is an error.

    Raises:
        InvalidInputError: a head none of the rows has a label for (naming ``source``, the
            label field and the head), or, with ``skip_unlabelled``, no head with any label.
    """
    from heads.training.data import row_label

    fields = {name: label_field(model.heads[name]) for name in model.head_names}
    missing = [
        name
        for name, wanted in fields.items()
        if not any(row_label(r, wanted) is not None for r in rows)
    ]
    if missing and not skip_unlabelled:
        name = missing[0]
        raise InvalidInputError(
            f"{source} has no rows with the '{fields[name]}' label needed by head {name!r}"
        )
    if missing and len(missing) == len(fields):
        wanted = ", ".join(f"'{fields[name]}' for head {name!r}" for name in missing)
        raise InvalidInputError(f"{source} has no rows with any label the heads need ({wanted})")
    for name in missing:
        logger.info("head %s not evaluated: %s has no '%s' labels", name, source, fields[name])
        del fields[name]
    labelled = [r for r in rows if any(row_label(r, f) is not None for f in fields.values())]
    emb = model.embed(
        [r.profile for r in labelled], batch_size=batch_size, show_progress=show_progress
    )
    heads = {name: model.heads[name] for name in fields}
    evaluations = evaluate_heads(
        heads, labelled, emb, fields=fields, info=info, head_facts=("label_field",)
    )
    return list(evaluations.values())


def _encode(y: Sequence[Any] | np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    arr = np.asarray(y)
    if np.issubdtype(arr.dtype, np.integer):
        if len(arr) and (arr.min() < 0 or arr.max() >= len(labels)):
            raise InvalidInputError(f"class indices must be in [0, {len(labels)})")
        return arr.astype(np.int64)
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({str(v) for v in arr if str(v) not in index})
    if unknown:
        raise InvalidInputError(
            f"labels {unknown[:10]} are not in the head's label set {list(labels)}"
        )
    return np.array([index[str(v)] for v in arr], dtype=np.int64)


def _f(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# --------------------------------------------------------------------------------------- plots
