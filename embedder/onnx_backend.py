"""ONNX Runtime backend of ``ProfileEncoder`` (numerics ``onnx-fp32`` and ``onnx-int8``).

The cut transformer (``input_ids``, ``attention_mask`` -> ``token_embeddings``; dynamic batch and
sequence axes) is exported once with the TorchScript exporter and cached under
``<cache>/<embedding_version>/<numerics>-f<EXPORT_FORMAT>.onnx`` (model folders are immutable, so
the file lives beside them, not inside). ``onnx-int8`` is that export with MatMul weights
quantized to int8 (per channel) by ``onnxruntime.quantization.quantize_dynamic``, except the
feed-forward down-projections, which stay fp32: they were the layers whose int8 error reached
the pooled vector (min cosine to fp32 0.970 with them quantized, 0.992 without, on 1,000 profiles;
see docs/BENCHMARKS.md). Weights use the full int8 range on CPUs with VNNI and 7 bits elsewhere,
so the int8 file depends on the CPU and its name says which (``-vnni`` / ``-rr``).

Mean pooling and L2 normalisation run afterwards through the encoder's own sentence-transformers
``Pooling`` and ``Normalize`` modules, so they are the torch path's code, not a re-implementation.
A backend is called like the ``SentenceTransformer`` in ``ProfileEncoder.encode_texts``:
``backend(features)["sentence_embedding"]``; batching and bucketing stay in the encoder.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from embedder.errors import ArtifactError
from embedder.numerics import ONNX_NUMERICS

logger = logging.getLogger(__name__)

#: Part of the cache key: bump when the exported graph or the quantization settings change.
EXPORT_FORMAT = 2
OPSET = 17
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "token_embeddings"


def onnx_cache_dir() -> Path:
    """``$PROFILE_EMBED_ONNX_CACHE`` (default ``<PROFILE_EMBED_HOME>/onnx``)."""
    env = os.environ.get("PROFILE_EMBED_ONNX_CACHE")
    if env:
        return Path(env).expanduser()
    from embedder.base_import import cache_home

    return cache_home() / "onnx"


def onnx_path(embedding_version: str, numerics: str, cache_dir: Path | None = None) -> Path:
    """Where the ONNX file of one encoder version and numerics is cached."""
    if numerics not in ONNX_NUMERICS:
        raise ValueError(f"ONNX numerics must be one of {ONNX_NUMERICS}, got {numerics!r}")
    root = cache_dir if cache_dir is not None else onnx_cache_dir()
    variant = ""
    if numerics == "onnx-int8":
        variant = "-vnni" if _full_int8_range() else "-rr"
    return root / embedding_version / f"{numerics}{variant}-f{EXPORT_FORMAT}.onnx"


def _full_int8_range() -> bool:
    """Quantize weights to the full int8 range: only where VNNI avoids u8 x s8 saturation."""
    from embedder.numerics_choice import cpu_info

    return cpu_info().vnni


class _TokenEmbeddings(torch.nn.Module):
    """The HF model without sentence-transformers' dict plumbing: ids, mask -> last hidden state."""

    def __init__(self, auto_model: torch.nn.Module) -> None:
        super().__init__()
        self.auto_model = auto_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.auto_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state


def export_fp32(auto_model: torch.nn.Module, path: Path) -> Path:
    """Export the transformer to ``path`` (fp32, opset ``OPSET``, dynamic batch and sequence).

    The export runs on a copy set to eager attention: traced SDPA becomes a slower ONNX graph
    (measured 33 vs 28 profiles/s for eager vs SDPA export on the 3-layer e5-small cut).
    """
    eager: Any = copy.deepcopy(auto_model).eval()  # a transformers model (nn.Module to mypy)
    eager.set_attn_implementation("eager")
    module = _TokenEmbeddings(eager).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]], dtype=torch.long)
    mask = (ids != 1).long()
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            module,
            (ids, mask),
            str(path),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={**axes, OUTPUT: {0: "batch", 1: "seq"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def quantize_int8(src: Path, dst: Path, *, reduce_range: bool | None = None) -> Path:
    """Quantize the MatMul weights of ``src`` to int8 (dynamic activation scales) into ``dst``.

    Only MatMul: quantizing the embedding Gather would save memory, not time. The feed-forward
    down-projections (``layer.N/output/dense``) stay fp32 (see the module docstring).
    ``reduce_range`` keeps weights in 7 bits, avoiding the u8 x s8 saturation of CPUs without
    VNNI (AVX2 ``vpmaddubsw``); None decides from this CPU's flags.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if reduce_range is None:
        reduce_range = not _full_int8_range()
    graph = onnx.load(str(src), load_external_data=False).graph
    keep_fp32 = [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and "/output/dense/" in n.name and "/attention/" not in n.name
    ]

    root = logging.getLogger()
    # The quantizer logs per-tensor chatter and advice meant for CNNs at INFO on the root logger;
    # a build's log should show our progress, so only its warnings pass.
    quiet = _QuietRootInfo()
    root.addFilter(quiet)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=keep_fp32,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.removeFilter(quiet)
    return dst


class _QuietRootInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root":
            return True
        # Its one warning advises shape pre-processing for static CNN graphs; ours is dynamic.
        return record.levelno >= logging.WARNING and "pre-processing" not in record.getMessage()


def ensure_onnx(
    auto_model: torch.nn.Module, embedding_version: str, numerics: str, cache_dir: Path | None
) -> Path:
    """Return the cached ONNX file, exporting (and quantizing) it first when missing.

    Files are written to a temporary name and renamed, so concurrent builders never see half a
    file; the loser of a race just overwrites an identical file.
    """
    target = onnx_path(embedding_version, numerics, cache_dir)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        fp32 = export_fp32(auto_model, Path(tmp) / "fp32.onnx")
        built = fp32 if numerics == "onnx-fp32" else quantize_int8(fp32, Path(tmp) / "int8.onnx")
        os.replace(built, target)
    logger.info(
        "exported %s %s to %s in %.1f s",
        embedding_version,
        numerics,
        target,
        time.perf_counter() - t0,
    )
    return target


class OnnxSentenceModel:
    """ONNX Runtime session + the encoder's pooling modules; called like a SentenceTransformer.

    Args:
        path: the ONNX file (inputs ``input_ids``, ``attention_mask``; output token embeddings).
        post: modules applied to ``{"token_embeddings", "attention_mask"}`` after the session
            (the encoder's ``Pooling`` and ``Normalize``).
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, path: Path, post: Sequence[torch.nn.Module], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle pool threads sleep instead of spinning: in the server the same cores tokenize and
        # serve gRPC, and on shared machines spinning was measured slower (56 vs 49 profiles/s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors on a bad file
            raise ArtifactError(
                f"cannot load ONNX file {path}: {err}; delete it to re-export"
            ) from err
        self.path = path
        self.post = list(post)
        self.threads = threads

    def __call__(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {name: features[name].numpy() for name in INPUTS}
        (tokens,) = self.session.run([OUTPUT], feeds)
        return pool_tokens(tokens, features, self.post)


def pool_tokens(
    tokens: Any, features: dict[str, torch.Tensor], post: Sequence[torch.nn.Module]
) -> dict[str, torch.Tensor]:
    """An engine's token embeddings through the encoder's own ``Pooling`` and ``Normalize``."""
    out: dict[str, Any] = {
        "token_embeddings": torch.from_numpy(tokens),
        "attention_mask": features["attention_mask"],
    }
    for module in post:
        out = module(out)
    return out


def build_onnx_model(
    st_model: Any,
    embedding_version: str,
    numerics: str,
    threads: int,
    cache_dir: Path | None = None,
) -> OnnxSentenceModel:
    """Export (or reuse) the ONNX file of ``st_model`` and open a session on it.

    Args:
        st_model: the encoder's SentenceTransformer (Transformer, Pooling, Normalize).
        embedding_version: the encoder's version (cache key).
        numerics: ``"onnx-fp32"`` or ``"onnx-int8"``.
        threads: intra-op threads.
        cache_dir: cache root; None uses :func:`onnx_cache_dir`.

    Raises:
        ArtifactError: when the cached file cannot be loaded.
    """
    modules = list(st_model)
    path = ensure_onnx(modules[0].auto_model, embedding_version, numerics, cache_dir)
    model = OnnxSentenceModel(path, modules[1:], threads)
    logger.info("onnx session %s (%d threads) on %s", numerics, threads, path)
    return model
