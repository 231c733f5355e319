"""``SimilarityIndex``: a faiss index of profile vectors bound to one ``embedding_version``.

Cosine similarity as inner product on L2-normalised vectors. Below ``ivf_threshold`` vectors the
index is exact (``IndexIDMap2(IndexFlatIP)``); when an upsert takes it past the threshold it is
rebuilt once as ``IndexIVFFlat`` (nlist ~ 4 sqrt(n), trained on a sample, hashtable direct map so
ids can be replaced and looked up). The IVF lists are not retrained as the index keeps growing.
String ids map to int64 labels; the map is saved next to the index.
:meth:`SimilarityIndex.get_vectors` gives back the stored (L2-normalised) vectors by id: exactly for
flat and IVF-flat indexes, as decoded from the codes for an IVF-PQ index (``index build``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import ArtifactError, InvalidInputError, UnknownIdError, VersionMismatchError

logger = logging.getLogger(__name__)

INDEX_FILE = "profiles.faiss"
META_FILE = "profiles.meta.json"
FORMAT_VERSION = 1


class SimilarityIndex:
    """Nearest-neighbour search over profile embeddings of one version.

    Args:
        embedding_version: the version every vector must come from.
        dim: vector dimension.
        ivf_threshold: above this many vectors switch from exact search to IVF.
        nprobe: IVF lists visited per query (more = better recall, slower).
        seed: seed of the IVF training sample.
    """

    def __init__(
        self,
        embedding_version: str,
        dim: int,
        *,
        ivf_threshold: int = 50_000,
        nprobe: int = 16,
        seed: int = 0,
    ) -> None:
        if dim < 1 or ivf_threshold < 1 or nprobe < 1:
            raise ValueError(
                f"dim, ivf_threshold and nprobe must be >= 1, got {dim}, {ivf_threshold}, {nprobe}"
            )
        import faiss

        self.embedding_version = embedding_version
        self.dim = dim
        self.ivf_threshold = ivf_threshold
        self.nprobe = nprobe
        self.seed = seed
        self._lock = threading.RLock()
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._next_label = 0
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    # ------------------------------------------------------------------ state
    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or ``"ivf"``."""
        return "ivf" if self._is_ivf() else "flat"

    def _is_ivf(self) -> bool:
        import faiss

        return isinstance(self._index, faiss.IndexIVF)

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, profile_id: object) -> bool:
        return str(profile_id) in self._label_of  # ids are stored as strings (upsert str()s them)

    def ids(self) -> list[str]:
        """Stored ids, in insertion order of their current vectors."""
        with self._lock:
            return [self._id_of[label] for label in sorted(self._id_of)]

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Return the stored vectors of ``ids``, in that order (repeats allowed).

        The vectors are the L2-normalised ones :meth:`upsert` stored: bit-identical for flat and
        IVF-flat indexes, the decoded approximation for an IVF-PQ index.

        Args:
            ids: profile ids, each in the index.

        Returns:
            ``float32`` array of shape ``(len(ids), dim)``.

        Raises:
            UnknownIdError: naming the ids that are not in the index (all of them in ``.ids``).
        """
        ids = [str(i) for i in ids]
        with self._lock:
            missing = list(dict.fromkeys(i for i in ids if i not in self._label_of))
            if missing:
                shown = ", ".join(repr(i[:80]) for i in missing[:10])
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                raise UnknownIdError(
                    f"{len(missing)} of the {len(ids)} ids asked for are not in the index "
                    f"{self.embedding_version} ({len(self)} ids): {shown}{more}",
                    ids=missing,
                )
            if not ids:
                return np.empty((0, self.dim), dtype=np.float32)
            labels = np.fromiter((self._label_of[i] for i in ids), dtype=np.int64, count=len(ids))
            out = self._index.reconstruct_batch(labels)
        return np.ascontiguousarray(out, dtype=np.float32).reshape(len(ids), self.dim)

    def _check(self, vectors: Any) -> np.ndarray:
        arr = np.array(vectors, dtype=np.float32, copy=True)
        if arr.size == 0:
            arr = arr.reshape(0, self.dim)  # an empty batch, as [] or any empty shape
        elif arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise InvalidInputError(
                f"vectors must have shape (n, {self.dim}) for index {self.embedding_version}, "
                f"got {np.shape(vectors)}"
            )
        if not np.isfinite(arr).all():
            raise InvalidInputError("vectors contain NaN or infinity")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        return np.ascontiguousarray(arr / np.where(norms > 0, norms, 1.0), dtype=np.float32)

    # ------------------------------------------------------------------ updates
    def upsert(self, ids: Sequence[str], vectors: Any) -> None:
        """Insert vectors, replacing any vector already stored under the same id.

        Args:
            ids: string ids, unique within the call.
            vectors: ``(n, dim)``; normalised here.

        Raises:
            InvalidInputError: on duplicate ids in the call or a shape mismatch.
        """
        arr = self._check(vectors)
        ids = [str(i) for i in ids]
        if len(ids) != arr.shape[0]:
            raise InvalidInputError(f"got {len(ids)} ids for {arr.shape[0]} vectors")
        if len(set(ids)) != len(ids):
            raise InvalidInputError("ids must be unique within one upsert call")
        with self._lock:
            self._remove_labels([self._label_of[i] for i in ids if i in self._label_of])
            labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
            self._next_label += len(ids)
            for i, label in zip(ids, labels.tolist(), strict=True):
                self._label_of[i] = label
                self._id_of[label] = i
            if len(ids):
                self._index.add_with_ids(arr, labels)
            if not self._is_ivf() and len(self) > self.ivf_threshold:
                self._to_ivf()

    def remove(self, ids: Sequence[str]) -> int:
        """Remove ids (unknown ids are ignored).

        Returns:
            How many were removed.
        """
        with self._lock:
            labels = [self._label_of[i] for i in map(str, ids) if i in self._label_of]
            self._remove_labels(labels)
            return len(labels)

    def _remove_labels(self, labels: list[int]) -> None:
        if not labels:
            return
        self._index.remove_ids(np.asarray(labels, dtype=np.int64))
        for label in labels:
            del self._label_of[self._id_of.pop(label)]

    def _to_ivf(self) -> None:
        import faiss

        labels = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = self._index.index.reconstruct_n(0, self._index.ntotal)
        n = len(labels)
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        rng = np.random.default_rng(self.seed)
        sample = vectors[rng.choice(n, size=min(n, 256 * nlist), replace=False)]
        ivf = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT
        )
        ivf.train(sample)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # not in faiss's stubs
        ivf.add_with_ids(vectors, labels)
        ivf.nprobe = self.nprobe
        self._index = ivf
        logger.info(
            "index %s: switched to IVF (n=%d, nlist=%d, nprobe=%d)",
            self.embedding_version,
            n,
            nlist,
            self.nprobe,
        )

    # ------------------------------------------------------------------ queries
    def search(self, vectors: Any, k: int = 10) -> tuple[list[list[str]], list[list[float]]]:
        """Find the ``k`` most similar stored profiles for each query vector.

        Args:
            vectors: ``(n, dim)`` or ``(dim,)`` query vectors.
            k: neighbours per query.

        Returns:
            ``(ids, scores)``: per query, up to ``k`` ids and cosine similarities, best first.
        """
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        arr = self._check(vectors)
        with self._lock:
            return self._search(arr, k, exclude=None)

    def search_by_id(self, profile_id: str, k: int = 10) -> tuple[list[str], list[float]]:
        """Find the ``k`` profiles most similar to a stored one, excluding itself.

        Raises:
            InvalidInputError: when the id is not in the index.
        """
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        with self._lock:
            label = self._label_of.get(str(profile_id))
            if label is None:
                raise InvalidInputError(f"id {profile_id!r} is not in the index ({len(self)} ids)")
            vec = self._index.reconstruct(label).reshape(1, -1)
            ids, scores = self._search(vec, k + 1, exclude=label)
        return ids[0][:k], scores[0][:k]

    def _search(
        self, arr: np.ndarray, k: int, exclude: int | None
    ) -> tuple[list[list[str]], list[list[float]]]:
        if len(self) == 0:
            return [[] for _ in arr], [[] for _ in arr]
        if self._is_ivf():
            self._index.nprobe = self.nprobe
        scores, labels = self._index.search(arr, min(k, len(self)))
        out_ids, out_scores = [], []
        for row_l, row_s in zip(labels, scores, strict=True):
            keep = [
                (self._id_of[int(lb)], float(s))
                for lb, s in zip(row_l, row_s, strict=True)
                if lb >= 0 and lb != exclude
            ]
            out_ids.append([i for i, _ in keep])
            out_scores.append([s for _, s in keep])
        return out_ids, out_scores

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``profiles.faiss`` and ``profiles.meta.json`` into a folder (atomically per file).

        An existing index of the same ``embedding_version`` in that folder is replaced.

        Raises:
            VersionMismatchError: when the folder holds an index of another version.
        """
        with self._lock:
            labels = sorted(self._id_of)
            write_index_folder(
                path,
                self._index,
                embedding_version=self.embedding_version,
                dim=self.dim,
                kind=self.kind,
                ids=[self._id_of[lb] for lb in labels],
                labels=labels,
                ivf_threshold=self.ivf_threshold,
                nprobe=self.nprobe,
                next_label=self._next_label,
            )
        logger.info(
            "saved index %s (%s, %d ids) to %s",
            self.embedding_version,
            self.kind,
            len(labels),
            path,
        )
        return Path(path)

    @classmethod
    def load(
        cls, path: str | Path, *, embedding_version: str | None, dim: int | None = None
    ) -> SimilarityIndex:
        """Load a saved index, refusing another version or dimension.

        Args:
            path: the folder given to :meth:`save`.
            embedding_version: the version the caller's encoder produces; None accepts any.
            dim: the caller's vector dimension, when known.

        Raises:
            VersionMismatchError: when the stored version or dim differs from the expected one.
            ArtifactError: when files are missing or inconsistent.
        """
        import faiss

        path = Path(path)
        meta = _read_meta(path / META_FILE)
        if meta.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: index format_version {meta.get('format_version')!r}; this version "
                f"reads format {FORMAT_VERSION} (rebuild it with `profile-embed index build`)"
            )
        stored = meta.get("embedding_version")
        if embedding_version is not None and stored != embedding_version:
            raise VersionMismatchError(
                f"{path}: index was built for {stored!r} but the encoder is {embedding_version}"
            )
        if dim is not None and meta.get("dim") != dim:
            raise VersionMismatchError(
                f"{path}: index vectors have dim {meta.get('dim')!r}, expected {dim}"
            )
        try:
            index = faiss.read_index(str(path / INDEX_FILE))
        except RuntimeError as err:
            raise ArtifactError(f"cannot read {path / INDEX_FILE}: {err}") from err
        labels, ids = meta.get("labels", []), meta.get("ids", [])
        if index.d != meta.get("dim") or index.ntotal != len(labels) or len(ids) != len(labels):
            raise ArtifactError(
                f"{path}: index has dim {index.d} and {index.ntotal} vectors but the metadata "
                f"says dim {meta.get('dim')!r} and {len(labels)} labels / {len(ids)} ids"
            )
        direct_map: Any = faiss.DirectMap  # type: ignore[attr-defined]  # not in faiss's stubs
        if isinstance(index, faiss.IndexIVF) and index.direct_map.type == direct_map.NoMap:
            # lookups by id (replace, search_by_id, get_vectors) need the id -> entry map
            index.set_direct_map_type(direct_map.Hashtable)
        self = cls(
            str(stored),
            int(meta["dim"]),
            ivf_threshold=int(meta.get("ivf_threshold", 50_000)),
            nprobe=int(meta.get("nprobe", 16)),
        )
        self._index = index
        self._label_of = {str(i): int(lb) for i, lb in zip(ids, labels, strict=True)}
        self._id_of = {int(lb): str(i) for i, lb in zip(ids, labels, strict=True)}
        self._next_label = int(meta.get("next_label", max(labels, default=-1) + 1))
        return self


def write_index_folder(
    path: str | Path,
    index: Any,
    *,
    embedding_version: str,
    dim: int,
    kind: str,
    ids: Sequence[str],
    labels: Sequence[int],
    ivf_threshold: int,
    nprobe: int,
    next_label: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``profiles.faiss`` + ``profiles.meta.json``: the one writer of the index format.

    :meth:`SimilarityIndex.save` and ``profile-embed index build`` both call it, so both refuse the
    same folders with the same error. Each file is written under a temporary name and renamed.

    Args:
        path: the index folder (created when missing).
        index: the faiss index; its int64 labels are ``labels``.
        embedding_version: the version of every vector.
        dim: vector dimension.
        kind: ``"flat"`` or ``"ivf"``.
        ids: string id of each label, in the order of ``labels``.
        labels: the faiss labels.
        ivf_threshold: stored for :meth:`SimilarityIndex.load`.
        nprobe: IVF lists visited per query.
        next_label: the next free label.
        extra: more metadata keys (``index build`` stores its facts under ``"build"``).

    Returns:
        The folder.

    Raises:
        VersionMismatchError: when the folder holds an index of another ``embedding_version``.
        ArtifactError: when the folder's metadata is unreadable.
    """
    import faiss

    path = Path(path)
    meta_path = path / META_FILE
    if meta_path.exists():
        old = _read_meta(meta_path).get("embedding_version")
        if old != embedding_version:
            raise VersionMismatchError(
                f"{path} holds an index of {old!r}; refusing to overwrite it with "
                f"{embedding_version}"
            )
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "embedding_version": embedding_version,
        "dim": dim,
        "kind": kind,
        "count": len(ids),
        "ivf_threshold": ivf_threshold,
        "nprobe": nprobe,
        "next_label": next_label,
        "labels": list(labels),
        "ids": list(ids),
        **(extra or {}),
    }
    tmp = path / (INDEX_FILE + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path / INDEX_FILE)
    tmp_meta = path / (META_FILE + ".tmp")
    tmp_meta.write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_meta, meta_path)
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ArtifactError(
            f"{path} is missing; expected a folder written by SimilarityIndex.save()"
        ) from err
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return data
