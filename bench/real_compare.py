"""Two runs of the real-data suite side by side: is B better than A, or within the noise?

    python bench/real_compare.py runs/real-eval-A/metrics.json runs/real-eval-B/metrics.json \
        [--names "v3" "v4"] [--docs docs/X.md --marker NAME]

Each ``metrics.json`` comes from ``bench/real_eval.py`` (which keeps every row's label, argmax and
whether the head assigned it). For every set both runs scored on the same rows (same ids, labels
and text: the runs' ``rows_digest`` must match), prints B minus A in accuracy, macro-F1 (over the
labels present in the set) and own-label precision, with 95% paired bootstrap intervals
(``heads.evaluation.intervals``: each replicate draws the same profiles for both runs). Two
models that agree on most rows can then be told apart at differences far below the separate
intervals' width, and a difference whose interval holds 0 is a tie on that set.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.real_eval import num, points, write_docs  # noqa: E402
from embedder.labels import GEO_LABELS  # noqa: E402
from heads.evaluation.intervals import (  # noqa: E402
    N_BOOTSTRAP,
    paired_differences,
    whole_set_figures,
)

#: What a run must hold per set to be compared row by row.
ROW_FIELDS = ("rows_digest", "y", "pred", "assigned")


class CompareError(Exception):
    """A run that cannot be compared: the message names the file, the set and the field."""


def load_run(path: Path) -> dict[str, Any]:
    """The sets of one ``metrics.json``, each checked for the per-row fields."""
    try:
        report = json.loads(path.read_text())
    except OSError as err:
        raise CompareError(f"{path}: cannot read: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise CompareError(f"{path}: not JSON (line {err.lineno}): {err.msg}") from err
    sets = report.get("sets") if isinstance(report, dict) else None
    if not isinstance(sets, dict) or not sets:
        raise CompareError(f"{path}: no 'sets' (expected the metrics.json of bench/real_eval.py)")
    for name, res in sets.items():
        missing = [f for f in ROW_FIELDS if f not in res]
        if missing:
            raise CompareError(
                f"{path}: set {name!r} lacks {', '.join(missing)}: it was written before "
                "real_eval kept per-row predictions; run bench/real_eval.py again"
            )
    return report


def compare_runs(
    a: dict[str, Any], b: dict[str, Any], *, n_bootstrap: int = N_BOOTSTRAP
) -> dict[str, Any]:
    """B minus A per set both runs scored on the same rows; other sets are listed as skipped.

    Raises:
        CompareError: a set of the same name scored on other rows.
    """
    out: dict[str, Any] = {"sets": {}, "only_in_a": [], "only_in_b": []}
    out["only_in_a"] = sorted(set(a["sets"]) - set(b["sets"]))
    out["only_in_b"] = sorted(set(b["sets"]) - set(a["sets"]))
    for name in [n for n in a["sets"] if n in b["sets"]]:
        ra, rb = a["sets"][name], b["sets"][name]
        if ra["rows_digest"] != rb["rows_digest"]:
            raise CompareError(
                f"set {name!r}: the two runs scored different rows (rows_digest "
                f"{ra['rows_digest'][:12]} vs {rb['rows_digest'][:12]}); compare runs on the same "
                "files and --max-rows"
            )
        y = np.asarray(ra["y"], dtype=np.int64)
        pred_a, pred_b = np.asarray(ra["pred"]), np.asarray(rb["pred"])
        given_a = np.asarray(ra["assigned"], dtype=bool)
        given_b = np.asarray(rb["assigned"], dtype=bool)
        diff = paired_differences(
            y,
            pred_b,
            pred_a,
            k=len(GEO_LABELS),
            classes=np.unique(y),
            assigned=(given_b, given_a),
            n_bootstrap=n_bootstrap,
        )
        out["sets"][name] = {
            "n": len(y),
            "a": _figures(y, pred_a, given_a),
            "b": _figures(y, pred_b, given_b),
            "agree": float((pred_a == pred_b).mean()),
            "b_minus_a": diff,
        }
    return out


def _figures(y: np.ndarray, pred: np.ndarray, given: np.ndarray) -> dict[str, Any]:
    """Accuracy and macro-F1 (over the labels present), coverage and own-label precision."""
    figures = whole_set_figures(y, pred, k=len(GEO_LABELS), classes=np.unique(y))
    return {
        **figures,
        "coverage": float(given.mean()),
        "own_label_precision": float((pred == y)[given].mean()) if given.any() else None,
    }


def render(result: dict[str, Any], names: tuple[str, str], command: str) -> str:
    """A Markdown table: each set's figures for A and B, and B - A in points with intervals."""
    a, b = names
    lines = [
        f"Compared {date.today().isoformat()} with `{command}`: `{b}` minus `{a}` in points, 95% "
        "paired bootstrap intervals (the same profiles drawn for both); an interval that holds 0 "
        "is a tie on that set.",
        "",
        f"| set | n | rows with the same argmax | accuracy {a} / {b} | {b} - {a} | "
        f"macro-F1 {a} / {b} | {b} - {a} | own-label precision (coverage) {a} / {b} | "
        f"{b} - {a} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["sets"].items():
        fa, fb, d = r["a"], r["b"], r["b_minus_a"]
        own = [f"{num(f['own_label_precision'])} ({100 * f['coverage']:.1f}%)" for f in (fa, fb)]
        lines.append(
            f"| {name} | {r['n']} | {100 * r['agree']:.1f}% | "
            f"{num(fa['accuracy'])} / {num(fb['accuracy'])} | {points(d['accuracy'])} | "
            f"{num(fa['macro_f1'])} / {num(fb['macro_f1'])} | {points(d['macro_f1'])} | "
            f"{own[0]} / {own[1]} | {points(d['selective_accuracy'])} |"
        )
    for side, key in ((a, "only_in_a"), (b, "only_in_b")):
        if result[key]:
            lines += ["", f"Only in `{side}` (not compared): {', '.join(result[key])}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="metrics.json of the baseline run")
    parser.add_argument("b", type=Path, help="metrics.json of the run compared with it")
    parser.add_argument("--names", nargs=2, default=None, metavar=("A", "B"))
    parser.add_argument("--n-bootstrap", type=int, default=N_BOOTSTRAP)
    parser.add_argument("--docs", type=Path, default=None, help="write the table into this file")
    parser.add_argument("--marker", default="real-compare", help="the docs markers' name")
    args = parser.parse_args(argv)
    if args.n_bootstrap < 1:
        print(f"error: --n-bootstrap must be >= 1, got {args.n_bootstrap}", file=sys.stderr)
        return 2
    try:
        result = compare_runs(load_run(args.a), load_run(args.b), n_bootstrap=args.n_bootstrap)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = tuple(args.names) if args.names else (args.a.parent.name, args.b.parent.name)
    command = "python bench/real_compare.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])
    )
    text = render(result, names, command)  # type: ignore[arg-type]
    if args.docs is not None:
        write_docs(args.docs, text, marker=args.marker)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
