"""``profile-embed batch-audience``: every influencer's audience estimate, computed on Ray Data.

Input is either a batch output folder whose results carry ``influencer_id`` and the head's
probability
vectors (``profile-embed batch --with-probabilities --keep-fields influencer_id``), or raw follower
files
with an ``influencer_id`` field, which are first run through the batch pipeline into
``OUTPUT/predictions`` (incremental like any batch run). Then
``read_parquet -> groupby("influencer_id") -> map_groups(estimate)`` runs ``heads.audience``'s
estimator
(EM prior shift by default, with bootstrap intervals over followers and the head's calibration
error) once per influencer, in parallel, and the driver writes ``audience.parquet`` and
``audience.jsonl`` (temp names, then ``os.replace``). Every row names the estimator that produced
its shares (``used``) and its low-evidence ``flags`` (see ``heads.audience.FLAGS``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.errors import InvalidInputError
from server.batch.incremental import (
    RESULTS_DIR,
    JobSpec,
    OutputStore,
    atomic_write_bytes,
    atomic_write_json,
    read_row_keys,
)
from server.batch.pipeline import BatchConfig, run_batch
from server.batch.predictor import load_model
from server.batch.runtime import ensure_ray, quiet_ray_data

if TYPE_CHECKING:
    from heads.audience import Method

logger = logging.getLogger(__name__)

GROUP_FIELD = "influencer_id"


@dataclass(frozen=True, kw_only=True)
class AudienceJobConfig:
    """Settings of one audience job.

    Attributes:
        model_dir: the model folder (the head's prior and confusion come from it).
        followers: a batch output folder, or a folder/glob of raw follower files.
        output: the output folder.
        head: the head whose label distribution is estimated.
        method: estimator of ``heads.audience`` (one of ``heads.audience.METHODS``); None:
            ``heads.audience.default_method`` for what the head recorded.
        n_bootstrap: bootstrap replicates per influencer.
        min_followers: influencers with fewer followers get ``n`` and no shares.
        seed: bootstrap seed.
        num_actors ... show_progress: as in ``BatchConfig`` (used when raw files are given).
    """

    model_dir: Path
    followers: str
    output: Path
    head: str = "geolocation"
    method: str | None = None
    n_bootstrap: int = 200
    min_followers: int = 1
    seed: int = 0
    num_actors: int | None = None
    batch_size: int = 256
    encode_batch_size: int = 64
    cpus_per_actor: float | None = None
    num_cpus: int | None = None
    numerics: str | None = None
    show_progress: bool = True


def _result_files(folder: Path, head: str, embedding_version: str, head_version: int) -> list[str]:
    """The result files computed with this encoder and this version of ``head``.

    Results of other runs in the folder (another head version, another encoder) hold the same
    followers again: read too, they counted each follower twice and mixed the versions.
    """
    spec = JobSpec(
        embedding_version=embedding_version,
        heads={head: head_version},
        with_probabilities=True,
        keep_fields=(GROUP_FIELD,),
    )
    return [str(p) for p in OutputStore(folder).result_paths(spec)]


def _read_results(files: list[str], columns: list[str]) -> Any:
    """A Ray dataset of ``columns`` of the result files, each row once, read by Ray tasks.

    Each row (``row_key``: id, text and influencer) is taken from the first file that holds
    it: runs of other settings that satisfy the job (more heads, embeddings) hold the same
    followers again. Not ``ray.data.read_parquet``: with more than one file its threaded path
    listing imports fsspec's HTTP filesystem, which fails where fsspec lacks aiohttp.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    keys = [read_row_keys(f) for f in files]
    first = np.zeros(sum(len(k) for k in keys), dtype=bool)
    if len(first):
        first[np.unique(np.concatenate(keys), return_index=True)[1]] = True
    bounds = np.cumsum([0, *(len(k) for k in keys)])
    masks = [first[bounds[i] : bounds[i + 1]] for i in range(len(files))]

    def read_one(path: str, keep: np.ndarray) -> Any:
        return pq.read_table(path, columns=columns).filter(pa.array(keep))

    # Any: Ray's stubs type a remote function's refs apart from the refs from_arrow_refs takes
    read: Any = ray.remote(read_one).options(num_cpus=0.25)
    return ray.data.from_arrow_refs([read.remote(f, m) for f, m in zip(files, masks, strict=True)])


def _estimate_group(
    group: Any,
    *,
    labels: list[str],
    method: Method,
    inputs: dict[str, Any],
    n_bootstrap: int,
    min_followers: int,
    seed: int,
    probs_col: str,
) -> Any:
    """map_groups function: one influencer's rows -> one row of estimates."""
    import pyarrow as pa

    from heads.audience import estimate_audience

    influencer = group.column(GROUP_FIELD)[0].as_py()
    col = group.column(probs_col).combine_chunks()
    probs = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), len(labels))
    n = len(probs)
    row: dict[str, Any] = {"influencer_id": influencer, "n": n, "method": method}
    if n < min_followers:
        row.update(shares=None, lower=None, upper=None, used=None, flags=None, interval=None)
    else:
        est = estimate_audience(
            probs, labels=labels, method=method, n_bootstrap=n_bootstrap, seed=seed, **inputs
        )
        row.update(
            shares=[float(x) for x in est.shares],
            lower=[float(x) for x in est.lower],
            upper=[float(x) for x in est.upper],
            used=est.used,
            flags=list(est.flags),
            interval=est.interval,
        )
    schema = pa.schema(_audience_columns(pa))
    return pa.Table.from_pylist([row], schema=schema)


def _audience_columns(pa: Any) -> list[tuple[str, Any]]:
    """The columns of ``audience.parquet``."""
    vec = pa.list_(pa.float64())
    return [
        ("influencer_id", pa.string()),
        ("n", pa.int64()),
        ("method", pa.string()),
        ("used", pa.string()),
        ("flags", pa.list_(pa.string())),
        ("interval", pa.string()),
        ("shares", vec),
        ("lower", vec),
        ("upper", vec),
    ]


def _method_inputs(head: Any, method: str) -> dict[str, Any]:
    """Everything the head's calibration gives ``estimate_audience`` (the flags use it all).

    Raises:
        InvalidInputError: a method that needs what the head did not record.
    """
    from heads.audience import NEEDS, head_audience_inputs

    raw = head_audience_inputs(head)
    missing = [k for k in NEEDS[method] if raw[k] is None]
    if missing:
        raise InvalidInputError(
            f"{method!r} needs {missing} from the head's calibration record, which has none; "
            "use 'average'",
            field="method",
        )
    return raw


def run_audience_job(cfg: AudienceJobConfig) -> dict[str, Any]:
    """Estimate every influencer's audience; see the module docstring.

    Args:
        cfg: the job settings.

    Returns:
        A summary (also ``OUTPUT/audience_summary.json``): influencers, followers used, rows
        without an
        influencer, and the nested batch summary when raw files were given.

    Raises:
        InvalidInputError: no usable follower predictions.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from heads.audience import METHODS, default_method, head_audience_inputs

    if cfg.method is not None and cfg.method not in METHODS:
        raise InvalidInputError(f"is {cfg.method!r}; allowed: {METHODS}", field="method")
    t0 = time.perf_counter()
    cfg.output.mkdir(parents=True, exist_ok=True)
    followers = Path(cfg.followers)
    batch_summary = None
    if not (followers / RESULTS_DIR).is_dir():
        batch_summary = run_batch(
            BatchConfig(
                model_dir=cfg.model_dir,
                input=cfg.followers,
                output=cfg.output / "predictions",
                heads=(cfg.head,),
                with_probabilities=True,
                keep_fields=(GROUP_FIELD,),
                num_actors=cfg.num_actors,
                batch_size=cfg.batch_size,
                encode_batch_size=cfg.encode_batch_size,
                cpus_per_actor=cfg.cpus_per_actor,
                num_cpus=cfg.num_cpus,
                numerics=cfg.numerics,
                show_progress=cfg.show_progress,
            )
        )
        followers = cfg.output / "predictions"
    ensure_ray(cfg.num_cpus)
    quiet_ray_data(cfg.show_progress)
    model = load_model(cfg.model_dir, [cfg.head], None, threads=None)
    head = model.heads[cfg.head]
    files = _result_files(
        followers, cfg.head, model.encoder.embedding_version, int(head.head_version)
    )
    if not files:
        raise InvalidInputError(
            f"no batch results of {model.encoder.embedding_version} and {cfg.head} "
            f"v{head.head_version} with columns '{GROUP_FIELD}' and '{cfg.head}_probs' under "
            f"{followers / RESULTS_DIR}; run profile-embed batch with this model, "
            f"--with-probabilities and --keep-fields {GROUP_FIELD}, or pass raw follower files",
            field="followers",
        )
    labels = list(head.labels)
    recorded = head_audience_inputs(head)
    method = cfg.method or default_method(
        has_prior=recorded["prior"] is not None, has_confusion=recorded["confusion"] is not None
    )
    inputs = _method_inputs(head, method)
    del model
    probs_col = f"{cfg.head}_probs"
    # Any: Ray's stubs do not accept a function with keyword arguments (fn_kwargs) for map_groups
    # select_columns: read_parquet's columns= is deprecated; Ray pushes the projection down into
    # the Parquet read all the same.
    ds: Any = _read_results(files, [GROUP_FIELD, probs_col])
    n_rows = ds.count()
    from ray.data.expressions import col

    ds = ds.filter(expr=col(GROUP_FIELD).is_not_null())
    out = ds.groupby(GROUP_FIELD).map_groups(
        _estimate_group,
        batch_format="pyarrow",
        fn_kwargs={
            "labels": labels,
            "method": method,
            "inputs": inputs,
            "n_bootstrap": cfg.n_bootstrap,
            "min_followers": cfg.min_followers,
            "seed": cfg.seed,
            "probs_col": probs_col,
        },
    )
    table = pa.concat_tables(list(out.iter_batches(batch_size=None, batch_format="pyarrow")))
    table = table.sort_by("influencer_id")
    n_used = int(pa.compute.sum(table["n"]).as_py() or 0)
    meta = {
        "head": cfg.head,
        "labels": labels,
        "method": method,
        "embedding_version": head.embedding_version,
        "n_bootstrap": cfg.n_bootstrap,
    }
    table = table.replace_schema_metadata({b"profile_embed_audience": json.dumps(meta).encode()})
    _write_outputs(cfg.output, table, labels, pq)
    summary = {
        "influencers": table.num_rows,
        "followers_used": n_used,
        "rows_without_influencer": n_rows - n_used,
        "head": cfg.head,
        "method": method,
        "output": str(cfg.output),
        "seconds": round(time.perf_counter() - t0, 3),
        "batch": batch_summary,
    }
    atomic_write_json(cfg.output / "audience_summary.json", summary)
    return summary


def _write_outputs(out: Path, table: Any, labels: list[str], pq: Any) -> None:
    tmp = out / f".audience.parquet.tmp-{time.time_ns()}"
    pq.write_table(table, tmp)
    tmp.replace(out / "audience.parquet")
    lines = []
    for row in table.to_pylist():
        rec: dict[str, Any] = {
            "influencer_id": row["influencer_id"],
            "n": row["n"],
            "method": row["method"],
            "used": row["used"],
            "flags": row["flags"],
            "interval": row["interval"],
            "shares": None,
        }
        if row["shares"] is not None:
            order = np.argsort(-np.asarray(row["shares"]), kind="stable")
            rec["shares"] = {
                labels[i]: {
                    "share": round(row["shares"][i], 5),
                    "lower": round(row["lower"][i], 5),
                    "upper": round(row["upper"][i], 5),
                }
                for i in order
            }
        lines.append(json.dumps(rec, ensure_ascii=False))
    atomic_write_bytes(out / "audience.jsonl", ("\n".join(lines) + "\n").encode())
