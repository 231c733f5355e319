"""The output folder of ``profile-embed batch``: result files, manifest, skip logic, atomic writes.

Layout::

    OUT/results/<file_key>.parquet   one per finished input file, written to a temp name then
    os.replace'd
    OUT/_manifest/<file_key>.json    the same facts as the Parquet metadata, for people and fast
    listing
    OUT/_tmp/<run_id>/<file_key>/    parts written by the actors while a file is in progress
    OUT/summary.json                 the last run's summary

A result file is the truth: its Parquet metadata records the input fingerprint and the job spec, so
a
manifest entry lost in a crash between the two writes is rebuilt from it. A run killed at any point
leaves
finished files complete and nothing else visible; the next run deletes ``_tmp`` and redoes the
unfinished
files only. Row-level skip: a row whose ``row_key`` (id + assembled-text hash, + the kept fields'
values) already appears in a compatible result file is not encoded again and not written again.
An input file that changed is run again whole, and the results of its earlier versions are retired
once its new result is written (``OutputStore.superseded``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import ArtifactError

logger = logging.getLogger(__name__)

RESULTS_DIR = "results"
MANIFEST_DIR = "_manifest"
TMP_DIR = "_tmp"
SUMMARY_FILE = "summary.json"
#: Parquet schema-metadata key holding the result file's JSON facts.
META_KEY = b"profile_embed"
FORMAT_VERSION = 1
ROW_KEY_BYTES = 16
#: The spec mark of results whose row keys hold the kept fields' values (see ``row_key``).
KEPT_ROW_KEY = "id+text+kept"


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What a result was computed with; results of another spec are not reused.

    Attributes:
        embedding_version: the encoder's version.
        heads: head name -> head_version.
        with_embeddings: whether results carry the embedding vector.
        with_probabilities: whether results carry each head's probability vector.
        keep_fields: extra input fields copied to the output.
    """

    embedding_version: str
    heads: Mapping[str, int] = field(default_factory=dict)
    with_embeddings: bool = False
    with_probabilities: bool = False
    keep_fields: tuple[str, ...] = ()

    def salt(self) -> str:
        """A stable string of the spec, part of every file key."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready spec."""
        out = asdict(self)
        out["heads"] = dict(sorted(self.heads.items()))
        out["keep_fields"] = list(self.keep_fields)
        if self.keep_fields:
            out["row_key"] = KEPT_ROW_KEY  # keys of such results hold the kept values
        return out

    def satisfied_by(self, other: Mapping[str, Any]) -> bool:
        """True when a result of spec ``other`` (a dict) holds everything this spec asks for."""
        if other.get("embedding_version") != self.embedding_version:
            return False
        theirs = other.get("heads", {})
        if any(theirs.get(name) != version for name, version in self.heads.items()):
            return False
        if self.with_embeddings and not other.get("with_embeddings"):
            return False
        if self.with_probabilities and not other.get("with_probabilities"):
            return False
        if self.keep_fields and other.get("row_key") != KEPT_ROW_KEY:
            return False  # written before keys held the kept values: not a skip source
        return set(self.keep_fields) <= set(other.get("keep_fields", ()))


def row_key(profile_id: str, text_hash: bytes, kept: Sequence[Any] = ()) -> bytes:
    """The skip key of one row: 16 bytes of sha256(id NUL sha256(assembled text) [NUL kept]).

    ``kept`` are the row's kept fields' values: the same follower under another influencer
    is another output row, which a key of id and text alone skipped as done.
    """
    data = profile_id.encode("utf-8") + b"\0" + text_hash
    if kept:
        data += b"\0" + json.dumps(list(kept), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).digest()[:ROW_KEY_BYTES]


def contains(done: np.ndarray, keys: Sequence[bytes]) -> np.ndarray:
    """Vectorised membership of ``keys`` in the sorted ``done`` array (dtype ``S16``)."""
    if len(keys) == 0 or len(done) == 0:
        return np.zeros(len(keys), dtype=bool)
    arr = np.asarray(keys, dtype=f"S{ROW_KEY_BYTES}")
    idx = np.minimum(np.searchsorted(done, arr), len(done) - 1)
    return np.asarray(done[idx] == arr)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


class OutputStore:
    """The output folder of batch runs.

    Args:
        root: the ``--output`` folder (created when missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.results = self.root / RESULTS_DIR
        self.manifest = self.root / MANIFEST_DIR
        for d in (self.results, self.manifest, self.root / TMP_DIR):
            d.mkdir(parents=True, exist_ok=True)

    def new_run_dir(self) -> tuple[str, Path]:
        """Remove what killed runs left and return ``(run_id, tmp folder)`` for this run."""
        self.clean_stale()
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        path = self.root / TMP_DIR / run_id
        path.mkdir(parents=True)
        return run_id, path

    def clean_stale(self) -> None:
        """Delete temp parts and half-written result files of earlier (killed) runs."""
        tmp = self.root / TMP_DIR
        for child in tmp.iterdir():
            shutil.rmtree(child, ignore_errors=True)
            logger.info("removed unfinished parts %s", child)
        for d in (self.results, self.manifest):
            for leftover in d.glob(".*.tmp-*"):
                leftover.unlink(missing_ok=True)

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every finished file's facts, by file key; repairs manifest entries lost in a crash."""
        import pyarrow.parquet as pq

        out: dict[str, dict[str, Any]] = {}
        for result in sorted(self.results.glob("*.parquet")):
            key = result.stem
            entry_path = self.manifest / f"{key}.json"
            try:
                entry = json.loads(entry_path.read_text())
            except (OSError, ValueError):
                meta = pq.read_schema(result).metadata or {}
                if META_KEY not in meta:
                    raise ArtifactError(
                        f"{result} has no '{META_KEY.decode()}' metadata: not written by "
                        "profile-embed batch; move it out of the results folder"
                    ) from None
                entry = json.loads(meta[META_KEY])
                atomic_write_json(entry_path, entry)
                logger.info("rebuilt manifest entry %s from the result file", entry_path.name)
            out[key] = entry
        return out

    def finished_fingerprints(self, spec: JobSpec) -> dict[str, str]:
        """Input fingerprint -> file key, for finished files whose results satisfy ``spec``."""
        return {
            e["input"]["fingerprint"]: key
            for key, e in self.entries().items()
            if spec.satisfied_by(e["spec"])
        }

    def superseded(self, spec: JobSpec, current: Mapping[str, str]) -> dict[str, list[str]]:
        """Result files of ``spec`` made from an earlier version of a current input file.

        Args:
            spec: the run's spec.
            current: input path -> its fingerprint now.

        Returns:
            input path -> the file keys of its results from another fingerprint. They are not
            skip sources (the file's new result holds all its rows) and are retired once it is
            written (:meth:`retire`): read, they kept a changed row's old prediction beside its
            new one and a removed row for good.
        """
        out: dict[str, list[str]] = {}
        for key, entry in self.entries().items():
            path, fingerprint = entry["input"]["path"], entry["input"]["fingerprint"]
            changed = path in current and fingerprint != current[path]
            if changed and spec.satisfied_by(entry["spec"]):
                out.setdefault(path, []).append(key)
        return out

    def retire(self, keys: Sequence[str]) -> None:
        """Delete result files and their manifest entries (superseded ones)."""
        for key in keys:
            (self.results / f"{key}.parquet").unlink(missing_ok=True)
            (self.manifest / f"{key}.json").unlink(missing_ok=True)
            logger.info("retired %s: its input file has changed since", key)

    def done_keys(self, spec: JobSpec, exclude: Sequence[str] = ()) -> np.ndarray:
        """Sorted unique ``row_key`` values (dtype ``S16``) of every compatible result file
        (but the file keys in ``exclude``)."""

        chunks = []
        for key, entry in self.entries().items():
            if key in exclude:
                continue
            if spec.satisfied_by(entry["spec"]) and entry.get("n_written", 0):
                chunks.append(read_row_keys(self.results / f"{key}.parquet"))
        if not chunks:
            return np.empty(0, dtype=f"S{ROW_KEY_BYTES}")
        return np.unique(np.concatenate(chunks))

    def result_paths(self, spec: JobSpec | None = None) -> list[Path]:
        """The finished result files (of ``spec`` when given)."""
        return [
            self.results / f"{key}.parquet"
            for key, e in self.entries().items()
            if spec is None or spec.satisfied_by(e["spec"])
        ]


def read_row_keys(path: str | Path) -> np.ndarray:
    """The ``row_key`` column of a result file as an ``S16`` array, in file order.

    Read from the fixed-size binary column's data buffer: ``to_pylist`` made one Python bytes
    object per row, 1.3 s per 2 million keys against 0.07 s (a re-run reads every finished
    file's keys).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["row_key"])["row_key"].combine_chunks()
    width = ROW_KEY_BYTES
    if (
        pa.types.is_fixed_size_binary(col.type)
        and col.type.byte_width == width
        and not col.null_count
    ):
        return np.frombuffer(
            col.buffers()[1], dtype=f"S{width}", count=len(col), offset=col.offset * width
        )
    return np.asarray(col.to_pylist(), dtype=f"S{width}")


def finalize_file(
    root: str, tmp_dir: str, file_key: str, entry: dict[str, Any], schema_bytes: bytes
) -> dict[str, Any]:
    """Merge one file's parts into ``results/<file_key>.parquet`` atomically, then its manifest
    entry.

    Args:
        root: the output folder.
        tmp_dir: this run's temp folder (holding ``<file_key>/part-*.parquet``).
        file_key: the input file's key.
        entry: the manifest facts (input, spec, counts); completed here with ``created``.
        schema_bytes: the serialised Arrow schema of result rows (used when no part was written).

    Returns:
        The manifest entry written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
    part_dir = Path(tmp_dir) / file_key
    parts = sorted(part_dir.glob("part-*.parquet")) if part_dir.exists() else []
    tables = [pq.read_table(p, schema=schema) for p in parts]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    table = table.sort_by("source_row")
    entry = {**entry, "format_version": FORMAT_VERSION, "created": time.time()}
    entry["n_written"] = table.num_rows
    table = table.replace_schema_metadata({META_KEY: json.dumps(entry).encode()})
    results = Path(root) / RESULTS_DIR
    final = results / f"{file_key}.parquet"
    tmp = results / f".{file_key}.parquet.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, final)
    atomic_write_json(Path(root) / MANIFEST_DIR / f"{file_key}.json", entry)
    shutil.rmtree(part_dir, ignore_errors=True)
    return entry


def write_part(tmp_dir: str, file_key: str, table: Any) -> Path:
    """Write one batch's rows of one file as a part (temp name, then ``os.replace``)."""
    import pyarrow.parquet as pq

    part_dir = Path(tmp_dir) / file_key
    part_dir.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = part_dir / f".{name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, part_dir / name)
    return part_dir / name
