"""The guarded estimators, model-error intervals and low-evidence flags of heads.audience.

Synthetic followers from the Gaussian class model of test_audience.py: exact Bayes posteriors
(calibrated by construction), a validation sample at the training prior for the confusion matrix
and the thresholds' recall, and deliberately broken posteriors for the failure seen on real data.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_audience import LABELS, TRAIN_PRIOR, K, _followers, _mixture

from embedder.errors import InvalidInputError
from heads.audience import (
    FLAGS,
    METHODS,
    NEEDS,
    audience_error,
    estimate_audience,
    head_audience_inputs,
    plot_audience,
)
from heads.audience_estimators import (
    argmax_caps,
    cap_shares,
    em_prior_shift,
    label_shift_misfit,
    map_em,
    probability_average,
)

POOR = 11  # the rarest training class, often confused: the head's "Nigeria"


@pytest.fixture(scope="module")
def inputs() -> dict:
    vp, vy = _followers(TRAIN_PRIOR, 5000, seed=99)
    confusion = np.zeros((K, K))
    np.add.at(confusion, (vy, vp.argmax(1)), 1)
    thresholds = np.full(K, 0.9)
    keep = vp.max(1) >= 0.9
    correct = np.bincount(vy[keep & (vp.argmax(1) == vy)], minlength=K)
    return {
        "prior": TRAIN_PRIOR,
        "confusion": confusion,
        "thresholds": thresholds,
        "val_assigned_share": float(keep.mean()),
        "recall_counts": np.stack([correct, np.bincount(vy, minlength=K)], axis=1),
    }


def _miscalibrated(seed: int, n: int = 1000, delta: float = 0.15):
    """Followers of a known mixture whose posteriors all carry ``delta`` extra mass on POOR."""
    truth = _mixture(seed)
    probs, _ = _followers(truth, n, seed=seed)
    probs = (1 - delta) * probs
    probs[:, POOR] += delta
    return truth, probs


def test_guarded_equals_em_on_calibrated_prior_shifted_followers(inputs):
    errs = {m: [] for m in ("em", "guarded", "fallback", "average")}
    for s in range(4):
        truth = _mixture(s)
        probs, _ = _followers(truth, 1000, seed=s)
        for m in errs:
            est = estimate_audience(probs, labels=LABELS, method=m, n_bootstrap=0, **inputs)
            errs[m].append(audience_error(truth, est.shares))
            if m in ("guarded", "fallback"):
                assert est.used == "guarded" and not est.diagnostics["em_refuted"], (s, m)
                assert "unlike_training" not in est.flags
    em, guarded = np.mean(errs["em"]), np.mean(errs["guarded"])
    assert guarded <= 0.02 and abs(guarded - em) < 0.002, (guarded, em)
    assert np.mean(errs["fallback"]) == pytest.approx(guarded)
    assert guarded < 0.6 * np.mean(errs["average"])


def test_miscalibrated_class_is_not_inflated_beyond_the_average(inputs):
    truth, probs = _miscalibrated(0)
    assert truth[POOR] < 0.01  # almost nobody is really of that class
    em = estimate_audience(probs, labels=LABELS, method="em", n_bootstrap=0, **inputs)
    avg = estimate_audience(probs, labels=LABELS, method="average", n_bootstrap=0, **inputs)
    assert em.shares[POOR] > 0.9  # plain EM drives it to the corner (the real-data failure)
    for m in ("guarded", "fallback"):
        est = estimate_audience(probs, labels=LABELS, method=m, n_bootstrap=0, **inputs)
        assert est.shares[POOR] <= avg.shares[POOR] + 1e-9, m
        assert est.used == "average"
        if m == "guarded":  # EM's corner explains the argmax shares worse than averaging
            assert est.diagnostics["em_refuted"] is True
            misfit = est.diagnostics["argmax_misfit"]
            assert misfit["em"] > misfit["average"]
        else:  # none of the followers gets a confident label: unlike the validation data
            assert "unlike_training" in est.flags and est.diagnostics["assigned"] == 0
        assert "estimators_disagree" in est.flags  # EM and ACC are 0.8 apart
        assert est.diagnostics["em_vs_acc"] > 0.5
    # with intervals: widened to the other estimators' shares, since EM failed its check
    est = estimate_audience(probs, labels=LABELS, method="guarded", n_bootstrap=20, **inputs)
    acc = estimate_audience(probs, labels=LABELS, method="acc", n_bootstrap=0, **inputs)
    assert est.interval == "followers+model+estimators"
    assert np.all(est.lower <= np.minimum(acc.shares, avg.shares) + 1e-12)
    assert np.all(est.upper >= np.maximum(acc.shares, avg.shares) - 1e-12)
    assert est.upper[POOR] < em.shares[POOR]  # the refuted EM corner is not in the interval
    # over several audiences the guard is never worse than averaging, EM is far worse
    err = {m: [] for m in ("em", "guarded", "average")}
    for s in range(6):
        truth, probs = _miscalibrated(s)
        for m in err:
            est = estimate_audience(probs, labels=LABELS, method=m, n_bootstrap=0, **inputs)
            err[m].append(audience_error(truth, est.shares))
    assert np.mean(err["guarded"]) <= np.mean(err["average"]) + 0.001
    assert np.mean(err["em"]) > 3 * np.mean(err["average"])


def test_caps_hold_a_label_without_argmax_support_at_the_average(inputs):
    # every follower is really C0; the head adds 0.2 to POOR without ever making it the argmax
    probs = np.full((500, K), 0.01)
    probs[:, 0] = 0.6
    probs[:, POOR] = 0.2
    probs /= probs.sum(1, keepdims=True)
    caps = argmax_caps(probs, inputs["confusion"])
    # no argmax for POOR in 500 followers: z^2/500 over POOR's validation recall (~0.17)
    assert caps[POOR] < 0.05 < probability_average(probs)[POOR]
    est = estimate_audience(
        probs, labels=LABELS, method="guarded", n_bootstrap=0, diagnose=True, **inputs
    )
    avg = probability_average(probs)
    assert est.shares[POOR] <= avg[POOR] + 1e-9
    assert est.shares[0] >= avg[0] - 1e-9


def test_argmax_caps_known_answer():
    # 2 labels, perfect validation argmax for 100 rows each; 40 of 100 followers argmax 0
    confusion = np.array([[100.0, 0.0], [0.0, 100.0]])
    probs = np.array([[0.9, 0.1]] * 40 + [[0.2, 0.8]] * 60)
    z = 1.959963984540054  # one-sided 97.5%
    r_lo = 100 / (100 + z * z)  # Wilson lower bound of 100/100

    def wilson_hi(k: int, n: int) -> float:
        p = k / n
        centre = p + z * z / (2 * n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return (centre + half) / (1 + z * z / n)

    want = [wilson_hi(40, 100) / r_lo, wilson_hi(60, 100) / r_lo]
    np.testing.assert_allclose(argmax_caps(probs, confusion), want, rtol=1e-9)
    # a label with no validation rows cannot be vouched for
    assert argmax_caps(probs, np.array([[100.0, 0.0], [0.0, 0.0]]))[1] == 0.0


def test_cap_shares_and_capped_em_known_answers():
    np.testing.assert_allclose(
        cap_shares(np.array([0.5, 0.3, 0.2]), np.array([0.2, 1.0, 1.0])), [0.2, 0.48, 0.32]
    )
    # the excess that breaks a second cap is handed on again
    np.testing.assert_allclose(
        cap_shares(np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.35, 1.0])), [0.2, 0.35, 0.45]
    )
    probs, _ = _followers(_mixture(2), 800, seed=2)
    free, _ = em_prior_shift(probs, TRAIN_PRIOR)
    caps = np.ones(K)
    top = int(np.argmax(free))
    caps[top] = free[top] / 2
    capped, _ = em_prior_shift(probs, TRAIN_PRIOR, caps=caps)
    assert capped[top] == pytest.approx(free[top] / 2)
    assert capped.sum() == pytest.approx(1.0) and np.all(capped <= caps + 1e-12)


def test_map_em_moves_from_em_to_the_average_with_its_strength():
    probs, _ = _followers(_mixture(4), 1000, seed=4)
    em, _ = em_prior_shift(probs, TRAIN_PRIOR)
    avg = probability_average(probs)
    weak = map_em(probs, TRAIN_PRIOR, strength=1e-6)
    strong = map_em(probs, TRAIN_PRIOR, strength=1e4)
    np.testing.assert_allclose(weak, em, atol=2e-3)
    np.testing.assert_allclose(strong, avg, atol=2e-3)
    mid = map_em(probs, TRAIN_PRIOR, strength=1.0)
    d_em, d_avg = np.abs(mid - em).sum(), np.abs(mid - avg).sum()
    assert 0 < d_em < np.abs(em - avg).sum() and 0 < d_avg < np.abs(em - avg).sum()


def test_unlike_training_flag_and_fallback_to_the_average(inputs):
    # every follower's argmax is POOR, which the validation argmax recovers only sometimes:
    # no prior shift of the validation data produces that
    probs = np.full((600, K), 0.05)
    probs[:, POOR] = 0.3
    probs /= probs.sum(1, keepdims=True)
    check = label_shift_misfit(probs, inputs["confusion"])
    assert check["misfit"] > 0.3 and check["p_value"] < 0.02
    est = estimate_audience(probs, labels=LABELS, method="fallback", n_bootstrap=0, **inputs)
    assert est.used == "average" and "unlike_training" in est.flags
    np.testing.assert_allclose(est.shares, probability_average(probs))
    # calibrated followers pass the check
    truth = _mixture(1)
    calibrated, _ = _followers(truth, 1000, seed=1)
    assert label_shift_misfit(calibrated, inputs["confusion"])["p_value"] > 0.05


def test_low_evidence_flags(inputs):
    probs, _ = _followers(_mixture(0), 1000, seed=0)
    est = estimate_audience(probs, labels=LABELS, method="guarded", n_bootstrap=0, **inputs)
    assert est.flags == ()
    small = estimate_audience(probs[:50], labels=LABELS, method="guarded", n_bootstrap=0, **inputs)
    assert "few_followers" in small.flags
    strict = {**inputs, "thresholds": np.full(K, 0.999999)}
    none = estimate_audience(probs, labels=LABELS, method="guarded", n_bootstrap=0, **strict)
    assert "few_assigned" in none.flags and none.diagnostics["assigned"] < 30
    # followers with fewer cues than validation profiles (stand-in: only probabilities >= 0.99
    # count as assigned, while the validation recall was measured at 0.9): 17% are assigned
    # where validation predicts about 45% -> unlike the training data, though 166 are assigned,
    # and fallback answers with the average
    expected = est.diagnostics["expected_assigned_share"]
    low = {**inputs, "thresholds": np.full(K, 0.99)}
    est = estimate_audience(probs, labels=LABELS, method="guarded", n_bootstrap=0, **low)
    assert est.flags == ("unlike_training",) and est.diagnostics["assigned"] >= 30
    assert est.diagnostics["assigned_share"] < 0.5 * est.diagnostics["expected_assigned_share"]
    assert est.diagnostics["expected_assigned_share"] == pytest.approx(expected, abs=0.01)
    fb = estimate_audience(probs, labels=LABELS, method="fallback", n_bootstrap=0, **low)
    assert fb.used == "average"
    np.testing.assert_allclose(fb.shares, probability_average(probs))
    assert set(FLAGS) == {"few_followers", "few_assigned", "unlike_training", "estimators_disagree"}
    assert (
        estimate_audience(
            probs, labels=LABELS, method="em", diagnose=False, n_bootstrap=0, **inputs
        ).flags
        == ()
    )


def test_model_error_intervals_cover_a_miscalibrated_head(inputs):
    # the head's log-odds for the largest classes are off by 0.3: follower resampling alone
    # cannot see that, intervals with the model's error do
    cover = {0.0: [], None: []}
    for s in range(4):
        truth = _mixture(s)
        probs, _ = _followers(truth, 1000, seed=s)
        probs = probs * np.exp(np.where(np.arange(K) < 3, 0.3, 0.0))
        probs /= probs.sum(1, keepdims=True)
        big = truth >= 0.01
        for me in cover:
            est = estimate_audience(
                probs,
                labels=LABELS,
                method="em",
                n_bootstrap=60,
                seed=s,
                model_error=me,
                diagnose=False,
                **inputs,
            )
            cover[me].append(np.mean(((est.lower <= truth) & (truth <= est.upper))[big]))
            assert est.interval == ("followers" if me == 0.0 else "followers+model")
            assert np.all(est.lower <= est.shares) and np.all(est.shares <= est.upper)
    assert np.mean(cover[None]) >= 0.9 > np.mean(cover[0.0]), cover


def test_every_method_runs_with_head_inputs_and_serialises(inputs, tmp_path):
    probs, _ = _followers(_mixture(5), 300, seed=5)
    for m in METHODS:
        est = estimate_audience(probs, labels=LABELS, method=m, n_bootstrap=5, **inputs)
        assert est.shares.sum() == pytest.approx(1.0) and np.all(est.shares >= -1e-12), m
        d = json.loads(json.dumps(est.to_dict()))
        assert d["method"] == m and d["used"] in METHODS and isinstance(d["flags"], list)
    est = estimate_audience(probs[:40], labels=LABELS, method="guarded", n_bootstrap=5, **inputs)
    png = plot_audience(est, tmp_path / "flagged.png")
    assert est.flags and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_head_audience_inputs_reads_the_calibration_record():
    head = SimpleNamespace(
        labels=("A", "B"),
        thresholds_=np.array([0.7, np.inf]),
        calibration_={
            "effective_prior": {"A": 0.25, "B": 0.75},
            "confusion_counts": [[8, 2], [1, 29]],
            "n_val": 40,
            "per_class": {
                "A": {"assigned": 6, "correct": 6, "support": 10},
                "B": {"assigned": 0, "correct": 0, "support": 30},
            },
        },
    )

    got = head_audience_inputs(head)
    np.testing.assert_allclose(got["prior"], [0.25, 0.75])
    np.testing.assert_allclose(got["confusion"], [[8, 2], [1, 29]])
    assert got["val_assigned_share"] == pytest.approx(6 / 40)
    np.testing.assert_allclose(got["recall_counts"], [[6, 10], [0, 30]])
    head.calibration_ = {}
    bare = head_audience_inputs(head)
    assert bare["confusion"] is None and bare["recall_counts"] is None
    assert bare["val_assigned_share"] is None


def test_input_errors_name_the_field_and_what_is_allowed(inputs):
    p = np.full((3, K), 1 / K)
    for m in METHODS:
        for need in NEEDS[m]:
            kw = {**inputs, need: None}
            with pytest.raises(InvalidInputError, match=rf"method '{m}' needs .*{need}="):
                estimate_audience(p, labels=LABELS, method=m, **kw)
    with pytest.raises(InvalidInputError, match=r"recall_counts must have shape \(12, 2\)"):
        estimate_audience(p, labels=LABELS, method="guarded", **{**inputs, "recall_counts": [1]})
    with pytest.raises(InvalidInputError, match=r"confusion must have shape \(12, 12\)"):
        estimate_audience(p, labels=LABELS, method="acc", confusion=np.eye(3))
    with pytest.raises(InvalidInputError, match=r"model_error must be in \[0, 2\], got -1"):
        estimate_audience(p, labels=LABELS, method="average", model_error=-1)


def test_interval_is_never_narrower_than_the_binomial_sampling_interval():
    # label 1 never gets any probability: every bootstrap replicate says 0, yet 200 followers
    # drawn from an audience cannot rule out a share of ~1.9% (Wilson, 97.5% one-sided)
    probs = np.zeros((200, K))
    probs[:, 0] = 1.0
    est = estimate_audience(
        probs, labels=LABELS, method="average", n_bootstrap=20, model_error=0, diagnose=False
    )
    z2 = 1.959963984540054**2
    assert est.lower[1] == 0.0 and est.upper[1] == pytest.approx(z2 / (200 + z2))
    assert est.upper[0] == 1.0 and est.lower[0] == pytest.approx(200 / (200 + z2))


def test_labels_without_calibration_rows_are_not_reweighted_by_em():
    # A head calibrated on labels 0-2 only: labels 3 and 4 have empty confusion rows and a prior
    # fitted to nothing (1e-8), and their posteriors sit a little above it on every follower.
    from heads.audience_estimators import calibrated_labels

    rng = np.random.default_rng(0)
    k, n = 5, 1000
    y = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    probs = np.full((n, k), 1.5e-8)
    probs[np.arange(n), y] = 0.8
    for c in range(3):
        probs[y != c, c] = 0.1
    probs /= probs.sum(axis=1, keepdims=True)
    prior = np.array([0.5, 0.3, 0.2, 1e-8, 1e-8])
    prior /= prior.sum()
    confusion = np.zeros((k, k))
    confusion[:3, :3] = np.diag([50.0, 30.0, 20.0]) + 2.0
    assert calibrated_labels(confusion).tolist() == [True, True, True, False, False]
    # What EM gives on the three calibrated labels alone (the unseen ones dropped).
    seen = probs[:, :3] / probs[:, :3].sum(axis=1, keepdims=True)
    alone, _ = em_prior_shift(seen, prior[:3] / prior[:3].sum())

    # Re-weighted like the others, the two unseen labels grow by ~1.5x a step into most of it.
    drifted, _ = em_prior_shift(probs, prior)
    assert drifted[3:].sum() > 0.5
    for method in ("em", "map", "ensemble", "guarded"):
        est = estimate_audience(
            probs, labels=LABELS[:k], method=method, prior=prior, confusion=confusion,
            n_bootstrap=0,
        )  # fmt: skip
        assert est.shares[3:].sum() < 1e-6, method
        if method == "em":
            np.testing.assert_allclose(est.shares[:3], alone, atol=1e-4)


def test_ensemble_intervals_hold_both_consistent_members(inputs):
    # a large audience from a head whose log-odds for the largest classes are off: the median's
    # bootstrap is as narrow as 10,000 followers make it, while EM and ACC, both unbiased only
    # for a calibrated head, land apart; the interval must hold both
    truth = _mixture(8)  # an audience where, without the widening, 3 labels' intervals miss one
    probs, _ = _followers(truth, 10000, seed=8)
    probs = probs * np.exp(np.where(np.arange(K) < 3, 0.3, 0.0))
    probs /= probs.sum(1, keepdims=True)
    est = estimate_audience(
        probs, labels=LABELS, method="ensemble", n_bootstrap=30, diagnose=False, **inputs
    )
    members = [
        estimate_audience(probs, labels=LABELS, method=m, n_bootstrap=0, **inputs).shares
        for m in ("em", "acc")
    ]
    assert est.interval == "followers+model+members"
    assert np.all(est.lower <= np.minimum(*members) + 1e-12)
    assert np.all(est.upper >= np.maximum(*members) - 1e-12)
    assert np.all(est.lower <= est.shares) and np.all(est.shares <= est.upper)
    # the point estimate is the median's, unchanged by the wider interval
    point = estimate_audience(probs, labels=LABELS, method="ensemble", n_bootstrap=0, **inputs)
    np.testing.assert_allclose(est.shares, point.shares)
