"""``profile-embed train-head``: add a head to a model, trained on cached frozen embeddings."""

from __future__ import annotations

import argparse
import json
from typing import Any

from heads.registry import BUILTIN_HEADS
from heads.training.config import HeadTrainConfig
from server.commands.config_flags import (
    add_config_flags,
    add_device_flag,
    config_from_args,
    given_fields,
)
from server.commands.invalid_rows import add_skip_invalid

#: Help where the command line says more than ``HeadTrainConfig``'s docstring (the rest is that).
_HELP = {
    "kind": "head kind: softmax_abstain (a linear or one-hidden-layer softmax) or knn (cosine "
    "k-nearest neighbours over the stored training rows: nothing to train, for a few labels)",
    "class_weight": "none (the data's prior; best accuracy) or balanced (best macro-F1)",
}


def register(subparsers: Any) -> None:
    """Add the ``train-head`` subcommand."""
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
    p.add_argument("--train", required=True, help="labelled training profiles")
    p.add_argument("--val", required=True, help="labelled validation profiles")
    add_config_flags(
        p,
        HeadTrainConfig,
        choices={"kind": sorted(BUILTIN_HEADS), "class_weight": ("balanced",)},
        help=_HELP,
    )
    p.add_argument(
        "--cache", default=None, help="embedding cache file (default: the shared one); '' = none"
    )
    add_device_flag(p)
    add_skip_invalid(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train the head and print a one-line JSON summary.

    Returns 1 when rows were skipped (``--skip-invalid``; the head is still added), else 0.
    """
    from embedder.devices import choose_device
    from heads.training.head import check_kind_options, train_head
    from server.commands.invalid_rows import LoadReporter

    config = config_from_args(HeadTrainConfig, args)
    check_kind_options(config.kind, given_fields(HeadTrainConfig, args))
    device = choose_device(args.device, field="--device")
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
        device=device,
    )
    print(json.dumps(summary))
    return 1 if reporter.n_invalid else 0
