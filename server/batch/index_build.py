"""``profile-embed index build``: an IVF (or IVF-PQ) faiss index from batch embedding outputs.

Two streaming passes over the Parquet files (``id`` + ``embedding`` columns, as written by
``profile-embed batch --with-embeddings``): the first collects a random training sample and a
held-out
query set, the second adds every other vector to the trained index and, at the same time, computes
the
exact top-k of the queries by brute force, so recall@k is measured against exact search without
holding
the vectors in memory. The result is a folder in ``embedder.index.SimilarityIndex``'s format
(``profiles.faiss`` + ``profiles.meta.json``), so ``SimilarityIndex.load`` serves it; the build
facts
(compression, nlist, PQ m, recall per nprobe) are added to the metadata under ``"build"``.

Compression: flat IVF keeps ``n x dim x 4`` bytes of vectors in memory; when that estimate exceeds
``ram_fraction`` of the available memory the index stores PQ codes (``pq_m`` bytes per vector)
instead.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import ArtifactError, InvalidInputError
from embedder.index import write_index_folder

logger = logging.getLogger(__name__)

COMPRESSIONS = ("auto", "flat", "pq")


@dataclass(frozen=True, kw_only=True)
class IndexBuildConfig:
    """Settings of an index build.

    Attributes:
        embeddings: a batch output folder, a folder or glob of Parquet files with ``id`` and
            ``embedding`` (fixed-size list of float32) columns.
        output: the index folder to write (must not hold an index of another embedding_version).
        nlist: IVF lists; None: ``4 sqrt(n)`` capped at ``n / 39``.
        pq_m: PQ sub-quantizers (bytes per vector); None: the largest divisor of dim up to ``dim /
        8``.
        compression: ``auto`` (PQ when the vectors exceed ``ram_fraction`` of available memory),
            ``flat`` or ``pq``.
        ram_fraction: share of available memory the flat vectors may take under ``auto``.
        available_bytes: override of the available memory (None: read ``/proc/meminfo``).
        train_size: training vectors; None: ``min(n, max(64 nlist, 10000))``.
        n_queries: held-out query vectors for recall (not added to the index).
        k: neighbours for recall@k.
        nprobe: lists visited per query, stored in the index.
        seed: sampling seed.
        read_batch: rows per Parquet read batch.
    """

    embeddings: str
    output: Path
    nlist: int | None = None
    pq_m: int | None = None
    compression: str = "auto"
    ram_fraction: float = 0.5
    available_bytes: int | None = None
    train_size: int | None = None
    n_queries: int = 1000
    k: int = 10
    nprobe: int = 16
    seed: int = 0
    read_batch: int = 65536

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise InvalidInputError(
                f"compression must be one of {COMPRESSIONS}, got {self.compression!r}",
                field="compression",
            )
        for name in ("n_queries", "k", "nprobe", "read_batch"):
            if getattr(self, name) < 1:
                raise InvalidInputError(
                    f"{name} must be >= 1, got {getattr(self, name)}", field=name
                )
        for name in ("nlist", "pq_m", "train_size", "available_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidInputError(
                    f"{name} must be >= 1 (or none: chosen from the data), got {value}", field=name
                )
        if not 0 < self.ram_fraction <= 1:  # NaN fails too
            raise InvalidInputError(
                f"ram_fraction must be in (0, 1], got {self.ram_fraction}", field="ram_fraction"
            )


def embedding_files(spec: str) -> list[Path]:
    """Parquet files with an ``embedding`` column: batch output folder, folder or glob."""
    import glob

    root = Path(spec)
    if (root / "results").is_dir():
        paths = sorted((root / "results").glob("*.parquet"))
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith((".", "_")))
    else:
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True))
    out = [p for p in paths if p.suffix.lower() == ".parquet" and _has_embeddings(p)]
    if not out:
        raise InvalidInputError(
            f"no Parquet files with an 'embedding' column under {spec!r}; run profile-embed batch "
            "with --with-embeddings first",
            field="embeddings",
        )
    return out


def _has_embeddings(path: Path) -> bool:
    """Whether ``path`` is a Parquet file with an ``embedding`` column.

    Raises:
        InvalidInputError: naming a ``.parquet`` file that cannot be read as Parquet.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return "embedding" in pq.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise InvalidInputError(
            f"not a readable Parquet file: {err}", source=str(path), field="embeddings"
        ) from None


def _scan(paths: list[Path]) -> tuple[np.ndarray, int, str]:
    """Return (first, dim, embedding_version) read from the Parquet metadata and columns.

    ``first[r]`` is True where row ``r`` (in the order ``_batches`` reads) is its id's first
    occurrence: a folder of two batch runs (two specs) holds some ids twice, and every later step
    (the index's size, the training sample, the held-out queries) counts each id once.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, dim, versions = 0, None, set()
    seen: set[str] = set()
    first: list[np.ndarray] = []
    for p in paths:
        pf = pq.ParquetFile(p)
        n += pf.metadata.num_rows
        for batch in pf.iter_batches(batch_size=65_536, columns=["id"]):  # memory: the set only
            ids = batch.column("id").to_pylist()
            mask = np.zeros(len(ids), bool)
            for j, i in enumerate(ids):
                if i not in seen:
                    seen.add(i)
                    mask[j] = True
            first.append(mask)
        t = pf.schema_arrow.field("embedding").type
        if not pa.types.is_fixed_size_list(t):
            raise ArtifactError(f"{p}: 'embedding' must be a fixed-size list of float32, got {t}")
        if dim is not None and t.list_size != dim:
            raise ArtifactError(
                f"{p}: embedding dim {t.list_size} differs from {dim} in other files"
            )
        dim = t.list_size
        if pf.metadata.num_rows and "embedding_version" in pf.schema_arrow.names:
            col = pq.read_table(p, columns=["embedding_version"])["embedding_version"]
            versions.update(col.unique().to_pylist())
    if len(versions) > 1:
        raise ArtifactError(
            f"embeddings of several versions {sorted(versions)} in one folder; an index holds one"
        )
    return (
        np.concatenate(first) if first else np.zeros(0, bool),
        int(dim or 0),
        versions.pop() if versions else "unknown",
    )


def _batches(paths: list[Path], read_batch: int) -> Iterator[tuple[list[str], np.ndarray]]:
    import pyarrow.parquet as pq

    for p in paths:
        pf = pq.ParquetFile(p)
        for b in pf.iter_batches(batch_size=read_batch, columns=["id", "embedding"]):
            emb = b.column("embedding")
            dim = emb.type.list_size
            vecs = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
            yield b.column("id").to_pylist(), vecs


def available_memory() -> int:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (physical pages as a fallback)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_pq_m(dim: int) -> int:
    """The largest divisor of ``dim`` up to ``dim / 8`` (8 or more dims per sub-quantizer)."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def choose_compression(cfg: IndexBuildConfig, n: int, dim: int) -> tuple[str, int, int]:
    """Return (compression, estimated flat bytes, available bytes)."""
    flat_bytes = n * dim * 4 + n * 16  # vectors + ids/lists overhead
    avail = cfg.available_bytes if cfg.available_bytes is not None else available_memory()
    if cfg.compression != "auto":
        return cfg.compression, flat_bytes, avail
    return ("pq" if flat_bytes > cfg.ram_fraction * avail else "flat"), flat_bytes, avail


def _topk_merge(
    best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, idx: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([best_s, scores], axis=1)
    i = np.concatenate([best_i, np.broadcast_to(idx, scores.shape)], axis=1)
    top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
    return np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)


def build_index(cfg: IndexBuildConfig) -> dict[str, Any]:
    """Build, evaluate and save the index; see the module docstring.

    Args:
        cfg: the build settings.

    Returns:
        The build facts (also stored under ``"build"`` in ``profiles.meta.json``), with
        ``recall_at_k`` at the stored ``nprobe`` and ``recall_by_nprobe``.

    Raises:
        InvalidInputError: no embeddings, or too few vectors for the requested lists.
        ArtifactError: inconsistent embedding files.
        VersionMismatchError: the output folder holds an index of another embedding_version.
    """
    import faiss

    t0 = time.perf_counter()
    paths = embedding_files(cfg.embeddings)
    first, dim, version = _scan(paths)
    unique_rows = np.flatnonzero(first)
    n = len(unique_rows)
    n_q = min(cfg.n_queries, max(1, n // 10))
    n_base = n - n_q
    nlist = cfg.nlist or max(1, min(int(4 * math.sqrt(n_base)), n_base // 39))
    if n_base < nlist or n_base < 2:
        raise InvalidInputError(
            f"{n} vectors are too few for an IVF index with nlist {nlist} "
            f"and {n_q} held-out queries",
            field="nlist",
        )
    compression, flat_bytes, avail = choose_compression(cfg, n_base, dim)
    pq_m = (cfg.pq_m or default_pq_m(dim)) if compression == "pq" else None
    if pq_m is not None and dim % pq_m:
        raise InvalidInputError(f"pq_m must divide dim {dim}, got {pq_m}", field="pq_m")
    rng = np.random.default_rng(cfg.seed)
    perm = unique_rows[rng.permutation(n)]
    query_rows = np.sort(perm[:n_q])
    train_n = cfg.train_size or min(n_base, max(64 * nlist, 10_000))
    train_rows = np.sort(perm[n_q : n_q + min(train_n, n_base)])
    logger.info(
        "index build: %d vectors (dim %d, %s), %s, nlist %d, pq_m %s, train %d, queries %d",
        n,
        dim,
        version,
        compression,
        nlist,
        pq_m,
        len(train_rows),
        n_q,
    )

    # Pass 1: training sample and queries.
    queries = np.zeros((n_q, dim), np.float32)
    train = np.zeros((len(train_rows), dim), np.float32)
    start = 0
    for _, vecs in _batches(paths, cfg.read_batch):
        stop = start + len(vecs)
        for rows, dest in ((query_rows, queries), (train_rows, train)):
            lo, hi = np.searchsorted(rows, [start, stop])
            dest[lo:hi] = vecs[rows[lo:hi] - start]
        start = stop

    quantizer = faiss.IndexFlatIP(dim)
    index: faiss.IndexIVF
    if pq_m is not None:
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    t_train = time.perf_counter()
    index.train(train)
    train_s = time.perf_counter() - t_train
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # not in faiss's stubs

    # Pass 2: add the base vectors, exact top-k of the queries on the way.
    k = min(cfg.k, n_base)
    best_s = np.full((n_q, k), -np.inf, np.float32)
    best_i = np.full((n_q, k), -1, np.int64)
    ids: list[str] = []
    start = 0
    for batch_ids, vecs in _batches(paths, cfg.read_batch):
        rows = np.arange(start, start + len(vecs))
        start += len(vecs)
        keep = first[rows] & ~np.isin(rows, query_rows)
        if not keep.any():
            continue
        vecs = np.ascontiguousarray(vecs[keep])
        labels = np.arange(len(ids), len(ids) + len(vecs), dtype=np.int64)
        ids += [batch_ids[j] for j in np.flatnonzero(keep)]
        index.add_with_ids(vecs, labels)
        best_s, best_i = _topk_merge(best_s, best_i, queries @ vecs.T, labels[None, :], k)
    exact = best_i

    recall_by_nprobe = {}
    for probe in sorted({1, 4, 16, 64, cfg.nprobe}):
        if probe > nlist:
            continue
        index.nprobe = probe
        _, found = index.search(queries, k)
        hits = [len(set(f[f >= 0]) & set(e)) for f, e in zip(found, exact, strict=True)]
        recall_by_nprobe[probe] = round(float(np.mean(hits)) / k, 4)
    index.nprobe = min(cfg.nprobe, nlist)
    _, found = index.search(queries, k)
    recall = (
        float(np.mean([len(set(f[f >= 0]) & set(e)) for f, e in zip(found, exact, strict=True)]))
        / k
    )
    facts = {
        "embeddings": str(cfg.embeddings),
        "files": len(paths),
        "n_vectors": len(ids),
        "n_queries_held_out": n_q,
        "duplicate_ids_skipped": len(first) - n,
        "dim": dim,
        "compression": compression,
        "estimated_flat_bytes": flat_bytes,
        "available_bytes": avail,
        "ram_fraction": cfg.ram_fraction,
        "nlist": nlist,
        "pq_m": pq_m,
        "train_size": len(train_rows),
        "train_seconds": round(train_s, 3),
        "nprobe": index.nprobe,
        "k": k,
        f"recall_at_{k}": round(recall, 4),
        "recall_by_nprobe": recall_by_nprobe,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _save(cfg.output, index, ids, version, dim, facts)
    return {"embedding_version": version, **facts}


def _save(
    path: Path, index: Any, ids: list[str], version: str, dim: int, facts: dict[str, Any]
) -> None:
    """Write the folder with ``embedder.index.write_index_folder`` (the format's one writer)."""
    write_index_folder(
        path,
        index,
        embedding_version=version,
        dim=dim,
        kind="ivf",
        ids=ids,
        labels=range(len(ids)),
        ivf_threshold=1,
        nprobe=int(facts["nprobe"]),
        next_label=len(ids),
        extra={"build": facts},
    )
    logger.info(
        "saved %s index %s (%d vectors) to %s", facts["compression"], version, len(ids), path
    )
