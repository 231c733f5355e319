"""Writing what a fine-tuning run produced: the model folder and its evaluation report."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from heads.train_data import MISSING, HeadTask, encode_targets

logger = logging.getLogger(__name__)


def head_metrics(head: Any, emb: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1, coverage and precision after abstention of one head on labelled rows."""
    from sklearn.metrics import f1_score

    mask = y != MISSING
    if not mask.any():
        return {"n": 0}
    probs = head.predict_proba(emb[mask])
    yt = y[mask]
    pred = probs.argmax(axis=1)
    thr = head.thresholds_ if head.thresholds_ is not None else np.zeros(len(head.labels))
    assigned = probs[np.arange(len(pred)), pred] >= np.asarray(thr)[pred]
    correct = assigned & (pred == yt)
    return {
        "n": int(mask.sum()),
        "accuracy": float((pred == yt).mean()),
        "macro_f1": float(f1_score(yt, pred, average="macro", zero_division=0)),
        "coverage": float(assigned.mean()),
        "precision_assigned": float(correct.sum() / max(assigned.sum(), 1)),
        "share_correct_assigned": float(correct.mean()),
    }


def evaluate_split(
    heads: Mapping[str, Any],
    tasks: Sequence[HeadTask],
    rows: Sequence[Any],
    emb: np.ndarray,
) -> dict[str, Any]:
    """Metrics per head for one split."""
    out: dict[str, Any] = {}
    for task in tasks:
        y = encode_targets(rows, task)
        out[task.name] = head_metrics(heads[task.name], emb, y)
    return out


def _write_report(metrics: Mapping[str, Any], report_dir: Path) -> None:
    import json

    report_dir.mkdir(parents=True, exist_ok=False)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = ["# Training report", ""]
    for split, per_head in metrics.items():
        lines += [
            f"## {split}",
            "",
            "| head | n | accuracy | macro-F1 | coverage | precision (assigned) |",
        ]
        lines += ["|---|---|---|---|---|---|"]
        for name, m in per_head.items():
            if m.get("n"):
                lines.append(
                    f"| {name} | {m['n']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | "
                    f"{m['coverage']:.4f} | {m['precision_assigned']:.4f} |"
                )
        lines.append("")
    (report_dir / "REPORT.md").write_text("\n".join(lines))


def write_model(
    out_dir: Path,
    encoder: Any,
    heads: Mapping[str, Any],
    tasks: Sequence[HeadTask],
    info: dict[str, Any],
    *,
    val: tuple[Sequence[Any], np.ndarray],
    test: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Evaluate on validation (and test) and write the model folder with ``heads.model.save_model``.

    Returns:
        ``{"val": {head: metrics}, "test": {...}}``.
    """
    val_rows, val_emb = val
    metrics = {"val": evaluate_split(heads, tasks, val_rows, val_emb)}
    test_emb = None
    if test is not None:
        test_emb = encoder.encode([r.profile for r in test], show_progress=True)
        metrics["test"] = evaluate_split(heads, tasks, test, test_emb)
    for task in tasks:
        logger.info("val %s: %s", task.name, metrics["val"][task.name])
    save_model_dir(out_dir, encoder, heads, extra={"training": _summary(info, metrics)})
    _write_report(metrics, out_dir / "report")
    return metrics


def save_model_dir(
    out_dir: Path, encoder: Any, heads: Mapping[str, Any], *, extra: Mapping[str, Any]
) -> Path:
    """Write ``model.json``, ``encoder/`` and ``heads/<name>/v<k>/`` (the documented layout).

    Raises:
        ArtifactError: when ``out_dir`` exists.
    """
    import json
    from datetime import UTC, datetime

    from embedder.errors import ArtifactError

    if out_dir.exists():
        raise ArtifactError(
            f"output folder {out_dir} already exists; model folders are never overwritten"
        )
    out_dir.mkdir(parents=True)
    encoder.save(out_dir / "encoder")
    for name, head in heads.items():
        head.save(out_dir / "heads" / name / f"v{head.head_version}")
    meta = {
        "format_version": 1,
        "embedding_version": encoder.embedding_version,
        "base": encoder.base,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "heads": sorted(heads),
        **extra,
    }
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return out_dir


def _summary(info: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("data", "config", "best_epoch", "throughput", "versions", "start_embedding_version")
    return {**{k: info.get(k) for k in keys}, "metrics": metrics}
