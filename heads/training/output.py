"""Writing what a fine-tuning run produced: the model folder and its evaluation report."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from heads.training.data import HeadTask, encode_targets

logger = logging.getLogger(__name__)


def evaluations(
    heads: Mapping[str, Any],
    tasks: Sequence[HeadTask],
    rows: Sequence[Any],
    emb: np.ndarray,
    split: str,
) -> dict[str, Any]:
    """``heads.evaluation.metrics.HeadEvaluation`` per head on its labelled rows of one split."""
    from heads.evaluation.metrics import default_slices, evaluate_heads

    for task in tasks:
        encode_targets(rows, task)  # refuses a label outside a head's set, naming the row
    return evaluate_heads(
        {task.name: heads[task.name] for task in tasks},
        rows,
        emb,
        fields={task.name: task.field for task in tasks},
        # the build report keeps its one slice; language slices are for ``profile-embed evaluate``
        slices=lambda mine: default_slices(mine, top_languages=0),
        info={"split": split},
        head_facts=("rows",),
    )


def write_model(
    out_dir: Path,
    encoder: Any,
    heads: Mapping[str, Any],
    tasks: Sequence[HeadTask],
    info: dict[str, Any],
    *,
    val: tuple[Sequence[Any], np.ndarray],
    test: Sequence[Any] | None = None,
    training_file: str = "training.json",
    progress: bool = True,
    embedding_cache: str | Path | None = "",
) -> dict[str, Any]:
    """Evaluate on validation (and test) and write the model folder atomically.

    The folder gets ``encoder/``, ``heads/<name>/v1/`` (validation report as model card),
    ``report/`` (validation; ``report/test/`` for the test split), ``model.json`` (with a training
    summary) and ``training.json`` (``info`` plus the metrics).

    The test split is embedded through ``embedding_cache`` (``heads.training.head.
    cached_embeddings``: ``""`` none, None the shared one), where a later report of re-fitted
    heads (``heads.training.recipes.report_served_heads``) finds it.

    Returns:
        ``{"val": {head: metrics}, "test": {...}}``.

    Raises:
        ArtifactError: when ``out_dir`` exists.
    """
    import json

    from heads.evaluation.report import write_report
    from heads.model import ModelWriter

    val_rows, val_emb = val
    evs = {"val": evaluations(heads, tasks, val_rows, val_emb, "val")}
    if test is not None:
        from heads.training.head import cached_embeddings

        (test_emb,), _ = cached_embeddings(
            encoder, [[r.profile for r in test]], embedding_cache, show_progress=progress
        )
        evs["test"] = evaluations(heads, tasks, test, test_emb, "test")
    metrics = {
        split: {name: core_metrics(ev.metrics) for name, ev in per_head.items()}
        for split, per_head in evs.items()
    }
    for split, per_head in metrics.items():
        for name, m in per_head.items():
            logger.info("%s %s: %s", split, name, m)
    info["metrics"] = metrics
    with ModelWriter(out_dir) as writer:
        writer.write_encoder(encoder)
        for name, head in heads.items():
            writer.write_head(head, evaluation=evs["val"].get(name))
        notes = f"Fine-tuning run; settings and data hashes in `{training_file}`."
        writer.write_report(list(evs["val"].values()), notes=notes)
        if "test" in evs:
            write_report(
                writer.tmp / "report" / "test",
                list(evs["test"].values()),
                title="Test report",
                notes=notes,
            )
        writer.meta["training"] = _summary(info)
        (writer.tmp / training_file).write_text(
            json.dumps(info, indent=2, default=_json_default) + "\n"
        )
    return metrics


def core_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar metrics and the slices (the per-class tables and curves stay in report/)."""
    return {k: v for k, v in m.items() if k == "slices" or not isinstance(v, (dict, list))}


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _summary(info: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "data",
        "config",
        "best_epoch",
        "throughput",
        "versions",
        "start_embedding_version",
        "metrics",
    )
    return {k: info.get(k) for k in keys}
