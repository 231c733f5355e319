"""The language-agreement abstention rule, scored from a real-eval run's per-row fields.

    python bench/language_rule.py RUN/metrics.json --data REAL/ --floors 0.02,0.05,0.1

``bench/real_eval.py`` keeps each row's label, argmax and whether the model assigned it. This
rule withdraws an assigned label when the predicted country is implausible for the text's language
(py3langid x CLDR, ``P(country | text's language) < floor``, the anchor of real_eval), and prints
each set's coverage and own-label precision (with Wilson's 95% interval) before and after, without
embedding anything again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from real_eval import LanguageIdBaseline, load_sets  # noqa: E402

from heads.evaluation.intervals import wilson_interval  # noqa: E402


def _cell(assigned: np.ndarray, right: np.ndarray) -> str:
    n, c = int(assigned.sum()), int((assigned & right).sum())
    if n == 0:
        return "0.0% / -"
    lo, hi = wilson_interval(c, n)
    return f"{n / len(assigned):.1%} / {c / n:.3f} ({lo:.3f}-{hi:.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, help="a real_eval run's metrics.json")
    parser.add_argument("--data", type=Path, required=True, help="the folder that run scored")
    parser.add_argument("--floors", default="0.02,0.05,0.1")
    parser.add_argument("--max-rows", type=int, default=5000, help="as the run was given")
    args = parser.parse_args(argv)
    try:
        floors = [float(f) for f in args.floors.split(",") if f.strip()]
    except ValueError:
        print(
            f"error: --floors: expected numbers separated by commas, got {args.floors!r}",
            file=sys.stderr,
        )
        return 2
    try:
        runs = json.loads(args.metrics.read_text())["sets"]
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {args.metrics}: not a real_eval metrics.json ({err})", file=sys.stderr)
        return 2
    langid = LanguageIdBaseline()
    header = ["set", "n", "shipped"] + [f"+language {f:g}" for f in floors]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for rs in load_sets(args.data, max_rows=args.max_rows):
        run = runs.get(rs.name)
        if run is None or "pred" not in run or not np.array_equal(run["y"], rs.y):
            print(
                f"error: {args.metrics}: set {rs.name}: no per-row fields for these rows",
                file=sys.stderr,
            )
            return 2
        pred = np.asarray(run["pred"])
        assigned = np.asarray(run["assigned"]).astype(bool)
        right = pred == rs.y
        lang = langid.predict_proba(rs.texts)[np.arange(len(pred)), pred]
        cells = [_cell(assigned, right)] + [_cell(assigned & (lang >= f), right) for f in floors]
        print(f"| {rs.name} | {len(pred)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
