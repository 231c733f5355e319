"""Inference copies of the encoder with oneDNN's fused linear layers (CPU, fp32 and bf16).

``torch.nn.Linear`` on CPU runs ``addmm``: it first writes the broadcast bias into its output and
then accumulates the GEMM on top, and the FFN's GELU is a separate pass over the largest
activation. oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``, the op torch's own CPU
compiler emits) adds the bias and applies the GELU inside the GEMM. On the default model's
profile workload that made a bf16 pass 16% faster and an fp32 pass 10% faster, same vectors
(min cosine to fp32 unchanged; docs/BENCHMARKS.md, "Where the time goes").

The fused modules share the original parameters (no copy of the weights, and in-place updates
such as an optimizer step are seen), run under ``torch.inference_mode`` only (the op has no
gradient), and are used only where a check on this machine shows the op exists and matches
``F.linear`` (and ``F.gelu``); otherwise the model is used as it is.
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

#: Largest |fused - reference| / max|reference| accepted by the check, per dtype.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


class FusedLinear(nn.Module):
    """``activation(x @ weight.T + bias)`` in one oneDNN call; ``activation`` is none or gelu."""

    def __init__(self, linear: nn.Linear, activation: str = "none") -> None:
        super().__init__()
        if activation not in ("none", "gelu"):
            raise ValueError(f"activation must be 'none' or 'gelu', got {activation!r}")
        self.weight = linear.weight  # shared, not copied
        self.bias = linear.bias
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # "none" algorithm of the gelu post-op = the exact (erf) GELU, as F.gelu's default
        algorithm = "none" if self.activation == "gelu" else ""
        return torch.ops.mkldnn._linear_pointwise(
            x, self.weight, self.bias, self.activation, [], algorithm
        )

    def extra_repr(self) -> str:
        out, inp = self.weight.shape
        return f"in_features={inp}, out_features={out}, activation={self.activation}"


@functools.cache
def fusion_supported(dtype: torch.dtype) -> bool:
    """True when the fused op runs here in ``dtype`` and matches ``F.linear`` and ``F.gelu``."""
    if not torch.backends.mkldnn.is_available() or not hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    ):
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 64, generator=gen).to(dtype)
    lin = nn.Linear(64, 96).to(dtype)
    try:
        with torch.inference_mode():
            for activation, reference in (
                ("none", F.linear(x, lin.weight, lin.bias)),
                ("gelu", F.gelu(F.linear(x, lin.weight, lin.bias))),
            ):
                got = FusedLinear(lin, activation)(x)
                scale = reference.float().abs().max().clamp_min(1e-6)
                err = (got.float() - reference.float()).abs().max() / scale
                if got.shape != reference.shape or not err <= TOLERANCE.get(dtype, 1e-4):
                    logger.info("fused linear off for %s: relative error %.2g", dtype, err)
                    return False
    except (RuntimeError, NotImplementedError) as exc:  # this build or CPU lacks the op
        logger.info("fused linear off for %s: %s", dtype, str(exc).splitlines()[0][:120])
        return False
    return True


def _exact_gelu(module: Any) -> bool:
    """True when ``module`` computes ``F.gelu`` with the exact (erf) formula."""
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    # transformers' GELUActivation ("gelu" in BERT configs) wraps F.gelu without approximation
    return type(module).__name__ == "GELUActivation" and not getattr(module, "approximate", False)


def fuse_bert_linears(model: nn.Module) -> int:
    """Replace, in place, the linear layers of every BERT layer in ``model`` by fused ones.

    Per layer: the query, key and value projections, the attention output, the FFN's
    intermediate dense (with its GELU fused when it is the exact GELU) and its output dense.

    Returns:
        How many linear layers were replaced (0 when fusion is not supported for the dtype).
    """
    first = next(model.parameters(), None)
    if first is None or not fusion_supported(first.dtype):
        return 0
    replaced = 0
    for layer in model.modules():
        attention, intermediate, output = (
            getattr(layer, "attention", None),
            getattr(layer, "intermediate", None),
            getattr(layer, "output", None),
        )
        if attention is None or intermediate is None or output is None:
            continue
        targets = [(attention.self, n) for n in ("query", "key", "value")]
        targets += [(attention.output, "dense"), (output, "dense")]
        for owner, name in targets:
            if isinstance(getattr(owner, name, None), nn.Linear):
                setattr(owner, name, FusedLinear(getattr(owner, name)))
                replaced += 1
        if isinstance(getattr(intermediate, "dense", None), nn.Linear):
            if _exact_gelu(getattr(intermediate, "intermediate_act_fn", None)):
                intermediate.dense = FusedLinear(intermediate.dense, "gelu")
                intermediate.intermediate_act_fn = nn.Identity()
            else:
                intermediate.dense = FusedLinear(intermediate.dense)
            replaced += 1
    return replaced


def fused_inference_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree sharing its parameters and buffers, with fused linears.

    Returns ``model`` itself when nothing could be fused (fusion unsupported, or no BERT layers).
    """
    first = next(model.parameters(), None)
    if first is None or not fusion_supported(first.dtype):
        return model  # checked before copying: nothing to fuse, no copy made
    shared: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    twin = copy.deepcopy(model, memo=shared)
    n = fuse_bert_linears(twin)
    if n == 0:
        return model
    logger.info("fused %d linear layers for CPU inference", n)
    return twin.eval()
