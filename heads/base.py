"""The head interface: what every task head on the shared embedding looks like.

A head maps embeddings (numpy or torch, never text) to probabilities over its label set and to
``Prediction`` objects that carry abstention as data (``label=None``). On disk a head is a folder::

    head_config.json   kind, name, head_version, embedding_version, in_dim, ... , format_version
    labels.json        label i == output column i
    model.safetensors  learned arrays only (never pickle)
    README.md          model card

Concrete heads live in their own module and register a ``kind`` with
``heads.registry.register_head``.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np

from embedder.errors import ArtifactError, InvalidInputError
from heads.calibration import DEFAULT_TARGET_PRECISION

logger = logging.getLogger(__name__)

#: Labels as heads take them: label strings or class indices, in a sequence or a 1-D array.
Labels = Sequence[Any] | np.ndarray

#: Version of the on-disk head layout; bump when head_config.json changes incompatibly.
HEAD_FORMAT_VERSION = 1
CONFIG_FILE = "head_config.json"
LABELS_FILE = "labels.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"

#: ``Prediction.reason`` when the argmax class's threshold is ``inf``: that class never assigns.
REASON_NO_THRESHOLD_FOR_CLASS = "no_threshold_for_class"
#: ``Prediction.reason`` when the score is below the argmax class's (finite) threshold.
REASON_BELOW_THRESHOLD = "below_threshold"
#: ``Prediction.reason`` when ``Head.in_distribution`` refused the row, whatever its score.
REASON_OUT_OF_DISTRIBUTION = "out_of_distribution"
#: Every abstention reason, in a fixed order (metrics, proto enum and docs follow it).
ABSTAIN_REASONS: tuple[str, ...] = (
    REASON_NO_THRESHOLD_FOR_CLASS,
    REASON_BELOW_THRESHOLD,
    REASON_OUT_OF_DISTRIBUTION,
)


@dataclass(frozen=True)
class Prediction:
    """One head's answer for one profile.

    Attributes:
        label: the assigned label, or None when the head abstained (``UNCERTAIN``).
        argmax: the most probable label, assigned or not.
        score: calibrated probability of ``argmax``.
        abstained: True when no label was assigned (``label`` is None).
        probabilities: calibrated probabilities aligned with ``head.labels``.
        reason: None when a label is assigned, else why not: one of ``ABSTAIN_REASONS``.
    """

    label: str | None
    argmax: str
    score: float
    abstained: bool
    probabilities: np.ndarray
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.abstained and self.reason not in ABSTAIN_REASONS:
            raise ValueError(
                f"an abstained Prediction needs a reason in {list(ABSTAIN_REASONS)}, "
                f"got {self.reason!r}"
            )
        if not self.abstained and self.reason is not None:
            raise ValueError(f"an assigned Prediction has reason None, got {self.reason!r}")

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        """Return the JSON form used by ``profile-embed predict`` (probabilities keyed by label).

        ``"reason"`` is null when a label is assigned, else one of ``ABSTAIN_REASONS``.
        """
        return {
            "label": self.label,
            "argmax": self.argmax,
            "score": round(float(self.score), 6),
            "reason": self.reason,
            "probabilities": {
                lab: round(float(p), 6) for lab, p in zip(labels, self.probabilities, strict=True)
            },
        }


def as_numpy_embeddings(embeddings: Any, in_dim: int | None = None) -> np.ndarray:
    """Turn numpy / torch / nested-list embeddings into a float32 ``(n, dim)`` array.

    Args:
        embeddings: a 2-D array-like (a 1-D vector is treated as one row).
        in_dim: the expected width, checked when given.

    Returns:
        A C-contiguous float32 array.

    Raises:
        InvalidInputError: on text input, a wrong rank, a wrong width or non-finite values.
    """
    if isinstance(embeddings, str) or (
        isinstance(embeddings, Sequence) and embeddings and isinstance(embeddings[0], str)
    ):
        raise InvalidInputError("heads take embeddings (numpy or torch), not text; encode first")
    if hasattr(embeddings, "detach"):  # torch.Tensor without importing torch
        embeddings = embeddings.detach().to("cpu").float().numpy()
    arr = np.asarray(embeddings, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidInputError(f"embeddings must be 2-D (n, dim), got shape {arr.shape}")
    if in_dim is not None and arr.shape[1] != in_dim:
        raise InvalidInputError(
            f"embeddings have width {arr.shape[1]}, this head expects in_dim={in_dim}"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("embeddings contain NaN or infinite values")
    return np.ascontiguousarray(arr)


class Head(ABC):
    """Base class of every task head: what the registry, the model folder and the server rely on.

    A subclass registers a ``kind`` with ``@heads.registry.register_head`` and implements
    ``from_config`` (validate settings, build an unfitted head), ``fit``, ``predict_proba``,
    ``to_config`` (head_config.json), ``_tensors`` (its learned arrays) and ``_from_saved`` (the
    inverse of ``save``). ``predict`` and ``save`` are shared: abstention uses the per-class
    thresholds in ``thresholds_`` (``inf`` = class assigns nothing) and the optional
    ``in_distribution`` check, both through ``predictions_from_proba``. Nothing here needs torch;
    a torch head keeps its module to itself (``heads.softmax``).

    Attributes:
        name: the head's name in a model ("geolocation", "category").
        kind: the registry key, stored as "kind" in head_config.json.
        labels: output labels; index i == output column i.
        embedding_version: version of the encoder whose embeddings this head was trained on.
        head_version: the v<k> folder number the head is (or will be) saved as.
        in_dim: the embedding width.
        thresholds_: per-class thresholds on the top probability (None = never abstain on score).
        class_bias_: per-class offsets added to ``logits / temperature`` before the softmax,
            fitted by a calibration with ``class_bias=True`` (None = none).
        calibration_: the validation record that chose the thresholds (per_class, effective
            prior, confusion counts), read by the server and the audience estimator.
        fit_info_: how the head was fitted (data, solver, counts), saved in head_config.json.
    """

    kind: ClassVar[str] = ""
    name: str
    labels: tuple[str, ...]
    embedding_version: str
    head_version: int
    in_dim: int
    thresholds_: np.ndarray | None = None
    class_bias_: np.ndarray | None = None
    calibration_: dict[str, Any] | None = None
    fit_info_: dict[str, Any]
    card_: str | None = None

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Mapping[str, Any], labels: Sequence[str]) -> Self:
        """Validate settings and labels; return an unfitted head.

        Args:
            cfg: the kind's settings (``name``, ``embedding_version``, ``in_dim``, ...).
            labels: output labels in column order.

        Raises:
            InvalidInputError: unknown settings, bad values or a bad label set.
        """

    @abstractmethod
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
    ) -> Self:
        """Learn from frozen embeddings, then fit the thresholds on validation rows.

        Args:
            embeddings: ``(n, in_dim)`` training embeddings.
            labels: ``n`` label strings (or class indices).
            val_embeddings: validation embeddings (calibration).
            val_labels: validation labels.
            target_precision: per-class precision target of the thresholds.
            missing_classes: ``"error"`` or ``"abstain"`` for classes validation lacks.
            cross_fit: folds of out-of-fold training rows added to the calibration rows.
            seed: seed of anything random (folds, initialisation).

        Returns:
            self.
        """

    @abstractmethod
    def predict_proba(self, embeddings: Any) -> np.ndarray:
        """Return calibrated probabilities ``(n, len(labels))``; rows sum to 1."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """Return the JSON-ready head_config.json content (without ``format_version``)."""

    @abstractmethod
    def _tensors(self) -> dict[str, np.ndarray]:
        """Return the learned arrays to write to model.safetensors."""

    @classmethod
    @abstractmethod
    def _from_saved(
        cls, config: Mapping[str, Any], labels: Sequence[str], tensors: Mapping[str, np.ndarray]
    ) -> Self:
        """Rebuild a fitted head from the three files (shape checks raise ArtifactError)."""

    def calibrate(
        self,
        val_embeddings: np.ndarray,
        val_labels: Labels,
        *,
        target: float = DEFAULT_TARGET_PRECISION,
        confidence: float = 0.95,
        missing_classes: Literal["error", "abstain"] = "error",
        class_bias: bool = False,
    ) -> Any:
        """Re-fit the thresholds on labelled rows, keeping the learned state (``calibrate``).

        Raises:
            InvalidInputError: this kind cannot be re-calibrated.
        """
        raise InvalidInputError(f"head kind {self.kind!r} cannot be re-calibrated")

    def encode_labels(self, values: Labels, *, source: str = "labels") -> np.ndarray:
        """Map label strings (or integer indices) to column indices, refusing unknown values.

        Raises:
            InvalidInputError: naming the first unknown values and the allowed labels.
        """
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise InvalidInputError(f"{source} must be 1-D, got shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.integer):
            bad = arr[(arr < 0) | (arr >= len(self.labels))]
            if len(bad):
                raise InvalidInputError(
                    f"{source}: class index {int(bad[0])} outside [0, {len(self.labels)})"
                )
            return arr.astype(np.int64)
        index = {lab: i for i, lab in enumerate(self.labels)}
        unknown = sorted({str(v) for v in arr if str(v) not in index})
        if unknown:
            raise InvalidInputError(
                f"{source}: label values {unknown[:10]} are not in head {self.name!r}'s label set "
                f"{list(self.labels)}"
            )
        return np.array([index[str(v)] for v in arr], dtype=np.int64)

    def fit_thresholds(
        self,
        logits: np.ndarray,
        vy: np.ndarray,
        *,
        target: float,
        confidence: float,
        method: Any,
        missing_classes: Literal["error", "abstain"],
        train_labels: Labels | None,
        min_threshold: float,
        class_bias: bool = False,
        keep_scale: bool = False,
    ) -> Any:
        """The calibration every probability head shares, on its calibration rows' logits.

        Refuses (or lets abstain) classes the rows lack, fits ``temperature_`` (and with
        ``class_bias`` the per-class ``class_bias_``, else resets it) and the per-class
        ``thresholds_``, and records ``calibration_`` (effective prior, confusion, per-class
        report). Head-specific steps (a guard, labels never assigned) run around it. With
        ``keep_scale`` the temperature and class biases already fitted stay as they are and only
        the thresholds are selected (the logits changed after calibration, on purpose: language
        evidence added after the biases, ``heads.softmax.SoftmaxAbstainHead.fit``).

        Returns:
            The ``heads.calibration.ThresholdSelection``.

        Raises:
            InvalidInputError: no rows, or missing classes with ``missing_classes="error"``.
        """
        from heads.calibration import (
            effective_prior,
            fit_temperature,
            fit_temperature_and_bias,
            select_thresholds,
        )

        if len(vy) == 0:
            raise InvalidInputError("calibration needs at least one labelled row, got 0")
        needed = (
            set(self.encode_labels(train_labels).tolist())
            if train_labels is not None
            else set(range(len(self.labels)))
        )
        missing = sorted(self.labels[i] for i in needed - set(vy.tolist()))
        if missing and missing_classes == "error":
            raise InvalidInputError(
                f"validation labels of head {self.name!r} lack classes {missing}; thresholds "
                "cannot be verified for them (pass missing_classes='abstain' to make them assign "
                "nothing)"
            )
        if not keep_scale:
            if class_bias:
                self.temperature_, self.class_bias_ = fit_temperature_and_bias(logits, vy)
            else:
                self.temperature_, self.class_bias_ = fit_temperature(logits, vy), None
        probs = self.calibrated_proba(logits)
        sel = select_thresholds(
            probs,
            vy,
            target,
            confidence,
            labels=self.labels,
            method=method,
            min_threshold=min_threshold,
        )
        self.thresholds_ = sel.thresholds
        prior = effective_prior(probs, vy)
        self.calibration_ = {
            "effective_prior": {lab: float(p) for lab, p in zip(self.labels, prior, strict=True)},
            "confusion_counts": confusion_counts(vy, probs.argmax(axis=1), len(self.labels)),
            "class_bias": self.class_bias_ is not None,
            "scale": "kept" if keep_scale else "fitted",
            "target_precision": target,
            "confidence": confidence,
            "bound": method,
            "n_val": len(vy),
            "missing_in_validation": missing,
            "unreachable": list(sel.unreachable),
            "per_class": {r.label: r.to_dict() for r in sel.report},
        }
        return sel

    def calibrated_proba(self, logits: np.ndarray) -> np.ndarray:
        """``softmax(logits / temperature_ + class_bias_)``: the head's probabilities."""
        from heads.calibration import softmax

        return softmax(logits, getattr(self, "temperature_", 1.0), self.class_bias_)

    def class_bias_config(self) -> list[float] | None:
        """``class_bias_`` as head_config.json stores it (None when there is none)."""
        return None if self.class_bias_ is None else [float(b) for b in self.class_bias_]

    def load_class_bias(self, value: Any, source: str) -> None:
        """Set ``class_bias_`` from head_config.json's ``class_bias`` (absent in older heads).

        Raises:
            ArtifactError: not a list of one finite number per label.
        """
        if value is None:
            self.class_bias_ = None
            return
        try:
            arr = np.asarray(value, dtype=np.float64) if isinstance(value, list) else None
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != (len(self.labels),) or not np.isfinite(arr).all():
            raise ArtifactError(
                f"{source}: class_bias must be a list of {len(self.labels)} finite numbers "
                f"(one per label), got {str(value)[:80]}"
            )
        self.class_bias_ = arr

    def load_scale_and_thresholds(self, config: Mapping[str, Any], source: str) -> None:
        """Set ``temperature_``, ``class_bias_`` and ``thresholds_`` from head_config.json.

        Raises:
            ArtifactError: a temperature that is not a finite number > 0 (0 predicted NaN, a
                negative one reversed the ranking), or thresholds that are not a mapping of
                label -> number or null.
        """
        raw = config.get("temperature", 1.0)
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw < np.inf:
            raise ArtifactError(f"{source}: temperature must be a number > 0, got {raw!r}")
        self.temperature_ = float(raw)
        self.load_class_bias(config.get("class_bias"), source)
        thr = config.get("thresholds")
        if thr is None:
            return
        if not isinstance(thr, Mapping):
            raise ArtifactError(
                f"{source}: thresholds must map each label to a number or null, got "
                f"{type(thr).__name__}"
            )
        values = []
        for lab in self.labels:
            t = thr.get(lab)
            if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or t != t):
                raise ArtifactError(
                    f"{source}: thresholds[{lab!r}] must be a number or null, got {t!r}"
                )
            values.append(np.inf if t is None else float(t))
        self.thresholds_ = np.array(values)

    def thresholds_config(self) -> dict[str, float | None] | None:
        """``thresholds_`` as head_config.json stores them: per label, None where ``inf``."""
        if self.thresholds_ is None:
            return None
        return {
            lab: (None if np.isinf(t) else float(t))
            for lab, t in zip(self.labels, self.thresholds_, strict=True)
        }

    def training_arrays(self, embeddings: Any, labels: Labels) -> tuple[np.ndarray, np.ndarray]:
        """Check a ``fit``'s training data: ``(x, class indices)``, at least two classes.

        Raises:
            InvalidInputError: a bad shape, unknown labels, no rows or a single class.
        """
        x = as_numpy_embeddings(embeddings, self.in_dim)
        y = self.encode_labels(labels, source="training labels")
        if len(y) != len(x) or len(y) == 0:
            raise InvalidInputError(
                f"training needs n >= 1 rows with labels, got {len(x)} / {len(y)}"
            )
        if len(np.unique(y)) < 2:
            raise InvalidInputError(
                f"training labels of head {self.name!r} hold one class only "
                f"({self.labels[int(y[0])]!r}); at least 2 are needed"
            )
        return x, y

    def in_distribution(self, embeddings: np.ndarray) -> np.ndarray | None:
        """Say which rows look like the data the head was calibrated on.

        The default runs no check. A head with an out-of-distribution detector overrides this; a
        row it marks False abstains with reason ``"out_of_distribution"`` whatever its score.

        Args:
            embeddings: ``(n, in_dim)`` float32 array.

        Returns:
            None (no check), or a boolean array of shape ``(n,)``: True = in distribution.
        """
        return None

    def predict(self, embeddings: Any) -> list[Prediction]:
        """Predict with abstention: below its class threshold or out of distribution, no label.

        Args:
            embeddings: ``(n, in_dim)`` numpy array or torch tensor.

        Returns:
            One ``Prediction`` per row, in order; ``reason`` says why a row abstained.

        Raises:
            InvalidInputError: embeddings of the wrong shape or with non-finite values.
        """
        arr = as_numpy_embeddings(embeddings, self.in_dim)
        probs = self.predict_proba(arr)
        return predictions_from_proba(
            probs, self.labels, self.thresholds_, in_distribution=self.in_distribution(arr)
        )

    def model_card(self) -> str:
        """Return the Markdown model card (the evaluation report when one was attached)."""
        if self.card_:
            return self.card_
        cfg = self.to_config()
        lines = [
            f"# Head `{self.name}` v{self.head_version} ({self.kind})",
            "",
            f"- embedding_version: `{self.embedding_version}`",
            f"- in_dim: {self.in_dim}, labels: {len(self.labels)}",
            *([f"- temperature: {cfg['temperature']}"] if "temperature" in cfg else []),
            "",
            "No evaluation report was attached to this head.",
        ]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the head folder (config, labels, safetensors weights, model card).

        Args:
            path: the folder to create; it must not exist or be empty (artifacts are immutable).

        Returns:
            The folder path.

        Raises:
            ArtifactError: when the folder already holds files.
        """
        from safetensors.numpy import save_file

        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise ArtifactError(f"refusing to overwrite the non-empty head folder {path}")
        path.mkdir(parents=True, exist_ok=True)
        config = {**self.to_config(), "format_version": HEAD_FORMAT_VERSION}
        tensors = {k: np.ascontiguousarray(v) for k, v in self._tensors().items()}
        save_file(tensors, str(path / WEIGHTS_FILE), metadata={"kind": self.kind})
        (path / LABELS_FILE).write_text(json.dumps(list(self.labels), ensure_ascii=False) + "\n")
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (path / CARD_FILE).write_text(self.model_card(), encoding="utf-8")
        logger.info("saved head %s v%d (%s) to %s", self.name, self.head_version, self.kind, path)
        return path


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Return ``labels`` as a tuple after checking there are >= 2, unique, non-empty strings.

    Raises:
        InvalidInputError: naming what is wrong.
    """
    labels = tuple(labels)
    if len(labels) < 2:
        raise InvalidInputError(f"a head needs >= 2 labels, got {list(labels)}")
    if any(not isinstance(x, str) or not x for x in labels):
        raise InvalidInputError(f"labels must be non-empty strings, got {list(labels)[:10]}")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise InvalidInputError(f"duplicate labels {dupes}")
    return labels


def confusion_counts(y: np.ndarray, pred: np.ndarray, k: int) -> list[list[int]]:
    """Validation confusion counts, rows = true class, columns = argmax (before abstention)."""
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (y, pred), 1)
    return [[int(c) for c in row] for row in counts]


def predictions_from_proba(
    probs: np.ndarray,
    labels: Sequence[str],
    thresholds: np.ndarray | None,
    *,
    in_distribution: np.ndarray | None = None,
) -> list[Prediction]:
    """Turn probability rows into predictions: the one place abstention is decided.

    A row abstains with reason ``"out_of_distribution"`` when ``in_distribution`` marks it False,
    else ``"no_threshold_for_class"`` when its argmax class's threshold is ``inf``, else
    ``"below_threshold"`` when its score is below that threshold; otherwise it is assigned.

    Args:
        probs: ``(n, len(labels))`` calibrated probabilities.
        labels: the label names.
        thresholds: per-class thresholds on the max probability (``inf`` = never assign);
            None = never abstain on score.
        in_distribution: None (no check) or a boolean ``(n,)`` mask, True = in distribution
            (``Head.in_distribution``).

    Returns:
        One ``Prediction`` per row.

    Raises:
        ValueError: ``in_distribution`` is not a boolean array of shape ``(n,)``.
    """
    n = len(probs)
    idx = probs.argmax(axis=1)
    scores = probs[np.arange(n), idx]
    reasons: list[str | None] = [None] * n
    if thresholds is not None:
        thr = np.asarray(thresholds, dtype=np.float64)[idx]
        for i in np.flatnonzero(np.isposinf(thr)):
            reasons[i] = REASON_NO_THRESHOLD_FOR_CLASS
        for i in np.flatnonzero(~np.isposinf(thr) & ~(scores >= thr)):
            reasons[i] = REASON_BELOW_THRESHOLD
    if in_distribution is not None:
        mask = np.asarray(in_distribution)
        if mask.dtype != np.bool_ or mask.shape != (n,):
            raise ValueError(
                f"in_distribution must be a boolean array of shape ({n},) (one per row), got "
                f"dtype {mask.dtype} shape {mask.shape}"
            )
        for i in np.flatnonzero(~mask):
            reasons[i] = REASON_OUT_OF_DISTRIBUTION
    return [
        Prediction(
            label=None if r is not None else labels[i],
            argmax=labels[i],
            score=float(s),
            abstained=r is not None,
            probabilities=row,
            reason=r,
        )
        for row, i, s, r in zip(probs, idx, scores, reasons, strict=True)
    ]
