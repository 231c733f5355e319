"""``profile-embed train``: fine-tune encoder + heads jointly and write a new model folder."""

from __future__ import annotations

import argparse
import json
from typing import Any

from heads.training.augment import AugmentConfig
from heads.training.config import LoopConfig, TrainConfig
from server.commands.config_flags import add_config_flags, config_from_args
from server.commands.invalid_rows import add_skip_invalid


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune the encoder and heads jointly; write models/NAME",
        description=(
            "Train encoder + heads (multi-task, masked per head), calibrate thresholds on "
            "validation, "
            "evaluate, and write an immutable model folder. Checkpoints go to <output>.checkpoints."
        ),
    )
    p.add_argument("--train", required=True, help="training profiles (.jsonl/.csv/.parquet)")
    p.add_argument("--val", required=True, help="validation profiles")
    p.add_argument("--test", default=None, help="optional test profiles for the report")
    p.add_argument("-o", "--output", required=True, help="model folder to create (must not exist)")
    add_config_flags(
        p,
        TrainConfig,
        choices={"device": ("auto", "cpu", "cuda")},
        help={"heads": "comma-separated head names: geolocation,category"},
    )
    add_config_flags(p, LoopConfig)
    p.add_argument("--resume", default=None, help="checkpoint folder to continue from")
    p.add_argument("--checkpoint-dir", default=None, help="default: <output>.checkpoints")
    p.add_argument("--no-augment", action="store_true", help="turn every augmentation off")
    add_skip_invalid(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed flags into a ``TrainConfig`` (unset settings keep the dataclass defaults)."""
    augment = AugmentConfig.none() if args.no_augment else AugmentConfig()
    loop = config_from_args(LoopConfig, args, augment=augment)
    return config_from_args(TrainConfig, args, loop=loop)


def run(args: argparse.Namespace) -> int:
    """Run the training and print a one-line JSON summary.

    Returns 1 when rows were skipped (``--skip-invalid``; the model is still written), else 0.
    """
    from heads.training.run import train_model
    from server.commands.invalid_rows import LoadReporter

    config = build_config(args)
    reporter = LoadReporter(skip_invalid=args.skip_invalid)
    result = train_model(
        args.train,
        args.val,
        args.output,
        config,
        test_path=args.test,
        resume=args.resume,
        checkpoint_dir=args.checkpoint_dir,
        skip_invalid=args.skip_invalid,
        report=reporter,
    )
    info = result.info
    summary = {
        "model": str(result.model_dir),
        "embedding_version": result.embedding_version,
        "best_epoch": info["best_epoch"],
        # the saved model's validation figures where fine-tuning's own pass was skipped (the
        # saved encoder reads the text differently from fine-tuning)
        "val": (info["history"][info["best_epoch"] - 1]["val"] if info["history"] else None)
        or info["metrics"]["val"],
        "throughput": info["throughput"],
        "wall_seconds": info["wall_seconds"],
    }
    print(json.dumps(summary))
    return 1 if reporter.n_invalid else 0
