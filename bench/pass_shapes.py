"""Many pass shapes in one process: speed and memory of server-like passes by padding multiple.

The server's forward passes come in every shape (1-256 profiles x the longest text's length), and
the CPU kernels build and keep a primitive per shape. This runs ``--passes`` passes of 1 to
``--max-profiles`` random simulated profiles each, through ``encode_texts`` as the server calls
it, with passes padded to a multiple of ``--pad-multiple`` tokens (1 = to the longest text), and
prints profiles/s and the growth of resident memory.

    python bench/pass_shapes.py --model models/default --numerics bf16 --pad-multiple 1
    python bench/pass_shapes.py --model models/default --numerics bf16 --pad-multiple 16
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import embedder.encoder as encoder_module
from embedder.simulator.core import simulated_texts
from heads.model import ProfileModel


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    """Run the passes; print one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/default"))
    p.add_argument("--numerics", default=None, help="default: the model's choice here")
    p.add_argument("--pad-multiple", type=int, default=encoder_module.PAD_MULTIPLE)
    p.add_argument("--passes", type=int, default=300)
    p.add_argument("--max-profiles", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    encoder_module.PAD_MULTIPLE = args.pad_multiple
    enc = ProfileModel.load(args.model).encoder
    if args.numerics:
        enc = enc.with_numerics(args.numerics)
    texts = simulated_texts(enc.assemble, 3000, seed=args.seed, stream="pass-shapes")
    rng = random.Random(args.seed)
    enc.encode_texts(texts[:64], batch_size=64)  # one-off costs outside the timing
    before, start, n = _rss_mb(), time.perf_counter(), 0
    for _ in range(args.passes):
        batch = rng.sample(texts, rng.randint(1, args.max_profiles))
        n += len(batch)
        enc.encode_texts(batch, batch_size=256, pass_overhead_tokens=64)
    seconds = time.perf_counter() - start
    out = {
        "numerics": enc.numerics,
        "pad_multiple": args.pad_multiple,
        "passes": args.passes,
        "profiles_per_s": round(n / seconds, 1),
        "rss_growth_mb": round(_rss_mb() - before, 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
