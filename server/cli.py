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
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

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
#: OSError numbers that mean "this path you gave cannot be used" (exit 2).
_PATH_ERRNOS = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EROFS,
        errno.ELOOP,
        errno.EEXIST,
    }
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


class _BadEnv:
    """The default of a flag whose ``PROFILE_EMBED_<FLAG>`` value it refuses.

    Reported only when the command that owns the flag runs and the flag is not given (so a
    value meant for one command's ``--device`` cannot break another command's parser).
    """

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        self.parser, self.message = parser, message


def _apply_env_defaults(parser: argparse.ArgumentParser) -> None:
    """Let ``PROFILE_EMBED_<FLAG>`` set any long option's default (flags still win).

    Nested subcommands (``client predict``, ``index build``) get the same fallback. A value the
    flag's type or choices refuse is a usage error (exit 2) naming the variable, raised by
    :func:`_check_env_values` when that command runs.
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
        action.required = False
        try:
            action.default = _env_value(action, raw)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            action.default = _BadEnv(parser, f"{env}={raw!r} is not a valid {longs[0]}: {err}")


def _env_value(action: argparse.Action, raw: str) -> Any:
    """The value ``raw`` gives the flag of ``action``, as if it were typed on the command line."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return _env_bool(raw) == isinstance(action, argparse._StoreTrueAction)
    if isinstance(action, argparse.BooleanOptionalAction):
        return _env_bool(raw)
    value = action.type(raw) if action.type is not None and callable(action.type) else raw
    if action.choices is not None and value not in action.choices:
        # argparse checks the choices of given flags only, never of defaults
        raise ValueError(f"allowed: {', '.join(map(str, action.choices))}")
    return value


def _env_bool(raw: str) -> bool:
    """An on/off environment value."""
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"not on/off; allowed: {', '.join(sorted(_TRUE | _FALSE))}")
    return value in _TRUE


def _check_env_values(args: argparse.Namespace) -> None:
    """Exit 2 (argparse's usage error) when the running command took a refused env value."""
    for value in vars(args).values():
        if isinstance(value, _BadEnv):
            value.parser.error(value.message)


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity + 1, 2)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in (
        "urllib3",
        "filelock",
        "httpx",
        "transformers",
        "sentence_transformers",
        "faiss.loader",  # one INFO line per CPU build it could not load
    ):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code (see the module docstring).

    Usage errors (argparse's, exit 2) and ``--help`` (exit 0) are returned too, not raised.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        args = build_parser().parse_args(argv)
        _check_env_values(args)
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
    except OSError as err:
        # A path the user gave that the system refuses (too long, read-only, a loop ...):
        # one line naming it. Other system errors (a full disk) mean the work failed.
        where = f": {err.filename}" if err.filename else ""
        print(f"profile-embed {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT if err.errno in _PATH_ERRNOS else EXIT_FAILED
    except KeyboardInterrupt:
        print(f"profile-embed {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
