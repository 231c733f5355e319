"""OpenVINO backend of ``ProfileEncoder`` (numerics ``openvino`` and ``openvino-int8``).

Adopted from ``make bench``'s peer engines (issue 13): on the AMX Xeon it measured OpenVINO's
default precision at 0.90x our bf16 and NNCF's static int8 at 0.94x, both within 0.5 points of
fp32, where no other peer came within 20%. Which one a server runs is still the load-time probe's
choice (``embedder.numerics_choice``), so these numerics matter where they win: CPUs on which
our torch bf16 is not native.

- ``openvino``: OpenVINO's CPU plugin on the encoder's fp32 ONNX export (the same file
  ``onnx-fp32`` runs, ``embedder.onnx_backend``) at the plugin's default inference precision:
  bf16 where the CPU has AMX or AVX512-BF16, f32 elsewhere.
- ``openvino-int8``: that export quantized by NNCF (static int8, transformer preset: activations
  calibrated on profile text, the attention softmax and norms left in higher precision),
  calibrated on ``CALIBRATION_PROFILES`` simulated profiles assembled by the encoder (a fixed
  seed and stream: the same file on every machine for one encoder version). Saved as OpenVINO IR
  beside the ONNX export (``<cache>/<embedding_version>/openvino-int8-f<FORMAT>.xml``), so only
  the first start pays for the quantization. Its non-quantized operations run in f32, not the
  plugin's default: with OpenVINO 2026.4 on an AMX Xeon, the int8 IR at bf16 precision returned
  wrong vectors for sequences of exactly 32 tokens (cosine 0.74 to fp32; every other length from
  3 to 112 >= 0.99, and f32 precision >= 0.99 at all of them, at the same speed: 936 vs 948
  profiles/s on the bench texts).

Pooling and normalisation run through the encoder's own sentence-transformers modules, as for
ONNX Runtime; batching and bucketing stay in the encoder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedder.encoder import token_ids
from embedder.errors import ArtifactError
from embedder.numerics import OPENVINO_NUMERICS
from embedder.onnx_backend import INPUTS, ensure_onnx, onnx_cache_dir, pool_tokens

logger = logging.getLogger(__name__)

#: Part of the cache key: bump when the quantization settings or the calibration data change.
IR_FORMAT = 1
CALIBRATION_PROFILES = 300  # NNCF's default subset size
CALIBRATION_SEED = 0
CALIBRATION_STREAM = "openvino-calibration"


def int8_ir_path(embedding_version: str, cache_dir: Path | None = None) -> Path:
    """Where the NNCF int8 IR of one encoder version is cached (``.xml``; weights in ``.bin``)."""
    root = cache_dir if cache_dir is not None else onnx_cache_dir()
    return root / embedding_version / f"openvino-int8-f{IR_FORMAT}.xml"


def quantize_int8(onnx_file: Path, target: Path, items: Sequence[dict[str, np.ndarray]]) -> Path:
    """NNCF static int8 of ``onnx_file`` calibrated on ``items`` (model inputs, one text each);
    the IR is written to ``target``.

    Written under a temporary name in the target's folder and renamed (the ``.bin`` first), so a
    concurrent reader sees no IR or a complete one.
    """
    import nncf
    import openvino as ov

    # NNCF logs per-layer chatter at INFO on its own logger, and draws its progress bars on
    # stdout, where CLI commands write their JSON: the bars go to stderr with the logs.
    logging.getLogger("nncf").setLevel(logging.WARNING)
    model = ov.Core().read_model(str(onnx_file))
    with contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(list(items)),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(items),
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        xml = Path(tmp) / target.name
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        os.replace(xml.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(xml, target)
    return target


class OpenVinoSentenceModel:
    """A compiled OpenVINO model + the encoder's pooling modules; called like a SentenceTransformer.

    Args:
        path: an ONNX file or OpenVINO IR (inputs ``input_ids``, ``attention_mask``; output the
            token embeddings).
        post: modules applied to ``{"token_embeddings", "attention_mask"}`` (``Pooling``,
            ``Normalize``).
        threads: inference threads.
        precision: OpenVINO's ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``); None keeps
            the CPU plugin's default for this CPU.
    """

    def __init__(
        self,
        path: Path,
        post: Sequence[torch.nn.Module],
        threads: int,
        precision: str | None = None,
    ) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except RuntimeError as err:  # OpenVINO raises RuntimeError on a bad or truncated file
            detail = " ".join(str(err).split())  # OpenVINO's messages span lines
            raise ArtifactError(
                f"cannot load OpenVINO model {path}: {detail}; delete it to rebuild"
            ) from err
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        # One request reused under a lock: requests are not thread-safe, and the encoder's
        # callers (server worker, probe, batch job) run one pass at a time anyway.
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self.path = path
        self.post = list(post)
        self.threads = threads

    def __call__(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {name: features[name].numpy() for name in INPUTS}
        with self._lock:
            result = self._request.infer(feeds)
            # a copy: the request's output buffer is reused by the next pass
            tokens = np.array(result[self.compiled.outputs[0]], copy=True)
        return pool_tokens(tokens, features, self.post)


def build_openvino_model(
    encoder: Any, numerics: str, threads: int, cache_dir: Path | None = None
) -> OpenVinoSentenceModel:
    """Export (or reuse) the ONNX file, quantize it for ``openvino-int8`` (or reuse the IR) and
    compile it.

    Args:
        encoder: the ``ProfileEncoder`` (its weights, tokenizer, version and text assembly).
        numerics: ``"openvino"`` or ``"openvino-int8"``.
        threads: inference threads.
        cache_dir: cache root; None uses ``embedder.onnx_backend.onnx_cache_dir``.

    Raises:
        ArtifactError: when a cached file cannot be loaded.
    """
    if numerics not in OPENVINO_NUMERICS:
        raise ValueError(f"OpenVINO numerics must be one of {OPENVINO_NUMERICS}, got {numerics!r}")
    modules = list(encoder.st_model)
    version = encoder.embedding_version
    path = ensure_onnx(modules[0].auto_model, version, "onnx-fp32", cache_dir)
    if numerics == "openvino-int8":
        ir = int8_ir_path(version, cache_dir)
        if not ir.is_file():
            from embedder.simulator.core import simulated_texts  # lazy: gazetteer and word lists

            start = time.perf_counter()
            texts = simulated_texts(
                encoder.assemble,
                CALIBRATION_PROFILES,
                seed=CALIBRATION_SEED,
                stream=CALIBRATION_STREAM,
            )
            quantize_int8(path, ir, _model_inputs(encoder, texts))
            seconds = time.perf_counter() - start
            logger.info("quantized %s with NNCF in %.1f s: %s", version, seconds, ir)
        path = ir
    precision = "f32" if numerics == "openvino-int8" else None  # see the module docstring
    model = OpenVinoSentenceModel(path, modules[1:], threads, precision)
    logger.info("openvino %s (%s, %d threads) on %s", numerics, model.precision, threads, path)
    return model


def _model_inputs(encoder: Any, texts: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Each text as the model's int64 inputs (batch of one), truncated as the encoder truncates."""
    with encoder._tok_lock:  # the encoder's tokenizer is shared and not safe to call concurrently
        ids = token_ids(encoder.tokenizer, list(texts), encoder.max_seq_length)
    return [
        {
            "input_ids": np.asarray([row], dtype=np.int64),
            "attention_mask": np.ones((1, len(row)), dtype=np.int64),
        }
        for row in ids
    ]
