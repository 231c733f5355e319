"""``profile-embed index build``: IVF / IVF-PQ index from batch embeddings, with recall@10."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``index`` command group with its ``build`` subcommand."""
    p = subparsers.add_parser("index", help="similarity index tools (build)")
    sub = p.add_subparsers(dest="index_command", required=True, metavar="INDEX_COMMAND")
    b = sub.add_parser(
        "build",
        help="build an IVF (+PQ when the vectors do not fit in memory) index from embeddings",
        description="Train an IVF index on a sample of the embeddings (PQ codes when the flat "
        "vectors "
        "would exceed --ram-fraction of the available memory, or with --compression pq), add all "
        "vectors, and report recall@k against exact search on held-out queries.",
    )
    b.add_argument(
        "--embeddings",
        required=True,
        help="batch output folder (--with-embeddings) or folder/glob of Parquet files",
    )
    b.add_argument("-o", "--output", required=True, type=Path, help="index folder to write")
    b.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 sqrt(n))")
    b.add_argument(
        "--pq-m",
        type=int,
        default=None,
        help="PQ bytes per vector (must divide dim; default: largest divisor <= dim/8)",
    )
    b.add_argument(
        "--compression",
        choices=("auto", "flat", "pq"),
        default="auto",
        help="auto: PQ when the flat vectors exceed --ram-fraction of available memory",
    )
    b.add_argument(
        "--ram-fraction",
        type=float,
        default=0.5,
        help="share of available memory flat vectors may use under auto (default 0.5)",
    )
    b.add_argument(
        "--memory-gb",
        type=float,
        default=None,
        help="available memory to assume instead of /proc/meminfo",
    )
    b.add_argument("--train-size", type=int, default=None, help="training sample size")
    b.add_argument(
        "--queries", type=int, default=1000, help="held-out queries for recall (default 1000)"
    )
    b.add_argument("--k", type=int, default=10, help="recall@k (default 10)")
    b.add_argument("--nprobe", type=int, default=16, help="lists visited per query (default 16)")
    b.add_argument("--seed", type=int, default=0, help="sampling seed")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the index and print its build facts (recall included) as one JSON object."""
    from server.batch.index_build import IndexBuildConfig, build_index

    cfg = IndexBuildConfig(
        embeddings=args.embeddings,
        output=args.output,
        nlist=args.nlist,
        pq_m=args.pq_m,
        compression=args.compression,
        ram_fraction=args.ram_fraction,
        available_bytes=int(args.memory_gb * 2**30) if args.memory_gb is not None else None,
        train_size=args.train_size,
        n_queries=args.queries,
        k=args.k,
        nprobe=args.nprobe,
        seed=args.seed,
    )
    facts = build_index(cfg)
    print(json.dumps(facts, ensure_ascii=False))
    return 0
