"""``profile-embed train-head``: add a head to a model, trained on cached frozen embeddings."""

from __future__ import annotations

import argparse
import json
from typing import Any

from server.commands.invalid_rows import add_skip_invalid


def register(subparsers: Any) -> None:
    """Add the ``train-head`` subcommand."""
    p = subparsers.add_parser(
        "train-head",
        help="train a new head on a model's frozen (cached) embeddings; add it as v<k+1>",
        description=(
            "Train, calibrate and evaluate one head on cached embeddings of the model's encoder "
            "(the encoder and its embedding_version do not change); written as heads/<name>/v<k+1>."
        ),
    )
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--head", required=True, help="head name, e.g. category")
    p.add_argument("--train", required=True, help="labelled training profiles")
    p.add_argument("--val", required=True, help="labelled validation profiles")
    p.add_argument("--hidden", type=int, default=0, help="hidden width (0 = linear)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--target-precision", type=float, default=0.90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cache", default=None, help="embedding cache file (default: the shared one); '' = none"
    )
    add_skip_invalid(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train the head and print a one-line JSON summary.

    Returns 1 when rows were skipped (``--skip-invalid``; the head is still added), else 0.
    """
    from heads.train_head import HeadTrainConfig, train_head
    from server.commands.invalid_rows import LoadReporter

    config = HeadTrainConfig(
        hidden=args.hidden,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        target_precision=args.target_precision,
        seed=args.seed,
    )
    reporter = LoadReporter(skip_invalid=args.skip_invalid)
    summary = train_head(
        args.model,
        args.head,
        args.train,
        args.val,
        config=config,
        cache_path=args.cache,
        skip_invalid=args.skip_invalid,
        report=reporter,
    )
    print(json.dumps(summary))
    return 1 if reporter.n_invalid else 0
