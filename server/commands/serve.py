"""``profile-embed serve``: the gRPC service (see ``server.app``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from embedder.numerics import NUMERICS_OPTIONS
from server.commands.config_flags import add_config_flags
from server.commands.config_flags import config_from_args as build_config
from server.config import ServerConfig

#: Where ``profile-embed build-default`` points its link; used when ``--model`` is not given.
DEFAULT_MODEL = Path("models/default")


def _metrics_port(raw: str) -> int | None:
    """``--metrics-port``: a port, or -1 (or ``none``) for no metrics endpoint."""
    if raw.strip().lower() in ("-1", "none"):
        return None
    return int(raw)


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve embeddings and predictions over gRPC",
        description="Serve the profile-embedding gRPC API (health, reflection, metrics).",
    )
    add_config_flags(
        p,
        ServerConfig,
        flags={"grace_s": "--grace"},
        choices={"numerics": NUMERICS_OPTIONS},
        types_={"metrics_port": _metrics_port},
        help={
            "model": f"model folder (model.json, encoder/, heads/); unset: {DEFAULT_MODEL}",
            "metrics_port": "Prometheus port (not the gRPC one); 0 picks a free one, -1: off",
        },
    )
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build the ``ServerConfig`` from parsed flags (unset ones keep its defaults).

    Raises:
        InvalidInputError: a setting the config refuses (exit 2).
    """
    return build_config(ServerConfig, args)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; exit 2 on bad settings, 1 when the model cannot be served."""
    config = config_from_args(args)
    if config.model is None:
        if not (DEFAULT_MODEL / "model.json").is_file():
            print(
                f"profile-embed serve: error: no --model given and no model at {DEFAULT_MODEL}; "
                "build it with `profile-embed build-default` (or `make serve`)",
                file=sys.stderr,
            )
            return 2
        config = replace(config, model=DEFAULT_MODEL)
    from server.app import serve

    return serve(config)
