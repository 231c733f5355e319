"""Host-side speed of turning profiles into token ids: the Hugging Face wrapper vs Rust tokenizer.

    python bench/assembly_speed.py --model models/default \
        --data data/sim-46000-5000-seed0/train.jsonl

Assembling a profile tokenizes each field to cut it to its budget, and ``encode_texts`` tokenizes
the assembled text again. On a GPU these two steps, not the forward passes, bound the embedding
rate (docs/SCALING.md, "On a GPU"). Both paths run in one process, interleaved, best of
``--repeat``; the texts and ids of both are checked equal. One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class WrapperOnly:
    """The tokenizer without its ``backend_tokenizer``: the helpers take the wrapper path."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tok(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/default")
    p.add_argument("--data", required=True, help="profiles (.jsonl/.csv/.parquet)")
    p.add_argument("--n", type=int, default=6000, help="profiles (first n)")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)

    from embedder.data import read_profiles
    from embedder.encoder import ProfileEncoder, token_ids
    from embedder.profile import assemble_texts

    profiles = [r.profile for r in read_profiles(args.data).rows][: args.n]
    encoder = ProfileEncoder.load(Path(args.model) / "encoder")
    paths = {"wrapper": WrapperOnly(encoder.tokenizer), "rust": encoder.tokenizer}
    best = {name: {"assemble_s": float("inf"), "tokenize_s": float("inf")} for name in paths}
    outputs: dict[str, Any] = {}
    for _ in range(args.repeat):
        for name, tok in paths.items():
            t0 = time.perf_counter()
            texts = assemble_texts(profiles, tok, encoder.assembly)
            t1 = time.perf_counter()
            ids = token_ids(tok, texts, encoder.max_seq_length)
            t2 = time.perf_counter()
            best[name]["assemble_s"] = min(best[name]["assemble_s"], t1 - t0)
            best[name]["tokenize_s"] = min(best[name]["tokenize_s"], t2 - t1)
            outputs[name] = (texts, ids)
    for b in best.values():
        b["profiles_per_s"] = round(len(profiles) / (b["assemble_s"] + b["tokenize_s"]), 1)
        b["assemble_s"], b["tokenize_s"] = round(b["assemble_s"], 4), round(b["tokenize_s"], 4)
    print(
        json.dumps(
            {
                "profiles": len(profiles),
                "repeat": args.repeat,
                "same_output": outputs["wrapper"] == outputs["rust"],
                **best,
                "speedup": round(
                    best["rust"]["profiles_per_s"] / best["wrapper"]["profiles_per_s"], 2
                ),
            }
        )
    )
    return 0 if outputs["wrapper"] == outputs["rust"] else 1


if __name__ == "__main__":
    sys.exit(main())
