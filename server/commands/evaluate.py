"""``profile-embed evaluate``: metrics, plots and a Markdown report of heads on labelled data."""

from __future__ import annotations

import argparse
import json
from typing import Any

from server.commands.config_flags import add_device_flag
from server.commands.invalid_rows import add_skip_invalid


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model's heads on labelled profiles; write metrics.json, REPORT.md, PNGs",
        description=(
            "Accuracy, macro-F1, per-class precision/recall/support with and without abstention, "
            "coverage, share assigned their correct label, confusion matrix, reliability diagram "
            "and precision-coverage curves, overall and on slices (no bio with at most one "
            "caption; the 'language' extra when present)."
        ),
    )
    p.add_argument(
        "--model", default="models/default", help="model folder (default models/default)"
    )
    p.add_argument("--data", required=True, help="labelled profiles (.jsonl/.csv/.parquet)")
    p.add_argument("--report", required=True, help="output folder for the report")
    p.add_argument(
        "--heads",
        default=None,
        help="comma-separated head names (default: every head the data has labels for; a "
        "head named here without labels in the data is an error)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    add_device_flag(p)
    add_skip_invalid(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``evaluate``; print the headline metrics per head as JSON.

    Returns 1 when rows were skipped (``--skip-invalid``), else 0.
    """
    from embedder.devices import choose_device
    from heads.evaluation.metrics import evaluate_model
    from heads.evaluation.report import write_report
    from heads.model import ProfileModel
    from server.commands.invalid_rows import load_profiles
    from server.commands.predict import parse_heads

    device = choose_device(args.device, field="--device")
    loaded = load_profiles(args.data, skip_invalid=args.skip_invalid)
    model = ProfileModel.load(args.model, heads=parse_heads(args.heads), device=device)
    evaluations = evaluate_model(
        model,
        loaded.rows,
        source=str(args.data),
        batch_size=args.batch_size,
        info={"data": str(args.data), "model": str(args.model)},
        skip_unlabelled=args.heads is None,
    )
    write_report(args.report, evaluations, title=f"Evaluation of {args.model} on {args.data}")
    keys = (
        "n",
        "accuracy",
        "macro_f1",
        "coverage",
        "selective_accuracy",
        "correct_assigned_share",
        "ece",
    )
    summary = {
        ev.name: {**{k: ev.metrics[k] for k in keys}, "intervals": ev.metrics.get("intervals")}
        for ev in evaluations
    }
    skipped = [name for name in model.head_names if name not in summary]
    out = {"report": str(args.report), "heads": summary}
    if skipped:
        out["not_evaluated"] = {name: "no labels for it in the data" for name in skipped}
    print(json.dumps(out, indent=2))
    return 1 if loaded.errors else 0
