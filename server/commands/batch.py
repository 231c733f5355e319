"""``profile-embed batch`` and ``profile-embed batch-audience``: Ray Data jobs over whole databases.

Both run on a local Ray instance by default and on the cluster named by ``RAY_ADDRESS`` when it is
set.
The summary goes to stdout as one JSON object; bad rows (file, row, field) go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from embedder.numerics import NUMERICS_OPTIONS
from server.commands.audience import METHODS as AUDIENCE_METHODS

#: Bad rows printed to stderr (all are counted, and up to 1000 listed in summary.json).
MAX_BAD_PRINTED = 20


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _add_ray_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray")
    g.add_argument(
        "--num-actors",
        type=int,
        default=None,
        help="predictor actors (default: one per 2 CPUs)",
    )
    g.add_argument("--batch-size", type=int, default=256, help="rows per actor call (default 256)")
    g.add_argument(
        "--encode-batch-size",
        type=int,
        default=64,
        help="texts per forward pass inside an actor (default 64)",
    )
    g.add_argument(
        "--cpus-per-actor",
        type=float,
        default=None,
        help="CPUs per actor (default: spread the CPUs over the actors)",
    )
    g.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of the local Ray instance (ignored when RAY_ADDRESS is set)",
    )
    g.add_argument(
        "--numerics",
        choices=NUMERICS_OPTIONS,
        default=None,
        help="encoder numerics (default: auto, as the server)",
    )
    g.add_argument("--no-progress", action="store_true", help="hide Ray Data progress bars")


def register(subparsers: Any) -> None:
    """Add the ``batch`` and ``batch-audience`` subcommands."""
    p = subparsers.add_parser(
        "batch",
        help="embed and classify profile files on Ray Data (incremental, resumable)",
        description="Embed and classify every profile of Parquet/JSONL files with a Ray Data actor "
        "pool. Re-runs skip finished files and rows already done for this embedding_version.",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=Path("models/default"),
        help="model folder (default models/default)",
    )
    p.add_argument(
        "--input", required=True, help="folder, glob or file of .jsonl / .parquet profiles"
    )
    p.add_argument("--output", required=True, type=Path, help="output folder (reused across runs)")
    p.add_argument("--heads", type=_csv, default=(), help="comma-separated heads (default: all)")
    p.add_argument("--with-embeddings", action="store_true", help="write the embedding vectors")
    p.add_argument(
        "--with-probabilities", action="store_true", help="write each head's probability vector"
    )
    p.add_argument(
        "--keep-fields",
        type=_csv,
        default=(),
        help="comma-separated extra input fields copied to the output (e.g. influencer_id)",
    )
    p.add_argument("--cache", type=Path, default=None, help="embedding cache (SQLite) to consult")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),  # each Ray actor gets its own GPU: no cuda:N here
        default="auto",
        help="auto (GPU actors when the Ray cluster reports GPUs, default), cpu or cuda",
    )
    _add_ray_flags(p)
    p.set_defaults(func=run)

    a = subparsers.add_parser(
        "batch-audience",
        help="per-influencer audience location estimates on Ray Data",
        description="Group follower predictions by influencer_id and estimate each influencer's "
        "audience shares with intervals. --followers is a batch output folder (run with "
        "--with-probabilities --keep-fields influencer_id) or raw follower files with "
        "influencer_id.",
    )
    a.add_argument(
        "--model",
        type=Path,
        default=Path("models/default"),
        help="model folder (default models/default)",
    )
    a.add_argument(
        "--followers",
        required=True,
        help="batch output folder, or folder/glob of raw follower files",
    )
    a.add_argument("--output", required=True, type=Path, help="output folder")
    a.add_argument("--head", default="geolocation", help="head whose labels are estimated")
    a.add_argument(
        "--min-followers",
        type=int,
        default=1,
        help="influencers with fewer classified followers are reported with n only",
    )
    a.add_argument(
        "--method",
        choices=AUDIENCE_METHODS,
        default=None,
        help="estimator (default ensemble, or the best the head can run); see heads/audience.py",
    )
    _add_ray_flags(a)
    a.set_defaults(func=run_audience)


def _report_bad(summary: dict[str, Any]) -> None:
    n = summary.get("rows_bad", 0)
    if not n:
        return
    print(f"profile-embed batch: {n} bad rows skipped (file, row, field):", file=sys.stderr)
    for b in summary.get("bad_rows", [])[:MAX_BAD_PRINTED]:
        print(f"  {b['file']}, row {b['row']}, field {b['field']}: {b['error']}", file=sys.stderr)
    if n > MAX_BAD_PRINTED:
        print(f"  ... {n - MAX_BAD_PRINTED} more in summary.json", file=sys.stderr)
    for f in summary.get("files_failed", []):
        print(f"  unfinished file {f['file']}: {f['error']}", file=sys.stderr)


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "num_actors": args.num_actors,
        "batch_size": args.batch_size,
        "encode_batch_size": args.encode_batch_size,
        "cpus_per_actor": args.cpus_per_actor,
        "num_cpus": args.num_cpus,
        "numerics": args.numerics,
        "show_progress": not args.no_progress,
    }


def run(args: argparse.Namespace) -> int:
    """Run ``profile-embed batch``; print the summary JSON; exit 1 when a file is unfinished."""
    from server.batch.pipeline import BatchConfig, run_batch

    cfg = BatchConfig(
        model_dir=args.model,
        input=args.input,
        output=args.output,
        heads=tuple(args.heads),
        with_embeddings=args.with_embeddings,
        with_probabilities=args.with_probabilities,
        keep_fields=tuple(args.keep_fields),
        cache_path=args.cache,
        device=args.device,
        **_common(args),
    )
    summary = run_batch(cfg)
    _report_bad(summary)
    brief = {k: v for k, v in summary.items() if k != "bad_rows"}
    print(json.dumps(brief, ensure_ascii=False))
    return 1 if summary["files_failed"] else 0


def run_audience(args: argparse.Namespace) -> int:
    """Run ``profile-embed batch-audience``; print the summary JSON."""
    from server.batch.audience_job import AudienceJobConfig, run_audience_job

    cfg = AudienceJobConfig(
        model_dir=args.model,
        followers=args.followers,
        output=args.output,
        head=args.head,
        min_followers=args.min_followers,
        method=args.method,
        **_common(args),
    )
    summary = run_audience_job(cfg)
    if summary.get("batch"):
        _report_bad(summary["batch"])
    print(json.dumps({k: v for k, v in summary.items() if k != "batch"}, ensure_ascii=False))
    return 0
