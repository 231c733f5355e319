"""CTranslate2 backend of ``ProfileEncoder`` (numerics ``ct2-int8``).

Adopted from ``make bench``'s peer engines, as OpenVINO was: on an AVX2-only AMD EPYC (no AVX-512,
no AMX) CTranslate2's int8 ``Encoder`` ran the default model at 1.30x our fastest numerics there
(onnx-int8), within 0.5 points of fp32 (docs/BENCHMARKS.md, "On an AVX2-only CPU"). Which
numerics a server runs is still the load-time probe's choice (``embedder.numerics_choice``), so
this one matters where it wins.

The encoder's transformer (weights, vocabulary as trimmed and extended) is saved to a temporary
folder and converted by CTranslate2's ``TransformersConverter`` with int8 weights; the converted
model is cached per ``embedding_version`` beside the ONNX exports
(``<cache>/<embedding_version>/ct2-int8-f<FORMAT>/``), so only the first start converts.
Tokenizing, length bucketing, pooling and normalisation stay the encoder's: CTranslate2 gets each
row's token ids unpadded and returns the token embeddings, which go through the encoder's own
``Pooling`` and ``Normalize`` modules.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedder.errors import ArtifactError
from embedder.numerics import CT2_NUMERICS
from embedder.onnx_backend import onnx_cache_dir, pool_tokens

logger = logging.getLogger(__name__)

#: Part of the cache key: bump when the conversion settings change.
CT2_FORMAT = 1
#: CTranslate2 compute type of each numerics.
COMPUTE_TYPE = {"ct2-int8": "int8"}


def ct2_model_dir(embedding_version: str, numerics: str, cache_dir: Path | None = None) -> Path:
    """Where the converted model of one encoder version is cached (a folder with ``model.bin``)."""
    root = cache_dir if cache_dir is not None else onnx_cache_dir()
    return root / embedding_version / f"{numerics}-f{CT2_FORMAT}"


def transformers_converter(model_dir: Path) -> Any:
    """CTranslate2's ``TransformersConverter`` for a Hugging Face model folder, as transformers 5
    needs it (also used by ``bench/peers.py``'s CTranslate2 peers)."""
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):  # type: ignore[misc]  # untyped package
        # transformers 5 dropped BertConfig.position_embedding_type (always absolute for BERT);
        # CTranslate2's BERT loader still asserts it.
        def load_model(self, model_class: Any, path: str, **kwargs: Any) -> Any:
            model = super().load_model(model_class, path, **kwargs)
            if getattr(model.config, "position_embedding_type", None) is None:
                model.config.position_embedding_type = "absolute"
            return model

    return Converter(str(model_dir))


def convert(transformer: Any, target: Path, compute_type: str) -> Path:
    """Convert a sentence-transformers ``Transformer`` module (model + tokenizer) to ``target``.

    Converted in a temporary folder beside ``target`` and renamed, so a concurrent reader sees
    no model or a complete one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        source = Path(tmp) / "hf"
        transformer.auto_model.save_pretrained(str(source))
        transformer.tokenizer.save_pretrained(str(source))
        out = Path(tmp) / "ct2"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter's and transformers' chatter
            transformers_converter(source).convert(str(out), quantization=compute_type, force=True)
        if target.exists():  # another process converted it meanwhile
            return target
        os.replace(out, target)
    return target


class Ct2SentenceModel:
    """A CTranslate2 ``Encoder`` + the encoder's pooling modules; called like a SentenceTransformer.

    Args:
        path: a converted model folder (``model.bin``).
        post: modules applied to ``{"token_embeddings", "attention_mask"}`` (``Pooling``,
            ``Normalize``).
        threads: intra-op threads.
        compute_type: CTranslate2's compute type (``"int8"``).
    """

    def __init__(
        self, path: Path, post: Sequence[torch.nn.Module], threads: int, compute_type: str
    ) -> None:
        import ctranslate2

        try:
            self.encoder = ctranslate2.Encoder(
                str(path), device="cpu", compute_type=compute_type, intra_threads=threads
            )
        except (RuntimeError, ValueError) as err:  # a missing, truncated or foreign model.bin
            detail = " ".join(str(err).split())
            raise ArtifactError(
                f"cannot load CTranslate2 model {path}: {detail}; delete it to rebuild"
            ) from err
        self._lock = threading.Lock()
        self.path = path
        self.post = list(post)
        self.threads = threads

    def __call__(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = features["attention_mask"]
        lengths = mask.sum(dim=1).tolist()
        rows = zip(features["input_ids"], lengths, strict=True)
        ids = [row[: int(n)].tolist() for row, n in rows]
        with self._lock:
            hidden = np.asarray(self.encoder.forward_batch(ids).last_hidden_state)
        # CTranslate2 pads to the batch's longest row; the encoder's mask may be wider (its widths
        # are rounded up) but is all zeros beyond that row, so pooling reads the mask cut to it.
        width = hidden.shape[1]
        return pool_tokens(hidden, {"attention_mask": mask[:, :width]}, self.post)


def build_ct2_model(
    encoder: Any, numerics: str, threads: int, cache_dir: Path | None = None
) -> Ct2SentenceModel:
    """Convert (or reuse) the encoder for ``numerics`` and load it.

    Args:
        encoder: the ``ProfileEncoder`` (its sentence-transformers modules and version).
        numerics: one of ``CT2_NUMERICS``.
        threads: intra-op threads.
        cache_dir: cache root; None uses ``embedder.onnx_backend.onnx_cache_dir``.

    Raises:
        ArtifactError: when a cached model cannot be loaded.
    """
    if numerics not in CT2_NUMERICS:
        raise ValueError(f"CTranslate2 numerics must be one of {CT2_NUMERICS}, got {numerics!r}")
    modules = list(encoder.st_model)
    compute_type = COMPUTE_TYPE[numerics]
    path = ct2_model_dir(encoder.embedding_version, numerics, cache_dir)
    if not path.exists():  # a folder without a loadable model.bin fails below, naming the fix
        start = time.perf_counter()
        convert(modules[0], path, compute_type)
        seconds = time.perf_counter() - start
        logger.info("converted %s to CTranslate2 %s in %.1f s: %s", encoder.embedding_version,
                    compute_type, seconds, path)  # fmt: skip
    model = Ct2SentenceModel(path, modules[1:], threads, compute_type)
    logger.info("ctranslate2 %s (%d threads) on %s", numerics, threads, path)
    return model
