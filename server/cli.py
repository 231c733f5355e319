"""The ``profile-embed`` console script: one argparse program, one module per subcommand.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its parser and sets
``func``. Heavy imports (torch, faiss, grpc) happen inside the command functions, so ``--help``
is instant.
Every flag also reads an environment fallback ``PROFILE_EMBED_<FLAG>`` (``--batch-size`` ->
``PROFILE_EMBED_BATCH_SIZE``).

Exit codes, the same for every command: 0 done; 1 the work failed (a model or index folder that is
missing, corrupt or of another ``embedding_version``, a failed build, an RPC error) or, by the
``--skip-invalid`` rule, rows were skipped; 2 bad input (a bad flag or flag value, as argparse
does, an ``InvalidInputError`` naming the file, line and field, an unknown head, a missing or
unreadable input file); 130 interrupted. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from embedder.errors import EmbedderError, InvalidInputError, UnknownHeadError, UnknownIdError

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "server.commands.embed",
    "server.commands.batch",
    "server.commands.index",
    "server.commands.train",
    "server.commands.build_default",
    "server.commands.train_head",
    "server.commands.calibrate",
    "server.commands.numerics",
    "server.commands.evaluate",
    "server.commands.predict",
    "server.commands.audience",
    "server.commands.simulate",
    "server.commands.serve",
    "server.commands.client",
)

_ENV_PREFIX = "PROFILE_EMBED_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

#: Errors that mean "what you gave is wrong" (exit 2) rather than "the work failed" (exit 1).
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    InvalidInputError,
    UnknownHeadError,
    UnknownIdError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


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
    """Let ``PROFILE_EMBED_<FLAG>`` set any long option's default (flags still win).

    Nested subcommands (``client predict``, ``index build``) get the same fallback. A value the
    flag's type refuses is a usage error (exit 2) naming the variable.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _apply_env_defaults(child)
            continue
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or action.dest == "help":
            continue
        env = _ENV_PREFIX + longs[0][2:].upper().replace("-", "_")
        if env not in os.environ:
            continue
        raw = os.environ[env]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            action.default = _env_bool(parser, env, raw) == isinstance(
                action, argparse._StoreTrueAction
            )
        elif isinstance(action, argparse.BooleanOptionalAction):
            action.default = _env_bool(parser, env, raw)
        elif action.type is not None and callable(action.type):
            try:
                action.default = action.type(raw)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
                parser.error(f"{env}={raw!r} is not a valid {longs[0]}: {err}")
        else:
            action.default = raw
        if action.choices is not None and action.default not in action.choices:
            # argparse checks choices of typed flags only, never of defaults
            allowed = ", ".join(map(str, action.choices))
            parser.error(f"{env}={raw!r} is not a valid {longs[0]}; allowed: {allowed}")
        action.required = False


def _env_bool(parser: argparse.ArgumentParser, env: str, raw: str) -> bool:
    """An on/off environment value; anything else is a usage error naming the variable."""
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        parser.error(f"{env}={raw!r} is not on/off; allowed: {', '.join(sorted(_TRUE | _FALSE))}")
    return value in _TRUE


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
    """Run the CLI; return the process exit code (see the module docstring).

    Usage errors (argparse's, exit 2) and ``--help`` (exit 0) are returned too, not raised.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:
        return 0 if exit.code is None else int(exit.code)
    _configure_logging(args.verbose)
    try:
        code = args.func(args)
    except BAD_INPUT_ERRORS as err:
        print(f"profile-embed {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except EmbedderError as err:
        print(f"profile-embed {args.command}: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"profile-embed {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
