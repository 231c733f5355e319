"""Calibrated abstention: temperature scaling, then per-class thresholds with a precision guarantee.

``fit_temperature`` minimises the validation negative log-likelihood of ``softmax(logits / T)``
over a bounded 1-D range of ``log T``. ``select_thresholds`` then picks, for every class, the lowest
threshold on the calibrated max-probability such that the predictions of that class at or above it
have a *lower confidence bound* on precision >= the target (Wilson score or Clopper-Pearson,
one-sided) and a mean calibrated probability >= the target. Classes that cannot reach the target
(too few or too noisy validation predictions) get ``inf``: they assign nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from embedder.errors import InvalidInputError

#: The per-class precision every assigned class must keep unless told otherwise (heads.calibration).
DEFAULT_TARGET_PRECISION = 0.90


def check_target_precision(value: float) -> None:
    """Refuse a precision target outside (0, 1).

    Raises:
        InvalidInputError: naming the field, the value and the allowed range.
    """
    if not 0.0 < value < 1.0:
        raise InvalidInputError(
            f"got {value}; allowed: a number in (0, 1)", field="target_precision"
        )


logger = logging.getLogger(__name__)

BoundMethod = Literal["wilson", "clopper-pearson"]


#: L2 weight on the class biases of ``fit_temperature_and_bias`` (per unit of mean NLL). Small
#: enough that 100 labelled rows move a bias by a few nats where the data say so, large enough
#: that a class absent from the rows is pushed down by a bounded amount, not to minus infinity.
DEFAULT_BIAS_L2 = 1e-3


def softmax(
    logits: np.ndarray, temperature: float = 1.0, bias: np.ndarray | None = None
) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature + bias`` (float64, numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if bias is not None:
        z = z + np.asarray(bias, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(logz - z[np.arange(len(y)), y]))


def fit_temperature(
    logits: np.ndarray, y: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Fit the softmax temperature that minimises validation NLL.

    Args:
        logits: ``(n, k)`` uncalibrated logits on validation data.
        y: ``(n,)`` integer class indices.
        bounds: the search range for T.

    Returns:
        The temperature T (> 0); probabilities are ``softmax(logits / T)``.

    Raises:
        InvalidInputError: on empty input, mismatched lengths or class indices out of range.
    """
    from scipy import optimize  # here, not at the top: the CLI imports this module for --help

    logits = np.asarray(logits, dtype=np.float64)
    y = _check_targets(y, len(logits), logits.shape[1] if logits.ndim == 2 else 0)
    res = optimize.minimize_scalar(
        lambda t: _nll(logits, y, math.exp(t)),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    temperature = float(math.exp(res.x))
    logger.info(
        "temperature %.4f (NLL %.4f -> %.4f, n=%d)",
        temperature,
        _nll(logits, y, 1.0),
        float(res.fun),
        len(y),
    )
    return temperature


def fit_temperature_and_bias(
    logits: np.ndarray,
    y: np.ndarray,
    *,
    l2: float = DEFAULT_BIAS_L2,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> tuple[float, np.ndarray]:
    """Bias-corrected temperature scaling: one temperature and one additive bias per class.

    Minimises ``mean NLL(softmax(logits / T + b)) + l2 * |b|^2`` (L-BFGS-B, exact gradient).
    Temperature scaling alone cannot move a class's share of the argmax; the biases can, and that
    is what a head needs on data whose label mix or style differs from its training data: they
    make the rows' label mix the head's prior (Alexandari et al., 2020, "Maximum likelihood with
    bias-corrected calibration is hard-to-beat at label shift adaptation"). On real geotagged
    posts, re-fitting the shipped head this way on 100 labelled rows raised held-out accuracy by
    6 points and macro-F1 by 3; where the head cannot tell the classes apart (Arabic and Spanish
    by country) it mostly moves the argmax to the majority label (docs/REAL_DATA.md).

    Args:
        logits: ``(n, k)`` uncalibrated logits of the calibration rows.
        y: ``(n,)`` integer class indices.
        l2: weight of the L2 penalty on the biases (> 0 keeps absent classes finite).
        bounds: the search range for T.

    Returns:
        ``(T, b)``: probabilities are ``softmax(logits / T + b)``; ``b`` has mean 0.

    Raises:
        InvalidInputError: on empty input, mismatched lengths, class indices out of range, logits
            that are not finite or a negative ``l2``.
    """
    from scipy import optimize  # here, not at the top: the CLI imports this module for --help

    if not l2 >= 0:
        raise InvalidInputError(f"got {l2}; allowed: a number >= 0", field="bias_l2")
    z = np.asarray(logits, dtype=np.float64)
    y = _check_targets(y, len(z), z.shape[1] if z.ndim == 2 else 0)
    if not np.isfinite(z).all():  # the gradient of the temperature would be NaN
        raise InvalidInputError("logits must be finite numbers (got inf or NaN)", field="logits")
    n, k = z.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        inv_t, b = math.exp(-theta[0]), theta[1:]
        s = z * inv_t + b
        s = s - s.max(axis=1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        p = np.exp(logp)
        diff = (p - onehot) / n
        loss = -float(logp[np.arange(n), y].mean()) + l2 * float(b @ b)
        grad = np.empty_like(theta)
        grad[0] = -inv_t * float((diff * z).sum())
        grad[1:] = diff.sum(axis=0) + 2.0 * l2 * b
        return loss, grad

    t0 = fit_temperature(z, y, bounds=bounds)
    theta0 = np.concatenate([[math.log(t0)], np.zeros(k)])
    res = optimize.minimize(
        loss_grad,
        theta0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(math.log(bounds[0]), math.log(bounds[1]))] + [(None, None)] * k,
    )
    temperature, bias = float(math.exp(res.x[0])), res.x[1:] - res.x[1:].mean()
    logger.info(
        "temperature %.4f and class biases in [%.2f, %.2f] (NLL %.4f at T only -> %.4f, n=%d)",
        temperature,
        float(bias.min()),
        float(bias.max()),
        _nll(z, y, t0),
        float(res.fun),
        n,
    )
    return temperature, bias


def precision_lower_bound(
    correct: np.ndarray | int,
    total: np.ndarray | int,
    *,
    confidence: float = 0.95,
    method: BoundMethod = "wilson",
) -> np.ndarray:
    """One-sided lower confidence bound on a binomial proportion.

    Args:
        correct: number of correct predictions (array-like).
        total: number of predictions (array-like, same shape); 0 gives a bound of 0.
        confidence: one-sided confidence level (0.95 -> z = 1.645).
        method: ``"wilson"`` (score interval) or ``"clopper-pearson"`` (exact).

    Returns:
        The bounds, float64, same shape as the inputs.
    """
    from scipy import stats  # here, not at the top: the CLI imports this module for --help

    k = np.asarray(correct, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    safe_n = np.maximum(n, 1.0)
    if method == "wilson":
        z = stats.norm.ppf(confidence)
        p = k / safe_n
        denom = 1.0 + z * z / safe_n
        centre = p + z * z / (2 * safe_n)
        half = z * np.sqrt(p * (1 - p) / safe_n + z * z / (4 * safe_n * safe_n))
        lb = (centre - half) / denom
    elif method == "clopper-pearson":
        with np.errstate(invalid="ignore"):
            lb = stats.beta.ppf(1.0 - confidence, k, n - k + 1)
        lb = np.where(k <= 0, 0.0, lb)
    else:
        raise InvalidInputError(
            f"unknown bound method {method!r}; use 'wilson' or 'clopper-pearson'"
        )
    return np.where(n > 0, np.clip(lb, 0.0, 1.0), 0.0)


#: How far under the lowest kept validation score a threshold sits (see ``_class_threshold``).
THRESHOLD_MARGIN = 1e-6


@dataclass(frozen=True)
class ClassThreshold:
    """Validation report for one class's threshold.

    Attributes:
        label: the class name.
        threshold: minimum calibrated max-probability to assign the class (``inf`` = never).
        precision: point precision of the assigned predictions (None when none are assigned).
        precision_lower: the lower confidence bound of that precision.
        assigned: validation predictions assigned to the class at this threshold.
        correct: how many of those are right.
        predicted: validation rows whose argmax is this class (before abstention).
        support: validation rows whose true label is this class.
        recall: ``correct / support`` (share of the class's profiles assigned to it).
        coverage: ``assigned / predicted`` (share of the class's argmax predictions kept).
    """

    label: str
    threshold: float
    precision: float | None
    precision_lower: float
    assigned: int
    correct: int
    predicted: int
    support: int
    recall: float
    coverage: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``inf`` threshold written as None)."""
        d = asdict(self)
        d["threshold"] = None if math.isinf(self.threshold) else self.threshold
        return d


@dataclass(frozen=True)
class ThresholdSelection:
    """Result of ``select_thresholds``.

    Attributes:
        thresholds: ``(k,)`` per-class thresholds, ``inf`` where a class assigns nothing.
        report: one ``ClassThreshold`` per class, in label order.
        unreachable: labels that cannot reach the target and assign nothing.
        target: the precision target.
        confidence: the confidence of the lower bound.
        method: the bound method.
    """

    thresholds: np.ndarray
    report: tuple[ClassThreshold, ...]
    unreachable: tuple[str, ...]
    target: float
    confidence: float
    method: str


def select_thresholds(
    probs: np.ndarray,
    y: np.ndarray,
    target: float = DEFAULT_TARGET_PRECISION,
    confidence: float = 0.95,
    *,
    labels: Sequence[str] | None = None,
    method: BoundMethod = "wilson",
    min_threshold: float = 0.0,
    confidence_check: bool = True,
) -> ThresholdSelection:
    """Choose per-class thresholds on the calibrated max-probability with a precision guarantee.

    For class c, the candidates are the validation rows whose argmax is c, sorted by score. The
    threshold is the lowest score t (at a tie boundary) such that the lower confidence bound of the
    precision of ``{argmax == c and score >= t}`` is >= ``target`` and, with ``confidence_check``,
    the mean calibrated probability of that set is >= ``target`` too. If no t qualifies, it is
    ``inf``.

    Why both: the label bound is computed on the whole assigned set, so a class with a large,
    precise head of confident predictions lets the threshold slide down into a thin tail of
    low-probability rows; the few validation rows there may all be right by luck, and on new
    data that tail is larger and mostly wrong (seen on the default model: BR's threshold fell to
    0.28 with 95% validation precision and held 88% on test). The calibrated probabilities are
    the model's own estimate of that tail's precision and stop the slide.

    Args:
        probs: ``(n, k)`` calibrated validation probabilities.
        y: ``(n,)`` true class indices.
        target: the precision every assigned class must keep.
        confidence: the one-sided confidence of the lower bound (0.95).
        labels: class names for the report (defaults to "0", "1", ...).
        method: ``"wilson"`` or ``"clopper-pearson"``.
        min_threshold: never go below this score (e.g. 0 to allow any).
        confidence_check: also require the assigned rows' mean calibrated probability to reach
            ``target`` (off only to study the label bound alone).

    Returns:
        A ``ThresholdSelection``.

    Raises:
        InvalidInputError: on empty or inconsistent inputs or a target outside (0, 1).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise InvalidInputError(f"probs must be 2-D (n, k), got shape {probs.shape}")
    k = probs.shape[1]
    y = _check_targets(y, len(probs), k)
    if not 0.0 < target < 1.0 or not 0.0 < confidence < 1.0:
        raise InvalidInputError(
            f"target and confidence must be in (0, 1), got target={target}, confidence={confidence}"
        )
    names = [str(i) for i in range(k)] if labels is None else list(labels)
    if len(names) != k:
        raise InvalidInputError(f"got {len(names)} labels for {k} probability columns")
    pred = probs.argmax(axis=1)
    score = probs[np.arange(len(probs)), pred]
    thresholds = np.full(k, np.inf)
    report = []
    for c in range(k):
        t, row = _class_threshold(
            score[pred == c],
            (y == c)[pred == c],
            target,
            confidence,
            method,
            min_threshold,
            confidence_check,
        )
        thresholds[c] = t
        support = int((y == c).sum())
        report.append(
            ClassThreshold(
                label=names[c],
                support=support,
                recall=row["correct"] / support if support else 0.0,
                **row,
            )
        )
    unreachable = tuple(names[c] for c in range(k) if np.isinf(thresholds[c]))
    if unreachable:
        logger.info(
            "%d of %d classes cannot reach precision %.2f and assign nothing: %s",
            len(unreachable),
            k,
            target,
            ", ".join(unreachable),
        )
    return ThresholdSelection(thresholds, tuple(report), unreachable, target, confidence, method)


def _class_threshold(
    scores: np.ndarray,
    correct: np.ndarray,
    target: float,
    confidence: float,
    method: BoundMethod,
    min_threshold: float,
    confidence_check: bool,
) -> tuple[float, dict[str, Any]]:
    order = np.argsort(-scores, kind="stable")
    s, ok = scores[order], correct[order]
    n_pred = len(s)
    empty = {
        "threshold": math.inf,
        "precision": None,
        "precision_lower": 0.0,
        "assigned": 0,
        "correct": 0,
        "predicted": n_pred,
        "coverage": 0.0,
    }
    if n_pred == 0:
        return math.inf, empty
    tp = np.cumsum(ok)
    n = np.arange(1, n_pred + 1)
    # Only cut at tie boundaries: a threshold keeps every row with an equal score.
    boundary = np.r_[s[1:] < s[:-1], True] & (s >= min_threshold)
    lb = precision_lower_bound(tp, n, confidence=confidence, method=method)
    qualifies = boundary & (lb >= target)
    if confidence_check:
        qualifies &= np.cumsum(s) / n >= target
    good = np.flatnonzero(qualifies)
    if len(good) == 0:
        return math.inf, empty
    i = int(good[-1])  # largest prefix == lowest threshold
    # A hair under the lowest kept score, never down to the next lower one: float32 arithmetic
    # scores a row a few 1e-8 apart in another batch (or after a save and load), and the row
    # that set the threshold must not fall out of it there.
    below = float(s[i + 1]) if i + 1 < n_pred else -math.inf
    threshold = max(float(s[i]) - THRESHOLD_MARGIN, (float(s[i]) + below) / 2, min_threshold)
    return threshold, {
        "threshold": threshold,
        "precision": float(tp[i] / n[i]),
        "precision_lower": float(lb[i]),
        "assigned": int(n[i]),
        "correct": int(tp[i]),
        "predicted": n_pred,
        "coverage": float(n[i] / n_pred),
    }


def _check_targets(y: Any, n: int, k: int) -> np.ndarray:
    y = np.asarray(y)
    if n == 0:
        raise InvalidInputError("calibration needs at least one validation example, got 0")
    if y.shape != (n,):
        raise InvalidInputError(f"expected {n} integer targets, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InvalidInputError(f"targets must be integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= k:
        raise InvalidInputError(f"targets must be in [0, {k}), got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def effective_prior(
    probs: np.ndarray, y: np.ndarray, *, smoothing: float = 0.5, max_iter: int = 500
) -> np.ndarray:
    """Estimate the class prior the calibrated probabilities implicitly assume.

    A head trained with class weights is calibrated as if classes were balanced, not as the
    training data were. Prior-shift correction (``heads.audience``) needs that implied prior ``pi``:
    the one for which reweighting the posteriors by ``pi_val / pi`` makes their mean match the
    validation label distribution ``pi_val`` (solved by fixed-point iteration).

    Args:
        probs: ``(n, k)`` calibrated validation probabilities.
        y: ``(n,)`` true class indices.
        smoothing: add-``smoothing`` counts so that classes absent from validation stay positive.
        max_iter: iteration cap.

    Returns:
        ``(k,)`` prior, positive, summing to 1.
    """
    # Floored: a class that softmax underflowed to exactly 0 on every row made a row sum 0 once
    # the other classes' weights shrank, and the whole prior NaN.
    probs = np.maximum(np.asarray(probs, dtype=np.float64), 1e-300)
    k = probs.shape[1]
    y = _check_targets(y, len(probs), k)
    pi_val = np.bincount(y, minlength=k) + smoothing
    pi_val = pi_val / pi_val.sum()
    w = np.ones(k)
    for _ in range(max_iter):
        adj = probs * w
        adj /= adj.sum(axis=1, keepdims=True)
        mean = np.maximum(adj.mean(axis=0), 1e-12)
        step = pi_val / mean
        w *= step
        w /= w.sum()
        if np.max(np.abs(step - 1)) < 1e-8:
            break
    prior = pi_val / w
    return prior / prior.sum()
