"""Similarity index benchmarks: build time, query throughput and IVF recall@10 vs exact search.

Vectors are real profile embeddings tiled and noised (``base[i % len(base)] + sigma * noise``,
L2-normalised), or random unit vectors when no embeddings are given. Both are harder for IVF than
real data, which has more structure; read recall as a lower bound.

The index recipe is ``embedder.index.SimilarityIndex``'s: ``IndexIVFFlat`` on inner product with
``nlist = 4 sqrt(N)``. Here the coarse quantizer trains on ``39 * nlist`` vectors for 10
iterations so 1M vectors fit the suite's time budget; ``SimilarityIndex`` itself trains on up to
``256 * nlist`` for faiss's default 25, and is timed end to end (upsert of string ids, switch to
IVF, search) at the sizes named in ``wrapper_sizes``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

K = 10


def unit_vectors(
    n: int, dim: int, base: np.ndarray | None, seed: int, sigma: float = 1.0
) -> np.ndarray:
    """``n`` L2-normalised float32 vectors (tiled + noised ``base``, or random), built in blocks."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    block = 65_536
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        x = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        if base is not None:
            x *= sigma / math.sqrt(dim)
            x += base[np.arange(lo, hi) % len(base)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[lo:hi] = x
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k ids that ``found`` contains, per query."""
    hits = [len(set(f[f >= 0]) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits))


def faiss_size(
    n: int, data: np.ndarray, queries: np.ndarray, nprobes: Sequence[int], seed: int
) -> dict[str, Any]:
    """Flat vs IVF on one size: build seconds, queries/s, recall@10 per nprobe."""
    import faiss

    dim = data.shape[1]
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    flat_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, exact = flat.search(queries, K)
    flat_qps = len(queries) / (time.perf_counter() - t0)
    del flat

    nlist = max(1, int(4 * math.sqrt(n)))
    rng = np.random.default_rng(seed)
    sample = data[np.sort(rng.choice(n, size=min(n, 39 * nlist), replace=False))]
    t0 = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.cp.seed = seed
    ivf.train(sample)
    train_s = time.perf_counter() - t0
    ivf.add(data)
    ivf_build = time.perf_counter() - t0
    sweep = {}
    for nprobe in nprobes:
        ivf.nprobe = nprobe
        t0 = time.perf_counter()
        _, found = ivf.search(queries, K)
        qps = len(queries) / (time.perf_counter() - t0)
        sweep[str(nprobe)] = {"queries_per_s": qps, "recall_at_10": recall_at_k(found, exact)}
    good = [p for p in nprobes if sweep[str(p)]["recall_at_10"] >= 0.95]
    chosen = min(good) if good else max(nprobes)
    return {
        "n": n,
        "queries": len(queries),
        "flat": {"build_s": flat_build, "queries_per_s": flat_qps},
        "ivf": {
            "nlist": nlist,
            "train_vectors": len(sample),
            "train_s": train_s,
            "build_s": ivf_build,
            "nprobe": sweep,
            "chosen_nprobe": chosen,
        },
        "ratio_ivf_vs_flat_qps": sweep[str(chosen)]["queries_per_s"] / flat_qps,
    }


def wrapper_size(data: np.ndarray, queries: np.ndarray, exact: np.ndarray) -> dict[str, Any]:
    """``SimilarityIndex`` end to end: upsert (switching to IVF), search, recall@10."""
    from embedder.index import SimilarityIndex

    n = len(data)
    index = SimilarityIndex("emb-bench", data.shape[1], ivf_threshold=n - 1)
    ids = [f"p{i}" for i in range(n)]
    t0 = time.perf_counter()
    index.upsert(ids, data)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    found, _ = index.search(queries, K)
    qps = len(queries) / (time.perf_counter() - t0)
    found_idx = np.array([[int(i[1:]) for i in row] + [-1] * (K - len(row)) for row in found])
    return {
        "kind": index.kind,
        "nprobe": index.nprobe,
        "build_s": build,
        "queries_per_s": qps,
        "recall_at_10": recall_at_k(found_idx, exact),
    }


def run(
    sizes: Sequence[int],
    *,
    base: np.ndarray | None,
    dim: int = 384,
    n_queries: int = 500,
    nprobes: Sequence[int] = (1, 4, 16, 64),
    wrapper_sizes: Sequence[int] = (),
    seed: int = 0,
    progress: Any = None,
) -> dict[str, Any]:
    """Every size in ``sizes``; ``base`` (n, dim) embeddings to tile, or None for random."""
    import faiss

    dim = base.shape[1] if base is not None else dim
    out: dict[str, Any] = {
        "data": "tiled+noised embeddings (sigma 1.0)" if base is not None else "random unit",
        "dim": dim,
        "faiss_threads": faiss.omp_get_max_threads(),
        "sizes": {},
    }
    queries = unit_vectors(n_queries, dim, base, seed + 1)
    for n in sizes:
        data = unit_vectors(n, dim, base, seed)
        res = faiss_size(n, data, queries, nprobes, seed)
        if n in wrapper_sizes:
            flat = faiss.IndexFlatIP(dim)
            flat.add(data)
            _, exact = flat.search(queries, K)
            del flat
            res["similarity_index"] = wrapper_size(data, queries, exact)
        out["sizes"][str(n)] = res
        del data
        if progress is not None:
            progress.update(1)
    return out
