"""Encoder benchmarks: throughput and accuracy cost per numerics vs plain SentenceTransformer.

One workload: ``n`` simulated profiles (stream ``bench``, independent of training and test
streams) assembled by the model's own assembly. Every variant encodes the same texts, in chunks
taken round-robin (variant A chunk 1, variant B chunk 1, ..., A chunk 2, ...) so a change of load
on a shared machine hits all of them alike; a variant past its time budget stops early and is
compared on the profiles it did encode. Accuracy of the model's geolocation head is computed on
each variant's vectors and compared to fp32 on the same profiles.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.flops import config_flops

#: Numerics whose ceiling is the int8 GEMM peak; the others are compared to the fp32 peak.
INT8_NUMERICS = ("int8", "onnx-int8", "ct2-int8")
ST_BASELINE = "sentence-transformers"


@dataclass
class Workload:
    """Assembled texts with their token counts and geolocation labels."""

    texts: list[str]
    lengths: list[int]
    truth: list[str]


def load_workload(encoder: Any, n: int, seed: int) -> Workload:
    """``n`` simulated profiles assembled and tokenized by ``encoder``."""
    from embedder.simulator.core import simulate_profiles

    rows = simulate_profiles(n, seed=seed, stream="bench")
    texts = encoder.assemble([r.profile for r in rows])
    ids = encoder.tokenizer(
        texts, truncation=True, max_length=encoder.max_seq_length, verbose=False
    )["input_ids"]
    return Workload(texts, [len(x) for x in ids], [str(r.labels["country"]) for r in rows])


def make_variants(
    model: Any, model_dir: Path, numerics: Sequence[str], threads: int
) -> dict[str, tuple[Callable[[list[str]], np.ndarray], float]]:
    """``{name: (encode texts -> vectors, seconds to prepare)}`` for each numerics and plain ST.

    Every variant shares the fp32 weights of ``model.encoder``; preparing (int8 copy, ONNX export
    or cache load, session) runs once on 16 texts and is timed apart.
    """

    base = model.encoder
    out: dict[str, tuple[Callable[[list[str]], np.ndarray], float]] = {}
    warm = ["passage: bio: hello"] * 16
    for num in numerics:
        enc = base.with_numerics(num, threads=threads)
        t0 = time.perf_counter()
        enc.encode_texts(warm)
        prepare_s = time.perf_counter() - t0
        out[num] = (lambda texts, enc=enc: enc.encode_texts(texts, batch_size=64), prepare_s)
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    st = SentenceTransformer(str(model_dir / "encoder"), device="cpu")
    st.encode(warm, batch_size=32)
    out[ST_BASELINE] = (
        lambda texts: np.asarray(st.encode(texts, batch_size=32, convert_to_numpy=True)),
        time.perf_counter() - t0,
    )
    return out


def run_interleaved(
    variants: dict[str, tuple[Callable[[list[str]], np.ndarray], float]],
    texts: list[str],
    *,
    chunks: int,
    budget_s: float,
    progress: Any = None,
) -> dict[str, dict[str, Any]]:
    """Encode ``texts`` chunk by chunk with every variant in turn.

    Returns:
        ``{name: {"n", "seconds", "vectors", "prepare_s"}}``; ``n`` < len(texts) when the
        variant ran out of budget.
    """
    bounds = np.linspace(0, len(texts), chunks + 1).astype(int)
    state: dict[str, dict[str, Any]] = {
        name: {"n": 0, "seconds": 0.0, "parts": [], "prepare_s": prep}
        for name, (_, prep) in variants.items()
    }
    for lo, hi in itertools.pairwise(bounds):
        for name, (fn, _) in variants.items():
            s = state[name]
            if s["seconds"] > budget_s or hi == lo:
                continue
            t0 = time.perf_counter()
            s["parts"].append(fn(texts[lo:hi]))
            s["seconds"] += time.perf_counter() - t0
            s["n"] = hi
            if progress is not None:
                progress.update(hi - lo)
    for s in state.values():
        s["vectors"] = np.concatenate(s.pop("parts")) if s["n"] else np.zeros((0, 0))
    return state


def head_accuracy(head: Any, vectors: np.ndarray, truth: Sequence[str]) -> dict[str, float]:
    """Accuracy of the argmax and share assigned-and-correct after abstention, in points."""
    preds = head.predict(vectors)
    y = np.asarray(truth)
    argmax = np.asarray([p.argmax for p in preds])
    label = np.asarray([p.label if p.label is not None else "\0" for p in preds])
    return {
        "accuracy": 100 * float((argmax == y).mean()),
        "assigned_correct": 100 * float((label == y).mean()),
        "coverage": 100 * float((label != "\0").mean()),
    }


def summarize(
    state: dict[str, dict[str, Any]],
    work: Workload,
    model: Any,
    peak: dict[str, Any] | None,
    head_name: str,
    max_points: float,
    peers: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """Per-variant speed, FLOP/s utilisation and accuracy vs fp32; the chosen numerics.

    ``peers`` maps the names of peer engines in ``state`` to whether their matmuls are int8;
    they get the same figures plus ``ratio_vs_ours`` (to the chosen numerics) but are never
    chosen.
    """
    peers = peers or {}
    config = model.encoder.transformer.auto_model.config
    head = model.heads.get(head_name)
    ref = state["fp32"]["vectors"]
    rows: dict[str, Any] = {}
    for name, s in state.items():
        n, secs = s["n"], s["seconds"]
        flops = config_flops(config, work.lengths[:n])
        row: dict[str, Any] = {
            "n": n,
            "seconds": secs,
            "prepare_s": s["prepare_s"],
            "profiles_per_s": n / secs,
            "useful_tokens_per_s": sum(work.lengths[:n]) / secs,
            "flops_per_s": flops / secs,
            "min_cosine_vs_fp32": float((s["vectors"] * ref[:n]).sum(1).min()),
        }
        if peak is not None:
            int8 = name in INT8_NUMERICS or peers.get(name, False)
            ceiling = peak["int8"] if int8 else peak["fp32"]
            row["peak_kind"] = "int8" if int8 else "fp32"
            row["utilisation"] = row["flops_per_s"] / ceiling
        if head is not None:
            acc = head_accuracy(head, s["vectors"], work.truth[:n])
            base = head_accuracy(head, ref[:n], work.truth[:n])
            row.update(acc)
            row["delta_accuracy"] = acc["accuracy"] - base["accuracy"]
            row["delta_assigned_correct"] = acc["assigned_correct"] - base["assigned_correct"]
            row["within_budget"] = abs(row["delta_accuracy"]) <= max_points
        rows[name] = row
    st_rate = rows[ST_BASELINE]["profiles_per_s"]
    for row in rows.values():
        row["ratio_vs_st"] = row["profiles_per_s"] / st_rate
    ours = [
        k
        for k in rows
        if k != ST_BASELINE and k not in peers and rows[k].get("within_budget", k == "fp32")
    ]
    chosen = max(ours, key=lambda k: rows[k]["profiles_per_s"])
    for row in rows.values():
        row["ratio_vs_ours"] = row["profiles_per_s"] / rows[chosen]["profiles_per_s"]
    return {
        "variants": {k: v for k, v in rows.items() if k not in peers},
        "peers": {k: v for k, v in rows.items() if k in peers},
        "chosen": chosen,
        "max_accuracy_points": max_points,
    }


def calibration_texts(encoder: Any, n: int, seed: int) -> list[str]:
    """``n`` assembled profiles from the stream ``peer-calibration`` (never the benchmark's
    texts), for peers that calibrate int8 scales."""
    from embedder.simulator.core import simulated_texts

    return simulated_texts(encoder.assemble, n, seed=seed, stream="peer-calibration")


def synthetic_batches(pool: Sequence[Sequence[int]], length: int, count: int) -> list[list[int]]:
    """``count`` rows of exactly ``length`` real token ids (CLS + text tokens + SEP) from a pool."""
    stream = [t for ids in pool for t in ids[1:-1]]
    if not stream:
        raise ValueError("empty token pool")
    cls, sep = pool[0][0], pool[0][-1]
    rows, pos, body = [], 0, length - 2
    for _ in range(count):
        if pos + body > len(stream):
            pos = 0
        chunk = (stream * (1 + body // len(stream)))[pos : pos + body]
        rows.append([cls, *chunk, sep])
        pos += body
    return rows


def forward_rate(encoder: Any, rows: list[list[int]], batch_size: int) -> dict[str, float]:
    """Sequences/s and tokens/s of the forward pass alone (tokenizing excluded), best of 2."""
    import torch

    from bench.report import best_time
    from embedder.encoder import _pad

    encoder._apply_threads()
    model = encoder._inference_model()
    pad = encoder.tokenizer.pad_token_id or 0
    batches = [_pad(rows[i : i + batch_size], pad) for i in range(0, len(rows), batch_size)]

    def run() -> None:
        with torch.inference_mode(), encoder._autocast():
            for b in batches:
                model(b)

    with torch.inference_mode(), encoder._autocast():
        model(batches[0])  # warm-up: allocator and kernels for this shape
    secs = best_time(run, repeat=2, warmup=0)
    return {"per_s": len(rows) / secs, "tokens_per_s": sum(map(len, rows)) / secs}


def scaling(
    encoder: Any,
    texts: list[str],
    *,
    batch_sizes: Sequence[int] = (1, 8, 32, 128),
    lengths: Sequence[int] = (32, 64, 128, 192),
    count: int = 128,
    thread_counts: Sequence[int] = (),
) -> dict[str, Any]:
    """Forward throughput vs batch size (at 128 tokens), vs length (batch 32) and vs threads."""

    pool = encoder.tokenizer(texts[:256], truncation=False, verbose=False)["input_ids"]
    at128 = synthetic_batches(pool, 128, count)
    out: dict[str, Any] = {"numerics": encoder.numerics, "sequences": count}
    out["batch_size"] = {str(b): forward_rate(encoder, at128, b) for b in batch_sizes}
    out["length"] = {
        str(n): forward_rate(encoder, synthetic_batches(pool, n, count), 32) for n in lengths
    }
    threads = {}
    for t in thread_counts:
        enc = encoder.with_numerics(encoder.numerics, threads=t)
        threads[str(t)] = forward_rate(enc, at128, 32)
    out["threads"] = threads
    return out
