"""The real-data evaluation suite (issue 15): the model on real labelled profiles, beside anchors.

    python bench/real_eval.py --model models/default --data REAL/ --out runs/real-eval \
        --docs docs/REAL_DATA.md                # = make real-eval REAL=REAL/

``REAL/`` holds labelled JSONL files in the project schema (``bench/real_sources.py`` converts the
public sets; any user's own labelled profiles work too). Per set, in one run:

- the model's geolocation head as shipped: accuracy, macro-F1, coverage and precision of its *own*
  assigned labels (the 90% promise), the share of all profiles assigned their correct country,
  per-class figures, a reliability diagram and the confusion pairs that cost most;
- the same head re-calibrated (``profile-embed calibrate``'s code path) on one half of the set and
  scored on the other half, beside the shipped head on that same half;
- two anchors computed here: a no-learning language-id baseline (py3langid x CLDR language shares
  of each country x the head's country prior) and an in-domain character n-gram TF-IDF + logistic
  regression (5-fold, out-of-fold predictions); and a linear head on the frozen embeddings fitted
  like ``train-head`` (5-fold), to show what the embedding carries;
- audience error: populations of followers drawn from the set's real labelled profiles at known
  shares, each estimator of ``heads.audience.METHODS``: total variation, largest per-country error
  and the coverage of its 95% intervals.

Writes ``OUT/metrics.json``, ``OUT/REPORT.md`` and PNGs, and (``--docs``) the summary tables into
``docs/REAL_DATA.md`` between markers, with the command and the date.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.baselines import profile_text  # noqa: E402
from embedder.data import LabelledProfile, read_profiles  # noqa: E402
from embedder.labels import GEO_LABELS  # noqa: E402
from heads.language_evidence import label_given_language  # noqa: E402

logger = logging.getLogger("bench.real_eval")

#: Followers per audience population, and the smallest true share whose interval is scored.
AUDIENCE_SIZE = 1000
MIN_SCORED_SHARE = 0.01


# --------------------------------------------------------------------------------------- data
@dataclass
class RealSet:
    """One labelled real set: its rows, geolocation targets (index into GEO_LABELS), texts."""

    name: str
    path: Path
    rows: list[LabelledProfile]
    y: np.ndarray

    @cached_property
    def texts(self) -> list[str]:
        """What a reader sees of each profile (the anchors' input)."""
        return [profile_text(r.profile) for r in self.rows]

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the rows (ids, labels, text): two runs scored the same profiles iff equal."""
        h = hashlib.sha256()
        for r, text in zip(self.rows, self.texts, strict=True):
            h.update(f"{r.profile.id}\t{r.labels['country']}\t{text}\n".encode())
        return h.hexdigest()


def _key(text: str, salt: str = "") -> int:
    return int.from_bytes(hashlib.sha256((salt + text).encode()).digest()[:8], "big")


def load_sets(folder: Path, *, max_rows: int = 5000) -> list[RealSet]:
    """Every ``*.jsonl`` / ``*.csv`` / ``*.parquet`` of a folder with country labels.

    A set larger than ``max_rows`` keeps the rows with the smallest id hashes (stable: adding rows
    to a file changes the sample only where the new rows land).
    """
    files = sorted(p for p in folder.iterdir() if p.suffix in {".jsonl", ".csv", ".parquet"})
    if not files:
        raise SystemExit(f"error: {folder}: no .jsonl/.csv/.parquet files")
    index = {lab: i for i, lab in enumerate(GEO_LABELS)}
    out = []
    for path in files:
        rows = [r for r in read_profiles(path, require=("country",)).rows]
        if len(rows) > max_rows:
            rows = sorted(rows, key=lambda r: _key(r.profile.id))[:max_rows]
            rows.sort(key=lambda r: r.profile.id)
        y = np.array([index[r.labels["country"]] for r in rows], dtype=np.int64)
        out.append(RealSet(path.stem, path, rows, y))
    return out


def halves(rs: RealSet) -> np.ndarray:
    """A stable 50/50 split by id hash: True = calibration half A."""
    return np.array([_key(r.profile.id, "calib") % 2 == 0 for r in rs.rows])


# ------------------------------------------------------------------------------------ anchors
class LanguageIdBaseline:
    """No learning: P(country | text) = sum over languages of P(lang | text) P(country | lang).

    P(lang | text) is py3langid's normalised ranking (its own model, shipped in the package);
    P(country | lang) is Bayes over CLDR's language shares of every country's population (babel)
    and the country prior (the 36 targets' shares, OTHER spread over the world's countries by
    population, as the simulator does).
    """

    #: py3langid codes that CLDR writes otherwise.
    ALIAS: ClassVar[dict[str, str]] = {
        "fil": "tl",
        "nb": "no",
        "nn": "no",
        "iw": "he",
        "in": "id",
        "zsm": "ms",
    }

    def __init__(self, prior_percent: dict[str, float] | None = None) -> None:
        from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

        self.ident = LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)
        # py3langid lists a language twice ("sr" in two scripts): each class keeps its own row
        self.p_label_given_lang, self.prior = label_given_language(
            list(self.ident.nb_classes),
            GEO_LABELS,
            alias=self.ALIAS,
            prior_percent=prior_percent,
            share_of="given",
        )

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(GEO_LABELS)))
        names: dict[str, int] = {}
        for j, lab in enumerate(self.ident.nb_classes):
            names.setdefault(lab, j)
        for i, text in enumerate(texts):
            p_lang = np.zeros(len(self.ident.nb_classes))
            for lang, p in self.ident.rank(text):
                p_lang[names[lang]] += p
            out[i] = p_lang @ self.p_label_given_lang
        return out / out.sum(axis=1, keepdims=True)


def _folds(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % k


def tfidf_lr_oof(texts: Sequence[str], y: np.ndarray, *, folds: int = 5) -> np.ndarray:
    """Out-of-fold class probabilities (columns = GEO_LABELS) of char n-gram TF-IDF + LR."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    out = np.zeros((len(texts), len(GEO_LABELS)))
    fold = _folds(len(texts), folds)
    texts = list(texts)
    for f in range(folds):
        tr, te = fold != f, fold == f
        vec = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True, max_features=300000
        )
        xtr = vec.fit_transform([t for t, m in zip(texts, tr, strict=True) if m])
        xte = vec.transform([t for t, m in zip(texts, te, strict=True) if m])
        classes = np.unique(y[tr])
        if len(classes) < 2:
            out[np.ix_(te, classes)] = 1.0
            continue
        lr = LogisticRegression(C=10.0, max_iter=2000)
        lr.fit(xtr, y[tr])
        out[np.ix_(te, lr.classes_)] = lr.predict_proba(xte)
    return out


def frozen_head_oof(x: np.ndarray, y: np.ndarray, *, folds: int = 5) -> np.ndarray:
    """Out-of-fold probabilities of a linear head on frozen embeddings, fitted like train-head."""
    from heads.softmax import SoftmaxAbstainHead

    out = np.zeros((len(x), len(GEO_LABELS)))
    fold = _folds(len(x), folds)
    for f in range(folds):
        tr, te = fold != f, fold == f
        if len(np.unique(y[tr])) < 2:
            continue
        head = SoftmaxAbstainHead.from_config(
            {"name": "geolocation", "embedding_version": "oof", "in_dim": x.shape[1]}, GEO_LABELS
        )
        head.fit(x[tr], y[tr], calibrate=False, class_weight=None)
        out[te] = head.predict_proba(x[te])
    return out


# ------------------------------------------------------------------------------------- scoring
#: Labelled rows of the smallest re-calibration (a random sample of half A, by id hash).
FEW_LABELS = 100


def summarise(
    probs: np.ndarray,
    y: np.ndarray,
    thresholds: np.ndarray | None,
    in_distribution: np.ndarray | None = None,
) -> dict[str, Any]:
    """The headline figures (heads.evaluation's definitions) plus the costliest confusions."""
    from heads.evaluation.intervals import wilson_interval
    from heads.evaluation.metrics import assigned_rows, evaluate

    # no bootstrap here: the one interval a summary keeps is Wilson's, from two counts
    ev = evaluate(
        probs, y, GEO_LABELS, thresholds=thresholds, in_distribution=in_distribution, n_bootstrap=0
    )
    m = ev.metrics
    arg = probs.argmax(1)
    own_interval = None
    if thresholds is not None:
        given = assigned_rows(probs, thresholds, in_distribution)
        own_interval = wilson_interval(int(((arg == y) & given).sum()), int(given.sum()))
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(y.tolist(), arg.tolist(), strict=True):
        if t != p:
            pairs[(t, p)] = pairs.get((t, p), 0) + 1
    top = sorted(pairs.items(), key=lambda kv: -kv[1])[:8]
    present = sorted({int(c) for c in y})
    f1_present = [m["per_class"][GEO_LABELS[c]]["f1"] or 0.0 for c in present]
    return {
        "n": m["n"],
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "macro_f1_present": float(np.mean(f1_present)),
        "coverage": m["coverage"] if thresholds is not None else None,
        "own_label_precision": m["selective_accuracy"] if thresholds is not None else None,
        # 95% Wilson interval; None without assigned labels
        "own_label_precision_interval": own_interval,
        "correct_assigned_share": m["correct_assigned_share"] if thresholds is not None else None,
        "ece": m["ece"],
        "out_of_distribution": m.get("out_of_distribution"),
        "assigning_classes": sum(1 for r in m["per_class"].values() if r["assigned"])
        if thresholds is not None
        else None,
        "confusions": [
            {"true": GEO_LABELS[t], "predicted": GEO_LABELS[p], "n": n} for (t, p), n in top
        ],
        "_evaluation": ev,
    }


def populations(
    y: np.ndarray, *, size: int = AUDIENCE_SIZE, seed: int = 0
) -> dict[str, np.ndarray]:
    """Follower samples (row indices) at known shares: natural, top-heavy, Dirichlet, pair."""
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(y, return_counts=True)
    by = {int(c): np.flatnonzero(y == c) for c in labels}
    order = labels[np.argsort(-counts, kind="stable")]

    def draw(shares: dict[int, float]) -> np.ndarray:
        n = rng.multinomial(size, np.array(list(shares.values())))
        return np.concatenate(
            [rng.choice(by[c], k, replace=True) for c, k in zip(shares, n, strict=True) if k]
        )

    natural = {int(c): k / counts.sum() for c, k in zip(labels, counts, strict=True)}
    rest = {c: s for c, s in natural.items() if c != int(order[0])}
    z = sum(rest.values()) or 1.0
    top_heavy = {int(order[0]): 0.7, **{c: 0.3 * s / z for c, s in rest.items()}}
    big = [int(c) for c, k in zip(labels, counts, strict=True) if k >= 20] or [int(order[0])]
    dirichlet = dict(zip(big, rng.dirichlet(np.full(len(big), 0.5)), strict=True))
    pair = {int(order[0]): 0.5, int(order[min(1, len(order) - 1)]): 0.5}
    if len(order) < 2:
        pair = {int(order[0]): 1.0}
    return {
        "natural": draw(natural),
        "top-heavy": draw(top_heavy),
        "dirichlet": draw(dirichlet),
        "pair": draw(pair),
    }


def audience_errors(
    probs: np.ndarray, y: np.ndarray, head: Any, *, n_bootstrap: int = 100, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per population and estimator: total variation, max abs error, 95% interval coverage."""
    from heads.audience import DEFAULT_METHOD, METHODS, estimate_audience, head_audience_inputs

    inputs = head_audience_inputs(head)
    out: dict[str, dict[str, Any]] = {}
    for pop, idx in populations(y, seed=seed).items():
        truth = np.bincount(y[idx], minlength=len(GEO_LABELS)) / len(idx)
        row: dict[str, Any] = {"n": len(idx), "true_top": _top_shares(truth)}
        for method in METHODS:
            try:
                est = estimate_audience(
                    probs[idx],
                    labels=GEO_LABELS,
                    method=method,  # type: ignore[arg-type]
                    n_bootstrap=n_bootstrap,
                    seed=seed,
                    **{k: v for k, v in inputs.items() if k in _params(estimate_audience)},
                )
            except Exception as err:  # a method that cannot run on this head says why
                row[method] = {"error": f"{type(err).__name__}: {err}"}
                continue
            scored = truth >= MIN_SCORED_SHARE
            inside = (est.lower[scored] - 1e-9 <= truth[scored]) & (
                truth[scored] <= est.upper[scored] + 1e-9
            )
            if method == DEFAULT_METHOD:  # what `profile-embed audience` would warn about
                row["flags"] = list(est.flags)
            row[method] = {
                "tv": float(0.5 * np.abs(est.shares - truth).sum()),
                "max_abs": float(np.abs(est.shares - truth).max()),
                "coverage": float(inside.mean()) if scored.any() else None,
                "est_top": _top_shares(est.shares),
            }
        out[pop] = row
    return out


def _params(fn: Any) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def _top_shares(shares: np.ndarray, k: int = 3) -> str:
    idx = np.argsort(-shares)[:k]
    return ", ".join(f"{GEO_LABELS[i]} {shares[i]:.2f}" for i in idx)


# ------------------------------------------------------------------------------------ the run
def evaluate_sets(
    model_dir: Path,
    sets: Sequence[RealSet],
    *,
    head_name: str = "geolocation",
    cache_path: str | None = None,
    n_bootstrap: int = 100,
    anchors: bool = True,
    anchor_cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Everything of the module docstring, per set, as a JSON-ready dict (+ private evaluations)."""
    from heads.evaluation.metrics import assigned_rows
    from heads.model import ProfileModel
    from heads.training.head import cached_embeddings

    model = ProfileModel.load(model_dir, heads=[head_name])
    head = model.head(head_name)
    langid = LanguageIdBaseline() if anchors else None
    anchor_cache = Path(anchor_cache_dir) if anchor_cache_dir else None
    results: dict[str, Any] = {}
    for rs in sets:
        t0 = time.perf_counter()
        (x,), _ = cached_embeddings(model.encoder, [[r.profile for r in rs.rows]], cache_path)
        probs = head.predict_proba(x)
        ind = head.in_distribution(x)
        res: dict[str, Any] = {
            "path": str(rs.path),
            "n": len(rs.rows),
            "countries": _label_mix(rs.y),
            "model": summarise(probs, rs.y, head.thresholds_, ind),
            # per row, for paired comparisons of two runs (bench/real_compare.py)
            "rows_digest": rs.digest,
            "y": rs.y.tolist(),
            "pred": probs.argmax(1).tolist(),
            "assigned": [int(v) for v in assigned_rows(probs, head.thresholds_, ind)],
        }
        # calibrate on half A (profile-embed calibrate's code path), score on half B
        a = halves(rs)
        if a.any() and (~a).any():
            res["half_b_shipped"] = summarise(
                probs[~a], rs.y[~a], head.thresholds_, None if ind is None else ind[~a]
            )
            in_a = np.flatnonzero(a)
            prior = (head.calibration_ or {}).get("effective_prior")
            if prior:  # only the label mix: posteriors re-weighted to half A's shares, no fit
                train = np.array([prior[lab] for lab in head.labels])
                mix = np.bincount(rs.y[a], minlength=len(head.labels)) + 0.5
                shifted = probs[~a] * (mix / mix.sum()) / train
                res["half_b_prior_swap"] = summarise(
                    shifted / shifted.sum(axis=1, keepdims=True), rs.y[~a], None
                )
            # a stable random sample (ids can be ordered by label, e.g. one source file each)
            few = in_a[np.argsort([_key(rs.rows[i].profile.id, "few") for i in in_a])][:FEW_LABELS]
            for key, rows, bias in (
                ("half_b_calibrated_t", in_a, False),
                ("half_b_calibrated", in_a, True),
                ("half_b_calibrated_few", np.sort(few), True),
            ):
                recal = copy.deepcopy(head)
                recal.calibrate(x[rows], rs.y[rows], missing_classes="abstain", class_bias=bias)
                pb = recal.predict_proba(x[~a])
                res[key] = summarise(pb, rs.y[~a], recal.thresholds_, recal.in_distribution(x[~a]))
                if key == "half_b_calibrated":
                    res["audience_calibrated"] = audience_errors(
                        pb, rs.y[~a], recal, n_bootstrap=n_bootstrap
                    )
        if anchors and langid is not None:
            res.update(_anchors(rs, x, langid, model.embedding_version, anchor_cache))
            res["versus"] = versus_anchors(probs.argmax(1), rs.y, res)
        res["audience"] = audience_errors(probs, rs.y, head, n_bootstrap=n_bootstrap)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        logger.info("%s: %d profiles in %.0f s", rs.name, len(rs.rows), res["seconds"])
        results[rs.name] = res
    return {
        "model": str(model_dir),
        "embedding_version": model.embedding_version,
        "head": head_name,
        "head_version": head.head_version,
        "sets": results,
    }


def _anchors(
    rs: RealSet, x: np.ndarray, langid: LanguageIdBaseline, version: str, cache: Path | None
) -> dict[str, Any]:
    """The anchors' summaries, read back from ``cache`` when the same rows were scored before.

    The key covers the rows (ids, labels and text) and, for the frozen head, the encoder version:
    the anchors are deterministic, and recomputing the 5-fold TF-IDF models takes minutes.
    """
    path = None
    if cache is not None:
        # v2: with each anchor's per-row argmax (``pred``), for the paired differences
        path = cache / f"anchors-v2-{rs.name}-{rs.digest[:16]}-{version}.json"
        if path.is_file():
            logger.info("%s: anchors read from %s", rs.name, path)
            return json.loads(path.read_text())
    probs = {
        "langid": langid.predict_proba(rs.texts),
        "tfidf_lr": tfidf_lr_oof(rs.texts, rs.y),
        "frozen_head": frozen_head_oof(x, rs.y),
    }
    out = {}
    for name, p in probs.items():
        summary = summarise(p, rs.y, None)
        out[name] = {k: v for k, v in summary.items() if not k.startswith("_")}
        out[name]["pred"] = p.argmax(1).tolist()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_json_ready(out)))
    return out


#: The anchors the model is compared with, in the tables' order.
ANCHORS = ("langid", "tfidf_lr", "frozen_head")


def versus_anchors(pred: np.ndarray, y: np.ndarray, res: dict[str, Any]) -> dict[str, Any]:
    """The model's 95% intervals, and its differences to each anchor with paired intervals.

    Macro-F1 is over the labels present in the set, as in the tables; each bootstrap replicate
    draws the same profiles for the model and the anchor.
    """
    from heads.evaluation.intervals import figure_intervals, paired_differences

    present = np.unique(y)
    k = len(GEO_LABELS)
    out: dict[str, Any] = {"model": figure_intervals(y, pred, k=k, classes=present)}
    for name in ANCHORS:
        other = (res.get(name) or {}).get("pred")
        if other is not None:
            out[name] = paired_differences(y, pred, np.asarray(other), k=k, classes=present)
    return out


def _label_mix(y: np.ndarray, k: int = 5) -> str:
    labels, counts = np.unique(y, return_counts=True)
    order = np.argsort(-counts)[:k]
    return ", ".join(f"{GEO_LABELS[labels[i]]} {counts[i]}" for i in order) + (
        f" (+{len(labels) - k} more)" if len(labels) > k else ""
    )


# ----------------------------------------------------------------------------------- rendering
def num(x: float | None, digits: int = 3) -> str:
    """A figure with ``digits`` decimals; ``-`` for a missing one (None or NaN)."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render_summary(report: dict[str, Any], command: str) -> str:
    """The markdown that goes between the markers of docs/REAL_DATA.md."""
    sets = report["sets"]
    lines = [
        f"Measured {date.today().isoformat()} with `{command}` on `{report['model']}` "
        f"(`{report['embedding_version']}`, {report['head']} v{report['head_version']}).",
        "",
        "**Accuracy** (argmax, every profile) beside the two anchors and a linear head on the "
        "frozen embeddings (`frozen head`: 5-fold, fitted like `train-head` on that very set):",
        "",
        "| set | n | accuracy | macro-F1 | language-id anchor | char TF-IDF LR (5-fold) | "
        "frozen head (5-fold) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in sets.items():
        m = r["model"]
        anchor = [r.get(k) for k in ANCHORS]
        cells = [
            "-" if a is None else f"{num(a['accuracy'])} / {num(a['macro_f1_present'])}"
            for a in anchor
        ]
        lines.append(
            f"| {name} | {r['n']} | {num(m['accuracy'])} | {num(m['macro_f1_present'])} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "Anchor cells are accuracy / macro-F1; macro-F1 is over the labels present in the set.",
        "",
    ]
    lines += _versus_table(sets)
    lines += [
        "**The model's own labels** (the promise: every assigned label >= 90% precise). Shipped "
        "thresholds on the whole set; then on half B of each set, the shipped head beside the same "
        "head re-calibrated on half A (`profile-embed calibrate`'s code path, with its default "
        "class biases):",
        "",
        "| set | out of distribution | coverage | own-label precision | correct & assigned | "
        "classes assigning | "
        "half B shipped: coverage / precision | half B calibrated on A: coverage / precision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in sets.items():
        m = r["model"]
        b0, b1 = r.get("half_b_shipped"), r.get("half_b_calibrated")

        def cell(b: dict[str, Any] | None) -> str:
            if b is None:
                return "-"
            return f"{_pct(b['coverage'])} / {num(b['own_label_precision'])}"

        lines.append(
            f"| {name} | {_pct(m['out_of_distribution'])} | {_pct(m['coverage'])} | "
            f"{num(m['own_label_precision'])} | "
            f"{_pct(m['correct_assigned_share'])} | {m['assigning_classes']} | {cell(b0)} | "
            f"{cell(b1)} |"
        )
    lines += [
        "",
        "**Re-calibrated on real labels** (`profile-embed calibrate` on half A of each set, "
        "scored on half B): the shipped head; its posteriors re-weighted from its training prior "
        "to half A's label mix (a prior swap: no fit, no thresholds); temperature and thresholds "
        "only (`--no-class-bias`); with class biases (the default) on all of half A and on its "
        f"random {FEW_LABELS} rows. Cells: accuracy / macro-F1 / coverage / own-label precision:",
        "",
        "| set | half A rows | half B shipped | prior swap to A's mix | calibrate --no-class-bias "
        f"| calibrate | calibrate, {FEW_LABELS} rows |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in sets.items():
        keys = ("half_b_shipped", "half_b_prior_swap", "half_b_calibrated_t", "half_b_calibrated")
        if any(r.get(k) is None for k in (keys[0], *keys[2:])):
            continue
        cells = [
            "-"
            if b is None
            else f"{num(b['accuracy'])} / {num(b['macro_f1_present'])} / {_pct(b['coverage'])} / "
            f"{num(b['own_label_precision'])}"
            for b in [*(r.get(k) for k in keys), r.get("half_b_calibrated_few")]
        ]
        n_a = r["n"] - r["half_b_shipped"]["n"]
        lines.append(f"| {name} | {n_a} | " + " | ".join(cells) + " |")
    lines += _audience_table(
        sets,
        "audience",
        f"**Audience error** on populations of {AUDIENCE_SIZE} followers drawn from each set's "
        "real labelled profiles at known shares (natural mix; 70% its top country; Dirichlet(0.5) "
        "over its countries with >= 20 rows; 50/50 its top two), the shipped head. Cells: total "
        "variation from the true mix / coverage of the 95% intervals over true shares >= "
        f"{MIN_SCORED_SHARE:.0%}:",
    )
    lines += _audience_table(
        sets,
        "audience_calibrated",
        "**Audience error after `profile-embed calibrate`** on half A (class biases on): the same "
        "populations drawn from half B only, the re-calibrated head (its confusion, prior and "
        "biases come from real labels). Cells as above:",
    )
    return "\n".join(lines)


def points(d: dict[str, Any] | None) -> str:
    """A difference and its interval in points: ``+14.8 (+13.1 to +16.5)``."""
    if not d or d.get("difference") is None:
        return "-"
    if d.get("interval") is None:  # too few rows for one (heads.evaluation.intervals)
        return f"{100 * d['difference']:+.1f} (no interval)"
    lo, hi = d["interval"]
    return f"{100 * d['difference']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"


def _versus_table(sets: dict[str, Any]) -> list[str]:
    """How sure the accuracy table is: intervals, and paired differences to the anchors."""
    rows = {name: r["versus"] for name, r in sets.items() if r.get("versus")}
    if not rows:
        return []
    first = next(iter(rows.values()))["model"]
    level = f"{100 * first['confidence']:.0f}%"
    lines = [
        f"**How sure**: {level} intervals of the model's figures (accuracy and macro-F1: "
        f"bootstrap, {first['n_bootstrap']} replicates of the profiles; own-label precision: "
        "Wilson's), and the model minus each anchor in points, the same profiles drawn for both "
        "(paired bootstrap). An interval that holds 0 is a tie on this set:",
        "",
        "| set | accuracy | macro-F1 | own-label precision | accuracy - language-id anchor "
        "| accuracy - char TF-IDF LR | accuracy - frozen head | macro-F1 - language-id anchor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in rows.items():
        acc, mf1 = v["model"]["accuracy"], v["model"]["macro_f1"]
        own = sets[name]["model"].get("own_label_precision_interval")
        anchor = {a: v.get(a) or {} for a in ANCHORS}
        lines.append(
            f"| {name} | {num(acc[0])}-{num(acc[1])} | {num(mf1[0])}-{num(mf1[1])} | "
            f"{'-' if not own else f'{num(own[0])}-{num(own[1])}'} | "
            f"{points(anchor['langid'].get('accuracy'))} | "
            f"{points(anchor['tfidf_lr'].get('accuracy'))} | "
            f"{points(anchor['frozen_head'].get('accuracy'))} | "
            f"{points(anchor['langid'].get('macro_f1'))} |"
        )
    return [*lines, ""]


def _audience_table(sets: dict[str, Any], key: str, title: str) -> list[str]:
    """One audience-error table (rows: set x population; columns: estimators) with its mean."""
    sets = {name: r for name, r in sets.items() if r.get(key)}
    if not sets:
        return []
    from heads.audience import DEFAULT_METHOD

    methods = sorted(
        {k for r in sets.values() for pop in r[key].values() for k in pop}
        - {"n", "true_top", "flags"}
    )
    lines = [
        "",
        title,
        "",
        f"| set | population | true top shares | flags ({DEFAULT_METHOD}) | "
        + " | ".join(methods)
        + " |",
        "|---|---|---|---|" + "---|" * len(methods),
    ]
    rows = [row for r in sets.values() for row in r[key].values()]
    for name, r in sets.items():
        for pop, row in r[key].items():
            flags = ", ".join(f"`{f}`" for f in row.get("flags", [])) or "-"
            cells = [flags]
            for meth in methods:
                e = row.get(meth)
                if e is None or "error" in e:
                    cells.append("n/a")
                else:
                    cells.append(f"{num(e['tv'], 2)} / {_pct(e['coverage'])}")
            lines.append(f"| {name} | {pop} | {row['true_top']} | " + " | ".join(cells) + " |")
    mean_tv = {
        meth: np.mean(
            [
                row[meth]["tv"]
                for r in sets.values()
                for row in r[key].values()
                if meth in row and "tv" in row[meth]
            ]
            or [np.nan]
        )
        for meth in methods
    }
    flagged = sum(bool(row.get("flags")) for row in rows)
    lines += [
        f"| **mean** | | | {flagged} of {len(rows)} flagged | "
        + " | ".join(f"**{num(float(v), 2)}**" for v in mean_tv.values())
        + " |",
    ]
    versus = mean_tv_differences(rows, methods, DEFAULT_METHOD)
    if versus:
        lines.append(
            f"| **minus {DEFAULT_METHOD}** (95%, populations resampled) | | | | "
            + " | ".join(versus.get(meth, "") for meth in methods)
            + " |"
        )
    return [*lines, ""]


def mean_tv_differences(
    rows: list[dict[str, Any]], methods: Sequence[str], base: str, *, n_bootstrap: int = 2000
) -> dict[str, str]:
    """Each estimator's mean total variation minus ``base``'s over the same populations.

    The interval resamples the populations (paired: each replicate draws the same ones for both
    estimators); with a dozen populations it says whether a gap between two estimators is larger
    than the spread of populations, not more.
    """
    rng = np.random.default_rng(0)
    out: dict[str, str] = {}
    for meth in methods:
        pairs = [
            (row[meth]["tv"], row[base]["tv"])
            for row in rows
            if "tv" in row.get(meth, {}) and "tv" in row.get(base, {})
        ]
        if meth == base or len(pairs) < 2:
            continue
        gap = np.array([a - b for a, b in pairs])
        lo, hi = mean_interval(gap, rng, n_bootstrap=n_bootstrap)
        out[meth] = f"{gap.mean():+.2f} ({lo:+.2f} to {hi:+.2f})"
    return out


def mean_interval(
    values: np.ndarray, rng: np.random.Generator, *, n_bootstrap: int = 2000
) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` (populations), resampled with ``rng``."""
    draws = values[rng.integers(0, len(values), size=(n_bootstrap, len(values)))].mean(axis=1)
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return float(lo), float(hi)


def render_report(report: dict[str, Any], out: Path, command: str) -> Path:
    """OUT/REPORT.md: the summary, then per set the per-class table, confusions and plots."""
    from heads.evaluation.report import plot_reliability

    parts = ["# Real-data evaluation", "", render_summary(report, command), ""]
    for name, r in report["sets"].items():
        ev = r["model"]["_evaluation"]
        img = plot_reliability(ev, out / f"{name}_reliability.png")
        parts += [
            f"## {name}",
            "",
            f"`{r['path']}`: {r['n']} profiles; {r['countries']}.",
            "",
            f"![reliability]({img.name})",
            "",
            "Costliest confusions (true -> predicted: profiles): "
            + ", ".join(
                f"{c['true']} -> {c['predicted']}: {c['n']}" for c in r["model"]["confusions"]
            ),
            "",
            "| label | support | precision | recall | assigned | precision of assigned | "
            "threshold |",
            "|---|---|---|---|---|---|---|",
        ]
        per = ev.metrics["per_class"]
        for lab in sorted(per, key=lambda k: -per[k]["support"]):
            c = per[lab]
            if not c["support"] and not c["assigned"]:
                continue
            parts.append(
                f"| {lab} | {c['support']} | {num(c['precision'])} | {num(c['recall'])} | "
                f"{c['assigned']} | {num(c['precision_with_abstention'])} | {num(c['threshold'])} |"
            )
        parts.append("")
    path = out / "REPORT.md"
    path.write_text("\n".join(parts))
    return path


def write_docs(docs: Path, summary: str, *, marker: str = "real-eval") -> None:
    """Replace the text between ``<!-- MARKER:begin/end -->`` of ``docs`` (append when absent)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    text = docs.read_text() if docs.exists() else "# Real data\n\n"
    block = f"{begin}\n{summary}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    docs.write_text(text)


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, required=True, help="folder of labelled files")
    parser.add_argument("--out", type=Path, default=Path("runs/real-eval"))
    parser.add_argument("--docs", type=Path, default=None, help="e.g. docs/REAL_DATA.md")
    parser.add_argument("--max-rows", type=int, default=5000, help="per set")
    parser.add_argument("--n-bootstrap", type=int, default=100)
    parser.add_argument("--no-anchors", action="store_true", help="skip the anchors (faster)")
    parser.add_argument("--cache", default=None, help="embedding cache ('' = none)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.data.is_dir():
        print(f"error: --data {args.data}: not a folder", file=sys.stderr)
        return 2
    command = "python bench/real_eval.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    sets = load_sets(args.data, max_rows=args.max_rows)
    report = evaluate_sets(
        args.model,
        sets,
        cache_path=args.cache,
        n_bootstrap=args.n_bootstrap,
        anchors=not args.no_anchors,
        anchor_cache_dir=args.out / "anchor-cache",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(_json_ready(report), indent=1))
    path = render_report(report, args.out, command)
    if args.docs is not None:
        write_docs(args.docs, render_summary(report, command))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
