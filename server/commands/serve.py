"""``profile-embed serve``: the gRPC service (see ``server.app``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from embedder.numerics import NUMERICS_OPTIONS
from server.config import ServerConfig

#: Where ``profile-embed build-default`` points its link; used when ``--model`` is not given.
DEFAULT_MODEL = Path("models/default")

#: (flag, ServerConfig field, type, help); every default comes from ServerConfig.
_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    (
        "--model",
        "model",
        Path,
        "model folder (model.json, encoder/, heads/); default: models/default",
    ),
    (
        "--numerics",
        "numerics",
        str,
        f"encoder numerics ({'|'.join(NUMERICS_OPTIONS)}); unset: auto, the fastest of the "
        "model's accurate numerics on this CPU (measured once per machine)",
    ),
    ("--host", "host", str, "interface to bind (0.0.0.0 to accept remote callers)"),
    ("--port", "port", int, "gRPC port (0 = any free port)"),
    ("--metrics-port", "metrics_port", int, "Prometheus port (0 = any free, -1 = off)"),
    ("--metrics-host", "metrics_host", str, "interface of the metrics endpoint"),
    ("--metrics-tls", "metrics_tls", bool, "serve metrics over HTTPS with --tls-cert/--tls-key"),
    ("--metrics-auth", "metrics_auth", bool, "metrics need a bearer token of --auth-token-file"),
    ("--max-batch-tokens", "max_batch_tokens", int, "padded tokens per forward pass"),
    ("--max-batch-profiles", "max_batch_profiles", int, "profiles per forward pass"),
    ("--max-wait-ms", "max_wait_ms", float, "how long a request waits for batch company"),
    ("--max-queue", "max_queue", int, "profiles waiting for the encoder before overload"),
    (
        "--max-queue-delay-ms",
        "max_queue_delay_ms",
        float,
        "most estimated wait in the encoder queue before overload (0 = no bound)",
    ),
    ("--workers", "workers", int, "forward passes that may run at once"),
    (
        "--encoder-nice",
        "encoder_nice",
        int,
        "niceness of the encoder threads (the event loop answers first; 0 = same priority)",
    ),
    ("--threads", "threads", int, "intra-op threads per forward pass (unset: cores / workers)"),
    (
        "--pass-overhead-tokens",
        "pass_overhead_tokens",
        int,
        "cost of one forward pass in tokens (how far a batch is split by length)",
    ),
    ("--cache", "cache", Path, "SQLite embedding cache file"),
    ("--memory-cache", "memory_cache", int, "vectors kept in memory by profile content"),
    ("--index", "index", Path, "similarity index folder (loaded, and written on UpsertIndex)"),
    ("--tls-cert", "tls_cert", Path, "PEM certificate chain (turns TLS on)"),
    ("--tls-key", "tls_key", Path, "PEM private key"),
    ("--tls-client-ca", "tls_client_ca", Path, "PEM CA for client certificates (mTLS)"),
    ("--auth-token-file", "auth_token_file", Path, "accepted bearer tokens, one per line"),
    ("--max-profiles-per-request", "max_profiles_per_request", int, "profiles per request"),
    ("--max-field-chars", "max_field_chars", int, "hard cap on characters per text field"),
    ("--max-message-bytes", "max_message_bytes", int, "largest gRPC message"),
    ("--max-concurrent-calls", "max_concurrent_calls", int, "calls in progress at once"),
    (
        "--max-inflight-bytes",
        "max_inflight_bytes",
        int,
        "request-body bytes being read or held at once",
    ),
    ("--grace", "grace_s", float, "seconds in-flight calls get on SIGTERM"),
)


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve embeddings and predictions over gRPC",
        description="Serve the profile-embedding gRPC API (health, reflection, metrics).",
    )
    defaults = ServerConfig()
    for flag, field, typ, text in _FLAGS:
        default = getattr(defaults, field)
        if field == "metrics_port" and default is None:
            default = -1
        if typ is bool:
            p.add_argument(flag, dest=field, action="store_true", help=text)
            continue
        p.add_argument(flag, dest=field, type=typ, default=default, help=f"{text} [{default}]")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build the ``ServerConfig`` from parsed flags (``--metrics-port -1`` turns metrics off)."""
    values = {field: getattr(args, field) for _, field, _, _ in _FLAGS}
    if values["metrics_port"] is not None and values["metrics_port"] < 0:
        values["metrics_port"] = None
    return ServerConfig(**values)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; exit 2 on bad settings, 1 when the model cannot be served."""
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"profile-embed serve: error: {err}", file=sys.stderr)
        return 2
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
