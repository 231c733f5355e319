"""Temperature scaling and precision-guaranteed thresholds on synthetic scores, known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedder.errors import InvalidInputError
from heads.calibration import (
    fit_temperature,
    fit_temperature_and_bias,
    precision_lower_bound,
    select_thresholds,
    softmax,
)


def _probs_for(scores: np.ndarray, cls: int, k: int) -> np.ndarray:
    """Rows whose argmax is ``cls`` with max-probability ``scores`` (rest spread evenly)."""
    p = np.tile(((1 - scores) / (k - 1))[:, None], (1, k))
    p[:, cls] = scores
    return p


def _wilson_lb(tp: int, n: int, z: float) -> float:
    p = tp / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (
        1 + z * z / n
    )


def test_lower_bounds_match_textbook_values():
    # 8/10: Wilson 95% two-sided CI = (0.490, 0.943); Clopper-Pearson = (0.444, 0.975)
    assert precision_lower_bound(8, 10, confidence=0.975) == pytest.approx(0.4902, abs=1e-3)
    cp = precision_lower_bound(8, 10, confidence=0.975, method="clopper-pearson")
    assert cp == pytest.approx(0.4439, abs=1e-3)
    assert precision_lower_bound(0, 0) == 0.0
    assert precision_lower_bound(0, 5, method="clopper-pearson") == 0.0


#: A threshold sits this close under the lowest score it keeps (THRESHOLD_MARGIN, and no more).
MARGIN = 1.01e-6


def test_a_threshold_keeps_its_boundary_row_through_float32_noise():
    # float32 scores a row a few 1e-8 apart in another batch; the row that set a class's
    # threshold must stay in, and the next lower row must stay out.
    from heads.calibration import THRESHOLD_MARGIN

    scores = np.r_[np.linspace(0.99, 0.9043155245, 60), np.full(10, 0.9042)]
    y = np.r_[np.zeros(60, int), np.ones(10, int)]  # the 10 just below are all wrong
    sel = select_thresholds(_probs_for(scores, 0, 2), y, target=0.9, confidence_check=False)
    t = sel.thresholds[0]
    assert 0.9042 < t < 0.9043155245 and 0.9043155245 - t <= 1.01 * THRESHOLD_MARGIN
    assert 0.9043155245 - 5e-8 >= t  # the boundary row, scored a little lower, still assigned
    assert sel.report[0].assigned == 60


def test_top_k_correct_gives_the_known_threshold():
    k = 3
    scores = np.linspace(0.99, 0.40, 200)  # distinct, descending
    probs = _probs_for(scores, 0, k)
    y = np.array([0] * 100 + [1] * 100)  # exactly the top 100 of class 0 are correct
    sel = select_thresholds(
        probs, y, target=0.9, confidence=0.95, labels=["a", "b", "c"], confidence_check=False
    )
    z = 1.6448536269514722
    n_best = max(n for n in range(1, 201) if _wilson_lb(min(n, 100), n, z) >= 0.9)
    assert 100 <= n_best < 112  # a few wrong ones may ride along, never many
    assert sel.thresholds[0] == pytest.approx(scores[n_best - 1], abs=MARGIN)
    row = sel.report[0]
    assert row.assigned == n_best and row.correct == 100 and row.support == 100
    assert row.precision == pytest.approx(100 / n_best)
    assert row.precision_lower >= 0.9
    assert row.recall == 1.0 and row.coverage == pytest.approx(n_best / 200)
    # classes b and c are never predicted -> they assign nothing and are listed
    assert np.isinf(sel.thresholds[1:]).all() and sel.unreachable == ("b", "c")
    assert sel.report[1].support == 100 and sel.report[1].recall == 0.0


def test_lower_bound_not_point_estimate_for_small_classes():
    # 10 of 10 correct: raw precision 1.0 >= 0.9, but the 95% lower bound (0.79) is not.
    probs = _probs_for(np.full(10, 0.95), 1, 3)
    sel = select_thresholds(probs, np.ones(10, dtype=int), target=0.9)
    assert math.isinf(sel.thresholds[1]) and "1" in sel.unreachable
    # 40 of 40 correct is enough (lb = 40 / (40 + z^2) = 0.937)
    probs = _probs_for(np.linspace(0.9, 0.6, 40), 1, 3)
    sel = select_thresholds(probs, np.ones(40, dtype=int), target=0.9, confidence_check=False)
    assert sel.thresholds[1] == pytest.approx(0.6, abs=MARGIN)


def test_lowest_qualifying_threshold_is_chosen_and_ties_are_not_split():
    # top 60 correct, then 1 wrong, then 60 correct, then 40 wrong: the lowest threshold that
    # qualifies lies below the isolated error.
    ok = np.array([True] * 60 + [False] + [True] * 60 + [False] * 40)
    scores = np.linspace(0.99, 0.5, len(ok))
    y = np.where(ok, 2, 0)
    sel = select_thresholds(_probs_for(scores, 2, 3), y, target=0.9, confidence_check=False)
    t = sel.thresholds[2]
    kept = scores >= t
    assert kept[:121].all()
    tp, n = int(ok[kept].sum()), int(kept.sum())
    assert _wilson_lb(tp, n, 1.6448536269514722) >= 0.9
    # brute force: no lower cut qualifies
    for m in range(n + 1, len(ok) + 1):
        assert _wilson_lb(int(ok[:m].sum()), m, 1.6448536269514722) < 0.9
    # ties: 50 correct and 10 wrong share one score -> cannot cut between them
    scores = np.r_[np.linspace(0.99, 0.9, 50), np.full(60, 0.8)]
    y = np.r_[np.zeros(50, int), np.zeros(50, int), np.ones(10, int)]
    sel = select_thresholds(_probs_for(scores, 0, 2), y, target=0.9, confidence_check=False)
    assert sel.thresholds[0] == pytest.approx(0.9, abs=MARGIN)
    assert sel.report[0].assigned == 50


def test_thin_low_probability_tail_is_not_assigned():
    # 300 confident rows (0.95, 95% right) and a tail of 40 rows at 0.30 that happen to be
    # right: the label bound alone slides the threshold down to 0.30; the model's own calibrated
    # probabilities say that tail is mostly wrong, so the checked rule stops above it.
    scores = np.r_[np.full(300, 0.95), np.full(40, 0.30)]
    y = np.r_[np.where(np.arange(300) % 20 == 0, 1, 0), np.zeros(40, int)]
    probs = _probs_for(scores, 0, 5)
    label_only = select_thresholds(probs, y, target=0.9, confidence_check=False)
    assert label_only.thresholds[0] == pytest.approx(0.30, abs=MARGIN)
    checked = select_thresholds(probs, y, target=0.9)
    assert checked.thresholds[0] == pytest.approx(0.95, abs=MARGIN)
    assert checked.report[0].assigned == 300 and checked.report[0].correct == 285
    # a class whose calibrated probabilities never reach the target assigns nothing
    low = select_thresholds(_probs_for(np.full(200, 0.85), 0, 2), np.zeros(200, int), target=0.9)
    assert math.isinf(low.thresholds[0]) and "0" in low.unreachable


def test_fit_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(20000, 5)) * 1.5
    p = softmax(true_logits)
    y = np.array([rng.choice(5, p=row) for row in p])
    t = fit_temperature(true_logits * 3.0, y)
    assert t == pytest.approx(3.0, rel=0.08)
    assert fit_temperature(true_logits, y) == pytest.approx(1.0, rel=0.08)


def test_fit_temperature_and_bias_recovers_a_shifted_prior():
    """Rows drawn under other class biases (a label mix the logits do not know): the fit finds
    the temperature and the biases (up to a constant), and its argmax gains what they cost."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20000, 4)) * 2.0
    bias = np.array([1.5, 0.0, -1.0, -0.5])
    p = softmax(logits, 1.0, bias)
    y = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    t, b = fit_temperature_and_bias(logits * 2.0, y, l2=0.0)
    assert t == pytest.approx(2.0, rel=0.05)
    assert b == pytest.approx(bias - bias.mean(), abs=0.06)
    assert b.mean() == pytest.approx(0.0, abs=1e-9)
    shifted = (softmax(logits * 2.0, t, b).argmax(axis=1) == y).mean()
    assert shifted > (logits.argmax(axis=1) == y).mean() + 0.03
    # the penalty keeps an absent class finite instead of driving it to minus infinity
    _, b2 = fit_temperature_and_bias(logits, np.where(y == 3, 0, y), l2=1e-3)
    assert np.isfinite(b2).all() and b2[3] == b2.min() and b2[3] > -20
    with pytest.raises(InvalidInputError, match="bias_l2"):
        fit_temperature_and_bias(logits, y, l2=-1.0)
    with pytest.raises(InvalidInputError, match="finite"):
        fit_temperature_and_bias(np.where(logits > 3, -np.inf, logits), y)
    with pytest.raises(InvalidInputError, match="at least one validation example"):
        fit_temperature_and_bias(np.zeros((0, 3)), np.zeros(0, dtype=int))


def test_calibration_input_errors():
    probs = _probs_for(np.full(4, 0.9), 0, 3)
    with pytest.raises(InvalidInputError, match="target and confidence"):
        select_thresholds(probs, np.zeros(4, dtype=int), target=1.2)
    with pytest.raises(InvalidInputError, match=r"must be in \[0, 3\)"):
        select_thresholds(probs, np.array([0, 1, 2, 3]))
    with pytest.raises(InvalidInputError, match="at least one validation example"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(InvalidInputError, match="integer class indices"):
        fit_temperature(np.zeros((2, 3)), np.array([0.0, 1.0]))
