"""What every command that writes a file shares: flag types, output checks, atomic writes.

A command checks its flags and its output path before any work, so a typo costs nothing and an
existing file is never emptied by a run that then fails; it writes next to the output and renames
at the end, so an interrupted run leaves the previous file (or none), never half of one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from embedder.errors import InvalidInputError


def positive(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: ``convert``'s value, refused unless > 0 (NaN included)."""

    def check(raw: str) -> Any:
        value = convert(raw)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"got {raw!r}; allowed: a number > 0")
        return value

    check.__name__ = convert.__name__
    return check


def check_output(
    output: str | Path,
    *,
    inputs: tuple[str | Path, ...] = (),
    suffixes: tuple[str, ...] = (),
    flag: str = "--output",
) -> Path:
    """Refuse an output that is one of the inputs or has a suffix the command cannot write.

    Raises:
        InvalidInputError: naming the flag, the path and what is allowed.
    """
    path = Path(output)
    if is_stream(path):
        return path
    if suffixes and path.suffix.lower() not in suffixes:
        raise InvalidInputError(
            f"unsupported output suffix {path.suffix!r} for {flag} {path}; "
            f"allowed: {', '.join(suffixes)}"
        )
    for given in inputs:
        if str(given) != "-" and _same_file(Path(given), path):
            raise InvalidInputError(
                f"{flag} {path} is the input file {given}; writing it would destroy the input, "
                "so choose another output path"
            )
    return path


def is_stream(path: str | Path) -> bool:
    """``-`` (standard output) or an existing file that is not a regular one (``/dev/stdout``,
    a pipe): written as it goes, with no suffix to check and nothing to rename."""
    path = Path(path)
    return str(path) == "-" or (path.exists() and not path.is_file())


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path``; renamed to ``path`` when the block ends without error."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); the output gets what open() would have given it
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_text(path: str | Path) -> Iterator[IO[str]]:
    """A UTF-8 text file that appears at ``path`` only when the block ends without error
    (a stream, see :func:`is_stream`, is written directly)."""
    if str(path) == "-":
        yield sys.stdout
        return
    if is_stream(path):
        with open(path, "w", encoding="utf-8") as stream:
            yield stream
        return
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        yield out
