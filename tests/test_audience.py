"""Audience estimators on synthetic followers: known mixture, noisy calibrated model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedder.errors import InvalidInputError
from heads.audience import (
    audience_error,
    classify_and_count,
    estimate_audience,
    plot_audience,
)
from heads.calibration import effective_prior

K = 12
LABELS = tuple(f"C{i}" for i in range(K))
_CENTRES = np.random.default_rng(123).normal(size=(K, 6)) * 1.3
# the training prior the posteriors are calibrated under (imbalanced, like real data)
TRAIN_PRIOR = np.linspace(3.0, 0.5, K) / np.linspace(3.0, 0.5, K).sum()


def _posteriors(x: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Exact Bayes posteriors of the Gaussian class model: calibrated by construction."""
    ll = -0.5 * ((x[:, None, :] - _CENTRES[None]) ** 2).sum(-1) + np.log(prior)
    ll -= ll.max(1, keepdims=True)
    p = np.exp(ll)
    return p / p.sum(1, keepdims=True)


def _followers(mixture: np.ndarray, n: int, seed: int, prior=TRAIN_PRIOR):
    rng = np.random.default_rng(seed)
    y = rng.choice(K, size=n, p=mixture)
    x = _CENTRES[y] + rng.normal(size=(n, 6))
    return _posteriors(x, prior), y


def _mixture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + seed)
    return rng.dirichlet(np.full(K, 0.7))


def _mae(method: str, n: int, seeds=range(6), **kw) -> float:
    errs = []
    for s in seeds:
        truth = _mixture(s)
        probs, _ = _followers(truth, n, seed=s)
        est = estimate_audience(probs, labels=LABELS, method=method, n_bootstrap=0, **kw)
        errs.append(audience_error(truth, est.shares))
    return float(np.mean(errs))


def test_em_recovers_known_mixture_better_than_classify_and_count_under_abstention():
    thresholds = np.full(K, 0.9)
    probs, _ = _followers(_mixture(0), 1000, seed=0)
    assert (probs.max(1) < 0.9).mean() > 0.2  # abstention is substantial in this setting
    mae_em = _mae("em", 1000, prior=TRAIN_PRIOR)
    mae_avg = _mae("average", 1000)
    mae_cc = _mae("cc", 1000, thresholds=thresholds)
    assert mae_em <= 0.02, mae_em
    assert mae_em < 0.6 * mae_cc, (mae_em, mae_cc)
    assert mae_em < mae_avg  # averaging is biased toward the training prior under prior shift


def test_error_shrinks_with_audience_size():
    maes = {n: _mae("em", n, seeds=range(3), prior=TRAIN_PRIOR) for n in (200, 1000, 10000)}
    assert maes[10000] < maes[1000] < maes[200]
    assert maes[10000] < 0.01


def test_adjusted_classify_and_count_beats_plain_counting():
    # validation confusion from a separate sample drawn at the training prior
    vp, vy = _followers(TRAIN_PRIOR, 5000, seed=99)
    confusion = np.zeros((K, K))
    np.add.at(confusion, (vy, vp.argmax(1)), 1)
    mae_acc = _mae("acc", 2000, confusion=confusion)
    mae_cc = _mae("cc", 2000, thresholds=np.full(K, 0.9))
    assert mae_acc < mae_cc


def test_effective_prior_recovers_the_prior_the_posteriors_assume():
    # posteriors calibrated under a uniform prior, validation labels skewed
    uniform = np.full(K, 1.0 / K)
    probs, y = _followers(TRAIN_PRIOR, 8000, seed=5, prior=uniform)
    est = effective_prior(probs, y)
    np.testing.assert_allclose(est, uniform, atol=0.02)
    probs, y = _followers(TRAIN_PRIOR, 8000, seed=6, prior=TRAIN_PRIOR)
    np.testing.assert_allclose(effective_prior(probs, y), TRAIN_PRIOR, atol=0.02)


def test_effective_prior_survives_a_class_underflowed_to_zero():
    probs, y = _followers(TRAIN_PRIOR, 2000, seed=7)
    probs[:, -1] = 0.0  # softmax underflow: the class is exactly 0 on every row
    probs /= probs.sum(axis=1, keepdims=True)
    prior = effective_prior(probs, y)
    assert np.isfinite(prior).all() and prior.sum() == pytest.approx(1.0)


def test_bootstrap_intervals_cover_truth_and_plot(tmp_path):
    truth = _mixture(3)
    probs, _ = _followers(truth, 1000, seed=3)
    est = estimate_audience(probs, labels=LABELS, prior=TRAIN_PRIOR, n_bootstrap=100, seed=1)
    assert est.n == 1000 and est.method == "em"  # the default without a confusion matrix
    assert np.all(est.lower <= est.shares + 1e-12) and np.all(est.shares <= est.upper + 1e-12)
    assert np.mean((est.lower <= truth + 0.005) & (truth - 0.005 <= est.upper)) >= 0.75
    assert est.shares.sum() == pytest.approx(1.0)
    d = est.to_dict()
    json.dumps(d)
    assert d["n_followers"] == 1000 and set(d["shares"]) == set(LABELS)
    png = plot_audience(est, tmp_path / "audience.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classify_and_count_and_audience_error_helpers():
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9]])
    np.testing.assert_allclose(classify_and_count(probs, np.array([0.9, 0.9])), [0.5, 0.5])
    np.testing.assert_allclose(classify_and_count(probs), [2 / 3, 1 / 3])
    assert audience_error({"FR": 0.5, "DE": 0.5}, {"FR": 0.4, "DE": 0.5, "BR": 0.1}) == (
        pytest.approx(0.2 / 3)
    )
    with pytest.raises(InvalidInputError, match="outside the label set"):
        audience_error({"XX": 1.0}, {"FR": 1.0}, labels=["FR"])


def test_estimate_audience_input_errors():
    with pytest.raises(InvalidInputError, match="at least one follower"):
        estimate_audience(np.zeros((0, K)), labels=LABELS, method="average")
    with pytest.raises(InvalidInputError, match="needs the head's prior"):
        estimate_audience(np.full((2, K), 1 / K), labels=LABELS, method="em")
    with pytest.raises(InvalidInputError, match="unknown audience method"):
        estimate_audience(np.full((2, K), 1 / K), labels=LABELS, method="magic")
    with pytest.raises(InvalidInputError, match=r"shape \(n, 12\)"):
        estimate_audience(np.full((2, 3), 1 / 3), labels=LABELS, method="average")
    # rows that are not probabilities gave NaN shares, or shares summing to 2, silently
    flat = np.full((3, K), 1 / K)
    for row, needle in (
        (np.full(K, 2 / K), "sum 2"),
        (np.r_[np.nan, np.full(K - 1, 1 / (K - 1))], "row 1 is not a probability"),
        (np.zeros(K), "sum 0"),
        (np.r_[-0.5, 1.5, np.zeros(K - 2)], "min -0.5"),
    ):
        probs = flat.copy()
        probs[1] = row
        with pytest.raises(InvalidInputError, match=needle):
            estimate_audience(probs, labels=LABELS, method="average")
    with pytest.raises(InvalidInputError, match="prior must be finite"):
        estimate_audience(flat, labels=LABELS, method="em", prior=np.full(K, np.nan))
    for confidence in (1.0, 1.5, 0.0):  # NaN intervals, or numpy's own error
        with pytest.raises(InvalidInputError, match="confidence must be in"):
            estimate_audience(flat, labels=LABELS, method="average", confidence=confidence)


def test_default_method_is_the_ensemble_where_the_head_can_run_it():
    from heads.audience import DEFAULT_METHOD, default_method

    assert DEFAULT_METHOD == "ensemble"
    assert default_method(has_prior=True, has_confusion=True) == "ensemble"
    assert default_method(has_prior=True, has_confusion=False) == "em"
    assert default_method(has_prior=False, has_confusion=True) == "acc"
    assert default_method(has_prior=False, has_confusion=False) == "average"
    # the ensemble is what runs when no method is named and the head gave everything
    probs, _ = _followers(_mixture(3), 300, seed=4)
    confusion = np.diag(np.full(K, 50.0)) + 1.0
    est = estimate_audience(
        probs, labels=LABELS, prior=TRAIN_PRIOR, confusion=confusion, n_bootstrap=0
    )
    assert est.method == "ensemble" and est.used == "ensemble"


def test_followers_group_by_influencer_id_and_truth_files_are_checked(tmp_path) -> None:
    from embedder.data import LabelledProfile
    from embedder.profile import Profile
    from heads.audience import AudienceEstimate, audience_groups, read_audience_truth, truth_errors

    rows = [
        LabelledProfile(Profile(id=str(i), biography="x", extra=extra), {})
        for i, extra in enumerate([{"influencer_id": 7}, {}, {"influencer_id": "7"}, {}])
    ]
    assert audience_groups(rows) == {"7": [0, 2], "all": [1, 3]}

    good = tmp_path / "truth.json"
    good.write_text(json.dumps({"7": {"FR": 0.5, "BR": 0.5}}))
    assert read_audience_truth(good) == {"7": {"FR": 0.5, "BR": 0.5}}
    for bad, message in (
        ("{oops", "not JSON"),
        ('{"7": {"FR": "half"}}', "allowed: a JSON object"),
    ):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(InvalidInputError, match=message):
            read_audience_truth(tmp_path / "bad.json")

    fields = {f: None for f in AudienceEstimate.__dataclass_fields__}
    est = AudienceEstimate(**{**fields, "labels": ("FR", "BR"), "shares": np.array([0.7, 0.3])})
    errors = truth_errors({"FR": 0.5, "BR": 0.5}, est)
    assert errors == {"mae": pytest.approx(0.2), "total_variation": pytest.approx(0.2)}
