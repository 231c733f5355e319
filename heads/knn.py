"""``knn``: k-nearest-neighbour head, cosine over the stored training embeddings.

For a new task with a few labels on cached embeddings: nothing to train, the labelled rows are the
model. Each class's probability comes from the similarity-weighted votes of the ``k`` nearest
training rows (plus ``smoothing`` pseudo-votes spread over the classes), sharpened or flattened by
a temperature fitted on validation rows; abstention uses per-class thresholds chosen like the
softmax head's (``heads.calibration.select_thresholds``). A row whose nearest training row is less
similar than the calibration rows' ``1 - ood_quantile`` quantile abstains as
``out_of_distribution``. numpy only: loading and serving a ``knn`` head never imports torch.

Saved arrays: ``embeddings`` (n, in_dim, L2-normalised float32) and ``targets`` (n, class index).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from embedder.errors import ArtifactError, InvalidInputError
from heads.base import Head, Labels, as_numpy_embeddings, check_labels
from heads.calibration import (
    DEFAULT_TARGET_PRECISION,
    BoundMethod,
    ThresholdSelection,
)
from heads.registry import register_head

logger = logging.getLogger(__name__)

#: Query rows scored per block (bounds the (rows, n_train) similarity matrix in memory).
_BLOCK = 1024


@dataclass(frozen=True, kw_only=True)
class KnnConfig:
    """Settings of a ``knn`` head.

    Attributes:
        name: the head's name in a model.
        embedding_version: encoder version the head belongs to.
        in_dim: embedding width.
        k: neighbours that vote (fewer when there are fewer training rows).
        weighting: ``"similarity"`` (a vote weighs the cosine similarity, floored at 0) or
            ``"uniform"``.
        smoothing: pseudo-votes spread evenly over the classes, so no probability is exactly 0/1.
        label_field: the data field holding this head's labels.
        head_version: the v<k> number.
        min_confidence: floor under every class threshold.
        ood_quantile: share of the calibration rows that pass the out-of-distribution check (on
            the similarity to the nearest training row); None: no check.
    """

    name: str
    embedding_version: str
    in_dim: int
    k: int = 10
    weighting: Literal["similarity", "uniform"] = "similarity"
    smoothing: float = 1.0
    label_field: str | None = None
    head_version: int = 1
    min_confidence: float = 0.0
    ood_quantile: float | None = 0.99

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise InvalidInputError(f"head name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.in_dim, int) or self.in_dim <= 0:
            raise InvalidInputError(f"in_dim must be a positive integer, got {self.in_dim!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise InvalidInputError(f"k must be an integer >= 1, got {self.k!r}")
        if self.weighting not in ("similarity", "uniform"):
            raise InvalidInputError(
                f"weighting must be 'similarity' or 'uniform', got {self.weighting!r}"
            )
        if not self.smoothing > 0:
            raise InvalidInputError(f"smoothing must be > 0, got {self.smoothing!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise InvalidInputError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.ood_quantile is not None and not 0.0 < self.ood_quantile <= 1.0:
            raise InvalidInputError(
                f"ood_quantile must be in (0, 1] or None, got {self.ood_quantile}"
            )
        if self.head_version < 1:
            raise InvalidInputError(f"head_version must be >= 1, got {self.head_version}")


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@register_head("knn")
class KnnHead(Head):
    """Cosine k-NN over stored training embeddings; abstains below per-class thresholds.

    Learned state: ``embeddings_`` (normalised training rows), ``targets_`` (their class indices),
    ``temperature_``, ``thresholds_``, ``ood_cutoff_`` (nearest-row similarity floor),
    ``calibration_``, ``fit_info_``.
    """

    def __init__(self, config: KnnConfig, labels: Sequence[str]) -> None:
        self.config = config
        self.labels = tuple(labels)
        self.name = config.name
        self.embedding_version = config.embedding_version
        self.head_version = config.head_version
        self.in_dim = config.in_dim
        self.embeddings_: np.ndarray | None = None
        self.targets_: np.ndarray | None = None
        self.temperature_: float = 1.0
        self.thresholds_: np.ndarray | None = None
        self.ood_cutoff_: float | None = None
        self.calibration_: dict[str, Any] | None = None
        self.fit_info_: dict[str, Any] = {}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], labels: Sequence[str]) -> KnnHead:
        """Validate settings and labels; the head holds no rows until ``fit``.

        Raises:
            InvalidInputError: unknown settings, bad values or a bad label set.
        """
        allowed = set(KnnConfig.__dataclass_fields__)
        unknown = sorted(set(cfg) - allowed)
        if unknown:
            raise InvalidInputError(f"unknown knn settings {unknown}; allowed: {sorted(allowed)}")
        return cls(KnnConfig(**cfg), check_labels(labels))

    # ----------------------------------------------------------------- inference
    def _votes(
        self, x: np.ndarray, ref: np.ndarray, ref_y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed vote shares ``(n, k_labels)`` and each row's top similarity ``(n,)``."""
        n_labels = len(self.labels)
        k = min(self.config.k, len(ref))
        shares = np.empty((len(x), n_labels))
        top = np.empty(len(x))
        for start in range(0, len(x), _BLOCK):
            sims = x[start : start + _BLOCK] @ ref.T
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            near = np.take_along_axis(sims, idx, axis=1).astype(np.float64)
            w = (
                np.maximum(near, 0.0)
                if self.config.weighting == "similarity"
                else np.ones_like(near)
            )
            votes = np.zeros((len(near), n_labels))
            rows = np.repeat(np.arange(len(near)), k)
            np.add.at(votes, (rows, ref_y[idx].ravel()), w.ravel())
            votes += self.config.smoothing / n_labels
            shares[start : start + len(near)] = votes / votes.sum(axis=1, keepdims=True)
            top[start : start + len(near)] = near.max(axis=1)
        return shares, top

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.embeddings_ is None or self.targets_ is None:
            raise InvalidInputError(f"knn head {self.name!r} holds no training rows; fit it first")
        return self.embeddings_, self.targets_

    def vote_logits(self, embeddings: Any) -> np.ndarray:
        """Return the log vote shares ``(n, len(labels))`` (before the temperature)."""
        ref, ref_y = self._fitted()
        x = _normalise(as_numpy_embeddings(embeddings, self.in_dim))
        return np.log(self._votes(x, ref, ref_y)[0])

    def predict_proba(self, embeddings: Any) -> np.ndarray:
        """Return ``softmax(log(vote shares) / temperature_ + class_bias_)``, shape (n, k)."""
        return self.calibrated_proba(self.vote_logits(embeddings))

    def nearest_similarity(self, embeddings: Any) -> np.ndarray:
        """Return each row's cosine similarity to its nearest training row, shape (n,)."""
        ref, ref_y = self._fitted()
        x = _normalise(as_numpy_embeddings(embeddings, self.in_dim))
        return self._votes(x, ref, ref_y)[1]

    def in_distribution(self, embeddings: np.ndarray) -> np.ndarray | None:
        """True where the nearest training row is at least ``ood_cutoff_`` similar."""
        if self.ood_cutoff_ is None:
            return None
        return np.asarray(self.nearest_similarity(embeddings) >= self.ood_cutoff_)

    # ----------------------------------------------------------------- training
    def fit(
        self,
        embeddings: np.ndarray,
        labels: Labels,
        *,
        val_embeddings: np.ndarray | None = None,
        val_labels: Labels | None = None,
        target_precision: float = DEFAULT_TARGET_PRECISION,
        missing_classes: Literal["error", "abstain"] = "error",
        cross_fit: int = 0,
        seed: int = 0,
    ) -> KnnHead:
        """Store the training rows, then calibrate on validation (and out-of-fold) rows.

        Args:
            embeddings: ``(n, in_dim)`` training embeddings.
            labels: ``n`` label strings (or class indices).
            val_embeddings: validation embeddings (temperature, thresholds, guard).
            val_labels: validation labels.
            target_precision: per-class precision target of the thresholds.
            missing_classes: ``"error"`` or ``"abstain"`` for classes validation lacks.
            cross_fit: K >= 2 adds each training row, voted on by the rows outside its fold (one
                of K), to the calibration rows; 0 = validation rows only.
            seed: the folds' seed.

        Returns:
            self.

        Raises:
            InvalidInputError: empty or one-class training data, unknown labels, bad shapes.
        """
        x, y = self.training_arrays(embeddings, labels)
        if cross_fit == 1 or cross_fit < 0:
            raise InvalidInputError(f"cross_fit must be 0 or >= 2 folds, got {cross_fit}")
        self.embeddings_, self.targets_ = _normalise(x), y
        counts = np.bincount(y, minlength=len(self.labels))
        self.fit_info_ = {
            "n_train": len(y),
            "k": self.config.k,
            "train_counts": {lab: int(c) for lab, c in zip(self.labels, counts, strict=True)},
        }
        extra = None
        if cross_fit:
            extra = (self._out_of_fold(x, y, cross_fit, seed), y)
            self.fit_info_["cross_fit"] = {"folds": cross_fit, "rows": len(y)}
        if val_labels is not None and val_embeddings is None:
            raise InvalidInputError("val_labels given without val_embeddings")
        if val_embeddings is None and extra is None:
            return self
        vy: Labels
        if val_embeddings is None:
            vx, vy = x[:0], y[:0]
        elif val_labels is None:
            raise InvalidInputError("val_embeddings given without val_labels")
        else:
            vx, vy = as_numpy_embeddings(val_embeddings, self.in_dim), val_labels
        self.calibrate(
            vx,
            vy,
            target=target_precision,
            missing_classes=missing_classes,
            train_labels=y,
            extra=extra,
        )
        return self

    def _out_of_fold(self, x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
        """Log vote shares of each training row from the rows outside its fold."""
        xn = _normalise(x)
        out = np.log(np.full((len(x), len(self.labels)), 1.0 / len(self.labels)))
        fold = np.random.default_rng(seed).permutation(len(x)) % folds
        for f in range(folds):
            held = fold == f
            if held.any() and (~held).any():
                out[held] = np.log(self._votes(xn[held], xn[~held], y[~held])[0])
        return out

    def calibrate(
        self,
        val_embeddings: np.ndarray,
        val_labels: Labels,
        *,
        target: float = DEFAULT_TARGET_PRECISION,
        confidence: float = 0.95,
        missing_classes: Literal["error", "abstain"] = "error",
        method: BoundMethod = "wilson",
        train_labels: Labels | None = None,
        extra: tuple[np.ndarray, np.ndarray] | None = None,
        class_bias: bool = False,
    ) -> ThresholdSelection:
        """Fit the temperature, per-class thresholds and the out-of-distribution floor.

        Args:
            val_embeddings: calibration embeddings.
            val_labels: their labels (strings or indices).
            target: per-class precision target.
            confidence: one-sided confidence of the precision lower bound.
            missing_classes: ``"error"`` refuses calibration rows lacking a class the training
                labels (or the label set) contain; ``"abstain"`` lets it assign nothing.
            method: ``"wilson"`` or ``"clopper-pearson"``.
            train_labels: training labels, to know which classes must be present.
            extra: more rows as ``(log vote shares, class indices)`` (out-of-fold training rows).
            class_bias: also fit one additive bias per class (``fit_temperature_and_bias``): the
                rows' label mix becomes the head's prior; for rows that look like the profiles
                the head will score (``profile-embed calibrate``), not for simulated validation.

        Returns:
            The threshold selection (also stored in ``thresholds_`` and ``calibration_``).
        """
        vy = self.encode_labels(val_labels, source="validation labels")
        vx = as_numpy_embeddings(val_embeddings, self.in_dim)
        if len(vx) != len(vy):
            raise InvalidInputError(f"validation has {len(vx)} rows and {len(vy)} labels")
        logits = self.vote_logits(vx) if len(vx) else np.zeros((0, len(self.labels)))
        if extra is not None:
            logits = np.concatenate([logits, np.asarray(extra[0], dtype=np.float64)])
            vy = np.concatenate([vy, np.asarray(extra[1], dtype=np.int64)])
        sel = self.fit_thresholds(
            logits,
            vy,
            target=target,
            confidence=confidence,
            method=method,
            missing_classes=missing_classes,
            train_labels=train_labels,
            min_threshold=self.config.min_confidence,
            class_bias=class_bias,
        )
        self.ood_cutoff_ = None
        if self.config.ood_quantile is not None and len(vx):
            top = self.nearest_similarity(vx)
            self.ood_cutoff_ = float(np.quantile(top, 1.0 - self.config.ood_quantile))
        logger.info(
            "knn head %s: calibrated on %d rows, %d classes assign",
            self.name,
            len(vy),
            int(np.isfinite(sel.thresholds).sum()),
        )
        return sel

    # ----------------------------------------------------------------- persistence
    def to_config(self) -> dict[str, Any]:
        """Return head_config.json content: settings, temperature, thresholds, calibration."""
        return {
            "kind": self.kind,
            **asdict(self.config),
            "head_version": self.head_version,
            "labels": list(self.labels),
            "temperature": self.temperature_,
            "class_bias": self.class_bias_config(),
            "thresholds": self.thresholds_config(),
            "ood_cutoff": self.ood_cutoff_,
            "calibration": self.calibration_,
            "fit": self.fit_info_,
        }

    def _tensors(self) -> dict[str, np.ndarray]:
        ref, ref_y = self._fitted()
        return {"embeddings": ref.astype(np.float32), "targets": ref_y.astype(np.int64)}

    @classmethod
    def _from_saved(
        cls, config: Mapping[str, Any], labels: Sequence[str], tensors: Mapping[str, np.ndarray]
    ) -> KnnHead:
        fields = {k: config[k] for k in KnnConfig.__dataclass_fields__ if k in config}
        try:
            head = cls(KnnConfig(**fields), check_labels(labels))
        except InvalidInputError as err:
            raise ArtifactError(f"invalid head_config.json: {err}") from err
        ref, ref_y = tensors.get("embeddings"), tensors.get("targets")
        if ref is None or ref_y is None:
            raise ArtifactError(
                f"a knn head needs arrays embeddings and targets, got {sorted(tensors)}"
            )
        if ref.ndim != 2 or ref.shape[1] != head.in_dim or ref_y.shape != (len(ref),):
            raise ArtifactError(
                f"in_dim {head.in_dim} in head_config.json but the arrays have shapes "
                f"embeddings {ref.shape}, targets {ref_y.shape}"
            )
        if len(ref_y) and (ref_y.min() < 0 or ref_y.max() >= len(head.labels)):
            raise ArtifactError(
                f"labels.json has {len(head.labels)} labels but targets reach {int(ref_y.max())}"
            )
        head.embeddings_, head.targets_ = ref.astype(np.float32), ref_y.astype(np.int64)
        head.load_scale_and_thresholds(config, "head_config.json")
        cutoff = config.get("ood_cutoff")
        head.ood_cutoff_ = None if cutoff is None else float(cutoff)
        head.calibration_ = config.get("calibration")
        head.fit_info_ = dict(config.get("fit") or {})
        return head
