"""``profile-embed train-head``: add a head to a model, trained on cached frozen embeddings."""

from __future__ import annotations

import argparse
import json
from typing import Any

from heads.registry import BUILTIN_HEADS
from server.commands.invalid_rows import add_skip_invalid


def _class_weight(value: str) -> str | None:
    if value not in ("none", "balanced"):
        raise argparse.ArgumentTypeError(f"got {value!r}; allowed: none, balanced")
    return None if value == "none" else value


def register(subparsers: Any) -> None:
    """Add the ``train-head`` subcommand."""
    # Settings default to heads.train_head.HeadTrainConfig's (SUPPRESS: absent unless given), so
    # the defaults live in one place and --help does not import torch.
    unset = argparse.SUPPRESS
    p = subparsers.add_parser(
        "train-head",
        help="train a new head on a model's frozen (cached) embeddings; add it as v<k+1>",
        description=(
            "Train, calibrate and evaluate one head on cached embeddings of the model's encoder "
            "(the encoder and its embedding_version do not change); written as "
            "heads/<name>/v<k+1>. "
            "A linear head is fitted like scikit-learn's LogisticRegression (L-BFGS, L2 chosen on "
            "validation log-loss); thresholds are fitted on the validation rows plus out-of-fold "
            "training rows (--cross-fit)."
        ),
    )
    p.add_argument(
        "--model", default="models/default", help="model folder (default models/default)"
    )
    p.add_argument(
        "--head",
        required=True,
        help="head name: geolocation, category, or a new name with --label-field",
    )
    p.add_argument(
        "--label-field",
        default=None,
        help="for a new head: the data field it learns (labels = the values found in --train), "
        "e.g. sentiment",
    )
    p.add_argument(
        "--kind",
        choices=sorted(BUILTIN_HEADS),
        default=unset,
        help="head kind: softmax_abstain (default; a linear or one-hidden-layer softmax) or knn "
        "(cosine k-nearest neighbours over the stored training rows: nothing to train, for a "
        "few labels)",
    )
    p.add_argument("--k", type=int, default=unset, help="knn only: neighbours that vote")
    p.add_argument("--train", required=True, help="labelled training profiles")
    p.add_argument("--val", required=True, help="labelled validation profiles")
    p.add_argument(
        "--hidden", type=int, default=unset, help="softmax_abstain only: hidden width (0 = linear)"
    )
    p.add_argument(
        "--l2",
        type=float,
        default=unset,
        help="linear head's L2 penalty (default: chosen on validation log-loss)",
    )
    p.add_argument(
        "--class-weight",
        type=_class_weight,
        default=unset,
        help="none (the data's prior; best accuracy) or balanced (best macro-F1)",
    )
    p.add_argument(
        "--cross-fit",
        type=int,
        default=unset,
        help="folds of out-of-fold training rows added to calibration (0 = validation only)",
    )
    p.add_argument("--epochs", type=int, default=unset, help="hidden heads (AdamW) only")
    p.add_argument("--lr", type=float, default=unset, help="hidden heads (AdamW) only")
    p.add_argument("--batch-size", type=int, default=unset, help="hidden heads only")
    p.add_argument("--target-precision", type=float, default=unset)
    p.add_argument("--seed", type=int, default=unset)
    p.add_argument(
        "--cache", default=None, help="embedding cache file (default: the shared one); '' = none"
    )
    add_skip_invalid(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train the head and print a one-line JSON summary.

    Returns 1 when rows were skipped (``--skip-invalid``; the head is still added), else 0.
    """
    from dataclasses import fields

    from heads.train_head import HeadTrainConfig, check_kind_options, train_head
    from server.commands.invalid_rows import LoadReporter

    given = {
        f.name: getattr(args, f.name) for f in fields(HeadTrainConfig) if hasattr(args, f.name)
    }
    config = HeadTrainConfig(**given)
    check_kind_options(config.kind, list(given))
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
        label_field=args.label_field,
    )
    print(json.dumps(summary))
    return 1 if reporter.n_invalid else 0
