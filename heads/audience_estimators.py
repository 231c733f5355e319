"""Point estimators of an audience's label shares, and the label-shift consistency check.

All take ``(n, k)`` calibrated follower probabilities and optional per-follower ``weights``
(bootstrap counts). ``heads.audience.estimate_audience`` is the public entry point; this module
holds the arithmetic:

- ``probability_average``: the mean probability vector; robust, but pulled toward the training
  prior under prior shift;
- ``em_prior_shift``: Saerens et al. (2002) EM, optionally with a Dirichlet prior on the shares
  (``dirichlet``: MAP-EM) and with per-label upper caps (the guard);
- ``argmax_caps``: the caps of the guard. Under label shift the validation confusion ``R`` holds
  (rows true, columns argmax), so the share ``q_k`` of followers whose argmax is ``k`` is at least
  ``pi_k * R_kk``: ``pi_k <= q_k / R_kk``. A share the argmax counts cannot carry is a share EM
  made up from soft probability mass, which is where mis-calibration on unfamiliar text sits;
- ``adjusted_classify_and_count`` / ``classify_and_count``: argmax based;
- ``label_shift_misfit``: how far the observed argmax shares are from the best ``R^T pi``, with a
  parametric-bootstrap p-value (followers and validation rows resampled): a large, significant
  misfit says the followers do not look like any prior-shifted version of the validation data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from heads.calibration import precision_lower_bound

#: One-sided confidence of the bounds behind the guard's caps.
CAP_CONFIDENCE = 0.975


def probability_average(probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean of the calibrated probability vectors (optionally weighted)."""
    return np.average(probs, axis=0, weights=weights)


def cap_shares(shares: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Largest-likelihood shares under upper caps: clip, hand the excess to the rest pro rata.

    This is the exact M-step of EM under ``pi <= caps`` (maximise ``sum m_k log pi_k``):
    ``pi_k = min(caps_k, m_k / lam)`` with ``lam`` set so the shares sum to 1.
    """
    pi = np.asarray(shares, dtype=np.float64).copy()
    fixed = np.zeros(len(pi), bool)
    for _ in range(len(pi)):
        over = ~fixed & (pi > caps)
        if not over.any():
            break
        fixed |= over
        pi[fixed] = caps[fixed]
        free = ~fixed
        left = 1.0 - pi[fixed].sum()
        mass = pi[free].sum()
        if mass <= 0:
            break
        pi[free] *= max(left, 0.0) / mass
    return pi


def em_prior_shift(
    probs: np.ndarray,
    prior: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    init: np.ndarray | None = None,
    caps: np.ndarray | None = None,
    dirichlet: np.ndarray | None = None,
    reweight: np.ndarray | None = None,
    max_iter: int = 1000,
    tol: float = 1e-5,
) -> tuple[np.ndarray, int]:
    """Saerens et al. (2002) EM: the audience prior under which the re-weighted posteriors agree.

    Args:
        probs: ``(n, k)`` posteriors calibrated under ``prior``.
        prior: ``(k,)`` the prior the posteriors assume (``heads.calibration.effective_prior``).
        weights: per-follower weights (bootstrap counts), default 1.
        init: starting estimate (default: ``prior``).
        caps: ``(k,)`` upper bounds on the shares (the guard), applied as a constrained M-step.
        dirichlet: ``(k,)`` pseudo-counts ``alpha - 1`` of a Dirichlet prior on the shares
            (MAP-EM): the M-step becomes ``(sum_i w_i r_ik + alpha_k - 1) / (n + sum(alpha - 1))``.
        reweight: ``(k,)`` bool, the labels EM may re-weight (default all; see
            ``calibrated_labels``). The others keep the ratio 1 to their prior, so their shares
            stay their (re-normalised) average probability.
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
    if caps is not None:
        pi = cap_shares(pi, caps)
    total = float(len(probs) if weights is None else np.sum(weights))
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        ratio = pi / prior
        if reweight is not None:
            ratio = np.where(reweight, ratio, 1.0)
        adj = probs * ratio
        adj /= np.maximum(adj.sum(axis=1, keepdims=True), 1e-300)
        new = np.average(adj, axis=0, weights=weights)
        if dirichlet is not None:
            new = (new * total + dirichlet) / (total + dirichlet.sum())
        if caps is not None:
            new = cap_shares(new, caps)
        done = np.max(np.abs(new - pi)) < tol
        pi = new
        if done:
            break
    return pi, it


def calibrated_labels(confusion: np.ndarray | None) -> np.ndarray | None:
    """Labels with calibration rows (a non-empty confusion row); None when all have them.

    EM re-weights a label by ``share / prior``. A label the calibration rows never held has a
    prior fitted to nothing (1e-8 where a head was calibrated on four labels), and its tiny
    posteriors on followers need only be a little above it for EM to multiply them, step after
    step, into a share no follower supports: a head fitted and calibrated on nadi's four labels
    put 1.00 of each nadi population on the other 33 labels. Such labels are not re-weighted.
    """
    if confusion is None:
        return None
    seen = np.asarray(confusion, dtype=np.float64).sum(axis=1) > 0
    return None if seen.all() else seen


def classify_and_count(probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Shares of confident argmax labels; abstentions are dropped (the biased baseline)."""
    k = probs.shape[1]
    idx = probs.argmax(axis=1)
    keep = np.ones(len(idx), bool) if thresholds is None else probs.max(axis=1) >= thresholds[idx]
    counts = np.bincount(idx[keep], minlength=k).astype(np.float64)
    return counts / counts.sum() if counts.sum() else np.full(k, 1.0 / k)


def confusion_rates(confusion: np.ndarray) -> np.ndarray:
    """Row-normalised confusion (rows true, columns argmax); an unseen class gets a unit row."""
    c = np.asarray(confusion, dtype=np.float64)
    rows = c.sum(axis=1, keepdims=True)
    return np.where(rows > 0, c / np.maximum(rows, 1e-12), np.eye(len(c)))


def argmax_shares(probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Share of followers whose argmax is each label."""
    q = np.bincount(probs.argmax(axis=1), weights=weights, minlength=probs.shape[1])
    return q.astype(np.float64) / max(float(q.sum()), 1e-12)


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
    return _acc_solve(argmax_shares(probs, weights), confusion_rates(confusion))[0]


def _acc_solve(q: np.ndarray, rates: np.ndarray) -> tuple[np.ndarray, float]:
    from scipy.optimize import nnls

    k = len(q)
    pi, _ = nnls(rates.T, q)
    pi = pi / pi.sum() if pi.sum() > 0 else np.full(k, 1.0 / k)
    return pi, 0.5 * float(np.abs(rates.T @ pi - q).sum())


def argmax_caps(
    probs: np.ndarray,
    confusion: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    confidence: float = CAP_CONFIDENCE,
) -> np.ndarray:
    """Upper bounds ``UCB(q_k) / LCB(R_kk)`` on each share that the argmax counts can carry.

    ``q_k`` is the share of followers whose argmax is ``k`` (upper Wilson bound over the
    followers), ``R_kk`` the validation recall of the argmax for class ``k`` (lower Wilson bound
    over the class's validation rows). A class without validation rows, or whose argmax never
    recovers it, gets a cap of 0: nothing on the argmax side can vouch for it.
    """
    c = np.asarray(confusion, dtype=np.float64)
    support = c.sum(axis=1)
    n = float(len(probs) if weights is None else np.sum(weights))
    counts = argmax_shares(probs, weights) * n
    q_hi = 1.0 - precision_lower_bound(n - counts, np.full(len(c), n), confidence=confidence)
    r_lo = precision_lower_bound(np.diag(c), support, confidence=confidence)
    return np.where(r_lo > 0, np.minimum(q_hi / np.maximum(r_lo, 1e-12), 1.0), 0.0)


def confident_caps(
    probs: np.ndarray,
    thresholds: np.ndarray,
    recall_counts: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    confidence: float = CAP_CONFIDENCE,
) -> np.ndarray:
    """Upper bounds ``UCB(a_k) / LCB(recall_k)`` from the confident (thresholded) labels.

    ``a_k`` is the share of followers assigned ``k`` at its threshold, ``recall_k`` the share of
    the label's validation rows assigned to it (``recall_counts[:, 0] / recall_counts[:, 1]``).
    Labels that never assign get a cap of 1 (no bound from this side).
    """
    rc = np.asarray(recall_counts, dtype=np.float64)
    k = probs.shape[1]
    idx = probs.argmax(axis=1)
    thr = np.asarray(thresholds, dtype=np.float64)
    keep = probs.max(axis=1) >= thr[idx]
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    n = float(w.sum())
    counts = np.bincount(idx[keep], weights=w[keep], minlength=k)
    a_hi = 1.0 - precision_lower_bound(n - counts, np.full(k, n), confidence=confidence)
    r_lo = precision_lower_bound(rc[:, 0], rc[:, 1], confidence=confidence)
    return np.where(
        np.isfinite(thr) & (r_lo > 0), np.minimum(a_hi / np.maximum(r_lo, 1e-12), 1.0), 1.0
    )


def guard_caps(
    probs: np.ndarray,
    confusion: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    thresholds: np.ndarray | None = None,
    recall_counts: np.ndarray | None = None,
) -> np.ndarray:
    """The guard's caps: ``max(average_k, min(argmax cap, confident cap))`` per label.

    They sum to at least 1 (the average does), so the capped EM always has a solution.
    """
    caps = argmax_caps(probs, confusion, weights)
    if thresholds is not None and recall_counts is not None:
        caps = np.minimum(caps, confident_caps(probs, thresholds, recall_counts, weights))
    return np.maximum(probability_average(probs, weights), caps)


def guarded_em(
    probs: np.ndarray,
    prior: np.ndarray,
    confusion: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    init: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
    recall_counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """EM with each label's share capped at ``guard_caps`` (labels without calibration rows are
    not re-weighted, ``calibrated_labels``).

    The argmax counts (and, with ``thresholds`` and ``recall_counts``, the confident labels) must
    be able to carry a share above the probability average under the validation rates. On
    followers like the validation data the caps rarely bind; when the head spreads probability
    mass toward a label without making it anyone's label, that label stays near the average.
    ``em_refuted`` is the second half of the guard.

    Returns:
        The shares and the caps used.
    """
    caps = guard_caps(probs, confusion, weights, thresholds=thresholds, recall_counts=recall_counts)
    shares = em_prior_shift(
        probs, prior, weights=weights, init=init, caps=caps, reweight=calibrated_labels(confusion)
    )[0]
    return shares, caps


def em_refuted(
    shares: np.ndarray, probs: np.ndarray, confusion: np.ndarray, *, tolerance: float
) -> tuple[bool, dict[str, float]]:
    """Whether an EM solution explains the followers' argmax shares worse than averaging does.

    Under label shift the argmax shares are ``q = R^T pi``. EM's solution is refuted when its
    misfit ``TV(R^T pi, q)`` exceeds both the probability average's misfit and ACC's best misfit
    plus ``tolerance`` (sampling noise: ``label_shift_misfit``'s ``null_p95``). On followers like
    the validation data EM fits ``q`` about as well as ACC (the biased average does not); EM's
    corner solutions from spread-out probability mass break the argmax shares of the labels they
    drew from.

    Returns:
        ``(refuted, {"em", "average", "acc"} misfits)``.
    """
    rates = confusion_rates(confusion)
    q = argmax_shares(probs)
    fits = {
        "em": _misfit(shares, rates, q),
        "average": _misfit(probability_average(probs), rates, q),
        "acc": _acc_solve(q, rates)[1],
    }
    refuted = fits["em"] > max(fits["average"], fits["acc"] + tolerance)
    return refuted, {key: round(v, 4) for key, v in fits.items()}


def _misfit(pi: np.ndarray, rates: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(rates.T @ pi - q).sum())


def map_em(
    probs: np.ndarray,
    prior: np.ndarray,
    *,
    strength: float,
    weights: np.ndarray | None = None,
    init: np.ndarray | None = None,
    reweight: np.ndarray | None = None,
) -> np.ndarray:
    """MAP-EM with a Dirichlet prior centred on the probability average.

    ``strength`` is the prior's weight in followers per follower (1.0: as many pseudo-followers
    as followers), so the shrinkage toward the average does not vanish as the audience grows:
    the error it guards against (mis-calibration) does not shrink with more followers either.
    """
    avg = probability_average(probs, weights)
    total = float(len(probs) if weights is None else np.sum(weights))
    alpha = strength * total * avg
    return em_prior_shift(
        probs, prior, weights=weights, init=init, dirichlet=alpha, reweight=reweight
    )[0]


def label_shift_misfit(
    probs: np.ndarray,
    confusion: np.ndarray,
    *,
    n_sim: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """How badly the followers' argmax shares fit any prior shift of the validation confusion.

    Fits ``pi`` by non-negative least squares to ``q = R^T pi`` and measures the residual as a
    total variation ``0.5 * sum |R^T pi - q|``. Its null distribution (the followers really are a
    prior-shifted validation population) comes from ``n_sim`` parametric replicates that redraw
    both the followers' argmax labels and the validation rows.

    Returns:
        ``{"misfit": tv, "p_value": p, "null_p95": 95th percentile of the null}``.
    """
    c = np.asarray(confusion, dtype=np.float64)
    rates = confusion_rates(c)
    support = c.sum(axis=1).astype(np.int64)
    n = len(probs)
    q = argmax_shares(probs)
    pi, misfit = _acc_solve(q, rates)
    expected = np.clip(rates.T @ pi, 0, None)
    expected /= expected.sum()
    rng = np.random.default_rng(seed)
    null = np.empty(n_sim)
    for b in range(n_sim):
        q_b = rng.multinomial(n, expected) / n
        r_b = confusion_rates(rng.multinomial(support, rates))
        null[b] = _acc_solve(q_b, r_b)[1]
    return {
        "misfit": misfit,
        "p_value": float((1 + np.sum(null >= misfit)) / (1 + n_sim)),
        "null_p95": float(np.quantile(null, 0.95)),
    }


def cue_check(
    probs: np.ndarray,
    thresholds: np.ndarray,
    recall_counts: np.ndarray,
    candidates: list[np.ndarray],
) -> dict[str, float]:
    """Observed share of confidently labelled followers against what validation predicts.

    Under label shift a follower of label ``k`` is assigned at its threshold as often as the
    label's validation rows were (``recall_k = correct_k / support_k``), so the expected assigned
    share of an audience with shares ``pi`` is at least ``sum_k pi_k recall_k``. ``expected`` is
    the smallest of that over the ``candidates`` (the estimators' shares), so a low ratio is not
    an artefact of one estimator. Text unlike the training data carries fewer cues the head
    knows: on the real sets 0.4-25% were assigned where validation predicts ~40%.

    Returns:
        ``{"assigned_share", "expected_assigned_share", "ratio"}`` (ratio ``inf`` when nothing
        is expected).
    """
    rc = np.asarray(recall_counts, dtype=np.float64)
    recall = np.where(rc[:, 1] > 0, rc[:, 0] / np.maximum(rc[:, 1], 1.0), 0.0)
    idx = probs.argmax(axis=1)
    thr = np.asarray(thresholds, dtype=np.float64)
    observed = float(np.mean(probs.max(axis=1) >= thr[idx]))
    expected = min(float(np.asarray(c) @ recall) for c in candidates)
    ratio = observed / expected if expected > 0 else float("inf")
    return {"assigned_share": observed, "expected_assigned_share": expected, "ratio": ratio}


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """``0.5 * sum |a - b|``: the share of followers that would have to move."""
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())
