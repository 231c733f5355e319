"""``profile-embed calibrate``: re-fit a head's temperature and thresholds on your labelled data."""

from __future__ import annotations

import argparse
import json
from typing import Any

from heads.training.config import CalibrateConfig
from server.commands.config_flags import add_config_flags, add_device_flag, config_from_args
from server.commands.invalid_rows import add_skip_invalid


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` subcommand."""
    p = subparsers.add_parser(
        "calibrate",
        help="re-fit a head's temperature, class biases and thresholds on your labelled profiles",
        description=(
            "Thresholds fitted on simulated validation data do not transfer to real profiles. "
            "This re-fits the temperature, one bias per class and the per-class thresholds of a "
            "head on labelled profiles that look like the ones you will serve (their label mix "
            "becomes the head's prior), and writes a new head version "
            "(heads/<name>/v<k+1>); the encoder and its embedding_version do not change. A class "
            "absent from the data assigns nothing unless --keep-missing."
        ),
    )
    p.add_argument("--model", default="models/default", help="model folder")
    p.add_argument("--data", required=True, help="labelled profiles (.jsonl/.csv/.parquet)")
    add_config_flags(
        p,
        CalibrateConfig,
        help={
            "keep_missing": "classes absent from --data keep their previous thresholds",
            "class_bias": "also fit one bias per class, so the data's label mix becomes the "
            "head's prior (--no-class-bias: temperature only)",
        },
    )
    p.add_argument(
        "--cache", default=None, help="embedding cache file (default: the shared one); '' = none"
    )
    add_device_flag(p)
    add_skip_invalid(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Re-calibrate and print a one-line JSON summary (before/after on the calibration rows)."""
    from embedder.devices import choose_device
    from heads.training.head import calibrate_head
    from server.commands.invalid_rows import LoadReporter

    config = config_from_args(CalibrateConfig, args)
    device = choose_device(args.device, field="--device")
    reporter = LoadReporter(skip_invalid=args.skip_invalid)
    summary = calibrate_head(
        args.model,
        args.data,
        head_name=config.head,
        target_precision=config.target_precision,
        keep_missing=config.keep_missing,
        class_bias=config.class_bias,
        cache_path=args.cache,
        skip_invalid=args.skip_invalid,
        report=reporter,
        device=device,
    )
    print(json.dumps(summary))
    return 1 if reporter.n_invalid else 0
