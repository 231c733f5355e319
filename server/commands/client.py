"""``profile-embed client predict|embed|info``: call a running server from scripts (JSON lines)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``client`` subcommand."""
    p = subparsers.add_parser(
        "client",
        help="call a running gRPC server (JSON lines out)",
        description="Send profiles (JSONL, '-' = stdin) to a server; print one JSON line each.",
    )
    p.add_argument("action", choices=("predict", "embed", "info"))
    p.add_argument("input", nargs="?", default="-", help="profiles as JSON lines ('-' = stdin)")
    p.add_argument("--target", default="localhost:50051", help="host:port [localhost:50051]")
    p.add_argument("--heads", default="", help="comma-separated head names (default: all)")
    p.add_argument("--top-k", type=int, default=1, help="labels per head in 'top' [1]")
    p.add_argument("--batch-size", type=int, default=256, help="profiles per request [256]")
    p.add_argument("--token-file", type=Path, default=None, help="bearer token file")
    p.add_argument("--tls", action="store_true", help="use TLS (system roots or --ca)")
    p.add_argument("--ca", type=Path, default=None, help="PEM CA to verify the server")
    p.add_argument("--cert", type=Path, default=None, help="PEM client certificate (mTLS)")
    p.add_argument("--key", type=Path, default=None, help="PEM client key (mTLS)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call [60]")
    p.set_defaults(func=run)


def _records(path: str) -> Any:
    from embedder.profile import Profile

    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with stream:
        for line_no, line in enumerate(stream, 1):
            if line.strip():
                yield Profile.from_dict(json.loads(line), source=path, line=line_no)[0]


def _batches(items: Any, size: int) -> Any:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def run(args: argparse.Namespace) -> int:
    """Run one client action; exit 1 with the server's status on an RPC error."""
    import grpc

    from server.client import ProfileEmbeddingClient

    token = args.token_file.read_text(encoding="utf-8").split()[0] if args.token_file else None
    client = ProfileEmbeddingClient(
        args.target,
        token=token,
        tls=args.tls,
        root_certificates=args.ca,
        client_cert=args.cert,
        client_key=args.key,
        timeout=args.timeout,
    )
    heads = [h for h in args.heads.split(",") if h]
    try:
        with client:
            if args.action == "info":
                print(json.dumps(client.info(), ensure_ascii=False))
                return 0
            for batch in _batches(_records(args.input), args.batch_size):
                if args.action == "embed":
                    vectors = client.embed(batch)
                    for p, v in zip(batch, vectors, strict=True):
                        print(
                            json.dumps({"id": p.id, "embedding": [round(float(x), 7) for x in v]})
                        )
                else:
                    for row in client.predict(batch, heads=heads, top_k=args.top_k):
                        print(json.dumps(row, ensure_ascii=False))
    except grpc.RpcError as err:
        print(f"profile-embed client: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 0
