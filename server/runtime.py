"""What the servicer runs on: the loaded model, cache, index and batcher, and the embed path.

``Runtime.load`` reads every artifact and refuses a mix of versions: a head, cache or index whose
``embedding_version`` differs from the encoder's is an error at startup (``VersionMismatchError``),
never a silent stale answer. ``embed`` is the one path every RPC uses: the pipeline of
``heads.model.ProfileModel`` (the CLI's and the batch job's too) with the dynamic batcher between
its cache lookup and its encoding of the misses: in-memory LRU -> assemble -> ``lookup`` ->
batcher -> ``encode_misses`` (which writes the cache before anyone is answered, so an acknowledged
vector survives a crash) -> vectors in request order; ``predict`` runs the model's heads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

import numpy as np

from embedder.errors import ArtifactError, NotConfiguredError
from embedder.profile import Profile
from server.allocator import Trimmer
from server.batcher import DynamicBatcher
from server.config import ServerConfig
from server.metrics import ServerMetrics

if TYPE_CHECKING:
    from embedder.cache import CachedEncoder
    from embedder.index import SimilarityIndex
    from heads.base import Head, Prediction
    from heads.model import ProfileModel

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")


@dataclass(frozen=True)
class Embedded:
    """Vectors of one request, in request order, and which came from the cache."""

    vectors: np.ndarray
    cache_hits: np.ndarray


class Runtime:
    """Loaded artifacts plus the batching embed path.

    Args:
        config: the server settings.
        model: a loaded ``heads.model.ProfileModel`` (or anything with ``encoder`` and
            ``heads``).
        cache: an ``embedder.cache.EmbeddingCache`` of the encoder's version to use instead of
            the model's own, or None.
        index: an ``embedder.index.SimilarityIndex`` of the encoder's version, or None.
        metrics: where to record batches and cache lookups.
    """

    def __init__(
        self,
        config: ServerConfig,
        model: Any,
        *,
        cache: Any = None,
        index: SimilarityIndex | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        from heads.model import ProfileModel  # lazy, as in load()

        if cache is not None or not isinstance(model, ProfileModel):
            model = ProfileModel(model.encoder, model.heads, cache=cache)
        self.config = config
        self.model: ProfileModel = model
        self.encoder = model.encoder
        self.heads: Mapping[str, Head] = dict(model.heads)
        self.cache = model.cache
        if model.embedder is None:
            raise ArtifactError("the server needs a model with an encoder")
        self._embedder: CachedEncoder = model.embedder
        self.index = index
        self.metrics = metrics or ServerMetrics()
        for name, head in self.heads.items():
            self.metrics.declare_head(name, getattr(head, "labels", ()))
        self.embedding_version: str = self.encoder.embedding_version
        self.dim: int = int(self.encoder.dim)
        self.base_model: str = _base_of(config.model, self.encoder)
        self._index_lock = threading.Lock()
        # Vectors by profile key: a hit skips text assembly (tokenizing), the costly part of a hit.
        self._memory: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._memory_lock = threading.Lock()
        self._key_prefix = self.embedding_version.encode() + b"\x00"
        # Assembly, cache reads and heads run here so the event loop never blocks on them.
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="runtime")
        # Hands back heap pages freed by passes of ever different shapes (server.allocator).
        self._trim = Trimmer(interval_s=1.0)
        self.batcher = DynamicBatcher(
            self._encode_batch,
            max_batch_tokens=config.max_batch_tokens,
            max_batch_profiles=config.max_batch_profiles,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            workers=config.workers,
            on_batch=self.metrics.observe_batch,
        )
        self.metrics.bind_queue(lambda: self.batcher.queue_depth, self.batcher.estimated_delay)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, config: ServerConfig, metrics: ServerMetrics | None = None) -> Runtime:
        """Load model, cache and index named by ``config``; refuse any version mismatch.

        Raises:
            ArtifactError: a missing or broken artifact.
            VersionMismatchError: a head, cache or index of another ``embedding_version``.
        """
        from heads.model import ProfileModel

        if config.model is None:
            raise ArtifactError("no model given: pass --model DIR (a folder written by train)")
        options: dict[str, Any] = {"threads": config.threads_per_worker, "device": config.device}
        if config.numerics is not None:
            options["numerics"] = config.numerics
        model = ProfileModel.load(config.model, cache=config.cache, **options)
        version = model.encoder.embedding_version
        index = None
        if config.index is not None:
            index = _load_index(Path(config.index), version, int(model.encoder.dim))
        logger.info(
            "loaded model %s: embedding_version=%s dim=%d device=%s numerics=%s (%s) heads=%s "
            "cache=%s index=%s",
            config.model,
            version,
            model.encoder.dim,
            model.encoder.device,
            model.encoder.numerics,
            model.encoder.numerics_choice.get("how"),
            sorted(model.heads),
            "on" if model.cache is not None else "off",
            "off" if index is None else f"{len(index)} vectors",
        )
        return cls(config, model, index=index, metrics=metrics)

    def start(self) -> None:
        """Start the batcher (on the running event loop)."""
        self.batcher.start()

    async def close(self) -> None:
        """Drain the batcher, then close the cache."""
        await self.batcher.close(drain=True)
        self._cpu.shutdown(wait=True)
        self.model.close()

    # ------------------------------------------------------------------ embed path
    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """One collected batch (worker thread): the pipeline's ``encode_misses``, then a trim.

        The batch arrives in arrival order with mixed lengths; ``pass_overhead_tokens`` makes the
        encoder run it as length-sorted passes (as an in-process ``encode`` over many profiles
        does) rather than one pass padded to the longest input.
        """
        vectors = self._embedder.encode_misses(
            texts, batch_size=None, pass_overhead_tokens=self.config.pass_overhead_tokens
        )
        self._trim()
        return vectors

    def profile_key(self, profile: Profile) -> bytes:
        """Digest of the encoder version and every field the encoder reads (never the id)."""
        h = hashlib.sha256(self._key_prefix)
        for text in (profile.username, profile.full_name, profile.biography, *profile.captions):
            raw = text.encode("utf-8", "surrogatepass")
            h.update(len(raw).to_bytes(8, "little"))
            h.update(raw)
        return h.digest()

    def _remember(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        limit = self.config.memory_cache
        if limit <= 0:
            return
        with self._memory_lock:
            for key, vec in zip(keys, vectors, strict=True):
                self._memory[key] = vec
                self._memory.move_to_end(key)
            while len(self._memory) > limit:
                self._memory.popitem(last=False)

    def _lookup(
        self, profiles: Sequence[Profile]
    ) -> tuple[list[bytes], dict[int, str], list[np.ndarray | None]]:
        keys = [self.profile_key(p) for p in profiles]
        with self._memory_lock:
            found: list[np.ndarray | None] = [self._memory.get(k) for k in keys]
        todo = [i for i, v in enumerate(found) if v is None]
        texts: dict[int, str] = {}
        if todo:
            assembled = self.encoder.assemble([profiles[i] for i in todo])
            texts = dict(zip(todo, assembled, strict=True))
            for i, vec in zip(todo, self._embedder.lookup(assembled), strict=True):
                found[i] = vec
        return keys, texts, found

    async def run_cpu(self, fn: Callable[[*_Args], _T], *args: *_Args) -> _T:
        """Run a blocking function on the runtime's small thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    async def embed(self, profiles: Sequence[Profile]) -> Embedded:
        """Embed profiles: cache hits directly, misses through the dynamic batcher.

        Raises:
            OverloadedError: the encoder queue is full.
            NotReadyError: the server is shutting down.
        """
        keys, texts, cached = await self.run_cpu(self._lookup, profiles)
        hits = np.array([v is not None for v in cached], dtype=bool)
        out = np.empty((len(profiles), self.dim), dtype=np.float32)
        for i, vec in enumerate(cached):
            if vec is not None:
                out[i] = vec
        miss = np.flatnonzero(~hits)
        if len(miss):
            out[miss] = await self.batcher.submit([texts[int(i)] for i in miss])
        if texts:  # rows that were not in memory: remember them
            rows = sorted(texts)
            self._remember([keys[i] for i in rows], out[rows])
        self.metrics.observe_cache(int(hits.sum()), len(miss))
        return Embedded(out, hits)

    async def predict(
        self, vectors: np.ndarray, heads: Sequence[str]
    ) -> dict[str, list[Prediction]]:
        """Run the named heads on embeddings (thread pool); record per-class outcomes."""

        def run() -> dict[str, list[Prediction]]:
            return self.model.predict(vectors, heads=heads)

        result = await self.run_cpu(run)
        for name, preds in result.items():
            self.metrics.observe_predictions(
                name, [p.argmax for p in preds], [p.reason for p in preds]
            )
        return result

    # ------------------------------------------------------------------ index
    def require_index(self) -> SimilarityIndex:
        """Return the index, or raise NotConfiguredError when the server runs without one."""
        if self.index is None:
            raise NotConfiguredError(
                "this server has no similarity index (start it with --index DIR)"
            )
        return self.index

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        """Add or replace vectors by id and persist the index (blocking; call via run_cpu)."""
        index = self.require_index()
        with self._index_lock:
            index.upsert(list(ids), vectors)
            if self.config.index is not None:
                index.save(self.config.index)
            return len(index)


def _base_of(model_dir: Path | None, encoder: Any) -> str:
    if model_dir is not None:
        try:
            meta = json.loads((Path(model_dir) / "model.json").read_text(encoding="utf-8"))
            if meta.get("base"):
                return str(meta["base"])
        except (OSError, ValueError):
            pass
    return str(getattr(encoder, "base", "") or "")


def _load_index(path: Path, version: str, dim: int) -> SimilarityIndex:
    from embedder.index import SimilarityIndex

    if path.exists() and any(path.iterdir()):
        return SimilarityIndex.load(path, embedding_version=version)
    return SimilarityIndex(version, dim)
