"""Where the time of an embedding goes, and how close its matmuls run to this machine's peak.

    python bench/time_breakdown.py --model models/default --docs docs/BENCHMARKS.md

On 1,000 simulated profiles (stream ``bench``, as ``make bench``), with the numerics the model
loads with on this machine (``--numerics`` overrides):

- wall time of each stage, unprofiled, best of ``--repeat``: assembling the profile text,
  tokenizing it, and ``ProfileEncoder.encode_texts`` (tokenizing again, padding, the forward
  passes, pooling, copying out);
- the forward passes under ``torch.profiler``: self time per operator, grouped into the linear
  layers' GEMMs, attention (scaled-dot-product attention, softmax), norms and activations,
  other element-wise operators, and data movement; the rest of ``encode_texts`` is Python and
  glue outside any operator;
- the linear layers' achieved FLOP/s (analytic FLOPs of the padded passes: ``2*s*(4h^2 + 2h*ffn)``
  per layer and sequence) against the best matmul rate torch reaches here in the same dtype at
  the encoder's GEMM shapes: how much a faster GEMM could still give, and how much is elsewhere.

The table goes between ``<!-- breakdown:begin/end -->`` markers of ``--docs``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("bench.time_breakdown")

#: Operator name fragments -> group (first match wins; names are torch's ``aten::...``).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("linear GEMMs", ("addmm", "aten::mm", "linear", "matmul", "mkldnn")),
    ("attention", ("scaled_dot_product", "softmax", "bmm", "baddbmm")),
    ("norms and activations", ("layer_norm", "gelu", "tanh", "erf")),
    ("element-wise", ("add", "mul", "div", "sub", "where", "masked_fill", "rsub", "pow", "sum")),
    (
        "data movement",
        (
            "copy",
            "_to_",
            "aten::to",
            "clone",
            "contiguous",
            "cat",
            "embedding",
            "index",
            "empty",
            "fill",
        ),
    ),
)


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """Fastest of ``repeat`` timed calls, in seconds (the caller has warmed up)."""
    from bench.report import best_time

    return best_time(fn, repeat=repeat, warmup=0)


def group_of(name: str) -> str:
    """The group of an operator name (``other operators`` when none matches)."""
    for group, parts in GROUPS:
        if any(p in name for p in parts):
            return group
    return "other operators"


def operator_times(encoder: Any, texts: list[str]) -> dict[str, float]:
    """Self CPU seconds per group over one ``encode_texts`` under ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        encoder.encode_texts(texts)
    out: dict[str, float] = {}
    for ev in prof.key_averages():
        group = group_of(ev.key)
        out[group] = out.get(group, 0.0) + ev.self_cpu_time_total / 1e6
    return out


def gemm_peak(dtype: Any, rows: int, hidden: int, ffn: int, repeat: int) -> float:
    """Best FLOP/s of torch matmuls in ``dtype`` at the encoder's linear-layer shapes."""
    from bench.flops import torch_matmul_rates

    shapes = [(rows, hidden, hidden), (rows, hidden, ffn), (rows, ffn, hidden)]
    return max(torch_matmul_rates(shapes, repeat * 3, dtype).values())


def measure(
    model_dir: Path, numerics: str | None, n: int, repeat: int, sdpa: str = "default"
) -> dict[str, Any]:
    """Every figure of the module docstring as a JSON-ready dict.

    ``sdpa``: ``default`` lets torch pick the attention kernel; ``math`` or ``flash`` forces
    that scaled-dot-product-attention backend (an A/B of the attention kernel on short inputs).
    """
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from heads.model import load_encoder

    backend = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}.get(sdpa)
    attention = sdpa_kernel([backend]) if backend is not None else nullcontext()
    with attention:
        return _measure(load_encoder(model_dir, numerics), model_dir, n, repeat) | {"sdpa": sdpa}


def _measure(encoder: Any, model_dir: Path, n: int, repeat: int) -> dict[str, Any]:
    import torch

    from embedder.encoder import _buckets, token_ids
    from embedder.simulator.core import simulate_profiles

    profiles = [r.profile for r in simulate_profiles(n, seed=0, stream="bench")]
    texts = encoder.assemble(profiles)
    encoder.encode_texts(texts[:64])  # warm-up (bf16 copy, ONNX session, oneDNN kernels)

    def tokenize() -> list[list[int]]:  # as encode_texts tokenizes
        with encoder._tok_lock:
            return token_ids(encoder.tokenizer, texts, encoder.max_seq_length)

    lengths = [len(x) for x in tokenize()]
    wall = {
        "assemble": best_of(lambda: encoder.assemble(profiles), repeat),
        "tokenize": best_of(tokenize, repeat),
        "encode_texts": best_of(lambda: encoder.encode_texts(texts), repeat),
    }
    ops = operator_times(encoder, texts) if numerics_is_torch(encoder.numerics) else {}
    cfg = encoder.st_model[0].auto_model.config
    h, ffn, layers = int(cfg.hidden_size), int(cfg.intermediate_size), int(cfg.num_hidden_layers)
    passes = list(_buckets(lengths, 64, encoder.max_batch_tokens))
    padded = [len(b) * max(lengths[i] for i in b) for b in passes]
    linear_flops = layers * sum(2 * s * (4 * h * h + 2 * h * ffn) for s in padded)
    useful = sum(lengths)
    dtype = torch.bfloat16 if encoder.numerics == "bf16" else torch.float32
    rows = int(sum(padded) / max(len(passes), 1))
    peak = gemm_peak(dtype, rows, h, ffn, repeat) if ops else None
    gemm_s = ops.get("linear GEMMs")
    from bench.report import machine_info

    return {
        "machine": machine_info(),
        "model": str(model_dir),
        "embedding_version": encoder.embedding_version,
        "numerics": encoder.numerics,
        "threads": torch.get_num_threads(),
        "profiles": n,
        "tokens_useful": useful,
        "tokens_padded": int(sum(padded)),
        "passes": len(passes),
        "wall_s": {k: round(v, 4) for k, v in wall.items()},
        "operator_s": {k: round(v, 4) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])},
        "linear_flops": linear_flops,
        "gemm_flops_per_s": None if not gemm_s else linear_flops / gemm_s,
        "gemm_peak_flops_per_s": peak,
        "gemm_peak_rows": rows,
    }


def numerics_is_torch(numerics: str) -> bool:
    """The profiler sees operators only for torch numerics (ONNX Runtime runs its own)."""
    return not numerics.startswith("onnx")


def render(r: dict[str, Any], command: str) -> str:
    """The markdown block: shares of the encode wall time, and the GEMM rate against the peak."""
    wall = r["wall_s"]
    enc = wall["encode_texts"]
    ops = r["operator_s"]
    op_total = sum(ops.values())
    # operator seconds are measured under the profiler; scale them to the unprofiled wall time of
    # encode_texts minus its tokenizing, so the rows add up to the wall time a user sees
    forward = max(enc - wall["tokenize"], 0.0)
    scale = min(1.0, forward / op_total) if op_total else 0.0
    m = r["machine"]
    lines = [
        f"Measured {m['date']} with `{command}` on {m['cpu_model']} ({m['physical_cores']} "
        f"physical cores; {', '.join(m['cpu_flags'])}), load {m['load_average_1m']:.1f}, torch "
        f"{m['torch']}; `{r['embedding_version']}`, numerics **{r['numerics']}**, "
        f"{r['threads']} threads, attention kernel {r['sdpa']}; {r['profiles']} profiles, "
        f"{r['tokens_useful']:,} tokens "
        f"({r['tokens_padded']:,} with padding) in {r['passes']} passes.",
        "",
        "| stage | seconds | share of assemble + encode |",
        "|---|---|---|",
    ]
    total = wall["assemble"] + enc
    rows: list[tuple[str, float]] = [
        ("assemble profile text (`ProfileEncoder.assemble`)", wall["assemble"]),
        ("tokenize (inside `encode_texts`)", wall["tokenize"]),
    ]
    rows += [(f"forward: {g}", s * scale) for g, s in ops.items()]
    rest = enc - wall["tokenize"] - op_total * scale
    rows.append(("padding, pooling, Python between operators", max(rest, 0.0)))
    for name, secs in rows:
        lines.append(f"| {name} | {secs:.3f} | {secs / total:.0%} |")
    lines.append(f"| **total** ({r['profiles'] / total:.0f} profiles/s) | {total:.3f} | 100% |")
    gemm, peak = r.get("gemm_flops_per_s"), r.get("gemm_peak_flops_per_s")
    if gemm and peak:
        gemm_share = ops.get("linear GEMMs", 0.0) * scale / total
        lines += [
            "",
            f"The linear layers' GEMMs run at {gemm / 1e9:.0f} GFLOP/s (analytic FLOPs of the "
            f"padded passes over their profiled time), **{gemm / peak:.2f} of the best "
            f"{r['numerics']} matmul torch reaches here at the same shapes** ({peak / 1e9:.0f} "
            "GFLOP/s, "
            f"{r['gemm_peak_rows']} rows). They are {gemm_share:.0%} of the time: GEMMs at that "
            f"peak would save at most {gemm_share * (1 - gemm / peak):.0%}, and everything else "
            f"({1 - gemm_share:.0%}) is outside them.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--numerics", default=None, help="default: what the model loads with")
    parser.add_argument("--n", type=int, default=1000, help="profiles")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--sdpa",
        choices=("default", "math", "flash"),
        default="default",
        help="force a scaled-dot-product-attention backend (default: torch picks)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/time_breakdown.json"))
    parser.add_argument("--docs", type=Path, default=None, help="e.g. docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    command = "python bench/time_breakdown.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    result = measure(args.model, args.numerics, args.n, args.repeat, args.sdpa)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    text = render(result, command)
    print(text)
    if args.docs is not None:
        sys.path.insert(0, str(ROOT / "bench"))
        from real_eval import write_docs

        write_docs(args.docs, text, marker="breakdown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
