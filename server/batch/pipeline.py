"""``profile-embed batch``: embed and classify a profile database with Ray Data.

Plan: list the input files, drop the ones already finished for this job spec, and build a Ray Data
pipeline ``from_items(files) -> map_batches(read_files) -> map_batches(BatchPredictor, actor
pool)``. The read stage is plain CPU tasks (parsing and validation, one file each, streamed in
chunks); the predictor stage is an actor pool (``concurrency=N``) that loads the model once per
actor and writes parts. Actors reserve a GPU share (``num_gpus``) and encode on it only when the
device resolves to CUDA and the cluster reports GPUs (:func:`plan_actors`); otherwise they are CPU
actors. The driver sees only one accounting row per (batch, file); when all rows of a file are
accounted for, a small Ray task merges its parts into ``results/<file_key>.parquet`` atomically.
See ``server.batch.incremental`` for the folder layout.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedder.devices import AUTO, check_device_spec, check_numerics_on
from embedder.errors import InvalidInputError
from server.batch.incremental import (
    SUMMARY_FILE,
    JobSpec,
    OutputStore,
    atomic_write_json,
    finalize_file,
)
from server.batch.predictor import BatchPredictor, load_model, result_schema
from server.batch.runtime import ensure_ray, quiet_ray_data
from server.batch.sources import InputFile, discover_inputs, read_file_chunks

logger = logging.getLogger(__name__)

#: Bad rows listed in summary.json (all are counted).
MAX_BAD_IN_SUMMARY = 1000


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """Settings of one batch run (flags, env vars and tests all build this).

    Attributes:
        model_dir: the model folder (``model.json``, ``encoder/``, ``heads/``).
        input: a folder, glob or file of ``.jsonl``/``.parquet`` profiles.
        output: the output folder (reused across runs: incremental).
        heads: head names to run; empty runs every head of the model.
        with_embeddings: write the embedding vector.
        with_probabilities: write each head's probability vector (needed by ``batch-audience``).
        keep_fields: extra input fields copied to the output (e.g. ``influencer_id``).
        num_actors: predictor actors; None: one per GPU on GPU actors, else one per 2 CPUs.
        batch_size: rows per actor call.
        encode_batch_size: texts per forward pass inside an actor.
        chunk_rows: rows per chunk handed over by the readers.
        cache_path: optional embedding cache (SQLite, node-local) consulted before encoding.
        numerics: encoder numerics (None: the model's default, as the server).
        cpus_per_actor: None: derived from the cluster's CPUs and ``num_actors``.
        num_cpus: CPUs of a local Ray instance (ignored with ``RAY_ADDRESS``).
        show_progress: Ray Data progress bars.
        device: ``auto`` (GPU actors when the cluster reports GPUs), ``cpu`` or ``cuda``
            (refused on a cluster without GPUs). No ``cuda:N``: Ray assigns each actor its GPU.
    """

    model_dir: Path
    input: str
    output: Path
    heads: tuple[str, ...] = ()
    with_embeddings: bool = False
    with_probabilities: bool = False
    keep_fields: tuple[str, ...] = ()
    num_actors: int | None = None
    batch_size: int = 256
    encode_batch_size: int = 64
    chunk_rows: int = 1024
    cache_path: Path | None = None
    numerics: str | None = None
    cpus_per_actor: float | None = None
    num_cpus: int | None = None
    show_progress: bool = True
    device: str = AUTO

    def __post_init__(self) -> None:
        check_device_spec(self.device)
        if self.device.startswith("cuda:"):
            raise InvalidInputError(
                f"device must be auto, cpu or cuda for a batch job (Ray assigns each actor its "
                f"GPU), got {self.device!r}",
                field="device",
            )
        for name in ("batch_size", "encode_batch_size", "chunk_rows"):
            if getattr(self, name) < 1:
                raise InvalidInputError(
                    f"{name} must be >= 1, got {getattr(self, name)}", field=name
                )
        if self.num_actors is not None and self.num_actors < 1:
            raise InvalidInputError(
                f"num_actors must be >= 1, got {self.num_actors}", field="num_actors"
            )
        for name in self.keep_fields:
            # a kept field becomes an output column: one of the result's own names would be a
            # second column of that name (a Ray traceback mid-run, no result written)
            if name in RESERVED_COLUMNS or name.endswith(HEAD_COLUMN_SUFFIXES):
                raise InvalidInputError(
                    f"{name!r} is a column of the results; kept fields may not be named "
                    f"{', '.join(RESERVED_COLUMNS)} or end in {', '.join(HEAD_COLUMN_SUFFIXES)}",
                    field="keep_fields",
                )


#: Result columns a kept input field may not be named (``predictor.result_schema``).
RESERVED_COLUMNS = ("id", "source_row", "embedding_version", "text_hash", "row_key", "embedding")
#: Suffixes of each head's result columns.
HEAD_COLUMN_SUFFIXES = ("_label", "_argmax", "_score", "_reason", "_probs")


@dataclass
class _FileProgress:
    """Accounting of one input file during a run."""

    input: InputFile
    n_in_file: int | None = None
    n_processed: int = 0
    n_skipped: int = 0
    n_written: int = 0
    n_bad: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)
    failed: str | None = None
    submitted: bool = False

    @property
    def complete(self) -> bool:
        return (
            self.n_in_file is not None
            and self.n_in_file >= 0
            and self.n_processed >= self.n_in_file
        )


def _read_files(
    batch: dict[str, Any], *, chunk_rows: int, keep_fields: tuple[str, ...]
) -> Iterator[Any]:
    """Read stage: one input item (path, file key) -> chunks of reader rows."""
    for path, key in zip(batch["path"], batch["file_key"], strict=True):
        yield from read_file_chunks(
            str(path), str(key), chunk_rows=chunk_rows, keep_fields=keep_fields
        )


@dataclass(frozen=True)
class ActorPlan:
    """How many predictor actors, and what each one reserves and runs on.

    Attributes:
        actors: actor pool size.
        cpus: CPUs reserved per actor.
        threads: torch threads per actor.
        gpus: GPUs reserved per actor (a fraction when actors share one; 0: CPU actors).
        device: where each actor's encoder runs (``"cuda"``: its reserved GPU, else ``"cpu"``).
    """

    actors: int
    cpus: float
    threads: int
    gpus: float
    device: str

    def ray_options(self) -> dict[str, float]:
        """The per-actor resource arguments of ``map_batches``."""
        return {"num_cpus": self.cpus, **({"num_gpus": self.gpus} if self.gpus else {})}


def plan_actors(cfg: BatchConfig, resources: Mapping[str, float]) -> ActorPlan:
    """Plan the actor pool from the cluster's resources (``ray.cluster_resources()``).

    GPU actors only when ``cfg.device`` is ``cuda``, or ``auto`` and the cluster reports GPUs;
    then one actor per GPU by default, and actors beyond the GPU count share them (Ray takes
    fractions below 1). The driver decides from the cluster, not from its own torch: it may run
    on a node without a GPU.

    Raises:
        InvalidInputError: ``cuda`` on a cluster without GPUs, or a CPU-only numerics on GPUs.
    """
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    if cfg.device == "cuda" and gpus <= 0:
        raise InvalidInputError(
            "device 'cuda' but the Ray cluster reports no GPUs (resources: "
            + ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if k.isupper())
            + "); use device cpu or auto",
            field="device",
        )
    on_gpu = gpus > 0 and cfg.device in ("cuda", AUTO)
    if on_gpu and cfg.numerics not in (None, AUTO):
        check_numerics_on(cfg.numerics, "cuda")
    if cfg.num_actors is not None:
        n = cfg.num_actors
    else:
        n = max(1, int(gpus)) if on_gpu else max(1, int(cpus // 2))
    if cfg.cpus_per_actor is not None:
        cpus_per = cfg.cpus_per_actor
    else:
        # Leave half a CPU to the read tasks and the finalisers, or they could never be scheduled.
        cpus_per = max(0.25, (cpus - 0.5) / n)
    # Ray takes whole GPUs or fractions below 1 in steps of 1e-4: round the share down.
    gpus_per = max(1e-4, math.floor(min(1.0, gpus / n) * 1e4) / 1e4) if on_gpu else 0.0
    return ActorPlan(n, cpus_per, max(1, int(cpus_per)), gpus_per, "cuda" if on_gpu else "cpu")


def run_batch(cfg: BatchConfig) -> dict[str, Any]:
    """Run (or resume) a batch job; see the module docstring.

    Args:
        cfg: the run settings.

    Returns:
        The summary (also written to ``OUTPUT/summary.json``): counts of files and rows, bad rows
        (file, row, field, error), timings and throughput.

    Raises:
        InvalidInputError: no input files, or another run holds the output folder.
        ArtifactError / VersionMismatchError: the model folder cannot be loaded.
    """
    import ray

    t0 = time.perf_counter()
    store = OutputStore(cfg.output)
    lock = _lock(store.root)
    try:
        res = ensure_ray(cfg.num_cpus)
        quiet_ray_data(cfg.show_progress)
        model = load_model(cfg.model_dir, cfg.heads, cfg.numerics, threads=None)
        heads = model.heads
        spec = JobSpec(
            embedding_version=model.encoder.embedding_version,
            heads={name: int(h.head_version) for name, h in heads.items()},
            with_embeddings=cfg.with_embeddings,
            with_probabilities=cfg.with_probabilities,
            keep_fields=tuple(cfg.keep_fields),
        )
        schema = result_schema(spec, model.encoder.dim, {n: h.labels for n, h in heads.items()})
        del model
        inputs = discover_inputs(cfg.input)
        finished = store.finished_fingerprints(spec)
        pending = [f for f in inputs if f.fingerprint not in finished]
        run_id, tmp_dir = store.new_run_dir()
        logger.info(
            "batch %s: %s, heads %s; %d input files, %d already finished, %d to do",
            run_id,
            spec.embedding_version,
            dict(spec.heads),
            len(inputs),
            len(inputs) - len(pending),
            len(pending),
        )
        progress = {f.key(spec.salt()): _FileProgress(input=f) for f in pending}
        stale = store.superseded(spec, {f.path: f.fingerprint for f in pending})
        n_actors = 0
        if pending:
            done = store.done_keys(spec, exclude=[k for keys in stale.values() for k in keys])
            logger.info("%d result rows of earlier runs can be skipped", len(done))
            plan = plan_actors(cfg, res.resources or {"CPU": res.cpus})
            n_actors = plan.actors
            # Any: Ray's stubs reject functions with keyword arguments (fn_kwargs) in map_batches
            ds: Any = ray.data.from_items(
                [{"path": f.input.path, "file_key": k} for k, f in progress.items()],
                override_num_blocks=len(progress),
            )
            ds = ds.map_batches(
                _read_files,
                batch_size=1,
                num_cpus=0.25,
                fn_kwargs={"chunk_rows": cfg.chunk_rows, "keep_fields": tuple(cfg.keep_fields)},
            )
            ds = ds.map_batches(
                BatchPredictor,
                batch_size=cfg.batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=n_actors),
                **plan.ray_options(),
                fn_constructor_kwargs={
                    "model_dir": str(cfg.model_dir),
                    "spec": spec.to_dict(),
                    "tmp_dir": str(tmp_dir),
                    "schema_bytes": schema.serialize().to_pybytes(),
                    "done_ref": [ray.put(done)],
                    "cache_path": str(cfg.cache_path) if cfg.cache_path else None,
                    "numerics": cfg.numerics,
                    "threads": plan.threads,
                    "encode_batch_size": cfg.encode_batch_size,
                    "device": plan.device,
                },
            )
            logger.info(
                "actors: %d x (%.2f CPU, %d threads, %g GPU) encoding on %s",
                n_actors,
                plan.cpus,
                plan.threads,
                plan.gpus,
                plan.device,
            )
            _drive(ds, progress, store, spec, run_id, str(tmp_dir), schema.serialize().to_pybytes())
            for fp in progress.values():
                if fp.submitted:  # its new result is written: the old version's can go
                    store.retire(stale.get(fp.input.path, []))
        summary = _summary(
            cfg, spec, run_id, inputs, progress, res.address, n_actors, time.perf_counter() - t0
        )
        atomic_write_json(store.root / SUMMARY_FILE, summary)
        _remove_quietly(tmp_dir)
        return summary
    finally:
        lock.close()


def _drive(
    ds: Any,
    progress: dict[str, _FileProgress],
    store: OutputStore,
    spec: JobSpec,
    run_id: str,
    tmp_dir: str,
    schema_bytes: bytes,
) -> None:
    """Consume the accounting stream and finalise each file once all its rows are accounted for."""
    import ray

    finalize = ray.remote(finalize_file).options(num_cpus=0.1)
    pending_refs: dict[Any, str] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            fp = progress[row["file_key"]]
            fp.n_in_file = row["n_in_file"]
            fp.n_processed += row["n_processed"]
            fp.n_skipped += row["n_skipped"]
            fp.n_written += row["n_written"]
            fp.n_bad += row["n_bad"]
            fp.bad.extend(json.loads(row["bad"]))
            fp.failed = fp.failed or (row["failed"] or None)
            if fp.complete and not fp.submitted:
                fp.submitted = True
                entry = _entry(row["file_key"], fp, spec, run_id)
                ref = finalize.remote(
                    str(store.root), tmp_dir, row["file_key"], entry, schema_bytes
                )
                pending_refs[ref] = row["file_key"]
        _collect(pending_refs, wait=False)
    _collect(pending_refs, wait=True)
    for key, fp in progress.items():
        if not fp.submitted and fp.failed is None:
            fp.failed = f"incomplete: {fp.n_processed} of {fp.n_in_file} rows accounted for"
            logger.error("input %s (%s) %s", fp.input.path, key, fp.failed)


def _collect(refs: dict[Any, str], *, wait: bool) -> None:
    import ray

    if not refs:
        return
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=None if wait else 0)
    for ref in ready:
        entry = ray.get(ref)
        logger.info(
            "finished %s: %d rows written, %d skipped, %d bad",
            entry["input"]["path"],
            entry["n_written"],
            entry["n_skipped"],
            entry["n_bad"],
        )
        del refs[ref]


def _entry(file_key: str, fp: _FileProgress, spec: JobSpec, run_id: str) -> dict[str, Any]:
    return {
        "file_key": file_key,
        "input": {
            "path": fp.input.path,
            "size": fp.input.size,
            "mtime_ns": fp.input.mtime_ns,
            "fingerprint": fp.input.fingerprint,
        },
        "spec": spec.to_dict(),
        "run_id": run_id,
        "n_in_file": fp.n_in_file,
        "n_skipped": fp.n_skipped,
        "n_bad": fp.n_bad,
        "bad_rows": fp.bad[:100],
    }


def _summary(
    cfg: BatchConfig,
    spec: JobSpec,
    run_id: str,
    inputs: list[InputFile],
    progress: dict[str, _FileProgress],
    address: str,
    n_actors: int,
    seconds: float,
) -> dict[str, Any]:
    bad = [{"file": fp.input.path, **b} for fp in progress.values() for b in fp.bad][
        :MAX_BAD_IN_SUMMARY
    ]
    processed = sum(fp.n_processed for fp in progress.values())
    return {
        "run_id": run_id,
        "embedding_version": spec.embedding_version,
        "heads": dict(spec.heads),
        "ray": address,
        "num_actors": n_actors,
        "batch_size": cfg.batch_size,
        "files_total": len(inputs),
        "files_already_done": len(inputs) - len(progress),
        "files_finished": sum(fp.submitted for fp in progress.values()),
        "files_failed": [
            {"file": fp.input.path, "error": fp.failed}
            for fp in progress.values()
            if fp.failed is not None and not fp.submitted
        ],
        "rows_read": processed,
        "rows_written": sum(fp.n_written for fp in progress.values()),
        "rows_skipped": sum(fp.n_skipped for fp in progress.values()),
        "rows_bad": sum(fp.n_bad for fp in progress.values()),
        "bad_rows": bad,
        "seconds": round(seconds, 3),
        "rows_per_second": round(processed / seconds, 1) if seconds > 0 else None,
        "output": str(cfg.output),
    }


class _Lock:
    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def close(self) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _lock(root: Path) -> _Lock:
    """One run per output folder at a time (a second one would delete the first one's parts)."""
    fh = open(root / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise InvalidInputError(
            f"another batch run holds {root} (lock file {root / '.lock'}); wait for it or choose "
            "another --output",
            field="output",
        ) from None
    return _Lock(fh)


def _remove_quietly(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
