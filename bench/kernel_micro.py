"""Kernel variants at the default encoder's shapes: what torch offers for attention, GELU, linear.

    python bench/kernel_micro.py [--rows 6144] [--batch 64] [--seq 70] [--threads 2]

Milliseconds per call (best mean of 3 x 20 calls) for the operators that are most of a bf16 pass
besides the GEMMs (docs/BENCHMARKS.md, "Where the time goes"): scaled-dot-product attention
(flash and math backends, with and without a padding mask, and an explicit softmax(QK^T)V),
exact and tanh GELU, and ``F.linear`` against oneDNN's fused linear (bias and GELU as post-ops,
plain and pre-packed weights). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any


def per_call_ms(fn: Callable[[], Any], calls: int = 20, repeat: int = 3) -> float:
    """Best mean milliseconds per call over ``repeat`` runs of ``calls`` calls."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return round(1000 * best, 3)


def attention(batch: int, seq: int, heads: int = 12, dim: int = 32) -> dict[str, float]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out: dict[str, float] = {}
    for dtype in (torch.bfloat16, torch.float32):
        q, k, v = (torch.randn(batch, heads, seq, dim, dtype=dtype) for _ in range(3))
        mask = torch.zeros(batch, 1, seq, seq, dtype=dtype)
        mask[..., int(seq * 0.85) :] = float("-inf")  # padded keys, as in a length-sorted pass
        tag = str(dtype).removeprefix("torch.")
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)):
            with sdpa_kernel([backend]):
                out[f"sdpa_{name}_{tag}"] = per_call_ms(
                    lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)
                )
                out[f"sdpa_{name}_mask_{tag}"] = per_call_ms(
                    lambda q=q, k=k, v=v, m=mask: F.scaled_dot_product_attention(
                        q, k, v, attn_mask=m
                    )
                )
        scale = dim**-0.5
        out[f"explicit_softmax_{tag}"] = per_call_ms(
            lambda q=q, k=k, v=v, m=mask, c=scale: (
                torch.softmax(q @ k.transpose(-1, -2) * c + m, -1) @ v
            )
        )
    return out


def gelu(rows: int, ffn: int = 1536) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    x = torch.randn(rows, ffn).bfloat16()
    xf = x.float()
    return {
        "gelu_exact_bf16": per_call_ms(lambda: F.gelu(x)),
        "gelu_tanh_bf16": per_call_ms(lambda: F.gelu(x, approximate="tanh")),
        "gelu_exact_fp32": per_call_ms(lambda: F.gelu(xf)),
        "copy_bf16": per_call_ms(lambda: x.clone()),
    }


def linear(rows: int, hidden: int = 384, ffn: int = 1536) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    out: dict[str, float] = {}
    ops = torch.ops.mkldnn
    for k, n in ((hidden, hidden), (hidden, ffn), (ffn, hidden)):
        x, w, b = torch.randn(rows, k).bfloat16(), torch.randn(n, k).bfloat16(), torch.randn(n)
        b = b.bfloat16()
        shape = f"{k}x{n}"
        out[f"linear_{shape}"] = per_call_ms(lambda x=x, w=w, b=b: F.linear(x, w, b))
        out[f"linear_nobias_{shape}"] = per_call_ms(lambda x=x, w=w: F.linear(x, w))
        out[f"linear_gelu_{shape}"] = per_call_ms(lambda x=x, w=w, b=b: F.gelu(F.linear(x, w, b)))
        try:
            packed = ops._reorder_linear_weight(w, rows)
            for wname, weight in (("plain", w), ("packed", packed)):
                out[f"onednn_fused_{wname}_{shape}"] = per_call_ms(
                    lambda x=x, w=weight, b=b: ops._linear_pointwise(x, w, b, "none", [], "")
                )
                out[f"onednn_fused_gelu_{wname}_{shape}"] = per_call_ms(
                    lambda x=x, w=weight, b=b: ops._linear_pointwise(x, w, b, "gelu", [], "none")
                )
        except (RuntimeError, AttributeError) as err:  # an op this torch build lacks says so
            out[f"onednn_fused_{shape}_error"] = str(err).splitlines()[0][:200]  # type: ignore[assignment]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6144, help="tokens in one pass (rows)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=70)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        result = {
            "threads": args.threads,
            **attention(args.batch, args.seq),
            **gelu(args.rows),
            **linear(args.rows),
        }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
