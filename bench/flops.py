"""Encoder FLOPs counted analytically, and the best matmul FLOP/s this machine reaches now.

``encoder_flops`` counts the matmuls of a BERT layer from real (unpadded) token counts:
per layer ``2*s*(4*h*h + 2*h*ffn)`` (Q, K, V, output projections and the two FFN matrices) plus
``2*2*s*s*h`` for attention scores and the weighted sum, per sequence of ``s`` tokens. Embedding
lookups, LayerNorm, softmax and GELU are not matmuls and are left out, so the achieved rate is a
lower bound on what the hardware did.

``matmul_peak`` measures, in the same process and thread count as the encoder, the fastest
fp32 matmul (torch at several square sizes and at the encoder's own GEMM shape, and ONNX Runtime)
and the fastest int8 GEMM with dynamic activation quantization (torch ``quantize_dynamic`` Linear
and ONNX Runtime ``MatMulInteger``): the ceilings for the fp32 and int8 numerics.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import best_time


def layer_flops(seq_len: int, hidden: int, ffn: int) -> int:
    """Matmul FLOPs of one BERT layer on one sequence of ``seq_len`` tokens."""
    s, h = seq_len, hidden
    return 2 * s * (4 * h * h + 2 * h * ffn) + 2 * 2 * s * s * h


def encoder_flops(lengths: Iterable[int], *, hidden: int, ffn: int, layers: int) -> int:
    """Matmul FLOPs of ``layers`` layers over sequences of the given token counts."""
    return layers * sum(layer_flops(int(s), hidden, ffn) for s in lengths)


def config_flops(config: Any, lengths: Iterable[int]) -> int:
    """:func:`encoder_flops` with sizes from a Hugging Face BERT config."""
    return encoder_flops(
        lengths,
        hidden=int(config.hidden_size),
        ffn=int(config.intermediate_size),
        layers=int(config.num_hidden_layers),
    )


def torch_matmul_rates(
    shapes: list[tuple[int, int, int]], repeat: int, dtype: Any = None
) -> dict[str, float]:
    """FLOP/s of ``torch.matmul`` at each ``(m, k, n)`` in ``dtype`` (default fp32), best of
    ``repeat`` after one warm-up call (where oneDNN picks and caches its kernel)."""
    import torch

    dtype = dtype or torch.float32
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype).split(".")[-1])
    out = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        secs = best_time(lambda a=a, b=b: torch.matmul(a, b), repeat=repeat)
        out[f"torch_{name}_{m}x{k}x{n}"] = 2 * m * k * n / secs
    return out


def _torch_int8(shapes: list[tuple[int, int, int]], repeat: int) -> dict[str, float]:
    import torch

    out = {}
    for m, k, n in shapes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation notice
            linear = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)), {torch.nn.Linear}
            )
        x = torch.randn(m, k)
        with torch.inference_mode():
            secs = best_time(lambda x=x, lin=linear: lin(x), repeat=repeat)
        out[f"torch_int8_dynamic_{m}x{k}x{n}"] = 2 * m * k * n / secs
    return out


def _ort_matmul(
    shapes: list[tuple[int, int, int]], threads: int, repeat: int, int8: bool
) -> dict[str, float]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for m, k, n in shapes:
            w = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
            graph = helper.make_graph(
                [helper.make_node("MatMul", ["x", "w"], ["y"])],
                "mm",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                initializer=[w],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            path = Path(tmp) / f"mm{m}_{k}_{n}.onnx"
            onnx.save(model, str(path))
            if int8:
                qpath = path.with_suffix(".int8.onnx")
                quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8)
                path = qpath
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            x = rng.standard_normal((m, k), dtype=np.float32)
            secs = best_time(lambda s=session, x=x: s.run(None, {"x": x}), repeat=repeat)
            out[f"ort_{'int8' if int8 else 'fp32'}_{m}x{k}x{n}"] = 2 * m * k * n / secs
    return out


def matmul_peak(
    *,
    hidden: int,
    ffn: int,
    threads: int,
    sizes: Iterable[int] = (512, 1024, 2048),
    repeat: int = 3,
) -> dict[str, Any]:
    """Best measured fp32 and int8 matmul FLOP/s (and every single measurement).

    Args:
        hidden: the encoder's hidden size (for the encoder-shaped GEMM).
        ffn: its intermediate size.
        threads: intra-op threads (torch and ONNX Runtime).
        sizes: square sizes.
        repeat: timed runs per shape (best kept).

    Returns:
        ``{"fp32": best, "int8": best, "runs": {name: FLOP/s}}``.
    """
    import torch

    torch.set_num_threads(threads)
    squares = [(s, s, s) for s in sizes]
    encoder_shapes = [(4096, hidden, ffn), (4096, ffn, hidden)]
    runs: dict[str, float] = {}
    runs.update(torch_matmul_rates(squares + encoder_shapes, repeat))
    runs.update(_torch_int8(squares[-2:] + encoder_shapes, repeat))
    try:
        runs.update(_ort_matmul(squares[-2:] + encoder_shapes, threads, repeat, int8=False))
        runs.update(_ort_matmul(squares[-2:] + encoder_shapes, threads, repeat, int8=True))
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        pass
    fp32 = max(v for k, v in runs.items() if "fp32" in k)
    int8 = max(v for k, v in runs.items() if "int8" in k)
    return {"fp32": fp32, "int8": int8, "runs": runs}
