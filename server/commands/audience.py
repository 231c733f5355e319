"""``profile-embed audience``: country shares of an influencer's followers, with 95% intervals.

Each audience's JSON line names the estimator asked for (``method``) and the one that produced the
shares (``used``), the interval kind, the low-evidence ``flags`` and their ``diagnostics``; a
flagged audience is also reported on stderr, and its PNG says so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from server.commands.config_flags import add_device_flag
from server.commands.invalid_rows import add_skip_invalid

#: ``heads.audience.METHODS``, spelled out: importing ``heads`` here would load torch for every
#: ``profile-embed`` command (a test keeps the two equal).
METHODS = ("em", "guarded", "map", "fallback", "ensemble", "average", "acc", "cc")


def register(subparsers: Any) -> None:
    """Add the ``audience`` subcommand."""
    p = subparsers.add_parser(
        "audience",
        help="estimate the follower label distribution of each influencer (with intervals)",
        description=(
            "Embed every follower, take the head's calibrated probabilities and estimate the "
            "audience's label shares (by default 'ensemble': the per-label median of EM "
            "prior-shift correction, probability averaging and adjusted classify-and-count; "
            "'guarded' holds EM to what the followers' hard labels support), with bootstrap 95% "
            "intervals over the "
            "followers and the head's calibration error. Followers are grouped by the "
            "'influencer_id' field when present. Low-evidence results are flagged (few "
            "followers, few assigned, unlike the training data, estimators disagreeing). With "
            "--truth (the simulator's audience_truth.json) the mean absolute error is reported."
        ),
    )
    p.add_argument("followers", help="follower profiles (.jsonl/.csv/.parquet)")
    p.add_argument(
        "--model", default="models/default", help="model folder (default models/default)"
    )
    p.add_argument("--head", default="geolocation", help="head to use (default geolocation)")
    p.add_argument(
        "--method",
        default=None,
        choices=METHODS,
        help="estimator (default ensemble, or the best the head can run); see heads/audience.py",
    )
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates (0 = none)")
    p.add_argument("--min-share", type=float, default=0.005, help="omit smaller shares in output")
    p.add_argument("--out", default=None, help="folder for PNG charts and audiences.json")
    p.add_argument("--truth", default=None, help="JSON {influencer_id: {label: share}}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    add_device_flag(p)
    add_skip_invalid(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``audience``; print one JSON line per audience (and an error summary with --truth).

    Returns 1 when follower rows were skipped (``--skip-invalid``), else 0.
    """
    import numpy as np

    from embedder.devices import choose_device
    from embedder.errors import InvalidInputError
    from heads.audience import (
        audience_groups,
        estimate_audience,
        head_audience_inputs,
        plot_audience,
        read_audience_truth,
        truth_errors,
    )
    from heads.model import ProfileModel
    from server.commands.invalid_rows import load_profiles

    truth = read_audience_truth(args.truth) if args.truth else {}  # refused before any work
    device = choose_device(args.device, field="--device")
    loaded = load_profiles(args.followers, skip_invalid=args.skip_invalid)
    if not loaded.rows:
        raise InvalidInputError(f"{args.followers} holds no valid follower profiles")
    model = ProfileModel.load(args.model, heads=[args.head], device=device)
    head = model.head(args.head)
    emb = model.embed(
        [r.profile for r in loaded.rows], batch_size=args.batch_size, show_progress=True
    )
    probs = head.predict_proba(emb)
    inputs = head_audience_inputs(head)
    out_dir = Path(args.out) if args.out else None
    results, errors = {}, []
    for key, idx in audience_groups(loaded.rows).items():
        est = estimate_audience(
            probs[idx],
            labels=head.labels,
            method=args.method,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            **inputs,
        )
        record = {"influencer_id": key, **est.to_dict(min_share=args.min_share)}
        if est.flags:
            print(
                f"profile-embed audience: {key}: low evidence ({', '.join(est.flags)}); "
                f"estimator {est.used}",
                file=sys.stderr,
            )
        if key in truth:
            record.update(truth_errors(truth[key], est))
            errors.append((len(idx), record["mae"]))
        if out_dir is not None:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
            record["chart"] = str(
                plot_audience(
                    est, out_dir / f"audience_{safe}.png", title=f"{key}: {len(idx)} followers"
                )
            )
        results[key] = record
        print(json.dumps(record, ensure_ascii=False))
    if out_dir is not None:
        (out_dir / "audiences.json").write_text(json.dumps(results, indent=2) + "\n")
    if errors:
        print(
            json.dumps(
                {
                    "audiences_with_truth": len(errors),
                    "mean_mae": float(np.mean([e for _, e in errors])),
                }
            )
        )
    return 1 if loaded.errors else 0
