"""Audience location: the label distribution of an influencer's followers, estimated honestly.

Counting confident labels is biased: abstention drops whole populations (followers from countries
the head is unsure about vanish). The estimators here use every follower's calibrated probabilities
(arithmetic in ``heads.audience_estimators``):

- ``"em"``: EM prior-shift correction (Saerens, Latinne & Decaestecker 2002), which re-estimates the
  audience prior and re-weights posteriors until they agree. Best on followers like the training
  data; on unfamiliar text it multiplies the head's mis-calibration (on real populations it put
  36% of a US/UK audience on Nigeria), so it is no longer the default (``DEFAULT_METHOD``);
- ``"guarded"``: EM whose shares may exceed the probability average only as far as the followers'
  argmax counts can carry them under the validation confusion (``pi_k <= q_k / R_kk``);
- ``"map"``: MAP-EM with a Dirichlet prior centred on the probability average, weighing as much
  as the followers (``MAP_STRENGTH``);
- ``"fallback"``: ``guarded``, or ``average`` when the followers look unlike the training data
  (the ``unlike_training`` checks: their argmax shares fit no prior shift of the validation data,
  or far fewer of them get a confident label than validation predicts for the estimated mix);
- ``"ensemble"``: per-label median of ``em``, ``average`` and ``acc``, renormalised — the
  default (``DEFAULT_METHOD``; ``default_method`` when a head lacks its inputs);
- ``"average"``: probability averaging (unbiased when the audience has the training prior);
- ``"acc"``: adjusted classify-and-count, inverting the validation confusion matrix;
- ``"cc"``: plain classify-and-count of confident labels (the biased baseline, for comparison).

Intervals come from a bootstrap that redraws the followers **and the model**: each replicate
also rescales every label's probabilities by ``exp(d_k)``, ``d_k ~ N(0, 1/(s_k + 1) +
model_error**2)`` (``s_k`` validation rows of label ``k``), and redraws the validation confusion
rows; an interval is never narrower than the binomial (Wilson) interval of the estimated follower
count, which the bootstrap cannot see for a label an estimator sets to 0. The ``ensemble``'s
intervals also hold its EM and ACC members' shares: where those two disagree, the gap is bias that
no resampling of their median shows. Every estimate carries
``flags`` for low evidence (``few_followers``, ``few_assigned``,
``unlike_training``, ``estimators_disagree``) and the ``diagnostics`` behind them; after a failed
check (``unlike_training``, ``estimators_disagree``, EM refuted) the intervals are widened to hold
the average's, ACC's and the guarded EM's shares too, since which one is right is then unknown.
``audience_error`` measures an estimate against a known mixture (mean absolute error per label
share); ``profile-embed audience --truth`` uses it on the simulator's ``audience_truth.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedder.errors import InvalidInputError
from heads.audience_estimators import (
    adjusted_classify_and_count,
    calibrated_labels,
    classify_and_count,
    confusion_rates,
    cue_check,
    em_prior_shift,
    em_refuted,
    guarded_em,
    label_shift_misfit,
    map_em,
    probability_average,
    total_variation,
)
from heads.calibration import precision_lower_bound

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "AudienceEstimate",
    "adjusted_classify_and_count",
    "audience_error",
    "classify_and_count",
    "default_method",
    "em_prior_shift",
    "estimate_audience",
    "head_audience_inputs",
    "plot_audience",
    "probability_average",
]

logger = logging.getLogger(__name__)

Method = Literal["em", "guarded", "map", "fallback", "ensemble", "average", "acc", "cc"]
METHODS: tuple[str, ...] = ("em", "guarded", "map", "fallback", "ensemble", "average", "acc", "cc")
#: What each method needs besides the probabilities (keys of ``head_audience_inputs``).
NEEDS: dict[str, tuple[str, ...]] = {
    "em": ("prior",),
    "guarded": ("prior", "confusion"),
    "map": ("prior",),
    "fallback": ("prior", "confusion"),
    "ensemble": ("prior", "confusion"),
    "average": (),
    "acc": ("confusion",),
    "cc": (),
}
#: The default estimator, chosen on real populations first, simulated audiences second. Mean total
#: variation over the 12 real populations of 1,000 followers of ``make real-eval``
#: (docs/REAL_DATA.md) with the head a fresh build serves (emb-9f15c699ba70, geolocation v2):
#: average 0.47, ensemble 0.47, guarded 0.47, fallback 0.48, map 0.49, acc 0.53, em 0.74. Of those
#: within 0.01 of the best, only the ensemble also holds the interval target on simulated audiences
#: (bench/audience_error.py --seed 1, same head): MAE at 1,000 followers 0.0038 (em 0.0034, average
#: 0.0180; target 0.02) and 95% intervals covering 90.4% / 91.2% of true shares >= 1% at 1,000 /
#: 10,000 followers, where EM, guarded and fallback cover 89.1% / 69.6%. A median of three
#: estimators with different failure modes is not dragged to a corner by one of them.
DEFAULT_METHOD: Method = "ensemble"
#: Dirichlet weight of ``map`` in pseudo-followers per follower.
MAP_STRENGTH = 1.0
#: Systematic calibration error per label (log scale, sd) added to the bootstrap; sized on
#: simulated audiences of seed 0 (bench/audience_error.py), coverage measured on seeds 1 and 2.
#: 0.10 until the twenty-seventh session: with the ensemble's member hull, seed 0's 95% intervals
#: held 88% of the true shares >= 1% at 10,000 followers (0.15: 94%, 0.20: 95%).
MODEL_ERROR = 0.15
#: Flag thresholds.
MIN_FOLLOWERS = 100
MIN_ASSIGNED = 30
#: unlike_training: assigned share below this fraction of what validation predicts for the
#: estimated mix (``cue_check``).
ASSIGNED_RATIO = 0.5
MISFIT_P = 0.01  # unlike_training: label-shift misfit significant at this level ...
MISFIT_TV = 0.05  # ... and larger than this total variation
#: estimators_disagree: EM (soft probabilities) and ACC (argmax counts), both unbiased when the
#: followers are a prior shift of the validation data, this far apart (total variation).
DISAGREE_TV = 0.25
FLAGS: tuple[str, ...] = ("few_followers", "few_assigned", "unlike_training", "estimators_disagree")


@dataclass(frozen=True)
class AudienceEstimate:
    """Estimated label shares of one audience.

    Attributes:
        labels: label names, aligned with the arrays.
        shares: point estimate, sums to 1.
        lower: lower end of the bootstrap interval per label.
        upper: upper end of the bootstrap interval per label.
        n: number of followers used.
        method: the estimator asked for.
        confidence: interval level (0.95).
        n_bootstrap: bootstrap replicates (0 = no intervals; lower == upper == shares).
        used: the estimator that produced the shares (``method``, except that ``fallback`` says
            ``guarded`` or ``average``).
        interval: what the intervals hold: ``"followers+model"`` (bootstrap over followers and
            the head's calibration error) or ``"followers"`` (``model_error=0``), then
            ``"+members"`` (``ensemble``: they also hold its EM and ACC members' shares) and
            ``"+estimators"`` (widened to the other estimators' shares after a failed check:
            ``unlike_training``, ``estimators_disagree`` or EM refuted); or ``"none"``.
        flags: low-evidence warnings, a subset of ``FLAGS`` in that order.
        diagnostics: the numbers behind the flags (JSON-ready).
    """

    labels: tuple[str, ...]
    shares: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n: int
    method: str
    confidence: float
    n_bootstrap: int
    used: str = ""
    interval: str = "none"
    flags: tuple[str, ...] = ()
    diagnostics: dict[str, Any] = field(default_factory=dict)

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
            "used": self.used or self.method,
            "confidence": self.confidence,
            "n_bootstrap": self.n_bootstrap,
            "interval": self.interval,
            "flags": list(self.flags),
            "diagnostics": self.diagnostics,
            "shares": shares,
        }


#: How far a follower's probabilities may sum from 1 (float32 softmax rows are ~1e-7 off).
PROB_SUM_TOLERANCE = 1e-3


def _check(
    probs: np.ndarray, labels: Sequence[str], method: str, given: Mapping[str, Any]
) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    k = len(labels)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise InvalidInputError(f"probs must have shape (n, {k}), got {probs.shape}")
    if len(probs) == 0:
        raise InvalidInputError("an audience needs at least one follower, got 0")
    if method not in METHODS:
        raise InvalidInputError(f"unknown audience method {method!r}; choose one of {METHODS}")
    for name in NEEDS[method]:
        if given[name] is None:
            what = {
                "prior": "the head's prior (prior=...)",
                "confusion": "the validation confusion matrix (confusion=...)",
            }[name]
            raise InvalidInputError(f"method {method!r} needs {what}")
    for name, shape in (("prior", (k,)), ("confusion", (k, k)), ("thresholds", (k,))):
        value = given[name]
        if value is not None and np.shape(value) != shape:
            raise InvalidInputError(f"{name} must have shape {shape}, got {np.shape(value)}")
    # Every estimator assumes probability rows; anything else gave NaN or shares not summing
    # to 1, silently.
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1)
    bad |= np.abs(probs.sum(axis=1) - 1.0) > PROB_SUM_TOLERANCE
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(
            f"probs row {row} is not a probability distribution (sum {probs[row].sum():.6g}, "
            f"min {probs[row].min():.6g}); each follower's row must be finite, >= 0 and sum to 1 "
            f"({int(bad.sum())} such rows)"
        )
    prior = given["prior"]
    if prior is not None:
        p = np.asarray(prior, dtype=np.float64)
        if not (np.isfinite(p).all() and (p >= 0).all() and p.sum() > 0):
            raise InvalidInputError(f"prior must be finite, >= 0 and not all 0, got {p.tolist()}")
    return probs


def _estimator(
    method: str, prior: Any, thresholds: Any, recall_counts: Any = None
) -> Callable[[np.ndarray, np.ndarray | None, Any, np.ndarray | None], np.ndarray]:
    """``(probs, weights, confusion, init) -> shares`` for one concrete method."""

    def run(p: np.ndarray, w: np.ndarray | None, conf: Any, init: np.ndarray | None) -> np.ndarray:
        rw = calibrated_labels(conf)
        if method == "em":
            return em_prior_shift(p, prior, weights=w, init=init, reweight=rw)[0]
        if method == "guarded":
            return guarded_em(
                p,
                prior,
                conf,
                weights=w,
                init=init,
                thresholds=thresholds,
                recall_counts=recall_counts,
            )[0]
        if method == "map":
            return map_em(p, prior, strength=MAP_STRENGTH, weights=w, init=init, reweight=rw)
        if method == "average":
            return probability_average(p, w)
        if method == "acc":
            return adjusted_classify_and_count(p, conf, w)
        if method == "ensemble":
            members = [
                em_prior_shift(p, prior, weights=w, reweight=rw)[0],
                probability_average(p, w),
                adjusted_classify_and_count(p, conf, w),
            ]
            med = np.median(np.stack(members), axis=0)
            return med / med.sum()
        if w is None:
            return classify_and_count(p, thresholds)
        return classify_and_count(np.repeat(p, w.astype(int), axis=0), thresholds)

    return run


def _model_sd(confusion: np.ndarray | None, k: int, model_error: float) -> np.ndarray:
    if confusion is None:
        return np.full(k, model_error)
    support = np.asarray(confusion, dtype=np.float64).sum(axis=1)
    return np.sqrt(1.0 / (support + 1.0) + model_error**2)


def _redraw_confusion(rng: np.random.Generator, confusion: np.ndarray) -> np.ndarray:
    c = np.asarray(confusion, dtype=np.float64)
    rates = confusion_rates(c)
    support = c.sum(axis=1).astype(np.int64)
    return rng.multinomial(support, rates).astype(np.float64)


def _bootstrap(
    run: Callable[..., np.ndarray],
    probs: np.ndarray,
    confusion: np.ndarray | None,
    shares: np.ndarray,
    *,
    n_bootstrap: int,
    confidence: float,
    model_error: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, k = probs.shape
    sd = _model_sd(confusion, k, model_error)
    reps = []
    for _ in range(n_bootstrap):
        w = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)
        p, conf = probs, confusion
        if model_error > 0:
            p = probs * np.exp(rng.normal(0.0, sd))
            p /= p.sum(axis=1, keepdims=True)
            if confusion is not None:
                conf = _redraw_confusion(rng, confusion)
        reps.append(run(p, w, conf, shares))
    alpha = (1 - confidence) / 2
    lower, upper = np.quantile(np.stack(reps), [alpha, 1 - alpha], axis=0)
    # never narrower than the binomial sampling interval of the estimated count: an estimator
    # that sets a label to 0 in every replicate still cannot rule out a share the followers,
    # drawn from the audience, happened to miss
    count = shares * n
    side = 1 - alpha
    lo_binom = precision_lower_bound(count, np.full(k, n), confidence=side)
    hi_binom = 1.0 - precision_lower_bound(n - count, np.full(k, n), confidence=side)
    return np.minimum(lower, np.minimum(shares, lo_binom)), np.maximum(
        upper, np.maximum(shares, hi_binom)
    )


def _point(
    method: str,
    probs: np.ndarray,
    prior: np.ndarray | None,
    confusion: np.ndarray | None,
    thresholds: np.ndarray | None,
    recall_counts: np.ndarray | None,
    misfit: Mapping[str, float] | None,
) -> tuple[str, np.ndarray, tuple[bool, dict[str, float]] | None]:
    """``(used, shares, em_refuted result)``: resolves ``fallback`` and ``guarded`` to what ran."""
    used = method
    if method == "fallback":
        assert misfit is not None and confusion is not None and prior is not None
        unlike = misfit["p_value"] < MISFIT_P and misfit["misfit"] > MISFIT_TV
        if thresholds is not None and recall_counts is not None:
            cands = [
                em_prior_shift(probs, prior, reweight=calibrated_labels(confusion))[0],
                adjusted_classify_and_count(probs, confusion),
                probability_average(probs),
            ]
            cues = cue_check(probs, thresholds, recall_counts, cands)
            unlike = unlike or cues["ratio"] < ASSIGNED_RATIO
        used = "average" if unlike else "guarded"
    shares = _estimator(used, prior, thresholds, recall_counts)(probs, None, confusion, None)
    refuted = None
    if used == "guarded":
        assert misfit is not None and confusion is not None
        refuted = em_refuted(shares, probs, confusion, tolerance=misfit["null_p95"])
        if refuted[0]:
            used = "average"
            shares = probability_average(probs)
    return used, shares, refuted


def _diagnose(
    method: str,
    used: str,
    probs: np.ndarray,
    shares: np.ndarray,
    prior: np.ndarray | None,
    confusion: np.ndarray | None,
    thresholds: np.ndarray | None,
    recall_counts: np.ndarray | None,
    misfit: Mapping[str, float] | None,
    val_assigned_share: float | None,
) -> tuple[tuple[str, ...], dict[str, Any], dict[str, np.ndarray]]:
    """Flags, diagnostics and the other estimators' shares (each run once)."""
    given = {"prior": prior, "confusion": confusion, "thresholds": thresholds}
    known: dict[str, np.ndarray] = {}
    capped = None
    if method in ("guarded", "fallback") and confusion is not None and prior is not None:
        known["guarded"], caps = guarded_em(
            probs, prior, confusion, thresholds=thresholds, recall_counts=recall_counts
        )
        capped = np.flatnonzero(known["guarded"] >= caps - 1e-9).tolist()
    others = {
        m: known[m]
        if m in known
        else _estimator(m, prior, thresholds, recall_counts)(probs, None, confusion, None)
        for m in ("em", "guarded", "average", "acc")
        if m != used and all(given[x] is not None for x in NEEDS[m])
    }
    flags, diag = _flags(
        probs, shares, used, others, misfit, thresholds, val_assigned_share, recall_counts
    )
    diag["used"] = used
    if capped is not None:
        diag["capped"] = capped
    return flags, diag, others


def _widen_to(
    lower: np.ndarray, upper: np.ndarray, members: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The intervals widened, where needed, to hold every member's shares."""
    stack = np.stack(members)
    return np.minimum(lower, stack.min(axis=0)), np.maximum(upper, stack.max(axis=0))


def _envelope(
    lower: np.ndarray, upper: np.ndarray, others: Mapping[str, np.ndarray], refuted: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Widen the intervals to hold the average's, ACC's and (unless refuted) guarded's shares."""
    members = [others[m] for m in ("average", "acc", "guarded") if m in others]
    if refuted and "guarded" in others:
        members = [others[m] for m in ("average", "acc") if m in others]
    if not members:
        return lower, upper
    return _widen_to(lower, upper, members)


def _hold_consistent_members(
    lower: np.ndarray,
    upper: np.ndarray,
    probs: np.ndarray,
    prior: np.ndarray | None,
    confusion: np.ndarray | None,
    known: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Widen the ensemble's intervals to hold EM's and ACC's shares (from ``known`` when the
    diagnosis already ran them).

    Both are unbiased under a prior shift of the validation data, so where they disagree the gap
    is the model's bias, which the bootstrap of their median cannot see: with 10,000 followers
    the median's interval is as narrow as follower resampling makes it, and covered 83-88% of
    the true shares >= 1% on simulated audiences (docs/REAL_DATA.md). Where they agree this
    costs nothing.
    """
    if prior is None or confusion is None:
        return lower, upper
    members = [
        known[m] if m in known else _estimator(m, prior, None)(probs, None, confusion, None)
        for m in ("em", "acc")
    ]
    return _widen_to(lower, upper, members)


def _assigned(probs: np.ndarray, thresholds: np.ndarray | None) -> int | None:
    if thresholds is None:
        return None
    idx = probs.argmax(axis=1)
    return int(np.sum(probs.max(axis=1) >= np.asarray(thresholds, dtype=np.float64)[idx]))


def _flags(
    probs: np.ndarray,
    shares: np.ndarray,
    used: str,
    others: Mapping[str, np.ndarray],
    misfit: Mapping[str, float] | None,
    thresholds: np.ndarray | None,
    val_assigned_share: float | None,
    recall_counts: np.ndarray | None,
) -> tuple[tuple[str, ...], dict[str, Any]]:
    n = len(probs)
    diag: dict[str, Any] = {"n_followers": n}
    raised = set()
    if n < MIN_FOLLOWERS:
        raised.add("few_followers")
    assigned = _assigned(probs, thresholds)
    if assigned is not None:
        diag["assigned"] = assigned
        diag["assigned_share"] = round(assigned / n, 4)
        if val_assigned_share is not None:
            diag["validation_assigned_share"] = round(float(val_assigned_share), 4)
        if assigned < MIN_ASSIGNED:
            raised.add("few_assigned")
        if recall_counts is not None:
            cands = [shares, *(others[m] for m in ("em", "acc", "average") if m in others)]
            cues = cue_check(probs, thresholds, recall_counts, cands)  # type: ignore[arg-type]
            diag["expected_assigned_share"] = round(cues["expected_assigned_share"], 4)
            if cues["ratio"] < ASSIGNED_RATIO:
                raised.add("unlike_training")
    if misfit is not None:
        diag["label_shift_misfit"] = {key: round(v, 4) for key, v in misfit.items()}
        if misfit["p_value"] < MISFIT_P and misfit["misfit"] > MISFIT_TV:
            raised.add("unlike_training")
    if others:
        diag["total_variation_to"] = {
            m: round(total_variation(shares, s), 4) for m, s in others.items()
        }
    shift = {m: others.get(m, shares if used == m else None) for m in ("em", "acc")}
    if shift["em"] is not None and shift["acc"] is not None:
        tv = total_variation(shift["em"], shift["acc"])
        diag["em_vs_acc"] = round(tv, 4)
        if tv > DISAGREE_TV:
            raised.add("estimators_disagree")
    return tuple(f for f in FLAGS if f in raised), diag


def default_method(*, has_prior: bool, has_confusion: bool) -> Method:
    """``DEFAULT_METHOD`` when the head recorded what it needs, else the first of em, acc, average
    that it can run (a head calibrated before priors or confusions were recorded)."""
    have = {"prior": has_prior, "confusion": has_confusion}
    for method in (DEFAULT_METHOD, "em", "acc"):
        if all(have[need] for need in NEEDS[method]):
            return method
    return "average"


def estimate_audience(
    probs: np.ndarray,
    *,
    labels: Sequence[str],
    method: Method | None = None,
    prior: np.ndarray | None = None,
    confusion: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    model_error: float | None = None,
    val_assigned_share: float | None = None,
    recall_counts: np.ndarray | None = None,
    diagnose: bool = True,
) -> AudienceEstimate:
    """Estimate an audience's label shares from per-follower calibrated probabilities.

    Args:
        probs: ``(n, k)`` calibrated probabilities of the followers.
        labels: the ``k`` label names.
        method: one of ``METHODS`` (see the module docstring); ``NEEDS`` lists their inputs.
            None: :func:`default_method` for the inputs given.
        prior: the prior the probabilities assume (``effective_prior`` of the head).
        confusion: validation confusion counts (rows true, columns argmax).
        thresholds: per-class thresholds (``cc``; and the ``few_assigned`` flag).
        n_bootstrap: bootstrap replicates (0 = no interval).
        confidence: interval level.
        seed: bootstrap seed.
        model_error: systematic calibration error per label (log-scale sd) added to each
            replicate, together with the validation sampling error of the probabilities and the
            confusion; None = ``MODEL_ERROR``, 0 = resample the followers only.
        val_assigned_share: share of validation profiles the head assigned a label (for the
            ``few_assigned`` flag; ``head_audience_inputs`` gives it).
        recall_counts: ``(k, 2)`` validation counts per label: rows of the label assigned to it
            at its threshold, and the label's rows; with ``thresholds`` they tighten the
            ``guarded`` caps (``head_audience_inputs`` gives them).
        diagnose: compute the flags (runs the other estimators once); False skips them.

    Returns:
        The ``AudienceEstimate``.

    Raises:
        InvalidInputError: no followers, a bad shape, rows that are not probabilities, an
            unknown method, a missing input or a bad ``model_error`` or ``confidence``.
    """
    given = {"prior": prior, "confusion": confusion, "thresholds": thresholds}
    if method is None:
        method = default_method(has_prior=prior is not None, has_confusion=confusion is not None)
    probs = _check(probs, labels, method, given)
    model_error = MODEL_ERROR if model_error is None else float(model_error)
    if not 0.0 <= model_error <= 2.0:
        raise InvalidInputError(f"model_error must be in [0, 2], got {model_error}")
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(f"confidence must be in (0, 1), got {confidence}")
    conf = None if confusion is None else np.asarray(confusion, dtype=np.float64)
    pri = None if prior is None else np.asarray(prior, dtype=np.float64)
    thr = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    rc = None if recall_counts is None else np.asarray(recall_counts, dtype=np.float64)
    if rc is not None and rc.shape != (len(labels), 2):
        raise InvalidInputError(f"recall_counts must have shape ({len(labels)}, 2), got {rc.shape}")
    misfit = label_shift_misfit(probs, conf, seed=seed) if conf is not None else None
    used, shares, refuted = _point(method, probs, pri, conf, thr, rc, misfit)
    run = _estimator(used, pri, thr, rc)
    lower, upper = shares.copy(), shares.copy()
    if n_bootstrap > 0:
        lower, upper = _bootstrap(
            run,
            probs,
            conf,
            shares,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            model_error=model_error,
            seed=seed,
        )
    flags: tuple[str, ...] = ()
    diag: dict[str, Any] = {}
    others: Mapping[str, np.ndarray] = {}
    interval = "followers+model" if model_error > 0 else "followers"
    if diagnose:
        flags, diag, others = _diagnose(
            method, used, probs, shares, pri, conf, thr, rc, misfit, val_assigned_share
        )
        if refuted is not None:
            diag["em_refuted"] = bool(refuted[0])
            diag["argmax_misfit"] = refuted[1]
        if "capped" in diag:
            diag["capped"] = [labels[i] for i in diag["capped"]]
    if n_bootstrap > 0 and used == "ensemble":
        lower, upper = _hold_consistent_members(lower, upper, probs, pri, conf, others)
        interval += "+members"
    doubt = {"unlike_training", "estimators_disagree"} & set(flags)
    if n_bootstrap > 0 and (doubt or diag.get("em_refuted")):
        # the model's assumptions failed a check: which estimator is right is itself unknown
        lower, upper = _envelope(lower, upper, others, bool(diag.get("em_refuted")))
        interval += "+estimators"
    logger.info("audience of %d followers estimated with %s (flags %s)", len(probs), used, flags)
    return AudienceEstimate(
        tuple(labels),
        shares,
        lower,
        upper,
        len(probs),
        method,
        confidence,
        n_bootstrap,
        used=used,
        interval=interval if n_bootstrap > 0 else "none",
        flags=flags,
        diagnostics=diag,
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
    flagged = bool(estimate.flags)
    ax.bar(
        [estimate.labels[i] for i in order],
        s,
        yerr=err,
        capsize=3,
        color="#b0b0b0" if flagged else "#4c72b0",
    )
    ax.set_ylabel("share of followers")
    used = estimate.used or estimate.method
    how = used if used == estimate.method else f"{estimate.method} -> {used}"
    kind = "followers + model" if estimate.interval.startswith("followers+model") else "follower"
    ax.set_title(
        f"{title}\nestimator: {how}"
        if title
        else f"Audience ({estimate.n} followers, {how}, "
        f"{int(estimate.confidence * 100)}% {kind} bootstrap intervals)",
        fontsize=9,
    )
    if flagged:
        ax.text(
            0.99,
            0.97,
            "LOW EVIDENCE: " + ", ".join(estimate.flags),
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="#c03030",
        )
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def head_audience_inputs(head: Any) -> dict[str, Any]:
    """Return every input ``estimate_audience`` takes from a calibrated head.

    All come from the head's calibration record: the prior is its ``effective_prior`` (without
    calibration data, a uniform prior), the confusion its validation ``confusion_counts``, and
    ``val_assigned_share`` the share of validation profiles given a label (``per_class``
    ``assigned`` over ``n_val``) and ``recall_counts`` (``per_class`` ``correct`` and
    ``support``), each None when not recorded. The dict can be passed to
    ``estimate_audience`` as keyword arguments.
    """
    cal = getattr(head, "calibration_", None) or {}
    k = len(head.labels)
    eff = cal.get("effective_prior")
    prior = np.array([eff[x] for x in head.labels]) if eff else np.full(k, 1.0 / k)
    conf = cal.get("confusion_counts")
    per_class = cal.get("per_class") or {}
    n_val = cal.get("n_val")
    rows = [per_class.get(lab) for lab in head.labels]
    complete = all(isinstance(r, Mapping) for r in rows) and rows
    thresholds = getattr(head, "thresholds_", None)
    # A label whose threshold is closed assigns nothing, whatever its record says: heads saved
    # before the record followed ``never_assign`` still show the rows it would have assigned.
    closed = (
        ~np.isfinite(np.asarray(thresholds, dtype=np.float64))
        if thresholds is not None
        else np.zeros(k, dtype=bool)
    )
    share = recall = None
    if complete:
        assigned = [r.get("assigned") for r in rows]  # type: ignore[union-attr]
        if n_val and all(isinstance(a, int | float) for a in assigned):
            share = float(sum(a for a, shut in zip(assigned, closed, strict=True) if not shut))
            share /= float(n_val)
        counts = [(r.get("correct"), r.get("support")) for r in rows]  # type: ignore[union-attr]
        if all(isinstance(c, int | float) and isinstance(t, int | float) for c, t in counts):
            recall = np.asarray(counts, dtype=np.float64)
            recall[closed, 0] = 0.0
    return {
        "prior": prior,
        "confusion": np.asarray(conf, dtype=np.float64) if conf is not None else None,
        "thresholds": thresholds,
        "val_assigned_share": share,
        "recall_counts": recall,
    }


def audience_groups(rows: Sequence[Any]) -> dict[str, list[int]]:
    """Row indices per audience: by the ``influencer_id`` extra field, ``"all"`` where it is absent.

    Args:
        rows: ``LabelledProfile``-like objects with ``.profile.extra``.
    """
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        key = r.profile.extra.get("influencer_id")
        groups.setdefault("all" if key is None else str(key), []).append(i)
    return groups


def read_audience_truth(path: str | Path) -> dict[str, dict[str, float]]:
    """Read known audience mixtures, ``{influencer_id: {label: share}}`` (``audience_truth.json``).

    Raises:
        FileNotFoundError: no such file.
        InvalidInputError: not JSON, or not an object of objects of numbers.
    """
    import json

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InvalidInputError(
            f"not valid UTF-8 text (byte {err.start}); save the file as UTF-8", source=str(path)
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"not JSON: {err}", source=str(path)) from err
    shape_ok = isinstance(data, dict) and all(
        isinstance(v, dict)
        and all(isinstance(s, int | float) and not isinstance(s, bool) for s in v.values())
        for v in data.values()
    )
    if not shape_ok:
        raise InvalidInputError(
            f"got {type(data).__name__} {text[:60]!r}; allowed: a JSON object "
            '{"influencer_id": {"label": share, ...}, ...}',
            source=str(path),
        )
    return {str(k): {str(lab): float(s) for lab, s in v.items()} for k, v in data.items()}


def truth_errors(truth: Mapping[str, float], estimate: AudienceEstimate) -> dict[str, float]:
    """How far an estimate is from a known mixture: ``mae`` and ``total_variation``."""
    mae = audience_error(truth, estimate)
    # total variation = 0.5 * sum |difference| = (number of labels / 2) * MAE
    return {"mae": mae, "total_variation": round(mae * len(estimate.labels) / 2, 5)}
