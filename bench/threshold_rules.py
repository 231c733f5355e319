"""Do the per-class thresholds chosen on validation hold 90% precision on test? Compare rules.

Embeds a validation and a test file with a model, selects per-class thresholds on validation with
each rule of ``heads.calibration.select_thresholds`` and reports, on test, what each rule assigns,
at what precision, and which classes fall below the target::

    D=data/sim-46000-5000-seed0
    .venv/bin/python bench/threshold_rules.py --val $D/val.first8000.jsonl --test $D/test.jsonl

Rules: ``labels`` (the lowest threshold whose Wilson 95% lower bound on validation precision is
>= target) and ``labels+confidence`` (also the assigned rows' mean calibrated probability >= target,
the shipped rule). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.data import read_profiles
from heads.calibration import select_thresholds
from heads.model import ProfileModel
from heads.training.data import HEAD_TASKS

RULES = {"labels": False, "labels+confidence": True}


def probabilities(model: ProfileModel, head: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and true class indices of one labelled file."""
    rows = read_profiles(path).rows
    labels = list(model.head(head).labels)
    field = HEAD_TASKS[head].field
    y = np.array([labels.index(r.labels[field]) for r in rows])
    probs = model.predict_proba([r.profile for r in rows], heads=[head])[head]
    return probs, y


def on_test(thresholds: np.ndarray, probs: np.ndarray, y: np.ndarray, labels, target: float):
    pred = probs.argmax(axis=1)
    score = probs[np.arange(len(probs)), pred]
    assigned = score >= thresholds[pred]
    per_class = {}
    for c, name in enumerate(labels):
        m = assigned & (pred == c)
        if m.any():
            per_class[name] = {"assigned": int(m.sum()), "precision": float((y[m] == c).mean())}
    correct = assigned & (pred == y)
    return {
        "coverage": float(assigned.mean()),
        "precision": float(correct.sum() / max(assigned.sum(), 1)),
        "correct_assigned_share": float(correct.mean()),
        "classes_assigning": len(per_class),
        "below_target": {k: v for k, v in per_class.items() if v["precision"] < target},
        "per_class": per_class,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--val", required=True, type=Path)
    ap.add_argument("--test", required=True, type=Path)
    ap.add_argument("--head", default="geolocation")
    ap.add_argument("--target", type=float, default=0.9)
    args = ap.parse_args()
    model = ProfileModel.load(args.model, heads=[args.head])
    labels = model.head(args.head).labels
    val_p, val_y = probabilities(model, args.head, args.val)
    test_p, test_y = probabilities(model, args.head, args.test)
    out = {"model": str(args.model), "n_val": len(val_y), "n_test": len(test_y), "rules": {}}
    for rule, check in RULES.items():
        sel = select_thresholds(
            val_p, val_y, target=args.target, labels=labels, confidence_check=check
        )
        out["rules"][rule] = on_test(sel.thresholds, test_p, test_y, labels, args.target)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
