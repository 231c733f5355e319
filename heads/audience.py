"""Audience location: the label distribution of an influencer's followers, estimated without bias.

Counting confident labels is biased: abstention drops whole populations (followers from countries
the head is unsure about vanish). The estimators here use every follower's calibrated probabilities:

- ``"average"``: probability averaging (unbiased when the audience has the training prior);
- ``"em"``: EM prior-shift correction (Saerens, Latinne & Decaestecker 2002), which re-estimates the
  audience prior and re-weights posteriors until they agree — the default;
- ``"acc"``: adjusted classify-and-count, inverting the validation confusion matrix;
- ``"cc"``: plain classify-and-count of confident labels (the biased baseline, for comparison).

Intervals come from a bootstrap over followers. ``audience_error`` measures an estimate against a
known mixture (mean absolute error per label share); ``profile-embed audience --truth`` uses it
on the simulator's ``audience_truth.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedder.errors import InvalidInputError

logger = logging.getLogger(__name__)

Method = Literal["em", "average", "acc", "cc"]
METHODS: tuple[str, ...] = ("em", "average", "acc", "cc")


@dataclass(frozen=True)
class AudienceEstimate:
    """Estimated label shares of one audience.

    Attributes:
        labels: label names, aligned with the arrays.
        shares: point estimate, sums to 1.
        lower: lower end of the bootstrap interval per label.
        upper: upper end of the bootstrap interval per label.
        n: number of followers used.
        method: the estimator.
        confidence: interval level (0.95).
        n_bootstrap: bootstrap replicates (0 = no intervals; lower == upper == shares).
    """

    labels: tuple[str, ...]
    shares: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n: int
    method: str
    confidence: float
    n_bootstrap: int

    def as_mapping(self) -> dict[str, float]:
        """Return ``{label: share}``."""
        return {lab: float(s) for lab, s in zip(self.labels, self.shares, strict=True)}

    def to_dict(self, *, min_share: float = 0.0) -> dict[str, Any]:
        """JSON-ready form; labels sorted by share, those below ``min_share`` left out."""
        order = np.argsort(-self.shares, kind="stable")
        shares = {
            self.labels[i]: {
                "share": round(float(self.shares[i]), 5),
                "lower": round(float(self.lower[i]), 5),
                "upper": round(float(self.upper[i]), 5),
            }
            for i in order
            if self.shares[i] >= min_share
        }
        return {
            "n_followers": self.n,
            "method": self.method,
            "confidence": self.confidence,
            "n_bootstrap": self.n_bootstrap,
            "shares": shares,
        }


def probability_average(probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean of the calibrated probability vectors (optionally weighted)."""
    return np.average(probs, axis=0, weights=weights)


def em_prior_shift(
    probs: np.ndarray,
    prior: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    init: np.ndarray | None = None,
    max_iter: int = 1000,
    tol: float = 1e-5,
) -> tuple[np.ndarray, int]:
    """Saerens et al. (2002) EM: the audience prior under which the re-weighted posteriors agree.

    Args:
        probs: ``(n, k)`` posteriors calibrated under ``prior``.
        prior: ``(k,)`` the prior the posteriors assume (``heads.calibration.effective_prior``).
        weights: per-follower weights (bootstrap counts), default 1.
        init: starting estimate (default: ``prior``).
        max_iter: iteration cap.
        tol: stop when no share moves more than this in one step. Shares are read to a tenth
            of a percent and the bootstrap runs EM hundreds of times, so 1e-5 (not 1e-7, which
            often took thousands of iterations) is the useful precision.

    Returns:
        The estimated shares and the number of iterations run.
    """
    prior = np.maximum(np.asarray(prior, dtype=np.float64), 1e-12)
    pi = prior.copy() if init is None else np.maximum(np.asarray(init, dtype=np.float64), 1e-12)
    pi = pi / pi.sum()
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        adj = probs * (pi / prior)
        adj /= adj.sum(axis=1, keepdims=True)
        new = np.average(adj, axis=0, weights=weights)
        done = np.max(np.abs(new - pi)) < tol
        pi = new
        if done:
            break
    return pi, it


def classify_and_count(probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Shares of confident argmax labels; abstentions are dropped (the biased baseline)."""
    k = probs.shape[1]
    idx = probs.argmax(axis=1)
    keep = np.ones(len(idx), bool) if thresholds is None else probs.max(axis=1) >= thresholds[idx]
    counts = np.bincount(idx[keep], minlength=k).astype(np.float64)
    return counts / counts.sum() if counts.sum() else np.full(k, 1.0 / k)


def adjusted_classify_and_count(
    probs: np.ndarray, confusion: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Adjusted classify-and-count: solve ``q = C^T pi`` with non-negative least squares.

    Args:
        probs: ``(n, k)`` probabilities (only the argmax is used).
        confusion: ``(k, k)`` validation counts or rates, rows = true class, columns = argmax.
        weights: per-follower weights.

    Returns:
        The estimated shares.
    """
    from scipy.optimize import nnls

    k = probs.shape[1]
    c = np.asarray(confusion, dtype=np.float64)
    rows = c.sum(axis=1, keepdims=True)
    rates = np.where(rows > 0, c / np.maximum(rows, 1e-12), np.eye(k))
    q = np.bincount(probs.argmax(axis=1), weights=weights, minlength=k).astype(np.float64)
    q /= q.sum()
    pi, _ = nnls(rates.T, q)
    return pi / pi.sum() if pi.sum() > 0 else np.full(k, 1.0 / k)


def estimate_audience(
    probs: np.ndarray,
    *,
    labels: Sequence[str],
    method: Method = "em",
    prior: np.ndarray | None = None,
    confusion: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> AudienceEstimate:
    """Estimate an audience's label shares from per-follower calibrated probabilities.

    Args:
        probs: ``(n, k)`` calibrated probabilities of the followers.
        labels: the ``k`` label names.
        method: ``"em"`` (needs ``prior``), ``"average"``, ``"acc"`` (needs ``confusion``) or
            ``"cc"``.
        prior: the prior the probabilities assume (``effective_prior`` of the head); EM only.
        confusion: validation confusion matrix (rows true, columns argmax); ACC only.
        thresholds: per-class thresholds; CC only (None counts every argmax).
        n_bootstrap: bootstrap replicates over followers (0 = no interval).
        confidence: interval level.
        seed: bootstrap seed.

    Returns:
        The ``AudienceEstimate``.

    Raises:
        InvalidInputError: no followers, a bad shape, an unknown method or a missing input.
    """
    probs = np.asarray(probs, dtype=np.float64)
    k = len(labels)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise InvalidInputError(f"probs must have shape (n, {k}), got {probs.shape}")
    if len(probs) == 0:
        raise InvalidInputError("an audience needs at least one follower, got 0")
    if method not in METHODS:
        raise InvalidInputError(f"unknown audience method {method!r}; choose one of {METHODS}")
    if method == "em" and prior is None:
        raise InvalidInputError("method 'em' needs the head's prior (prior=...)")
    if method == "acc" and confusion is None:
        raise InvalidInputError(
            "method 'acc' needs the validation confusion matrix (confusion=...)"
        )

    def run(weights: np.ndarray | None, init: np.ndarray | None = None) -> np.ndarray:
        if method == "em":
            return em_prior_shift(probs, prior, weights=weights, init=init)[0]  # type: ignore[arg-type]
        if method == "average":
            return probability_average(probs, weights)
        if method == "acc":
            return adjusted_classify_and_count(probs, confusion, weights)  # type: ignore[arg-type]
        if weights is None:
            return classify_and_count(probs, thresholds)
        return classify_and_count(np.repeat(probs, weights.astype(int), axis=0), thresholds)

    shares = run(None)
    lower, upper = shares.copy(), shares.copy()
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = len(probs)
        reps = np.stack(
            [
                run(rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64), shares)
                for _ in range(n_bootstrap)
            ]
        )
        alpha = (1 - confidence) / 2
        lower, upper = np.quantile(reps, [alpha, 1 - alpha], axis=0)
    logger.info("audience of %d followers estimated with %s", len(probs), method)
    return AudienceEstimate(
        tuple(labels), shares, lower, upper, len(probs), method, confidence, n_bootstrap
    )


def audience_error(
    truth: Mapping[str, float] | np.ndarray,
    estimate: AudienceEstimate | Mapping[str, float] | np.ndarray,
    labels: Sequence[str] | None = None,
) -> float:
    """Mean absolute error per label share between a known mixture and an estimate.

    Args:
        truth: ``{label: share}`` (missing labels count as 0) or an array aligned with ``labels``.
        estimate: an ``AudienceEstimate``, ``{label: share}`` or an aligned array.
        labels: the label set to average over (default: the estimate's labels, else the union).

    Returns:
        ``mean_l |truth_l - estimate_l|`` over the label set.
    """
    if isinstance(estimate, AudienceEstimate):
        labels = labels or estimate.labels
        estimate = estimate.as_mapping()
    if isinstance(truth, Mapping) or isinstance(estimate, Mapping):
        t = truth if isinstance(truth, Mapping) else dict(zip(labels or (), truth, strict=True))
        e = (
            estimate
            if isinstance(estimate, Mapping)
            else dict(zip(labels or (), estimate, strict=True))
        )
        keys = list(labels) if labels else sorted(set(t) | set(e))
        unknown = sorted(set(t) - set(keys))
        if unknown:
            raise InvalidInputError(f"truth has labels {unknown} outside the label set {keys}")
        return float(np.mean([abs(float(t.get(x, 0.0)) - float(e.get(x, 0.0))) for x in keys]))
    return float(np.mean(np.abs(np.asarray(truth, float) - np.asarray(estimate, float))))


def plot_audience(
    estimate: AudienceEstimate, path: str | Path, *, top: int = 15, title: str | None = None
) -> Path:
    """Write a PNG bar chart of the largest shares with their bootstrap intervals as error bars.

    Args:
        estimate: the estimate to draw.
        path: PNG file to write.
        top: number of labels shown (the largest shares).
        title: chart title.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-estimate.shares, kind="stable")[:top]
    s = estimate.shares[order]
    err = np.vstack([s - estimate.lower[order], estimate.upper[order] - s]).clip(min=0)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(order) + 2), 4))
    ax.bar([estimate.labels[i] for i in order], s, yerr=err, capsize=3, color="#4c72b0")
    ax.set_ylabel("share of followers")
    ax.set_title(
        title
        or f"Audience ({estimate.n} followers, {estimate.method}, "
        f"{int(estimate.confidence * 100)}% bootstrap intervals)",
        fontsize=9,
    )
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def head_audience_inputs(head: Any) -> dict[str, Any]:
    """Return ``prior``, ``confusion`` and ``thresholds`` stored with a calibrated head.

    The prior is the head's ``effective_prior`` (from calibration); without calibration data, EM
    falls back to a uniform prior.
    """
    cal = getattr(head, "calibration_", None) or {}
    k = len(head.labels)
    eff = cal.get("effective_prior")
    prior = np.array([eff[x] for x in head.labels]) if eff else np.full(k, 1.0 / k)
    conf = cal.get("confusion_counts")
    return {
        "prior": prior,
        "confusion": np.asarray(conf, dtype=np.float64) if conf is not None else None,
        "thresholds": getattr(head, "thresholds_", None),
    }
