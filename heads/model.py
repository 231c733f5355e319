"""A model folder: one encoder plus its heads, loaded together and written immutably.

Layout (``docs/ARCHITECTURE.md``)::

    M/model.json            {"format_version", "embedding_version", "base", "created", ...}
    M/encoder/              ProfileEncoder.save()
    M/heads/<name>/v<k>/    Head.save() (+ model card); the highest v<k> is loaded by default
    M/report/               evaluation report of the training run

``ProfileModel.load`` refuses heads of another ``embedding_version``; ``save_model`` and
``ModelWriter`` write a new folder atomically and never overwrite one; ``add_head`` adds ``v<k+1>``
of a head without touching the encoder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embedder.cache import CachedEncoder, EmbeddingCache
from embedder.errors import ArtifactError, UnknownHeadError, VersionMismatchError
from heads.base import Head, Prediction, as_numpy_embeddings
from heads.registry import load_head

logger = logging.getLogger(__name__)

MODEL_FORMAT_VERSION = 1
MODEL_FILE = "model.json"


def head_versions(model_dir: str | Path, name: str) -> list[int]:
    """Return the saved versions ``k`` of ``M/heads/<name>/v<k>``, ascending."""
    root = Path(model_dir) / "heads" / name
    if not root.is_dir():
        return []
    out = [int(p.name[1:]) for p in root.iterdir() if p.name[:1] == "v" and p.name[1:].isdigit()]
    return sorted(out)


def available_heads(model_dir: str | Path) -> list[str]:
    """Return the names of the heads saved in a model folder."""
    root = Path(model_dir) / "heads"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and head_versions(model_dir, p.name))


def read_model_meta(model_dir: str | Path) -> dict[str, Any]:
    """Read and check ``M/model.json``.

    Raises:
        ArtifactError: when it is missing, corrupt or of an unknown format.
    """
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise ArtifactError(f"{model_dir} is not a model folder: {MODEL_FILE} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from err
    if meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {meta.get('format_version')!r}; this code reads "
            f"{MODEL_FORMAT_VERSION}"
        )
    return dict(meta)


def model_numerics(model_dir: str | Path) -> str | None:
    """The numerics fixed in model.json (models built before ``numerics.json``), or None."""
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        return None
    value = read_model_meta(model_dir).get("numerics")
    return None if value is None else str(value)


def load_encoder(
    model_dir: str | Path,
    numerics: str | None = None,
    *,
    device: str = "cpu",
    **encoder_kwargs: Any,
) -> Any:
    """Load ``M/encoder`` on ``device`` with the numerics rule every entry point shares.

    ``numerics`` None or ``"auto"``: with ``M/numerics.json`` (the model's accuracy check), the
    fastest of its accurate numerics on this CPU or GPU (``embedder.numerics_choice``, probed once
    per machine and cached; on a GPU among fp32 and bf16 only); without it, the ``numerics`` fixed
    in model.json by older builds (fp32 instead on a GPU when that one is CPU-only), else fp32.
    Any other value is used as given.

    Args:
        model_dir: the model folder.
        numerics: see above.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``embedder.devices.choose_device``).
        **encoder_kwargs: other runtime options of ``ProfileEncoder.load`` (``threads``...).

    Returns:
        The ``ProfileEncoder``; ``encoder.numerics_choice`` records how its numerics were chosen.

    Raises:
        InvalidInputError: no such device here, or ``numerics`` given does not run on it.
    """
    from embedder.devices import CUDA_NUMERICS, check_numerics_on, choose_device
    from embedder.encoder import ProfileEncoder  # lazy: torch + transformers
    from embedder.numerics import AUTO
    from heads.evaluation.numerics_check import accurate_numerics

    model_dir = Path(model_dir)
    target = choose_device(device)
    on_gpu = target.startswith("cuda")
    accurate = None
    if numerics in (None, AUTO):
        accurate = accurate_numerics(model_dir)
        if accurate is None:
            numerics = model_numerics(model_dir) or "fp32"
            if on_gpu and numerics not in CUDA_NUMERICS:
                # The model's CPU default, not the caller's choice: fall back rather than refuse.
                logger.info("model default numerics %s is CPU-only; fp32 on %s", numerics, target)
                numerics = "fp32"
    elif numerics is not None:
        check_numerics_on(numerics, target)  # before loading: the refusal costs nothing
    encoder = ProfileEncoder.load(
        model_dir / "encoder", numerics=numerics if accurate is None else "fp32", **encoder_kwargs
    )
    if target != "cpu":
        encoder.to(target)
    if accurate is None:
        encoder.numerics_choice = {"chosen": encoder.numerics, "how": "fixed"}
    else:
        from embedder.numerics_choice import choose_numerics

        encoder.numerics_choice = choose_numerics(encoder, accurate)
    return encoder


class ProfileModel:
    """The pipeline: profiles -> assembled texts -> cache -> encode misses -> heads -> predictions.

    The one object every entry point runs: ``profile-embed predict`` calls :meth:`predict`, the
    batch job's actors call ``embedder.encode_texts`` and :meth:`predict`, the server calls
    ``embedder.lookup`` and ``embedder.encode_misses`` around its dynamic batcher and then
    :meth:`predict` on the vectors. ``embedder`` (``embedder.cache.CachedEncoder``) owns the cache
    steps, the heads own the predictions.

    Args:
        encoder: a ``embedder.encoder.ProfileEncoder`` (None for a heads-only model fed embeddings).
        heads: ``{name: head}``; every head must share ``embedding_version``.
        path: the folder it was loaded from, if any.
        meta: the model.json content.
        cache: an ``embedder.cache.EmbeddingCache`` of the encoder's version, or None.

    Raises:
        VersionMismatchError: the cache belongs to another ``embedding_version``.
    """

    def __init__(
        self,
        encoder: Any,
        heads: Mapping[str, Head],
        *,
        path: Path | None = None,
        meta: Mapping[str, Any] | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.encoder = encoder
        self.heads = dict(heads)
        self.path = path
        self.meta = dict(meta or {})
        self.embedder = None if encoder is None else CachedEncoder(encoder, cache)

    @property
    def cache(self) -> EmbeddingCache | None:
        """The embedding cache, or None."""
        return None if self.embedder is None else self.embedder.cache

    def close(self) -> None:
        """Close the embedding cache (idempotent)."""
        if self.cache is not None:
            self.cache.close()

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        heads: Sequence[str] | None = None,
        *,
        cache: str | Path | None = None,
        **encoder_kwargs: Any,
    ) -> ProfileModel:
        """Load the encoder and the latest version of each (or each named) head.

        Args:
            model_dir: the model folder.
            heads: head names to load; None loads all.
            cache: an embedding cache file (SQLite) to open for the encoder's version, or None.
            **encoder_kwargs: runtime options for :func:`load_encoder` (``numerics``,
                ``threads``, ``device``: ``auto``/``cpu``/``cuda[:N]``, default cpu). Without
                ``numerics`` (or with ``"auto"``) :func:`load_encoder` picks them for this
                machine and device. The server, the batch job and ``profile-embed
                embed`` all go through that function, so they agree.

        Returns:
            The model.

        Raises:
            ArtifactError: not a model folder, or a head/encoder artifact is broken.
            UnknownHeadError: a requested head is not in the folder (lists the available heads).
            VersionMismatchError: a head or model.json belongs to another embedding_version.
            InvalidInputError: no such ``device`` here, or ``numerics`` does not run on it.
        """
        model_dir = Path(model_dir)
        meta = read_model_meta(model_dir)
        encoder = load_encoder(model_dir, **encoder_kwargs)
        version = encoder.embedding_version
        if meta.get("embedding_version") not in (None, version):
            raise VersionMismatchError(
                f"{model_dir / MODEL_FILE} records embedding_version "
                f"{meta.get('embedding_version')!r} but {model_dir / 'encoder'} is {version!r}"
            )
        loaded = load_heads(model_dir, heads, embedding_version=version)
        opened = None
        if cache is not None:
            opened = EmbeddingCache(cache, embedding_version=version, dim=int(encoder.dim))
        logger.info("loaded model %s (%s) with heads %s", model_dir, version, sorted(loaded))
        return cls(encoder, loaded, path=model_dir, meta=meta, cache=opened)

    @property
    def embedding_version(self) -> str:
        """The encoder's embedding_version (else the heads')."""
        if self.encoder is not None:
            return str(self.encoder.embedding_version)
        return next(iter(self.heads.values())).embedding_version if self.heads else ""

    @property
    def head_names(self) -> list[str]:
        """Names of the loaded heads, sorted."""
        return sorted(self.heads)

    def head(self, name: str) -> Head:
        """Return a loaded head by name.

        Raises:
            UnknownHeadError: naming the head and the loaded ones.
        """
        try:
            return self.heads[name]
        except KeyError:
            raise UnknownHeadError(
                f"unknown head {name!r}; this model has heads {self.head_names}"
            ) from None

    def embed(
        self, profiles: Sequence[Any], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Encode profiles into ``(n, dim)`` float32 L2-normalised embeddings, through the cache."""
        if self.embedder is None:
            raise ArtifactError("this model has no encoder; pass embeddings instead of profiles")
        return np.asarray(
            self.embedder.encode(list(profiles), batch_size=batch_size, show_progress=show_progress)
        )

    def _embeddings(self, inputs: Any, batch_size: int, show_progress: bool) -> np.ndarray:
        if hasattr(inputs, "detach") or isinstance(inputs, np.ndarray):
            return as_numpy_embeddings(inputs)
        return self.embed(inputs, batch_size=batch_size, show_progress=show_progress)

    def _select(self, heads: Sequence[str] | None) -> list[str]:
        names = self.head_names if heads is None else list(heads)
        for name in names:
            self.head(name)
        return names

    def predict_proba(
        self, inputs: Any, heads: Sequence[str] | None = None, *, batch_size: int = 64
    ) -> dict[str, np.ndarray]:
        """Return ``{head: (n, k) calibrated probabilities}`` for profiles or embeddings."""
        names = self._select(heads)
        emb = self._embeddings(inputs, batch_size, False)
        return {n: self.heads[n].predict_proba(emb) for n in names}

    def predict(
        self,
        inputs: Any,
        heads: Sequence[str] | None = None,
        *,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> dict[str, list[Prediction]]:
        """Predict with every (or each named) head.

        Args:
            inputs: a sequence of ``Profile`` or an ``(n, dim)`` numpy array / torch tensor.
            heads: head names; None = all loaded heads.
            batch_size: encoder batch size.
            show_progress: progress bar while encoding.

        Returns:
            ``{head name: [Prediction, ...]}`` in input order.

        Raises:
            UnknownHeadError: a requested head is not loaded (lists the loaded heads).
        """
        names = self._select(heads)
        if not isinstance(inputs, np.ndarray) and not hasattr(inputs, "detach") and not inputs:
            return {n: [] for n in names}
        emb = self._embeddings(inputs, batch_size, show_progress)
        return {n: self.heads[n].predict(emb) for n in names}


def load_heads(
    model_dir: str | Path, names: Sequence[str] | None = None, *, embedding_version: str | None
) -> dict[str, Head]:
    """Load the latest version of heads from ``M/heads``, refusing other embedding versions.

    Raises:
        UnknownHeadError: a requested head is missing (lists the available heads).
    """
    available = available_heads(model_dir)
    wanted = available if names is None else list(names)
    missing = [n for n in wanted if n not in available]
    if missing:
        raise UnknownHeadError(
            f"unknown head(s) {missing} in model {model_dir}; available heads: {available}"
        )
    out = {}
    for name in wanted:
        k = head_versions(model_dir, name)[-1]
        out[name] = load_head(
            Path(model_dir) / "heads" / name / f"v{k}", embedding_version=embedding_version
        )
    return out


class ModelWriter:
    """Write a new model folder atomically (context manager): a hidden sibling, renamed on success.

    Args:
        path: the model folder to create; refused when it exists.

    Example::

        with ModelWriter(out) as w:
            w.write_encoder(encoder)
            w.write_head(head, evaluation=ev)
            w.write_report([ev])
            w.meta["training"] = {...}
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self.meta: dict[str, Any] = {}
        self.embedding_version: str | None = None

    def __enter__(self) -> ModelWriter:
        if self.path.exists():
            raise ArtifactError(
                f"model folder {self.path} already exists; model folders are never overwritten"
            )
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self

    def write_encoder(self, encoder: Any) -> Path:
        """Save the encoder into ``encoder/`` and record its version and base."""
        out = Path(encoder.save(self.tmp / "encoder"))
        self.embedding_version = str(encoder.embedding_version)
        self.meta.setdefault("base", getattr(encoder, "base", ""))
        return out

    def write_head(self, head: Head, *, evaluation: Any = None) -> Path:
        """Save a head into ``heads/<name>/v<head_version>/`` (card from ``evaluation`` if given).

        Raises:
            VersionMismatchError: the head belongs to another embedding_version than the encoder.
        """
        if self.embedding_version is not None and head.embedding_version != self.embedding_version:
            raise VersionMismatchError(
                f"head {head.name!r} was trained for embedding_version {head.embedding_version!r} "
                f"but this model's encoder is {self.embedding_version!r}"
            )
        return _save_head(
            head, self.tmp / "heads" / head.name / f"v{head.head_version}", evaluation
        )

    def write_report(self, evaluations: Sequence[Any], *, notes: str | None = None) -> Path:
        """Write the evaluation report into ``report/``."""
        from heads.evaluation.report import write_report

        return write_report(self.tmp / "report", evaluations, title="Training report", notes=notes)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        meta = {
            "format_version": MODEL_FORMAT_VERSION,
            "embedding_version": self.embedding_version,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "heads": available_heads(self.tmp),
            **self.meta,
        }
        (self.tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if self.path.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise ArtifactError(f"model folder {self.path} appeared while writing; not replaced")
        self.tmp.rename(self.path)
        logger.info("wrote model %s (%s)", self.path, self.embedding_version)


def save_model(
    path: str | Path,
    encoder: Any,
    heads: Mapping[str, Head] | Sequence[Head],
    *,
    evaluations: Mapping[str, Any] | None = None,
    report_notes: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete model folder (encoder, heads, report, model.json); never overwrites.

    Args:
        path: the new model folder.
        encoder: the ``ProfileEncoder``.
        heads: heads by name (or a list; names from ``head.name``).
        evaluations: ``{head name: heads.evaluation.metrics.HeadEvaluation}``; written to
            ``report/`` and as each head's model card.
        report_notes: Markdown paragraph for the report (data, command line...).
        extra: more keys for model.json (training data hashes, hyper-parameters...).

    Returns:
        The model folder.

    Raises:
        ArtifactError: the folder exists.
        VersionMismatchError: a head belongs to another embedding_version.
    """
    items = dict(heads) if isinstance(heads, Mapping) else {h.name: h for h in heads}
    evaluations = dict(evaluations or {})
    with ModelWriter(path) as writer:
        writer.write_encoder(encoder)
        for head in items.values():
            writer.write_head(head, evaluation=evaluations.get(head.name))
        if evaluations:
            writer.write_report(list(evaluations.values()), notes=report_notes)
        writer.meta.update(extra or {})
    return Path(path)


def add_head(model_dir: str | Path, head: Head, *, evaluation: Any = None) -> Path:
    """Add a head to an existing model as ``heads/<name>/v<k+1>`` (the encoder is not touched).

    Args:
        model_dir: the model folder.
        head: a fitted head; its ``head_version`` is set to the new ``k+1``.
        evaluation: optional ``HeadEvaluation`` written as the head's model card.

    Returns:
        The new head folder.

    Raises:
        VersionMismatchError: the head was trained for another embedding_version than the model's.
        ArtifactError: not a model folder.
    """
    model_dir = Path(model_dir)
    meta = read_model_meta(model_dir)
    version = meta.get("embedding_version")
    if head.embedding_version != version:
        raise VersionMismatchError(
            f"head {head.name!r} was trained for embedding_version {head.embedding_version!r} but "
            f"model {model_dir} is {version!r}"
        )
    versions = head_versions(model_dir, head.name)
    head.head_version = (versions[-1] if versions else 0) + 1
    final = model_dir / "heads" / head.name / f"v{head.head_version}"
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _save_head(head, tmp, evaluation)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("added head %s v%d to %s", head.name, head.head_version, model_dir)
    return final


def _save_head(head: Head, path: Path, evaluation: Any) -> Path:
    head.save(path)
    if evaluation is not None:
        from heads.evaluation.report import write_model_card

        # evaluated before add_head chose its version: the card says the version it is saved as
        if "head_version" in evaluation.info:
            evaluation.info["head_version"] = head.head_version
        write_model_card(path, evaluation)
    return path
