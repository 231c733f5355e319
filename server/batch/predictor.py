"""The actor-pool callable of ``profile-embed batch``: model loaded once per actor, rows in, parts
out.

Ray Data constructs :class:`BatchPredictor` once per actor (CPU, or with a GPU reserved) and calls
it on batches of reader rows (``server.batch.sources.CHUNK_COLUMNS``). For each batch it assembles
the texts, drops rows already done (``row_key`` in the done set), embeds the rest through the
pipeline every entry point shares (``heads.model.ProfileModel``: cache lookup, encode the
misses, write back; the server's encoder settings), runs the heads, writes the results of each
input file as a part under the run's temp folder, and returns one small accounting row per input
file. Results never travel back to the driver.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import VersionMismatchError
from embedder.profile import Profile, text_hash
from server.batch.incremental import JobSpec, contains, row_key, write_part
from server.batch.sources import MARKER_ROW

logger = logging.getLogger(__name__)

#: Bad rows listed per file in the accounting rows (all are counted).
MAX_BAD_LISTED = 200


def result_schema(spec: JobSpec, dim: int, head_labels: Mapping[str, Sequence[str]]) -> Any:
    """The Arrow schema of result rows for ``spec``.

    Args:
        spec: the job spec (heads, optional columns).
        dim: the embedding width.
        head_labels: head name -> label order (for the probability vectors).

    Returns:
        A ``pyarrow.Schema``: id, source_row, embedding_version, text_hash, row_key, [embedding],
        kept fields, and per head ``<head>_label`` (null when abstained), ``<head>_argmax``,
        ``<head>_score``, ``<head>_reason`` (null when assigned, else why it abstained)
        [, ``<head>_probs``].
    """
    import pyarrow as pa

    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("embedding_version", pa.string(), nullable=False),
        pa.field("text_hash", pa.binary(32), nullable=False),
        pa.field("row_key", pa.binary(16), nullable=False),
    ]
    if spec.with_embeddings:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    fields += [pa.field(name, pa.string()) for name in spec.keep_fields]
    for head in spec.heads:
        fields += [
            pa.field(f"{head}_label", pa.string()),
            pa.field(f"{head}_argmax", pa.string()),
            pa.field(f"{head}_score", pa.float32()),
            pa.field(f"{head}_reason", pa.string()),
        ]
        if spec.with_probabilities:
            fields.append(pa.field(f"{head}_probs", pa.list_(pa.float32(), len(head_labels[head]))))
    return pa.schema(fields)


def load_model(
    model_dir: str | Path,
    heads: Sequence[str],
    numerics: str | None,
    threads: int | None,
    cache: str | Path | None = None,
    device: str = "cpu",
) -> Any:
    """Load ``ProfileModel`` with the runtime settings of the serving path.

    Args:
        model_dir: the model folder.
        heads: head names to load (empty: all).
        numerics: one of ``embedder.numerics.NUMERICS``; None keeps the model's default.
        threads: torch threads for this process; None keeps the encoder's default.
        cache: an embedding cache (SQLite) file, or None.
        device: where the encoder runs (``cpu``, ``cuda``; see ``embedder.devices``).

    Returns:
        The loaded ``heads.model.ProfileModel``.
    """
    from heads.model import ProfileModel

    kwargs: dict[str, Any] = {"device": device}
    if numerics is not None:
        kwargs["numerics"] = numerics
    if threads is not None:
        kwargs["threads"] = threads
    return ProfileModel.load(model_dir, heads=list(heads) or None, cache=cache, **kwargs)


class BatchPredictor:
    """Ray Data callable class: one instance per actor, model loaded once in ``__init__``.

    Args:
        model_dir: the model folder.
        spec: the job spec as a dict (``JobSpec.to_dict()``).
        tmp_dir: this run's temp folder for parts.
        schema_bytes: serialised Arrow result schema.
        done_ref: a one-element list holding the ObjectRef of the sorted done keys (shared,
        zero-copy).
        cache_path: optional embedding cache (SQLite) path, local to the actor's node.
        numerics: encoder numerics; None keeps the model default.
        threads: torch threads per actor.
        encode_batch_size: most texts per forward pass.
        device: where this actor's encoder runs: ``"cuda"`` when the job reserved a GPU for it
            (Ray makes that GPU the actor's only visible one), else ``"cpu"``.
    """

    def __init__(
        self,
        *,
        model_dir: str,
        spec: dict[str, Any],
        tmp_dir: str,
        schema_bytes: bytes,
        done_ref: list[Any] | None = None,
        cache_path: str | None = None,
        numerics: str | None = None,
        threads: int | None = None,
        encode_batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        import pyarrow as pa

        self.spec = JobSpec(
            embedding_version=spec["embedding_version"],
            heads=spec["heads"],
            with_embeddings=spec["with_embeddings"],
            with_probabilities=spec["with_probabilities"],
            keep_fields=tuple(spec["keep_fields"]),
        )
        self.tmp_dir = tmp_dir
        self.schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
        self.model = load_model(
            model_dir, list(self.spec.heads), numerics, threads, cache_path or None, device
        )
        version = self.model.encoder.embedding_version
        if version != self.spec.embedding_version:
            raise VersionMismatchError(
                f"actor loaded {model_dir} with embedding_version {version}, but the job was "
                f"planned "
                f"for {self.spec.embedding_version} (was the model folder replaced during the run?)"
            )
        self.encode_batch_size = encode_batch_size
        self.done = _resolve_done(done_ref)
        logger.info(
            "batch actor ready: %s on %s (%s), heads %s, %d done keys",
            version,
            self.model.encoder.device,
            self.model.encoder.numerics,
            list(self.spec.heads),
            len(self.done),
        )

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        """Process a ``pyarrow.Table`` of reader rows; return accounting rows per input file."""
        cols = {name: batch.column(name).to_pylist() for name in batch.column_names}
        stats: dict[str, dict[str, Any]] = defaultdict(
            lambda: {
                "n_in_file": 0,
                "n_processed": 0,
                "n_skipped": 0,
                "n_written": 0,
                "bad": [],
                "n_bad": 0,
                "failed": None,
            }
        )
        good: list[int] = []
        for i, fk in enumerate(cols["file_key"]):
            st = stats[fk]
            st["n_in_file"] = cols["n_in_file"][i]
            if cols["row"][i] == MARKER_ROW:
                st["failed"] = cols["error"][i]
                continue
            st["n_processed"] += 1
            if cols["error"][i] is not None:
                st["n_bad"] += 1
                if len(st["bad"]) < MAX_BAD_LISTED:
                    st["bad"].append(
                        {
                            "row": cols["row"][i],
                            "field": cols["error_field"][i],
                            "error": cols["error"][i],
                        }
                    )
            else:
                good.append(i)
        if good:
            self._predict_and_write(cols, good, stats)
        keys = list(stats)
        return {
            "file_key": keys,
            "n_in_file": [stats[k]["n_in_file"] for k in keys],
            "n_processed": [stats[k]["n_processed"] for k in keys],
            "n_skipped": [stats[k]["n_skipped"] for k in keys],
            "n_written": [stats[k]["n_written"] for k in keys],
            "n_bad": [stats[k]["n_bad"] for k in keys],
            "bad": [json.dumps(stats[k]["bad"], ensure_ascii=False) for k in keys],
            "failed": [stats[k]["failed"] or "" for k in keys],
        }

    def _predict_and_write(
        self, cols: dict[str, list[Any]], good: list[int], stats: dict[str, dict[str, Any]]
    ) -> None:
        profiles = [
            Profile(
                id=cols["id"][i],
                username=cols["username"][i],
                full_name=cols["full_name"][i],
                biography=cols["biography"][i],
                captions=tuple(cols["captions"][i]),
            )
            for i in good
        ]
        texts = self.model.encoder.assemble(profiles)
        hashes = [text_hash(t) for t in texts]
        kept = [self._kept(cols["keep"][i]) for i in good]
        keys = [row_key(p.id, h, k) for p, h, k in zip(profiles, hashes, kept, strict=True)]
        skip = contains(self.done, keys)
        todo = [j for j in range(len(good)) if not skip[j]]
        for j in np.flatnonzero(skip):
            stats[cols["file_key"][good[j]]]["n_skipped"] += 1
        if not todo:
            return
        emb = self.model.embedder.encode_texts(
            [texts[j] for j in todo],
            hashes=[hashes[j] for j in todo],
            batch_size=self.encode_batch_size,
        )
        preds = self.model.predict(emb, heads=list(self.spec.heads))
        columns: dict[str, list[Any]] = {
            "id": [profiles[j].id for j in todo],
            "source_row": [cols["row"][good[j]] for j in todo],
            "embedding_version": [self.spec.embedding_version] * len(todo),
            "text_hash": [hashes[j] for j in todo],
            "row_key": [keys[j] for j in todo],
        }
        if self.spec.with_embeddings:
            columns["embedding"] = list(emb)
        for n, name in enumerate(self.spec.keep_fields):
            columns[name] = [kept[j][n] for j in todo]
        for head in self.spec.heads:
            ps = preds[head]
            columns[f"{head}_label"] = [p.label for p in ps]
            columns[f"{head}_argmax"] = [p.argmax for p in ps]
            columns[f"{head}_score"] = [float(p.score) for p in ps]
            columns[f"{head}_reason"] = [p.reason for p in ps]
            if self.spec.with_probabilities:
                columns[f"{head}_probs"] = [np.asarray(p.probabilities, np.float32) for p in ps]
        self._write_by_file(columns, [cols["file_key"][good[j]] for j in todo], stats)

    def _kept(self, raw: str | None) -> tuple[Any, ...]:
        """The kept fields' values of one row, in ``keep_fields`` order."""
        values = json.loads(raw or "{}")
        return tuple(values.get(name) for name in self.spec.keep_fields)

    def _write_by_file(
        self, columns: dict[str, list[Any]], file_keys: list[str], stats: dict[str, dict[str, Any]]
    ) -> None:
        import pyarrow as pa

        table = pa.table(columns, schema=self.schema)
        by_file: dict[str, list[int]] = defaultdict(list)
        for j, fk in enumerate(file_keys):
            by_file[fk].append(j)
        for fk, rows in by_file.items():
            part = table.take(pa.array(rows)) if len(by_file) > 1 else table
            write_part(self.tmp_dir, fk, part)
            stats[fk]["n_written"] += len(rows)


def _resolve_done(done_ref: list[Any] | None) -> np.ndarray:
    if not done_ref:
        return np.empty(0, dtype="S16")
    import ray

    return np.asarray(ray.get(done_ref[0]))
