"""Consistent audience estimators on real populations, with the head calibrated on real labels.

    python bench/audience_after_calibrate.py --model models/default --data <real folder> \\
        [--cache FILE]

``bench/real_eval.py``'s "Audience error after ``profile-embed calibrate``" setting: the head is
re-calibrated (class biases on) on half A of each real set, and populations of 1,000 followers are
drawn from half B at known shares. Half A and half B are the same source, so the populations
differ from the calibration rows by their label mix only (pure label shift), the case where
adjusted classify-and-count (ACC), its probabilistic form (PACC: mean posteriors per true class
instead of argmax counts) and EM are consistent. ``raw-em`` re-weights every label (the ``em`` of
``heads.audience`` before labels without calibration rows were held, ``calibrated_labels``);
``acc>=m``, ``pacc>=m`` and ``em>=m`` are restricted to the labels with at least ``m``
calibration rows (the others get share 0). Beside them, ``heads.audience``'s own estimators (point
estimates, the head's calibration record as inputs). One line per set (its half-B accuracy) and
per population, then the mean total variation of each estimator over all of them.

``--head new`` replaces the re-calibrated shipped head by a new linear head on the same frozen
embeddings fitted on half A as ``profile-embed train-head --cross-fit 5 --class-bias`` fits it (no
class weighting; temperature, biases and thresholds on its out-of-fold rows): what a user with real
labels can train, and how far the estimators get when the head separates the countries better.
Its out-of-fold rows are not exposed, so only ``heads.audience``'s estimators run for it.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def _simplex_nnls(rows: np.ndarray, target: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Shares ``pi >= 0``, summing to 1 (a heavily weighted row), with ``rows[keep]^T pi ~ target``.

    Labels outside ``keep`` get share 0.
    """
    from scipy.optimize import nnls

    a = np.vstack([rows[keep].T, 100.0 * np.ones(int(keep.sum()))])
    pi, _ = nnls(a, np.concatenate([target, [100.0]]))
    out = np.zeros(len(rows))
    out[keep] = pi / pi.sum()
    return out


def _em_on(probs: np.ndarray, prior: np.ndarray, keep: np.ndarray) -> np.ndarray:
    from heads.audience_estimators import em_prior_shift

    p = probs * keep
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    pr = np.where(keep, prior, 0.0)
    return em_prior_shift(p, np.maximum(pr / pr.sum(), 1e-12))[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/default")
    p.add_argument("--data", required=True, help="folder of labelled real sets (.jsonl)")
    p.add_argument("--cache", default=None, help="embedding cache file (default: none)")
    p.add_argument("--min-rows", default="1,10,30", help="comma-separated m (calibration rows)")
    p.add_argument(
        "--head",
        choices=("calibrated", "new"),
        default="calibrated",
        help="the shipped head re-calibrated on half A, or a new head fitted on half A",
    )
    args = p.parse_args(argv)
    min_rows = [int(v) for v in args.min_rows.split(",")]

    from real_eval import halves, load_sets, mean_interval, populations

    from heads.audience import estimate_audience, head_audience_inputs
    from heads.audience_estimators import (
        argmax_shares,
        confusion_rates,
        em_prior_shift,
        probability_average,
        total_variation,
    )
    from heads.model import ProfileModel
    from heads.softmax import SoftmaxAbstainHead
    from heads.training.head import cached_embeddings

    model = ProfileModel.load(Path(args.model), heads=["geolocation"])
    head = model.head("geolocation")
    k = len(head.labels)
    tvs: dict[str, list[float]] = {}
    for rs in load_sets(Path(args.data)):
        (x,), _ = cached_embeddings(model.encoder, [[r.profile for r in rs.rows]], args.cache)
        a = halves(rs)
        if args.head == "calibrated":
            scored = copy.deepcopy(head)
            scored.calibrate(x[a], rs.y[a], missing_classes="abstain", class_bias=True)
        else:
            scored = SoftmaxAbstainHead.from_config(
                {"name": "geolocation", "embedding_version": "new", "in_dim": x.shape[1]},
                list(head.labels),
            )
            scored.fit(
                x[a], rs.y[a], class_weight=None, cross_fit=5, class_bias=True,
                missing_classes="abstain",
            )  # fmt: skip
        inputs = head_audience_inputs(scored)
        pb, yb = scored.predict_proba(x[~a]), rs.y[~a]
        # The consistent estimators' inputs, from the calibration record (confusion and prior of
        # half A) and half A's mean posteriors per true label. A new head's calibration rows are
        # out-of-fold predictions, not at hand here: only heads.audience's estimators run for it.
        if args.head == "calibrated":
            confusion, prior = inputs["confusion"], inputs["prior"]
            support = confusion.sum(axis=1)
            pa, ya = scored.predict_proba(x[a]), rs.y[a]
            soft = np.array(
                [pa[ya == c].mean(axis=0) if support[c] else np.eye(k)[c] for c in range(k)]
            )
        print(f"{rs.name}: half-B accuracy {(pb.argmax(axis=1) == yb).mean():.3f}", flush=True)
        for pop, idx in populations(yb, seed=0).items():
            truth = np.bincount(yb[idx], minlength=k) / len(idx)
            probs = pb[idx]
            est = {
                method: estimate_audience(
                    probs, labels=list(scored.labels), method=method, n_bootstrap=0, **inputs
                ).shares
                for method in ("average", "acc", "em", "guarded", "ensemble")
            }
            if args.head == "calibrated":
                for m in min_rows:
                    keep = support >= m
                    est[f"acc>={m}"] = _simplex_nnls(
                        confusion_rates(confusion), argmax_shares(probs), keep
                    )
                    est[f"pacc>={m}"] = _simplex_nnls(soft, probability_average(probs), keep)
                    est[f"em>={m}"] = _em_on(probs, prior, keep)
                est["raw-em"] = em_prior_shift(probs, prior)[0]
            cells = []
            for name, shares in est.items():
                tv = total_variation(shares, truth)
                tvs.setdefault(name, []).append(tv)
                cells.append(f"{name} {tv:.2f}")
            print(f"{rs.name} {pop}: " + ", ".join(cells), flush=True)
    print("mean total variation: " + ", ".join(f"{n} {np.mean(v):.3f}" for n, v in tvs.items()))
    # How far each mean could move with other populations of the same sets: a bootstrap over
    # the populations (a dozen, so a wide interval), and how many are within the 0.15 target.
    rng = np.random.default_rng(0)
    spans = []
    for name, values in tvs.items():
        v = np.asarray(values)
        lo, hi = mean_interval(v, rng)
        spans.append(f"{name} {lo:.3f}-{hi:.3f} ({int((v <= 0.15).sum())}/{len(v)} <= 0.15)")
    print("95% interval of the mean (populations resampled): " + ", ".join(spans))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
