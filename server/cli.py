"""The ``profile-embed`` console script: one argparse program, one module per subcommand.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its parser and sets
``func``. Heavy imports (torch, faiss, grpc) happen inside the command functions, so ``--help``
is instant.
Every flag also reads an environment fallback ``PROFILE_EMBED_<FLAG>`` (``--batch-size`` ->
``PROFILE_EMBED_BATCH_SIZE``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from embedder.errors import EmbedderError

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "server.commands.embed",
    "server.commands.batch",
    "server.commands.index",
    "server.commands.train",
    "server.commands.build_default",
    "server.commands.train_head",
    "server.commands.calibrate",
    "server.commands.evaluate",
    "server.commands.predict",
    "server.commands.audience",
    "server.commands.simulate",
    "server.commands.serve",
    "server.commands.client",
)

_ENV_PREFIX = "PROFILE_EMBED_"


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="profile-embed",
        description="Multilingual profile embeddings, task heads and the gRPC service.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for action in sub.choices.values():
        _apply_env_defaults(action)
    return parser


def _apply_env_defaults(parser: argparse.ArgumentParser) -> None:
    """Let ``PROFILE_EMBED_<FLAG>`` set any long option's default (flags still win)."""
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or action.dest == "help":
            continue
        env = _ENV_PREFIX + longs[0][2:].upper().replace("-", "_")
        if env not in os.environ:
            continue
        raw = os.environ[env]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            action.default = raw.strip().lower() in {"1", "true", "yes", "on"}
        elif action.type is not None and callable(action.type):
            action.default = action.type(raw)
        else:
            action.default = raw
        action.required = False


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity + 1, 2)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("urllib3", "filelock", "httpx", "transformers", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code (2 usage error, 1 runtime error)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        code = args.func(args)
    except EmbedderError as err:
        print(f"profile-embed {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"profile-embed {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"profile-embed {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
