"""``profile-embed calibrate``: re-fit a head's temperature and thresholds on your labelled data."""

from __future__ import annotations

import argparse
import json
from typing import Any

from server.commands.invalid_rows import add_skip_invalid


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` subcommand."""
    p = subparsers.add_parser(
        "calibrate",
        help="re-fit a head's temperature and per-class thresholds on your labelled profiles",
        description=(
            "Thresholds fitted on simulated validation data do not transfer to real profiles. "
            "This re-fits the temperature and the per-class thresholds of a head on labelled "
            "profiles that look like the ones you will serve, and writes a new head version "
            "(heads/<name>/v<k+1>); the encoder and its embedding_version do not change. A class "
            "absent from the data assigns nothing unless --keep-missing."
        ),
    )
    p.add_argument("--model", default="models/default", help="model folder")
    p.add_argument("--data", required=True, help="labelled profiles (.jsonl/.csv/.parquet)")
    p.add_argument("--head", default="geolocation", help="the head to re-calibrate")
    p.add_argument("--target-precision", type=float, default=0.90)
    p.add_argument(
        "--keep-missing",
        action="store_true",
        help="classes absent from --data keep their previous thresholds",
    )
    p.add_argument(
        "--cache", default=None, help="embedding cache file (default: the shared one); '' = none"
    )
    add_skip_invalid(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Re-calibrate and print a one-line JSON summary (before/after on the calibration rows)."""
    from embedder.errors import InvalidInputError
    from heads.train_head import calibrate_head
    from server.commands.invalid_rows import LoadReporter

    if not 0.0 < args.target_precision < 1.0:
        raise InvalidInputError(
            f"got {args.target_precision}; allowed: a number in (0, 1)", field="--target-precision"
        )
    reporter = LoadReporter(skip_invalid=args.skip_invalid)
    summary = calibrate_head(
        args.model,
        args.data,
        head_name=args.head,
        target_precision=args.target_precision,
        keep_missing=args.keep_missing,
        cache_path=args.cache,
        skip_invalid=args.skip_invalid,
        report=reporter,
    )
    print(json.dumps(summary))
    return 1 if reporter.n_invalid else 0
