"""``softmax_abstain``: linear or one-hidden-layer softmax head, temperature, per-class thresholds.

This is the geolocation head (labels ``GEO_LABELS``) and the default for any single-label task. The
trainable part (``logits_module()``) is shared by joint fine-tuning and inference; temperature and
thresholds are fitted afterwards on validation data by ``calibrate``.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from embedder.errors import ArtifactError, InvalidInputError
from heads.base import Head, Labels, as_numpy_embeddings, check_labels
from heads.calibration import (
    DEFAULT_TARGET_PRECISION,
    BoundMethod,
    ThresholdSelection,
)
from heads.language_evidence import LanguageEvidence
from heads.registry import register_head
from heads.shift import MahalanobisGuard

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SoftmaxAbstainConfig:
    """Settings of a ``softmax_abstain`` head (everything but the learned state).

    Attributes:
        name: the head's name in a model.
        embedding_version: encoder version the head belongs to.
        in_dim: embedding width.
        hidden: width of the optional hidden layer (0 = linear head).
        dropout: dropout before the output layer (only with a hidden layer, only in training).
        label_field: the data field holding this head's labels ("country", "category").
        head_version: the v<k> number.
        min_confidence: floor under every class threshold.
        seed: weight-initialisation seed.
        ood_quantile: calibration also fits an out-of-distribution guard
            (``heads.shift.MahalanobisGuard``) that this share of the calibration rows pass; a row
            beyond it abstains with reason ``out_of_distribution``. None: no guard.
        never_assign: labels the head scores but never assigns (reason
            ``no_threshold_for_class``); their probabilities still feed audience estimates. The
            default build sets ``("OTHER",)``: "none of the 36" is where text unlike the training
            data lands, so its labels were right 19-21% of the time on the real multilingual set
            (heads v1 and v5 of emb-9f15c699ba70) while holding 90% on simulated validation.
    """

    name: str
    embedding_version: str
    in_dim: int
    hidden: int = 0
    dropout: float = 0.1
    label_field: str | None = None
    head_version: int = 1
    min_confidence: float = 0.0
    seed: int = 0
    ood_quantile: float | None = 0.99
    never_assign: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # head_config.json stores it as a JSON list
        object.__setattr__(self, "never_assign", tuple(str(x) for x in self.never_assign))
        if not self.name or not isinstance(self.name, str):
            raise InvalidInputError(f"head name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.in_dim, int) or self.in_dim <= 0:
            raise InvalidInputError(f"in_dim must be a positive integer, got {self.in_dim!r}")
        if not isinstance(self.hidden, int) or self.hidden < 0:
            raise InvalidInputError(f"hidden must be an integer >= 0, got {self.hidden!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise InvalidInputError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.ood_quantile is not None and not 0.0 < self.ood_quantile <= 1.0:
            raise InvalidInputError(
                f"ood_quantile must be in (0, 1] or None, got {self.ood_quantile}"
            )
        if self.head_version < 1:
            raise InvalidInputError(f"head_version must be >= 1, got {self.head_version}")


def _build_module(in_dim: int, hidden: int, dropout: float, n_out: int) -> nn.Sequential:
    if hidden == 0:
        return nn.Sequential(nn.Linear(in_dim, n_out))
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out)
    )


@register_head("softmax_abstain")
class SoftmaxAbstainHead(Head):
    """Softmax over the labels; abstains below a per-class, calibrated threshold.

    Learned state: ``module_`` (torch), ``temperature_``, ``thresholds_`` (``inf`` = class assigns
    nothing), ``calibration_`` (the validation report that chose the thresholds), ``fit_info_``,
    the out-of-distribution guard ``ood_`` and the optional language evidence ``language_``
    (``heads.language_evidence``: added to the logits, before temperature and thresholds).
    """

    def __init__(self, config: SoftmaxAbstainConfig, labels: Sequence[str]) -> None:
        self.config = config
        self.labels = tuple(labels)
        self.name = config.name
        self.embedding_version = config.embedding_version
        self.head_version = config.head_version
        self.in_dim = config.in_dim
        self.module_: nn.Sequential | None = None
        self.temperature_: float = 1.0
        self.thresholds_: np.ndarray | None = None
        self.calibration_: dict[str, Any] | None = None
        self.fit_info_: dict[str, Any] = {}
        self.ood_: MahalanobisGuard | None = None
        self.language_: LanguageEvidence | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], labels: Sequence[str]) -> SoftmaxAbstainHead:
        """Validate settings and labels, and initialise the weights.

        Args:
            cfg: ``SoftmaxAbstainConfig`` fields as a mapping.
            labels: output labels (>= 2, unique, non-empty strings).

        Returns:
            An unfitted head with initialised weights.

        Raises:
            InvalidInputError: unknown settings, bad values or a bad label set.
        """
        allowed = set(SoftmaxAbstainConfig.__dataclass_fields__)
        unknown = sorted(set(cfg) - allowed)
        if unknown:
            raise InvalidInputError(
                f"unknown softmax_abstain settings {unknown}; allowed: {sorted(allowed)}"
            )
        labels = check_labels(labels)
        head = cls(SoftmaxAbstainConfig(**cfg), labels)
        unknown_labels = sorted(set(head.config.never_assign) - set(labels))
        if unknown_labels:
            raise InvalidInputError(
                f"never_assign names labels {unknown_labels} the head does not have; "
                f"allowed: {list(labels)}",
                field="never_assign",
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(head.config.seed)
            head.module_ = _build_module(
                head.in_dim, head.config.hidden, head.config.dropout, len(labels)
            )
        return head

    # ----------------------------------------------------------------- inference
    def logits_module(self) -> nn.Sequential:
        """Return the torch module (embeddings -> raw logits); temperature is applied after it."""
        if self.module_ is None:
            raise InvalidInputError(f"head {self.name!r} has no weights; build it with from_config")
        return self.module_

    def undo_class_weights(self, weights: np.ndarray) -> None:
        """Return the head's posteriors to the training prior after a class-weighted fit.

        Weighting class ``k``'s loss by ``w_k`` multiplies its fitted odds by ``w_k``, so an
        inverse-frequency weighting makes small classes win every ambiguous profile: Arabic
        without a cue went to SA (1% of profiles) rather than OTHER (11%, mostly Arabic-speaking
        countries outside the 36). Subtracting ``log w_k`` from the last layer's bias undoes it
        exactly (logit adjustment, Menon et al. 2021). Measured on emb-9f15c699ba70 (head v3 ->
        v5, re-calibrated on the build's validation rows; ``make real-eval``), argmax accuracy:
        real multilang 0.512 -> 0.543, nadi 0.175 -> 0.327, tass 0.160 -> 0.202; simulated
        validation 0.690 both. Classes with weight 0 (no training rows) are left alone.
        Run before ``calibrate``: temperature and thresholds are fitted on the corrected logits.
        """
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.labels),):
            raise InvalidInputError(
                f"weights must have shape ({len(self.labels)},), got {w.shape}", field="weights"
            )
        layer = self.logits_module()[-1]
        assert isinstance(layer, nn.Linear)  # every module _build_module makes ends in one
        shift = np.where(w > 0, -np.log(np.where(w > 0, w, 1.0)), 0.0)
        with torch.no_grad():
            layer.bias.add_(torch.from_numpy(shift).to(layer.bias.dtype))

    def logits(self, embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
        """Return raw (uncalibrated) logits ``(n, len(labels))`` as float64: the module's, plus
        the language evidence's when the head has one."""
        x_np = as_numpy_embeddings(embeddings, self.in_dim)
        module = self.logits_module()
        was_training = module.training
        module.eval()
        with torch.inference_mode():
            out = module(torch.from_numpy(x_np)).double().numpy()
        module.train(was_training)
        if self.language_ is not None:
            out += self.language_.log_evidence(x_np)
        return out

    def attach_language_evidence(self, evidence: LanguageEvidence | None) -> None:
        """Add (or with None remove) language evidence; calibrate afterwards, since it moves
        the logits that temperature and thresholds were fitted on."""
        if evidence is not None and (
            evidence.table.shape[1] != len(self.labels) or evidence.weight.shape[1] != self.in_dim
        ):
            raise InvalidInputError(
                f"language evidence for {evidence.table.shape[1]} labels and "
                f"{evidence.weight.shape[1]}-dim embeddings does not fit head {self.name!r} "
                f"({len(self.labels)} labels, {self.in_dim} dims)"
            )
        self.language_ = evidence

    def predict_proba(self, embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
        """Return calibrated probabilities ``softmax(logits / temperature_ + class_bias_)``."""
        return self.calibrated_proba(self.logits(embeddings))

    def in_distribution(self, embeddings: np.ndarray) -> np.ndarray | None:
        """The guard fitted at calibration (None when the head has none)."""
        if self.ood_ is None:
            return None
        return self.ood_.in_distribution(as_numpy_embeddings(embeddings, self.in_dim))

    def fit_ood(self, embeddings: np.ndarray | torch.Tensor, labels: Labels) -> None:
        """Fit the out-of-distribution guard on calibration rows (``config.ood_quantile``)."""
        if self.config.ood_quantile is None:
            self.ood_ = None
            return
        y = self.encode_labels(labels, source="calibration labels")
        x = as_numpy_embeddings(embeddings, self.in_dim)
        self.ood_ = MahalanobisGuard.fit(x, y, len(self.labels), quantile=self.config.ood_quantile)

    # ----------------------------------------------------------------- training
    def fit(
        self,
        embeddings: np.ndarray | torch.Tensor,
        labels: Labels,
        *,
        val_embeddings: np.ndarray | torch.Tensor | None = None,
        val_labels: Labels | None = None,
        epochs: int = 300,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int | None = None,
        class_weight: Literal["balanced"] | None = "balanced",
        patience: int = 20,
        seed: int = 0,
        calibrate: bool = True,
        target_precision: float = DEFAULT_TARGET_PRECISION,
        confidence: float = 0.95,
        missing_classes: Literal["error", "abstain"] = "error",
        solver: Literal["auto", "lbfgs", "adamw"] = "auto",
        l2: float | None = None,
        cross_fit: int = 0,
        class_bias: bool = False,
        language_evidence_after_calibration: LanguageEvidence | None = None,
    ) -> SoftmaxAbstainHead:
        """Train on frozen embeddings, then calibrate on validation data.

        A linear head (``hidden == 0``) is fitted by default like scikit-learn's
        ``LogisticRegression``: full-batch L-BFGS on standardised embeddings with an L2 penalty,
        the penalty chosen by validation log-loss (or 3-fold cross-validation without validation
        data); the standardisation is folded into the saved weights. A head with a hidden layer
        trains with AdamW and early stopping on the validation loss.

        ``cross_fit=K`` (K >= 2) adds out-of-fold predictions of the training rows (K models, each
        trained on the other folds) to the validation rows that fit the temperature and the
        thresholds: with a few hundred labelled rows, validation alone cannot prove 90% precision
        for most classes, and the out-of-fold rows are as unseen as validation rows are.

        Args:
            embeddings: ``(n, in_dim)`` training embeddings.
            labels: ``n`` label strings (or class indices).
            val_embeddings: validation embeddings (early stopping and calibration).
            val_labels: validation labels.
            epochs: maximum passes over the training data.
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
            batch_size: mini-batch size; None = full batch.
            class_weight: ``"balanced"`` (inverse frequency) or None.
            patience: epochs without validation improvement before stopping.
            seed: shuffling seed.
            calibrate: fit temperature and thresholds on validation data afterwards.
            target_precision: per-class precision target for the thresholds.
            confidence: confidence of the precision lower bound.
            missing_classes: what to do when validation lacks a class present in training:
                ``"error"`` (default) or ``"abstain"`` (the class assigns nothing).
            solver: ``"lbfgs"`` (linear heads only), ``"adamw"``, or ``"auto"`` (L-BFGS for a
                linear head, else AdamW); ``epochs``, ``lr``, ``batch_size`` and ``patience``
                apply to AdamW only.
            l2: L-BFGS penalty on the weights (mean loss + ``l2 * ||W||^2``); None chooses it
                from ``L2_GRID``.
            cross_fit: folds of out-of-fold calibration rows (0 = validation rows only).
            class_bias: calibrate with one additive bias per class as well as the temperature
                (``calibrate(class_bias=True)``).
            language_evidence_after_calibration: language evidence to add once the temperature
                and class biases are fitted without it; the thresholds are then selected again
                on the same rows with it. Evidence attached before ``fit`` is calibrated like
                the module's logits, so biases fitted on simulated rows undo a language prior
                that the simulator's text lacks and real text has (US for English: its bias went
                from -0.09 to -1.34 at alpha 0.5; docs/TRAINING_EXPERIMENTS.md, "Seventeenth
                session"); added afterwards it keeps its effect and the thresholds still hold.

        Returns:
            self.

        Raises:
            InvalidInputError: empty or one-class training data, unknown labels, shape mismatches.
        """
        x, y = self.training_arrays(embeddings, labels)
        if val_labels is not None and val_embeddings is None:
            raise InvalidInputError("val_labels given without val_embeddings")
        val = None
        if val_embeddings is not None:
            if val_labels is None:
                raise InvalidInputError("val_embeddings given without val_labels")
            vx = as_numpy_embeddings(val_embeddings, self.in_dim)
            vy = self.encode_labels(val_labels, source="validation labels")
            if len(vx) != len(vy) or len(vy) == 0:
                raise InvalidInputError(f"validation has {len(vx)} rows and {len(vy)} labels")
            val = (vx, vy)
        if solver == "auto":
            solver = "lbfgs" if self.config.hidden == 0 else "adamw"
        if solver not in ("lbfgs", "adamw"):
            raise InvalidInputError(f"solver must be 'auto', 'lbfgs' or 'adamw', got {solver!r}")
        if solver == "lbfgs" and self.config.hidden:
            raise InvalidInputError("solver 'lbfgs' fits linear heads only (hidden=0)")
        if cross_fit == 1 or cross_fit < 0:
            raise InvalidInputError(f"cross_fit must be 0 or >= 2 folds, got {cross_fit}")
        if language_evidence_after_calibration is not None and not (
            calibrate and (val is not None or cross_fit)
        ):
            raise InvalidInputError(
                "language_evidence_after_calibration needs a calibration (validation rows or "
                "cross_fit >= 2)"
            )
        weights = _class_weights(y, len(self.labels), class_weight)
        if solver == "lbfgs":
            self._train_lbfgs(x, y, val, weights=weights, l2=l2, seed=seed)
        else:
            # Dropout draws from torch's global generator: seeded here, and given back after,
            # so that one seed gives one head (and the caller's random state is left alone).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._train(
                    x,
                    y,
                    val,
                    epochs=epochs,
                    lr=lr,
                    weight_decay=weight_decay,
                    batch_size=batch_size,
                    class_weight=class_weight,
                    patience=patience,
                    seed=seed,
                )
        self.fit_info_["class_weight"] = class_weight
        if calibrate and (val is not None or cross_fit):
            cal_x, cal_y = (val[0], val[1]) if val is not None else (x[:0], y[:0])
            oof = None
            if cross_fit:
                oof = self._out_of_fold_logits(x, y, cross_fit, weights=weights, seed=seed)
                self.fit_info_["cross_fit"] = {"folds": cross_fit, "rows": len(y)}
            calibrate_on_rows = functools.partial(
                self.calibrate,
                cal_x,
                cal_y,
                target=target_precision,
                confidence=confidence,
                missing_classes=missing_classes,
                train_labels=y,
            )
            calibrate_on_rows(extra=(oof, y) if oof is not None else None, class_bias=class_bias)
            evidence = language_evidence_after_calibration
            if evidence is not None:
                self.attach_language_evidence(evidence)
                # the out-of-fold logits lack the evidence; it reads embeddings only
                with_evidence = None if oof is None else (oof + evidence.log_evidence(x), y)
                calibrate_on_rows(extra=with_evidence, keep_scale=True)
            if oof is not None:  # the out-of-fold rows are calibration rows too
                self.fit_ood(np.concatenate([cal_x, x]), np.concatenate([cal_y, y]))
        return self

    def _train_lbfgs(
        self,
        x: np.ndarray,
        y: np.ndarray,
        val: tuple[np.ndarray, np.ndarray] | None,
        *,
        weights: np.ndarray,
        l2: float | None,
        seed: int,
    ) -> None:
        mean, scale = _standardiser(x)
        xs = (x - mean) / scale
        k = len(self.labels)
        fitted: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        if l2 is not None:
            chosen, scores = float(l2), {}
        else:
            if val is not None:
                vs = (val[0] - mean) / scale
                scores = _path_log_loss(xs, y, k, weights, vs, val[1], fitted=fitted)
            else:
                scores = _cv_path_log_loss(xs, y, k, weights, folds=3, seed=seed)
            chosen = min(scores, key=lambda lam: (scores[lam], -lam))
        # The validation path already fitted the chosen penalty on all training rows (warm-started
        # from the stronger one, converged to the same tolerance): refitting it from zero would
        # cost the longest single fit of the path again.
        w, b = fitted[chosen] if chosen in fitted else _lbfgs_fit(xs, y, k, weights, chosen)
        # Fold the standardisation into the layer: (x - m) / s @ W.T + b == x @ (W / s).T + b'.
        w_fold = w / scale[None, :]
        b_fold = b - w_fold @ mean
        layer = self.logits_module()[0]
        assert isinstance(layer, nn.Linear)  # lbfgs fits linear heads only (checked in fit)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w_fold).float())
            layer.bias.copy_(torch.from_numpy(b_fold).float())
        self.logits_module().eval()
        counts = np.bincount(y, minlength=k)
        self.fit_info_ = {
            "solver": "lbfgs",
            "l2": chosen,
            "l2_scores": {str(lam): round(v, 6) for lam, v in scores.items()},
            "l2_selected_by": "given" if l2 is not None else ("val_log_loss" if val else "cv3"),
            "n_train": len(x),
            "train_counts": {self.labels[i]: int(c) for i, c in enumerate(counts)},
        }
        logger.info("head %s: L-BFGS, l2 %.0e, n=%d", self.name, chosen, len(x))

    def _out_of_fold_logits(
        self, x: np.ndarray, y: np.ndarray, folds: int, *, weights: np.ndarray, seed: int
    ) -> np.ndarray:
        """Logits of each training row from a copy of this head trained without that row's fold."""
        out = np.zeros((len(x), len(self.labels)))
        fold = np.random.default_rng(seed).permutation(len(x)) % folds
        l2 = self.fit_info_.get("l2")
        for f in range(folds):
            held = fold == f
            if held.all() or not held.any() or len(np.unique(y[~held])) < 2:
                continue
            twin = copy.deepcopy(self)
            if self.fit_info_.get("solver") == "lbfgs":
                twin._train_lbfgs(x[~held], y[~held], None, weights=weights, l2=l2, seed=seed)
            else:
                twin._train(
                    x[~held], y[~held], None, epochs=int(self.fit_info_.get("epochs_run", 50)),
                    lr=float(self.fit_info_.get("lr", 1e-2)),
                    weight_decay=float(self.fit_info_.get("weight_decay", 1e-4)),
                    batch_size=self.fit_info_.get("batch_size"),
                    class_weight=self.fit_info_.get("class_weight"), patience=10**9, seed=seed,
                )  # fmt: skip
            out[held] = twin.logits(x[held])
        return out

    def _train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        val: tuple[np.ndarray, np.ndarray] | None,
        *,
        epochs: int,
        lr: float,
        weight_decay: float,
        batch_size: int | None,
        class_weight: str | None,
        patience: int,
        seed: int,
    ) -> None:
        module = self.logits_module()
        k = len(self.labels)
        counts = np.bincount(y, minlength=k).astype(np.float64)
        w = _class_weights(y, k, class_weight)
        loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32))
        opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        vt = (torch.from_numpy(val[0]), torch.from_numpy(val[1])) if val else None
        gen = torch.Generator().manual_seed(seed)
        bs = len(x) if not batch_size or batch_size >= len(x) else batch_size
        best, best_state, stale, epoch = math.inf, None, 0, 0
        for epoch in range(1, epochs + 1):  # noqa: B007
            module.train()
            for idx in torch.randperm(len(x), generator=gen).split(bs):
                opt.zero_grad()
                loss = loss_fn(module(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
            module.eval()
            with torch.no_grad():
                monitor = (
                    float(loss_fn(module(vt[0]), vt[1])) if vt else float(loss_fn(module(xt), yt))
                )
            if monitor < best - 1e-5:
                best, best_state, stale = monitor, copy.deepcopy(module.state_dict()), 0
            else:
                stale += 1
                if vt is not None and stale >= patience:
                    break
        if best_state is not None:
            module.load_state_dict(best_state)
        module.eval()
        self.fit_info_ = {
            "epochs_run": epoch,
            "best_loss": best,
            "n_train": len(x),
            "monitor": "val_loss" if vt else "train_loss",
            "lr": lr,
            "weight_decay": weight_decay,
            "batch_size": bs,
            "class_weight": class_weight,
            "train_counts": {self.labels[i]: int(c) for i, c in enumerate(counts)},
        }
        logger.info(
            "head %s: %d epochs, best %s %.4f", self.name, epoch, self.fit_info_["monitor"], best
        )

    def calibrate(
        self,
        val_embeddings: np.ndarray | torch.Tensor,
        val_labels: Labels,
        *,
        target: float = DEFAULT_TARGET_PRECISION,
        confidence: float = 0.95,
        method: BoundMethod = "wilson",
        missing_classes: Literal["error", "abstain"] = "error",
        train_labels: Labels | None = None,
        extra: tuple[np.ndarray, np.ndarray] | None = None,
        class_bias: bool = False,
        keep_scale: bool = False,
    ) -> ThresholdSelection:
        """Fit temperature and per-class thresholds on validation data (also after fine-tuning).

        Args:
            val_embeddings: validation embeddings.
            val_labels: validation labels (strings or indices).
            target: per-class precision target.
            confidence: one-sided confidence of the lower bound.
            method: ``"wilson"`` or ``"clopper-pearson"``.
            missing_classes: ``"error"`` refuses a validation set lacking a class that the training
                labels (or, if not given, the label set) contain; ``"abstain"`` lets it assign
                nothing.
            train_labels: training labels, to know which classes must be present.
            extra: more calibration rows as ``(logits, class indices)``, e.g. out-of-fold logits
                of the training rows (``fit(cross_fit=K)``).
            class_bias: also fit one additive bias per class (``fit_temperature_and_bias``): the
                rows' label mix becomes the head's prior (``profile-embed calibrate`` on rows
                like the profiles the head will score; the default build on its simulated
                validation rows, the recipe's ``refit_class_bias``).
            keep_scale: keep the fitted temperature and class biases; select thresholds only.

        Returns:
            The threshold selection (also stored in ``thresholds_`` and ``calibration_``).
        """
        vy = self.encode_labels(val_labels, source="validation labels")
        logits = self.logits(val_embeddings)
        if len(logits) != len(vy):
            raise InvalidInputError(f"validation has {len(logits)} rows and {len(vy)} labels")
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
            keep_scale=keep_scale,
        )
        self.fit_ood(val_embeddings, vy[: len(vy) - (0 if extra is None else len(extra[1]))])
        assert self.calibration_ is not None  # fit_thresholds wrote it
        sel = self._never_assign(sel)
        self.calibration_.update(
            rule="lowest threshold with label lower bound and mean calibrated probability "
            ">= target",
            never_assign=list(self.config.never_assign),
        )
        return sel

    def _never_assign(self, sel: ThresholdSelection) -> ThresholdSelection:
        """Close the ``never_assign`` labels, in the thresholds and in the calibration record.

        The record is what the audience estimators read as the head's validation behaviour
        (``heads.audience.head_audience_inputs``): a closed label that still showed its
        threshold's assigned rows made a follower population like the validation data look
        unlike it.
        """
        closed = {self.labels.index(label) for label in self.config.never_assign}
        if not closed:
            return sel
        report = list(sel.report)
        for c in closed:
            sel.thresholds[c] = math.inf  # the array in thresholds_
            report[c] = replace(
                report[c],
                threshold=math.inf,
                precision=None,
                precision_lower=0.0,
                assigned=0,
                correct=0,
                recall=0.0,
                coverage=0.0,
            )
        unreachable = tuple(r.label for r in report if math.isinf(r.threshold))
        assert self.calibration_ is not None
        self.calibration_["per_class"] = {r.label: r.to_dict() for r in report}
        self.calibration_["unreachable"] = list(unreachable)
        return replace(sel, report=tuple(report), unreachable=unreachable)

    # ----------------------------------------------------------------- persistence
    def to_config(self) -> dict[str, Any]:
        """Return head_config.json content: settings, temperature, thresholds, validation report."""
        cfg = asdict(self.config)
        return {
            "kind": self.kind,
            **cfg,
            "head_version": self.head_version,
            "labels": list(self.labels),
            "temperature": self.temperature_,
            "class_bias": self.class_bias_config(),
            "thresholds": self.thresholds_config(),
            "calibration": self.calibration_,
            "fit": self.fit_info_,
            "ood": None if self.ood_ is None else self.ood_.to_config(),
            "language_evidence": None if self.language_ is None else self.language_.to_config(),
        }

    def _tensors(self) -> dict[str, np.ndarray]:
        state = self.logits_module().state_dict()
        tensors = {k: v.detach().to("cpu").numpy() for k, v in state.items()}
        if self.ood_ is not None:
            tensors.update(self.ood_.to_tensors())
        if self.language_ is not None:
            tensors.update(self.language_.to_tensors())
        return tensors

    @classmethod
    def _from_saved(
        cls, config: Mapping[str, Any], labels: Sequence[str], tensors: Mapping[str, np.ndarray]
    ) -> SoftmaxAbstainHead:
        fields = {k: config[k] for k in SoftmaxAbstainConfig.__dataclass_fields__ if k in config}
        try:
            head = cls(SoftmaxAbstainConfig(**fields), check_labels(labels))
        except InvalidInputError as err:
            raise ArtifactError(f"invalid head_config.json: {err}") from err
        first = tensors.get("0.weight")
        last = tensors.get("3.weight" if head.config.hidden else "0.weight")
        if first is None or last is None:
            raise ArtifactError(
                f"weights {sorted(tensors)} do not match hidden={head.config.hidden}"
            )
        if first.shape[1] != head.in_dim:
            raise ArtifactError(
                f"in_dim {head.in_dim} in head_config.json but the weights take {first.shape[1]}"
            )
        if last.shape[0] != len(head.labels):
            raise ArtifactError(
                f"labels.json has {len(head.labels)} labels but the weights have "
                f"{last.shape[0]} rows"
            )
        module = _build_module(head.in_dim, head.config.hidden, head.config.dropout, len(labels))
        module.load_state_dict(
            {
                k: torch.from_numpy(v)
                for k, v in tensors.items()
                if not k.startswith(("ood.", "language."))
            }
        )
        module.eval()
        head.module_ = module
        head.load_scale_and_thresholds(config, "head_config.json")
        head.calibration_ = config.get("calibration")
        head.fit_info_ = dict(config.get("fit") or {})
        if config.get("ood"):
            head.ood_ = MahalanobisGuard.from_saved(config["ood"], dict(tensors))
            if head.ood_.whiten.shape[0] != head.in_dim:
                raise ArtifactError(
                    f"in_dim {head.in_dim} in head_config.json but the out-of-distribution "
                    f"guard's ood.whiten has {head.ood_.whiten.shape[0]} rows"
                )
        if config.get("language_evidence"):
            evidence = LanguageEvidence.from_saved(config["language_evidence"], tensors)
            try:
                head.attach_language_evidence(evidence)
            except InvalidInputError as err:
                raise ArtifactError(f"invalid head_config.json: {err}") from err
        return head


#: L2 penalties tried by the L-BFGS solver (mean loss + l2 * ||W||^2 on standardised inputs).
#: Strongest first: each fit of the path warm-starts from the previous, stronger one.
L2_GRID: tuple[float, ...] = (1.0, 3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)

#: The validation path stops after this many rises of the held-out loss in a row (one rise can be
#: a flat stretch; two mean the penalties are past the best).
PATH_STOP_AFTER_RISES = 2


def _class_weights(y: np.ndarray, k: int, class_weight: str | None) -> np.ndarray:
    counts = np.bincount(y, minlength=k).astype(np.float64)
    if class_weight == "balanced":
        return np.where(counts > 0, len(y) / (k * np.maximum(counts, 1)), 0.0)
    if class_weight is None:
        return np.ones(k)
    raise InvalidInputError(f"class_weight must be 'balanced' or None, got {class_weight!r}")


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0).astype(np.float64)
    scale = x.std(axis=0).astype(np.float64)
    # a constant column keeps scale 1: dividing by ~0 would blow its weight up
    return mean, np.where(scale > 1e-6, scale, 1.0)


def _lbfgs_fit(
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    weights: np.ndarray,
    l2: float,
    max_iter: int = 200,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: weighted mean cross-entropy + ``l2 * ||W||^2``.

    scipy's L-BFGS-B on an analytic gradient (as scikit-learn does): small dense problems, where
    torch's per-op overhead and thread pool would cost more than the arithmetic.
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    x = np.ascontiguousarray(x, dtype=np.float64)
    n, d = x.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0
    sw = weights[y].astype(np.float64)
    sw = sw / sw.sum()

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: k * d].reshape(k, d), theta[k * d :]
        z = x @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        loss = float(sw @ (lse - (z * onehot).sum(axis=1))) + l2 * float((w * w).sum())
        g = (np.exp(z - lse[:, None]) - onehot) * sw[:, None]
        return loss, np.concatenate([(g.T @ x + 2 * l2 * w).ravel(), g.sum(axis=0)])

    start = np.zeros(k * d + k) if init is None else np.concatenate([init[0].ravel(), init[1]])
    # One BLAS thread: L-BFGS-B's own vector updates are tiny, and a pool of spinning threads
    # made each step milliseconds (2x slower overall, worse on a loaded machine).
    with threadpool_limits(limits=1, user_api="blas"):
        res = minimize(
            loss_grad,
            start,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "gtol": 1e-4},
        )
    return res.x[: k * d].reshape(k, d), res.x[k * d :]


def fit_standardised_linear(
    x: np.ndarray, y: np.ndarray, k: int, weights: np.ndarray, l2: float
) -> tuple[np.ndarray, np.ndarray]:
    """``_lbfgs_fit`` on standardised ``x``, returned with the standardisation folded in.

    Returns:
        ``(w, b)`` for raw inputs: ``x @ w.T + b`` == ``(x - mean) / scale @ W.T + B``.
    """
    mean, scale = _standardiser(x)
    w, b = _lbfgs_fit((x - mean) / scale, y, k, weights, l2)
    w_fold = w / scale[None, :]
    return w_fold, b - w_fold @ mean


def _log_loss(wb: tuple[np.ndarray, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    z = x @ wb[0].T + wb[1]
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _path_log_loss(
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    weights: np.ndarray,
    vx: np.ndarray,
    vy: np.ndarray,
    *,
    fitted: dict[float, tuple[np.ndarray, np.ndarray]] | None = None,
    stop_after_rises: int | None = PATH_STOP_AFTER_RISES,
) -> dict[float, float]:
    """Held-out log-loss of the ``L2_GRID`` penalties, fitted as a warm-started path.

    The path stops once the held-out loss has risen ``stop_after_rises`` times in a row (None:
    never): weaker penalties only fit the training rows more closely from there, and they are
    the slowest fits of the path. ``fitted``, when given, receives each penalty's weights.
    """
    scores: dict[float, float] = {}
    prev, best, rises = None, math.inf, 0
    for lam in L2_GRID:
        prev = _lbfgs_fit(x, y, k, weights, lam, init=prev)
        scores[lam] = _log_loss(prev, vx, vy)
        if fitted is not None:
            fitted[lam] = prev
        rises = rises + 1 if scores[lam] > best else 0
        best = min(best, scores[lam])
        if stop_after_rises is not None and rises >= stop_after_rises:
            break
    return scores


def _cv_path_log_loss(
    x: np.ndarray, y: np.ndarray, k: int, weights: np.ndarray, *, folds: int, seed: int
) -> dict[float, float]:
    """Mean held-out log-loss of every ``L2_GRID`` penalty over ``folds`` folds."""
    fold = np.random.default_rng(seed).permutation(len(x)) % folds
    runs = []
    for f in range(folds):
        held = fold == f
        if held.any() and len(np.unique(y[~held])) >= 2:
            # the whole grid in every fold: the folds' losses are averaged per penalty
            runs.append(
                _path_log_loss(
                    x[~held], y[~held], k, weights, x[held], y[held], stop_after_rises=None
                )
            )
    if not runs:
        return {lam: math.inf for lam in L2_GRID}
    return {lam: float(np.mean([r[lam] for r in runs])) for lam in L2_GRID}


#: The built-in named heads: name -> (labels, data field).
STANDARD_HEADS: dict[str, tuple[tuple[str, ...], str]] = {}


def _standard_heads() -> dict[str, tuple[tuple[str, ...], str]]:
    from embedder.labels import CATEGORIES, GEO_LABELS

    return {"geolocation": (GEO_LABELS, "country"), "category": (CATEGORIES, "category")}


STANDARD_HEADS.update(_standard_heads())


def standard_head(
    name: str, *, embedding_version: str, in_dim: int, **cfg: Any
) -> SoftmaxAbstainHead:
    """Build the standard ``geolocation`` (GEO_LABELS, field "country") or ``category`` head.

    Args:
        name: ``"geolocation"`` or ``"category"``.
        embedding_version: the encoder's version.
        in_dim: the encoder's dimension.
        **cfg: other ``SoftmaxAbstainConfig`` settings (``hidden``, ``seed``, ...).

    Returns:
        An unfitted ``softmax_abstain`` head with initialised weights.

    Raises:
        UnknownHeadError: for any other name, listing the standard ones.
    """
    from embedder.errors import UnknownHeadError

    if name not in STANDARD_HEADS:
        raise UnknownHeadError(
            f"no standard head {name!r}; standard heads: {sorted(STANDARD_HEADS)}"
        )
    labels, field = STANDARD_HEADS[name]
    cfg.setdefault("label_field", field)
    return SoftmaxAbstainHead.from_config(
        {"name": name, "embedding_version": embedding_version, "in_dim": in_dim, **cfg}, labels
    )
