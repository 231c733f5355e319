"""The dynamic batcher alone under overload: do admitted calls finish within their bound?

The encoder is a sleep proportional to the batch's tokens (+-10 %), so the figures show the
batcher's queueing logic and nothing of the CPU: closed-loop callers send calls of 32 texts, back
off 25-75 ms when refused, and each accepted call's latency is compared with its bound (queue
delay + its own encoder time).

    python bench/batcher_latency.py --seconds 20 --callers 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.errors import OverloadedError
from server.batcher import DynamicBatcher, estimate_tokens


def main(argv: list[str] | None = None) -> int:
    """Run the simulation; print a JSON summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--callers", type=int, default=64)
    p.add_argument("--per-call", type=int, default=32)
    p.add_argument("--call-seconds", type=float, default=0.5, help="encoder time of one call")
    p.add_argument("--delay-ms", type=float, default=1000.0, help="--max-queue-delay-ms")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    mean_tokens = 600 // 3 + 2  # texts of 300-900 characters
    spt = args.call_seconds / (args.per_call * mean_tokens)
    jitter = random.Random(args.seed)

    def encode(texts: list[str]) -> np.ndarray:
        time.sleep(sum(estimate_tokens(t) for t in texts) * spt * jitter.uniform(0.9, 1.1))
        return np.zeros((len(texts), 4), np.float32)

    async def run() -> list[tuple[float, float]]:
        b = DynamicBatcher(encode, max_queue=8192, max_queue_delay_s=args.delay_ms / 1000)
        b.start()
        await b.calibrate(["x" * 600] * args.per_call)
        done: list[tuple[float, float]] = []  # (latency, bound)
        stop = time.monotonic() + args.seconds

        async def caller(k: int) -> None:
            rng = random.Random(args.seed * 1000 + k)
            while time.monotonic() < stop:
                texts = ["x" * rng.randint(300, 900) for _ in range(args.per_call)]
                own = sum(estimate_tokens(t) for t in texts) * spt
                start = time.monotonic()
                try:
                    await b.submit(texts)
                except OverloadedError:
                    await asyncio.sleep(rng.uniform(0.025, 0.075))
                    continue
                done.append((time.monotonic() - start, args.delay_ms / 1000 + own))

        await asyncio.gather(*(caller(k) for k in range(args.callers)))
        await b.close()
        return done

    done = asyncio.run(run())
    lat = np.array([d[0] for d in done])
    over = np.array([d[0] / d[1] for d in done])
    print(
        json.dumps(
            {
                "accepted": len(done),
                "latency_s_p50_p99_max": [
                    round(float(x), 3) for x in (*np.percentile(lat, [50, 99]), lat.max())
                ],
                "latency_over_bound_p99_max": [
                    round(float(np.percentile(over, 99)), 3),
                    round(float(over.max()), 3),
                ],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
