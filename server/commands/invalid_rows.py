"""Invalid profile rows on the command line: the shared ``--skip-invalid`` flag and its report.

Every command that reads profile files (``embed``, ``predict``, ``evaluate``, ``audience``,
``train``, ``train-head``, ``client``) follows one rule:

- without ``--skip-invalid`` the first invalid row stops the command before any work: one error
  line naming the file, the line (Parquet: the row) and the field, with the value received and what
  is allowed; exit code 2 (bad input, as for a bad flag), no stack trace;
- with ``--skip-invalid`` every invalid row is skipped and listed on stderr as
  ``FILE:LINE: field 'x': reason`` (Parquet: ``FILE:row N: ...``; the first :data:`MAX_LISTED`, then
  ``... and N more invalid rows``), followed by a count line ``FILE: read N rows: V valid, I invalid
  (skipped)``; the command does its work on all the valid rows and exits 1 at the end when any row
  was skipped (0 when none was), so a script still notices.

(``batch`` and ``batch-audience`` always skip and count bad rows, in ``summary.json`` and on
stderr: a database-wide job never stops for one row; see docs/SCALING.md.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

#: Invalid rows listed one by one per file; the rest are only counted.
MAX_LISTED = 20

SKIP_INVALID_HELP = (
    "skip invalid rows instead of stopping at the first: each is listed on stderr "
    f"(file:line and field; first {MAX_LISTED}) with a count line, the valid rows are all used, "
    "and the command exits 1 at the end when any row was skipped"
)


def add_skip_invalid(parser: argparse.ArgumentParser) -> None:
    """Add ``--skip-invalid`` (``PROFILE_EMBED_SKIP_INVALID``) to a subcommand's parser."""
    parser.add_argument("--skip-invalid", action="store_true", help=SKIP_INVALID_HELP)


def where(err: Any) -> str:
    """``FILE:LINE`` of an invalid row (``FILE:row N`` for Parquet, where lines are rows)."""
    source = "<input>" if err.source is None else str(err.source)
    if err.line is None:
        return source
    if source.lower().endswith(".parquet"):
        return f"{source}:row {err.line}"
    return f"{source}:{err.line}"


def describe(err: Any) -> str:
    """One line for an invalid row: ``FILE:LINE: field 'x': reason``."""
    field = f" field '{err.field}':" if err.field else ""
    return f"{where(err)}:{field} {err.reason}"


def list_errors(errors: list[Any], stream: TextIO | None = None) -> None:
    """Print the first :data:`MAX_LISTED` invalid rows, then how many more were skipped."""
    out = stream or sys.stderr
    for err in errors[:MAX_LISTED]:
        print(describe(err), file=out)
    if len(errors) > MAX_LISTED:
        print(f"... and {len(errors) - MAX_LISTED} more invalid rows", file=out)


def count_line(path: str | Path, n_read: int, n_valid: int, n_invalid: int) -> str:
    """``FILE: read N rows: V valid, I invalid (skipped)``."""
    return f"{path}: read {n_read} rows: {n_valid} valid, {n_invalid} invalid (skipped)"


def report_load(
    path: str | Path, result: Any, *, skip_invalid: bool, stream: TextIO | None = None
) -> None:
    """Report what :func:`embedder.data.read_profiles` found in one file, on stderr.

    Lists the invalid rows (capped), prints the count line (with ``--skip-invalid``, also when no
    row was invalid) with the invalid rows per field, and notes captions cut beyond the limit.
    """
    from embedder.profile import MAX_CAPTIONS

    out = stream or sys.stderr
    list_errors(result.errors, out)
    if skip_invalid or result.errors:
        line = count_line(path, result.n_read, len(result.rows), result.n_invalid)
        if result.errors:
            by_field = ", ".join(f"{k} {v}" for k, v in sorted(result.error_counts().items()))
            line += f"; invalid by field: {by_field}"
        print(line, file=out)
    if result.captions_dropped:
        print(
            f"note: {path}: {result.captions_dropped} captions beyond the {MAX_CAPTIONS} most "
            "recent were dropped",
            file=out,
        )


def load_profiles(path: str | Path, *, skip_invalid: bool, require: tuple[str, ...] = ()) -> Any:
    """Read a profile file by the rule above and report it; return the ``LoadResult``.

    Raises:
        InvalidInputError: without ``skip_invalid``, on the first invalid row (and, either way, on
            an unreadable file or a bad header).
    """
    from embedder.data import read_profiles

    result = read_profiles(path, skip_invalid=skip_invalid, require=require)
    report_load(path, result, skip_invalid=skip_invalid)
    return result


class LoadReporter:
    """A ``report(path, result)`` callback for the training functions; counts what was skipped."""

    def __init__(self, *, skip_invalid: bool, stream: TextIO | None = None) -> None:
        self.skip_invalid = skip_invalid
        self.stream = stream
        self.n_invalid = 0

    def __call__(self, path: str, result: Any) -> None:
        self.n_invalid += result.n_invalid
        report_load(path, result, skip_invalid=self.skip_invalid, stream=self.stream)
