"""Bootstrap intervals of the headline figures (heads.evaluation.intervals)."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.errors import InvalidInputError
from heads.evaluation.intervals import figure_intervals, paired_differences, wilson_interval
from heads.evaluation.metrics import evaluate, score_predictions
from heads.evaluation.report import render_markdown


def _onehot(pred: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[pred]


def test_accuracy_interval_matches_the_binomial_standard_error() -> None:
    rng = np.random.default_rng(1)
    n, k = 4000, 3
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.7, y, (y + 1) % k)
    acc = float((pred == y).mean())
    out = figure_intervals(y, pred, k=k, n_bootstrap=2000)
    lo, hi = out["accuracy"]
    se = np.sqrt(acc * (1 - acc) / n)
    assert lo < acc < hi
    # the normal interval is acc +- 1.96 se; the percentile bootstrap agrees within 15%
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert out["confidence"] == 0.95 and out["n_bootstrap"] == 2000
    assert "selective_accuracy" not in out


def test_a_perfect_predictor_has_a_point_interval_and_the_seed_fixes_the_draw() -> None:
    y = np.array([0, 1, 2, 2, 1, 0, 0, 2])
    out = figure_intervals(y, y, k=3, n_bootstrap=200)
    assert out["accuracy"] == [1.0, 1.0] and out["macro_f1"] == [1.0, 1.0]
    pred = np.array([0, 1, 2, 0, 1, 0, 1, 2])
    assert figure_intervals(y, pred, k=3, seed=3) == figure_intervals(y, pred, k=3, seed=3)


def test_paired_difference_of_a_predictor_with_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(2)
    y, pred = rng.integers(0, 5, 500), rng.integers(0, 5, 500)
    out = paired_differences(y, pred, pred, k=5, n_bootstrap=300)
    assert out["accuracy"] == {"difference": 0.0, "interval": [0.0, 0.0]}
    assert out["macro_f1"] == {"difference": 0.0, "interval": [0.0, 0.0]}


def test_pairing_sees_a_small_difference_that_separate_intervals_cannot() -> None:
    rng = np.random.default_rng(3)
    n, k = 3000, 4
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, y, (y + 1) % k)
    # the other predictor is the same except on 45 rows it gets right that pred gets wrong
    other = pred.copy()
    wrong = np.flatnonzero(pred != y)[:45]
    other[wrong] = y[wrong]
    out = paired_differences(y, other, pred, k=k, n_bootstrap=1000)
    assert out["accuracy"]["difference"] == pytest.approx(45 / n)
    lo, hi = out["accuracy"]["interval"]
    assert 0.0 < lo < 45 / n < hi < 2 * 45 / n  # every replicate gains; the gain is certain
    a = figure_intervals(y, other, k=k)["accuracy"]
    b = figure_intervals(y, pred, k=k)["accuracy"]
    assert a[0] < b[1]  # while the separate intervals overlap
    assert out["macro_f1"]["difference"] == pytest.approx(
        score_predictions(y, _onehot(other, k))["macro_f1"]
        - score_predictions(y, _onehot(pred, k))["macro_f1"]
    )


def test_macro_f1_over_fixed_classes_and_selective_accuracy() -> None:
    y = np.array([0, 0, 1, 1, 2, 2] * 50)
    pred = np.array([0, 1, 1, 1, 2, 0] * 50)
    assigned = np.array([True, False, True, True, False, False] * 50)
    out = figure_intervals(y, pred, k=4, classes=np.array([0, 1, 2]), assigned=assigned)
    # the 150 assigned rows are all right: Wilson's interval, not a point
    z2 = 1.959964**2
    assert out["selective_accuracy"][0] == pytest.approx(150 / (150 + z2), abs=1e-5)
    assert out["selective_accuracy"][1] == 1.0
    whole = paired_differences(y, pred, y, k=4, classes=np.array([0, 1, 2]))
    f1 = np.array([2 * 50 / 200, 2 * 100 / 250, 2 * 50 / 150])  # per class on the whole set
    assert whole["macro_f1"]["difference"] == pytest.approx(f1.mean() - 1.0)
    nothing = figure_intervals(y, pred, k=4, assigned=np.zeros(len(y), bool))
    assert nothing["selective_accuracy"] is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="at least one"):
        figure_intervals(np.array([], dtype=int), np.array([], dtype=int), k=2)
    with pytest.raises(InvalidInputError, match="shape"):
        figure_intervals(np.array([0, 1]), np.array([0]), k=2)
    with pytest.raises(InvalidInputError, match=r"\[0, 2\)"):
        paired_differences(np.array([0, 1]), np.array([0, 2]), np.array([0, 1]), k=2)
    with pytest.raises(InvalidInputError, match="assigned"):
        figure_intervals(np.array([0, 1]), np.array([0, 1]), k=2, assigned=np.array([True]))


def test_evaluate_reports_the_intervals() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 600)
    probs = rng.dirichlet(np.ones(3), 600)
    probs[np.arange(600), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    ev = evaluate(probs, y, ("a", "b", "c"), thresholds=np.array([0.5, 0.5, 0.5]))
    iv = ev.metrics["intervals"]
    m = ev.metrics
    assert iv["accuracy"][0] < m["accuracy"] < iv["accuracy"][1]
    assert iv["macro_f1"][0] < m["macro_f1"] < iv["macro_f1"][1]
    assert iv["selective_accuracy"][0] < m["selective_accuracy"] < iv["selective_accuracy"][1]
    text = render_markdown(ev, {})
    lo, hi = iv["accuracy"]
    assert f"(95% CI {100 * lo:.1f}%-{100 * hi:.1f}%)" in text
    assert "intervals" not in evaluate(probs, y, ("a", "b", "c"), n_bootstrap=0).metrics


def test_wilson_interval_of_a_few_assigned_rows_is_wide_not_a_point() -> None:
    lo, hi = wilson_interval(0, 2)
    assert lo == 0.0 and hi == pytest.approx(0.6576, abs=1e-3)
    lo, hi = wilson_interval(923, 1000)
    assert lo == pytest.approx(0.9053, abs=1e-3) and hi == pytest.approx(0.9375, abs=1e-3)
    assert wilson_interval(0, 0) is None
    # paired: with fewer than MIN_ASSIGNED assigned rows on a side there is no interval to give
    y = np.zeros(200, dtype=int)
    few = np.zeros(200, bool)
    few[:5] = True
    out = paired_differences(y, y, y, k=2, assigned=(few, np.ones(200, bool)))
    assert out["selective_accuracy"] == {"difference": 0.0, "interval": None}
    none = paired_differences(y, y, y, k=2, assigned=(np.zeros(200, bool), few))
    assert none["selective_accuracy"] == {"difference": None, "interval": None}
