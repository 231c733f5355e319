"""Peer engines for the encoder benchmark: the same sentence-transformers folder, other runtimes.

Each peer is one small adapter, ``prepare(model_dir, tmp, threads, calib) -> encode``, where
``model_dir`` is a sentence-transformers folder (Transformer + mean Pooling + Normalize, like
``models/default/encoder``), ``tmp`` a scratch folder for exports, ``calib`` a few texts for peers
that calibrate (never the benchmark's texts), and ``encode(texts) -> float32 (n, dim)`` returns
L2-normalised mean-pooled vectors, as our encoder does. Every adapter loads local files only.

A peer that cannot run here (package not installed or not installable next to this venv's
transformers/torch/numpy, CPU without the needed instructions, a failed export) raises
``PeerUnavailable`` with the reason; the benchmark reports that line instead of a row.

Adapters that run the model themselves (ONNX Runtime, OpenVINO, CTranslate2) encode the way
``SentenceTransformer.encode`` does: texts sorted by length, batches of ``BATCH``, padded to the
longest in the batch, truncated at the folder's ``max_seq_length``, mean pooling over the
attention mask, L2 normalisation, original order restored.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BATCH = 32
Encode = Callable[[list[str]], np.ndarray]

#: Why a package cannot be installed next to this project's pins (checked with
#: ``pip install --dry-run -c requirements.lock``); shown when its import fails.
NOT_INSTALLABLE = {
    "optimum": "not installable here: optimum-onnx <= 0.1.0 (ORTModel*, ORTQuantizer) requires "
    "transformers < 4.58 and optimum[onnxruntime] resolves to optimum 1.17.1, which fails on "
    "import with transformers 5 (`is_tf_available`); this venv pins transformers 5.x",
    "optimum.intel": "not installable here: optimum-intel <= 2.2.0 requires transformers < 5.6 "
    "(2.0/2.1: safetensors < 0.8); this venv pins transformers 5.x",
    "fastembed": "not installable here: fastembed <= 0.9.1 requires huggingface-hub < 2.0, which "
    "transformers 5.x in this venv cannot use (it has huggingface-hub 2.x)",
    "infinity_emb": "not installable here: infinity-emb 0.0.46-0.0.78 require numpy < 2 (this "
    "venv: numpy 2.x); pip would fall back to 0.0.45, a 2024 release written for "
    "sentence-transformers 2/3",
}


class PeerUnavailable(RuntimeError):
    """The peer cannot run on this machine or in this environment; the message says why."""


@dataclass(frozen=True)
class Peer:
    """One peer engine: its row name, what it is, whether its matmuls are int8, its adapter, and
    which of our numerics runs the same engine (issue 13's "adopt what wins"), if any."""

    name: str
    engine: str
    int8: bool
    prepare: Callable[[Path, Path, int, Sequence[str]], Encode]
    adopted_as: str | None = None


def _import(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install failing on import
        base = module.split(".")[0]
        why = NOT_INSTALLABLE.get(module) or NOT_INSTALLABLE.get(base)
        if why:
            raise PeerUnavailable(f"{why} ({type(exc).__name__}: {exc})") from exc
        raise PeerUnavailable(
            f"{module} not importable ({type(exc).__name__}: {exc}); `make bench` installs "
            "the [bench] extra"
        ) from exc


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def quantization_target() -> str:
    """Optimum's ``AutoQuantizationConfig`` name for this CPU (what ST's export would pick)."""
    flags = cpu_flags()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "arm64"


# ---------------------------------------------------------------------------- shared helpers


def max_seq_length(model_dir: Path) -> int:
    """Where sentence-transformers truncates: ``max_seq_length`` of sentence_bert_config.json
    (ST < 6), else the tokenizer's ``model_max_length`` (ST 6), within the position table."""
    cfg = json.loads((model_dir / "sentence_bert_config.json").read_text())
    if "max_seq_length" in cfg:
        return int(cfg["max_seq_length"])
    tok = json.loads((model_dir / "tokenizer_config.json").read_text())
    positions = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings")
    return int(min(tok.get("model_max_length", 512), positions or 512))


def check_pooling(model_dir: Path) -> None:
    """Peers re-implement mean pooling + normalize: refuse a folder that is anything else."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    pooling = json.loads((model_dir / "1_Pooling/config.json").read_text())
    if kinds != ["Transformer", "Pooling", "Normalize"] or pooling.get("pooling_mode") != "mean":
        raise PeerUnavailable(f"peers assume Transformer+mean Pooling+Normalize, got {kinds}")


def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def mean_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the unmasked tokens, then L2 normalisation (ST's Pooling + Normalize)."""
    m = mask.astype(np.float32)[..., None]
    pooled = (hidden.astype(np.float32) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def batched(
    tok: Any, max_len: int, forward: Callable[[dict[str, np.ndarray]], np.ndarray]
) -> Encode:
    """``encode`` running ``forward({"input_ids", "attention_mask"}) -> pooled`` per batch."""

    def encode(texts: list[str]) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        for i in range(0, len(texts), BATCH):
            idx = order[i : i + BATCH]
            feats = tok(
                [texts[j] for j in idx],
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="np",
            )
            vecs = forward(
                {"input_ids": feats["input_ids"], "attention_mask": feats["attention_mask"]}
            )
            for j, v in zip(idx, vecs, strict=True):
                out[j] = v
        return np.stack(out).astype(np.float32) if texts else np.zeros((0, 0), np.float32)

    return encode


def onnx_export(model_dir: Path, tmp: Path) -> Path:
    """The HF transformer exported once to ``tmp/onnx/model.onnx`` (ids, mask -> hidden states).

    A plain ``torch.onnx.export`` (TorchScript exporter, opset 17, default attention), the graph
    Optimum's exporter produces for a BERT encoder.
    """
    path = tmp / "onnx" / "model.onnx"
    if path.is_file():
        return path
    import torch
    from transformers import AutoModel

    path.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(str(model_dir)).eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]], dtype=torch.long)
    axes = {0: "batch", 1: "seq"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden().eval(),
            (ids, (ids != 1).long()),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            opset_version=17,
            dynamo=False,
        )
    return path


# ---------------------------------------------------------------------------- adapters


def prepare_st_bf16(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """``SentenceTransformer`` with ``model.to(torch.bfloat16)``, only on CPUs with native bf16."""
    if not native_bf16():
        raise PeerUnavailable("skipped: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag)")
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    st.to(torch.bfloat16)

    def encode(texts: list[str]) -> np.ndarray:
        v = st.encode(texts, batch_size=BATCH, convert_to_tensor=True)
        return v.float().numpy()

    return encode


def prepare_st_onnx(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """``SentenceTransformer(backend="onnx")`` (exports through Optimum)."""
    _import("optimum.onnxruntime")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", backend="onnx", local_files_only=True)
    return lambda texts: np.asarray(st.encode(texts, batch_size=BATCH), dtype=np.float32)


def prepare_st_onnx_int8(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """ST's ``export_dynamic_quantized_onnx_model`` with the config for this CPU."""
    _import("optimum.onnxruntime")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    target = quantization_target()
    st = SentenceTransformer(str(model_dir), device="cpu", backend="onnx", local_files_only=True)
    out = tmp / "st-onnx-int8"
    export_dynamic_quantized_onnx_model(st, target, str(out))
    st = SentenceTransformer(
        str(out),
        device="cpu",
        backend="onnx",
        model_kwargs={"file_name": f"onnx/model_qint8_{target}.onnx"},
        local_files_only=True,
    )
    return lambda texts: np.asarray(st.encode(texts, batch_size=BATCH), dtype=np.float32)


def prepare_st_openvino(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """``SentenceTransformer(backend="openvino")`` (exports through optimum-intel)."""
    _import("optimum.intel")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(
        str(model_dir), device="cpu", backend="openvino", local_files_only=True
    )
    return lambda texts: np.asarray(st.encode(texts, batch_size=BATCH), dtype=np.float32)


def prepare_optimum_ort(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """Optimum ``ORTModelForFeatureExtraction`` + mean pooling + normalize."""
    optimum_ort = _import("optimum.onnxruntime")
    check_pooling(model_dir)
    model = optimum_ort.ORTModelForFeatureExtraction.from_pretrained(
        str(model_dir), export=True, local_files_only=True
    )
    tok = tokenizer(model_dir)

    def forward(feats: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        t = {k: torch.from_numpy(v) for k, v in feats.items()}
        hidden = model(**t).last_hidden_state.numpy()
        return mean_normalize(hidden, feats["attention_mask"])

    return batched(tok, max_seq_length(model_dir), forward)


def _ort_session(path: Path, threads: int) -> Any:
    ort = _import("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _ort_encode(model_dir: Path, path: Path, threads: int) -> Encode:
    sess = _ort_session(path, threads)
    names = {i.name for i in sess.get_inputs()}

    def forward(feats: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v.astype(np.int64) for k, v in feats.items() if k in names}
        return mean_normalize(sess.run(None, feed)[0], feats["attention_mask"])

    return batched(tokenizer(model_dir), max_seq_length(model_dir), forward)


def prepare_ort_fp32(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """ONNX Runtime (default session) on a plain export: what ST's ONNX backend runs."""
    check_pooling(model_dir)
    return _ort_encode(model_dir, onnx_export(model_dir, tmp), threads)


def prepare_ort_int8(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """That export quantized with Optimum's dynamic ``AutoQuantizationConfig`` for this CPU.

    Optimum's settings reproduced with ``onnxruntime.quantization.quantize_dynamic``: every
    IntegerOps operator (MatMul, Gather, ...), int8 symmetric weights, uint8 asymmetric
    activations; per-channel and full range except ``avx2``/``arm64`` (per-tensor; ``avx2``
    reduced range).
    """
    check_pooling(model_dir)
    _import("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = quantization_target()
    src = onnx_export(model_dir, tmp)
    dst = src.with_name(f"model_qint8_{target}.onnx")
    if not dst.is_file():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=target in ("avx512_vnni", "avx512"),
            reduce_range=target == "avx2",
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    return _ort_encode(model_dir, dst, threads)


def _openvino(
    model_dir: Path, tmp: Path, threads: int, precision: str | None, calib: Sequence[str] = ()
) -> Encode:
    ov = _import("openvino")
    core = ov.Core()
    model = core.read_model(str(onnx_export(model_dir, tmp)))
    tok = tokenizer(model_dir)
    max_len = max_seq_length(model_dir)
    if calib:
        nncf = _import("nncf")
        items = [
            {k: v.astype(np.int64) for k, v in tok(t, truncation=True, max_length=max_len,
                                                    return_tensors="np").items()
             if k in ("input_ids", "attention_mask")}
            for t in calib
        ]  # fmt: skip
        model = nncf.quantize(
            model,
            nncf.Dataset(items),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(items),
        )
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    logger.info(
        "openvino %s: inference precision %s",
        precision or "default",
        compiled.get_property("INFERENCE_PRECISION_HINT"),
    )
    request = compiled.create_infer_request()
    names = {p.get_any_name() for p in compiled.inputs}

    def forward(feats: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v.astype(np.int64) for k, v in feats.items() if k in names}
        hidden = request.infer(feed)[compiled.outputs[0]]
        return mean_normalize(hidden, feats["attention_mask"])

    return batched(tok, max_len, forward)


def prepare_openvino_fp32(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """OpenVINO runtime on the export, inference precision forced to f32."""
    check_pooling(model_dir)
    return _openvino(model_dir, tmp, threads, "f32")


def prepare_openvino_auto(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """OpenVINO with its default precision for this CPU (bf16 where AMX/AVX512-BF16 exist)."""
    check_pooling(model_dir)
    return _openvino(model_dir, tmp, threads, None)


def prepare_openvino_int8(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """NNCF static int8 (transformer preset; what ST's OpenVINO int8 export runs), calibrated on
    ``calib`` profile texts."""
    check_pooling(model_dir)
    if not calib:
        raise PeerUnavailable("no calibration texts")
    return _openvino(model_dir, tmp, threads, None, calib)


def _ct2(model_dir: Path, tmp: Path, threads: int, compute_type: str) -> Encode:
    ct2 = _import("ctranslate2")
    from embedder.ct2_backend import transformers_converter

    check_pooling(model_dir)
    out = tmp / f"ct2-{compute_type}"
    if not (out / "model.bin").is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converter = transformers_converter(model_dir)
            converter.convert(str(out), quantization=compute_type, force=True)
    encoder = ct2.Encoder(str(out), device="cpu", compute_type=compute_type, intra_threads=threads)
    tok = tokenizer(model_dir)

    def forward(feats: dict[str, np.ndarray]) -> np.ndarray:
        mask = feats["attention_mask"]
        ids = [
            row[: int(n)].tolist() for row, n in zip(feats["input_ids"], mask.sum(1), strict=True)
        ]
        hidden = np.asarray(encoder.forward_batch(ids).last_hidden_state)
        return mean_normalize(hidden, mask[:, : hidden.shape[1]])

    return batched(tok, max_seq_length(model_dir), forward)


def prepare_ct2_int8(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """CTranslate2 ``Encoder``, weights and compute int8."""
    return _ct2(model_dir, tmp, threads, "int8")


def prepare_ct2_int8_float32(
    model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]
) -> Encode:
    """CTranslate2 ``Encoder``, int8 weights with float32 for the non-quantized layers."""
    return _ct2(model_dir, tmp, threads, "int8_float32")


def prepare_fastembed(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """fastembed ``TextEmbedding`` on a local ONNX export (registered as a custom mean-pooled,
    normalised model; ``specific_model_path`` keeps it off the hub). Not run here: fastembed is
    not installable next to this venv (see ``NOT_INSTALLABLE``)."""
    fe = _import("fastembed")
    from fastembed.common.model_description import ModelSource, PoolingType

    check_pooling(model_dir)
    local = tmp / "fastembed"
    if not (local / "model.onnx").is_file():
        import shutil

        local.mkdir(parents=True, exist_ok=True)
        shutil.copy(onnx_export(model_dir, tmp), local / "model.onnx")
        for f in model_dir.glob("*.json"):
            shutil.copy(f, local / f.name)
    name = "local/profile-encoder"
    dim = json.loads((model_dir / "1_Pooling/config.json").read_text())["embedding_dimension"]
    try:
        fe.TextEmbedding.add_custom_model(
            model=name,
            pooling=PoolingType.MEAN,
            normalization=True,
            sources=ModelSource(hf=name),
            dim=dim,
            model_file="model.onnx",
        )
    except ValueError:
        pass  # registered by an earlier call
    model = fe.TextEmbedding(
        model_name=name, specific_model_path=str(local), threads=threads, local_files_only=True
    )
    return lambda texts: np.stack(list(model.embed(texts, batch_size=BATCH))).astype(np.float32)


def prepare_infinity(model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]) -> Encode:
    """infinity-emb's ``AsyncEmbeddingEngine`` (torch engine) on the local folder. Not run here:
    infinity-emb is not installable next to this venv (see ``NOT_INSTALLABLE``)."""
    inf = _import("infinity_emb")
    import asyncio

    engine = inf.AsyncEmbeddingEngine.from_args(
        inf.EngineArgs(model_name_or_path=str(model_dir), engine="torch", device="cpu")
    )
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.astart())

    def encode(texts: list[str]) -> np.ndarray:
        vecs, _ = loop.run_until_complete(engine.embed(sentences=texts))
        v = np.asarray(vecs, dtype=np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    return encode


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        # PyTorch's CPU bf16 is the engine our bf16 numerics run (with fused linear layers and
        # length-bucketed passes on top)
        Peer(
            "st-bf16",
            "sentence-transformers, model.to(torch.bfloat16)",
            False,
            prepare_st_bf16,
            "bf16",
        ),
        Peer("st-onnx", 'sentence-transformers backend="onnx"', False, prepare_st_onnx),
        Peer(
            "st-onnx-int8",
            "sentence-transformers export_dynamic_quantized_onnx_model",
            True,
            prepare_st_onnx_int8,
        ),
        Peer("st-openvino", 'sentence-transformers backend="openvino"', False, prepare_st_openvino),
        Peer("optimum-ort", "Optimum ORTModelForFeatureExtraction", False, prepare_optimum_ort),
        Peer(
            "ort-fp32",
            "ONNX Runtime, plain export, default session",
            False,
            prepare_ort_fp32,
            "onnx-fp32",
        ),
        Peer(
            "ort-int8",
            "ONNX Runtime, Optimum's dynamic int8 config for this CPU",
            True,
            prepare_ort_int8,
            "onnx-int8",
        ),
        Peer("openvino-fp32", "OpenVINO runtime, f32 precision", False, prepare_openvino_fp32),
        Peer(
            "openvino-auto",
            "OpenVINO runtime, default precision",
            False,
            prepare_openvino_auto,
            "openvino",
        ),
        # not "openvino-int8": that name is our numerics on the same engine, a row of its own
        Peer(
            "openvino-nncf-int8",
            "OpenVINO + NNCF static int8",
            True,
            prepare_openvino_int8,
            "openvino-int8",
        ),
        # not "ct2-int8": that name is our numerics on the same engine (embedder/ct2_backend.py)
        Peer("ctranslate2-int8", "CTranslate2 Encoder, int8", True, prepare_ct2_int8, "ct2-int8"),
        Peer(
            "ctranslate2-int8_float32",
            "CTranslate2 Encoder, int8_float32",
            True,
            prepare_ct2_int8_float32,
        ),
        Peer("fastembed", "fastembed TextEmbedding, local ONNX", False, prepare_fastembed),
        Peer("infinity", "infinity-emb AsyncEmbeddingEngine", False, prepare_infinity),
    )
}


def prepare_peers(
    names: Sequence[str], model_dir: Path, tmp: Path, threads: int, calib: Sequence[str]
) -> tuple[dict[str, tuple[Encode, float]], dict[str, str]]:
    """``({name: (encode, prepare seconds)}, {name: why it did not run})`` for ``names``.

    Preparing includes the export/conversion and a warm-up on 16 texts; any exception becomes a
    failure line (the benchmark goes on with the other peers).
    """
    import time

    ok: dict[str, tuple[Encode, float]] = {}
    failed: dict[str, str] = {}
    warm = ["passage: bio: hello"] * 16
    for name in names:
        peer = PEERS[name]
        t0 = time.perf_counter()
        try:
            fn = peer.prepare(model_dir, tmp, threads, calib)
            v = fn(warm)
            if v.shape[0] != len(warm) or not np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-2):
                raise PeerUnavailable(f"bad output: shape {v.shape}, not L2-normalised")
        except PeerUnavailable as exc:
            failed[name] = str(exc)
        except Exception as exc:
            failed[name] = f"failed: {type(exc).__name__}: {str(exc)[:400]}"
        else:
            ok[name] = (fn, time.perf_counter() - t0)
        if name in failed:
            logger.warning("peer %s: %s", name, failed[name])
    return ok, failed
