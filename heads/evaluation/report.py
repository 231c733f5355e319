"""Evaluation reports: ``write_report`` writes ``metrics.json``, ``REPORT.md`` and PNG plots
(confusion matrix, reliability diagram, precision-coverage curve) for one or more heads into a
folder; ``write_model_card`` writes the same Markdown (and plots) as a head folder's ``README.md``.
The numbers come from ``heads.evaluation.metrics``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from heads.evaluation.metrics import HeadEvaluation

logger = logging.getLogger(__name__)

PLOTS = ("confusion", "reliability", "precision_coverage")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(ev: HeadEvaluation, path: Path) -> Path:
    """Row-normalised confusion matrix heatmap (argmax, before abstention)."""
    plt = _plt()
    k = len(ev.labels)
    counts = np.zeros((k, k))
    np.add.at(counts, (ev.y, ev.probs.argmax(1)), 1)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(5.0, 0.28 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), ev.labels, rotation=90, fontsize=7)
    ax.set_yticks(range(k), ev.labels, fontsize=7)
    ax.set_xlabel("predicted (argmax)")
    ax.set_ylabel("true")
    ax.set_title(f"{ev.name}: confusion (row-normalised, n={len(ev.y)})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path, plt)


def plot_reliability(ev: HeadEvaluation, path: Path) -> Path:
    """Reliability diagram: accuracy vs confidence per bin, with bin counts."""
    plt = _plt()
    bins = ev.metrics["reliability"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    ax.bar(
        centres,
        [b["accuracy"] for b in bins],
        width=1 / 15,
        edgecolor="k",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot(
        [b["confidence"] for b in bins],
        [b["accuracy"] for b in bins],
        "o-",
        color="C3",
        label="mean confidence",
    )
    ax.set_ylabel("accuracy")
    ax.set_title(f"{ev.name}: reliability (ECE {ev.metrics['ece']:.3f})", fontsize=9)
    ax.legend(fontsize=7)
    ax2.bar(centres, [b["n"] for b in bins], width=1 / 15, color="grey")
    ax2.set_xlabel("confidence (calibrated max probability)")
    ax2.set_ylabel("n")
    return _save(fig, path, plt)


def plot_precision_coverage(ev: HeadEvaluation, path: Path) -> Path:
    """Precision vs coverage under a global threshold sweep, with the per-class operating point."""
    plt = _plt()
    pc = ev.metrics["precision_coverage"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(pc["coverage"], pc["precision"], label="global threshold sweep")
    m = ev.metrics
    if ev.thresholds is not None and m["selective_accuracy"] is not None:
        ax.plot(
            [m["coverage"]],
            [m["selective_accuracy"]],
            "o",
            color="C3",
            label="per-class thresholds",
        )
    ax.axhline(m["target_precision"], ls="--", color="grey", lw=1)
    ax.set_xlabel("coverage (share of profiles assigned)")
    ax.set_ylabel("precision of assigned")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{ev.name}: precision-coverage", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path, plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(ev: HeadEvaluation, directory: Path, *, prefix: str = "") -> dict[str, str]:
    """Write the three PNGs of one head; return ``{plot: file name}``."""
    makers = {
        "confusion": plot_confusion,
        "reliability": plot_reliability,
        "precision_coverage": plot_precision_coverage,
    }
    return {k: makers[k](ev, directory / f"{prefix}{k}.png").name for k in PLOTS}


# ------------------------------------------------------------------------------------ markdown
def _ci(metrics: Mapping[str, Any], figure: str, fmt: Callable[[float], str]) -> str:
    """`` (95% CI lo-hi)`` for one figure of ``metrics["intervals"]``, or ``""`` without one."""
    intervals = metrics.get("intervals") or {}
    span = intervals.get(figure)
    if not span:
        return ""
    return f" ({100 * intervals['confidence']:.0f}% CI {fmt(span[0])}-{fmt(span[1])})"


def render_markdown(ev: HeadEvaluation, images: Mapping[str, str], *, level: int = 2) -> str:
    """Markdown section for one head: summary, per-class table, slices, embedded plots.

    Args:
        ev: the evaluation.
        images: ``{plot: relative path}`` as returned by ``write_plots``.
        level: heading level of the section title.

    Returns:
        The Markdown text.
    """
    m, h = ev.metrics, "#" * level
    out = [f"{h} Head `{ev.name}`", ""]
    out += [f"- {k}: `{v}`" for k, v in ev.info.items()]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    out += ["", "| metric | value |", "|---|---|"]
    out += [
        f"| profiles | {m['n']} |",
        f"| accuracy (argmax) | {pct(m['accuracy'])}{_ci(m, 'accuracy', pct)} |",
        f"| macro-F1 (argmax) | {m['macro_f1']:.3f}{_ci(m, 'macro_f1', lambda x: f'{x:.3f}')} |",
        f"| coverage (assigned, not UNCERTAIN) | {pct(m['coverage'])} |",
        f"| precision of assigned | {pct(m['selective_accuracy'])}"
        f"{_ci(m, 'selective_accuracy', pct)} |",
        f"| share of all profiles assigned their correct label | "
        f"{pct(m['correct_assigned_share'])} |",
        f"| macro-F1 with abstention | {m['macro_f1_with_abstention']:.3f} |",
        f"| ECE / NLL | {m['ece']:.3f} / {m['nll']:.3f} |",
        f"| classes meeting {pct(m['target_precision'])} precision | "
        f"{len(m['classes_meeting_target'])} of {len(ev.labels)} |",
        "",
    ]
    if m["classes_assigning_nothing"]:
        out += [
            "Classes that assign nothing (threshold unreachable or never predicted): "
            + ", ".join(m["classes_assigning_nothing"]),
            "",
        ]
    out += [
        f"{h}# Per class",
        "",
        "| label | support | precision | recall | F1 | threshold | assigned "
        "| precision (abst.) | recall (abst.) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lab, r in m["per_class"].items():
        thr = (
            "never"
            if r["threshold"] is None and ev.thresholds is not None
            else ("-" if r["threshold"] is None else f"{r['threshold']:.3f}")
        )
        out.append(
            f"| {lab} | {r['support']} | {pct(r['precision'])} | {pct(r['recall'])} | "
            f"{r['f1']:.3f} | {thr} | {r['assigned']} | "
            f"{pct(r['precision_with_abstention'])} | {pct(r['recall_with_abstention'])} |"
        )
    if m["slices"]:
        out += [
            "",
            f"{h}# Slices",
            "",
            "| slice | n | accuracy | coverage | precision of assigned | correct assigned |",
            "|---|---|---|---|---|---|",
        ]
        for sname, s in m["slices"].items():
            if not s.get("n"):
                out.append(f"| {sname} | 0 | - | - | - | - |")
                continue
            out.append(
                f"| {sname} | {s['n']} | {pct(s['accuracy'])} | {pct(s['coverage'])} | "
                f"{pct(s['selective_accuracy'])} | {pct(s['correct_assigned_share'])} |"
            )
    out += ["", f"{h}# Plots", ""]
    out += [f"![{k}]({images[k]})" for k in PLOTS if k in images]
    out += [
        "",
        "Thresholds: per class, the lowest calibrated max-probability whose validation "
        "precision has a one-sided 95% lower confidence bound >= the target; a class that "
        "cannot reach it assigns nothing (UNCERTAIN).",
        "",
    ]
    return "\n".join(out)


def write_report(
    directory: str | Path,
    evaluations: HeadEvaluation | Sequence[HeadEvaluation],
    *,
    title: str = "Evaluation report",
    notes: str | None = None,
) -> Path:
    """Write ``metrics.json``, ``REPORT.md`` and ``<head>_<plot>.png`` for each head.

    Args:
        directory: output folder (created; existing files of the same names are replaced).
        evaluations: one or more head evaluations.
        title: report title.
        notes: optional Markdown paragraph under the title (data, command line...).

    Returns:
        The path of REPORT.md.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    evs = [evaluations] if isinstance(evaluations, HeadEvaluation) else list(evaluations)
    parts = [f"# {title}", ""] + ([notes, ""] if notes else [])
    metrics = {}
    for ev in evs:
        images = write_plots(ev, directory, prefix=f"{ev.name}_")
        parts.append(render_markdown(ev, images))
        metrics[ev.name] = {**ev.metrics, "info": ev.info}
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = directory / "REPORT.md"
    report.write_text("\n".join(parts), encoding="utf-8")
    logger.info("wrote evaluation report of %d head(s) to %s", len(evs), directory)
    return report


def write_model_card(head_dir: str | Path, ev: HeadEvaluation) -> Path:
    """Write the head's evaluation as its model card: ``README.md`` + PNGs in the head folder.

    Args:
        head_dir: the head's folder (while it is being created).
        ev: the head's evaluation.

    Returns:
        The README.md path.
    """
    head_dir = Path(head_dir)
    images = write_plots(ev, head_dir)
    card = head_dir / "README.md"
    card.write_text(
        f"# Model card: head `{ev.name}`\n\n" + render_markdown(ev, images), encoding="utf-8"
    )
    return card
