"""Input files of a batch job: discovery, fingerprints and chunked, validating readers.

A bad row never stops a job. Every row of every file comes out of :func:`read_file_chunks` exactly
once,
either as a valid profile or as an error naming the file, the 1-based row (the line number for
JSONL) and
the field, so the job can count rows and know when a file is complete. Validation is
``Profile.from_dict``'s, the same as every other entry point.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedder.errors import InvalidInputError
from embedder.profile import Profile

logger = logging.getLogger(__name__)

#: Suffixes read as JSON lines and as Parquet.
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
#: Column names of a chunk (the rows handed from the readers to the predictor actors).
CHUNK_COLUMNS = (
    "file_key", "row", "n_in_file", "id", "username", "full_name", "biography", "captions",
    "keep", "error", "error_field",
)  # fmt: skip
#: ``row`` of a marker row: an empty file (n_in_file 0) or an unreadable one (n_in_file -1).
MARKER_ROW = 0


@dataclass(frozen=True)
class InputFile:
    """One input file and the facts that tell whether it changed since a previous run.

    Attributes:
        path: absolute path.
        size: size in bytes.
        mtime_ns: modification time in nanoseconds.
    """

    path: str
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> str:
        """``path|size|mtime_ns``: a file rewritten in place gets a new one (as make, rsync)."""
        return f"{self.path}|{self.size}|{self.mtime_ns}"

    def key(self, salt: str) -> str:
        """A file-name-safe key: the stem plus 16 hex of sha256(fingerprint + salt)."""
        digest = hashlib.sha256(f"{self.fingerprint}|{salt}".encode()).hexdigest()[:16]
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(self.path).stem)[:60]
        return f"{stem}-{digest}"


def _is_input(path: str) -> bool:
    return path.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES) and os.path.isfile(path)


def discover_inputs(spec: str | Path) -> list[InputFile]:
    """List the input files named by a folder, a glob or a single file.

    Args:
        spec: a folder (searched recursively for ``*.jsonl``/``*.ndjson``/``*.parquet``/``*.pq``;
            names starting with ``.`` or ``_`` are skipped), a glob pattern, or one file.

    Returns:
        The files, sorted by path.

    Raises:
        InvalidInputError: when nothing matches.
    """
    spec = str(spec)
    if os.path.isdir(spec):
        paths = []
        for root, dirs, files in os.walk(spec):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            paths += [os.path.join(root, f) for f in files if not f.startswith((".", "_"))]
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = glob.glob(spec, recursive=True)
    found = sorted({os.path.abspath(p) for p in paths if _is_input(p)})
    if not found:
        raise InvalidInputError(
            f"no input files match {spec!r}: expected a folder, glob or file with suffix "
            f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}",
            field="input",
        )
    out = []
    for p in found:
        st = os.stat(p)
        out.append(InputFile(path=p, size=st.st_size, mtime_ns=st.st_mtime_ns))
    return out


class _ChunkBuilder:
    """Accumulates rows of one file into column lists."""

    def __init__(self, file_key: str, n_in_file: int, keep_fields: Sequence[str]) -> None:
        self.file_key = file_key
        self.n_in_file = n_in_file
        self.keep_fields = tuple(keep_fields)
        self.cols: dict[str, list[Any]] = {c: [] for c in CHUNK_COLUMNS}

    def __len__(self) -> int:
        return len(self.cols["row"])

    def add(self, row: int, record: Any, source: str) -> None:
        try:
            if isinstance(record, Exception):
                raise record
            profile, _ = Profile.from_dict(record, source=source, line=row)
        except InvalidInputError as err:
            self._append(row, None, err.reason, err.field)
            return
        self._append(row, profile, None, None)

    def add_error(self, row: int, message: str, field: str | None = None) -> None:
        self._append(row, None, message, field)

    def add_marker(self, error: str | None = None) -> None:
        self._append(MARKER_ROW, None, error, None)

    def _append(self, row: int, p: Profile | None, error: str | None, field: str | None) -> None:
        c = self.cols
        c["file_key"].append(self.file_key)
        c["row"].append(row)
        c["n_in_file"].append(self.n_in_file)
        c["id"].append(p.id if p else None)
        c["username"].append(p.username if p else "")
        c["full_name"].append(p.full_name if p else "")
        c["biography"].append(p.biography if p else "")
        c["captions"].append(list(p.captions) if p else [])
        keep = {k: _as_text(p.extra.get(k)) for k in self.keep_fields} if p else {}
        c["keep"].append(json.dumps(keep, ensure_ascii=False) if keep else "")
        c["error"].append(error)
        c["error_field"].append(field)

    def take(self) -> dict[str, list[Any]]:
        out, self.cols = self.cols, {c: [] for c in CHUNK_COLUMNS}
        return out


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def read_file_chunks(
    path: str,
    file_key: str,
    *,
    chunk_rows: int = 1024,
    keep_fields: Sequence[str] = (),
) -> Iterator[dict[str, list[Any]]]:
    """Yield the rows of one input file as column dicts of at most ``chunk_rows`` rows.

    Args:
        path: a ``.jsonl``/``.ndjson`` or ``.parquet``/``.pq`` file.
        file_key: the key written on every row (see :meth:`InputFile.key`).
        chunk_rows: rows per yielded chunk.
        keep_fields: extra record fields (such as ``influencer_id``) carried to the output as text.

    Yields:
        Dicts with the keys of ``CHUNK_COLUMNS``. Every row carries ``n_in_file``. An empty file
        gives
        one marker row (``row == 0``, ``n_in_file == 0``); an unreadable file one marker row with
        ``n_in_file == -1`` and the error.
    """
    try:
        if path.endswith(PARQUET_SUFFIXES):
            yield from _parquet_chunks(path, file_key, chunk_rows, keep_fields)
        else:
            yield from _jsonl_chunks(path, file_key, chunk_rows, keep_fields)
    except (
        OSError,
        ValueError,
    ) as err:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
        logger.warning("unreadable input file %s: %s", path, err)
        marker = _ChunkBuilder(file_key, -1, keep_fields)
        marker.add_marker(f"unreadable file: {type(err).__name__}: {err}")
        yield marker.take()


def _jsonl_chunks(
    path: str, file_key: str, chunk_rows: int, keep_fields: Sequence[str]
) -> Iterator[dict[str, list[Any]]]:
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    builder = _ChunkBuilder(file_key, len(numbered), keep_fields)
    if not numbered:
        builder.add_marker()
        yield builder.take()
        return
    for lineno, raw in numbered:
        try:
            record: Any = json.loads(raw)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            builder.add_error(lineno, f"invalid JSON: {err}")
        else:
            builder.add(lineno, record, path)
        if len(builder) >= chunk_rows:
            yield builder.take()
    if len(builder):
        yield builder.take()


def _parquet_chunks(
    path: str, file_key: str, chunk_rows: int, keep_fields: Sequence[str]
) -> Iterator[dict[str, list[Any]]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    n = pf.metadata.num_rows
    builder = _ChunkBuilder(file_key, n, keep_fields)
    if n == 0:
        builder.add_marker()
        yield builder.take()
        return
    row = 0
    for batch in pf.iter_batches(batch_size=chunk_rows):
        for record in batch.to_pylist():
            row += 1
            builder.add(row, record, path)
        yield builder.take()
