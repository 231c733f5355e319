"""How sharply the geolocation head's language evidence should follow P(language | embedding).

    python bench/evidence_gate.py --model models/default --data <real folder> [--cache FILE]

The head adds ``alpha * log(w P(label | en) + (1 - w) / K)`` to its logits, with
``w = P(en | x) ** power`` (``heads.language_evidence``, English only; power 1 until the nineteenth
session, 2 since). At power 1 a Spanish post the language classifier gives a few percent of English
still moved toward US. This scores, per real set, the argmax accuracy and
macro-F1 (over the labels present) of the head with the evidence as shipped, without it, and with
``P(en | x)`` sharpened (``p**g``) or cut (``p`` where ``p > t``, else 0); the temperature, class
biases and thresholds stay those of the shipped head, so only argmax figures are reported, each
variant also as its difference to the shipped head in points with a 95% paired bootstrap interval
(``heads.evaluation.intervals``: the same posts drawn for both). With
``--concentrated c,...`` it also scores the evidence widened from English to every language whose
CLDR row puts >= ``c`` of its speakers in one target country (Indonesian, Thai, Japanese, ...:
languages whose evidence cannot move a post between neighbours), at the shipped power. One line
per set on stdout. A head without language evidence is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/default")
    p.add_argument("--data", required=True, help="folder of labelled real sets (.jsonl)")
    p.add_argument("--cache", default=None, help="embedding cache file (default: the shared one)")
    p.add_argument("--powers", default="2,4", help="comma-separated g of p**g")
    p.add_argument("--cuts", default="0.5,0.8", help="comma-separated t of p > t")
    p.add_argument(
        "--concentrated",
        default="",
        help="comma-separated c: also English + every language with >= c in one country",
    )
    args = p.parse_args(argv)

    from real_eval import load_sets
    from sklearn.metrics import f1_score

    from heads.evaluation.intervals import paired_differences
    from heads.language_evidence import label_given_language
    from heads.model import ProfileModel
    from heads.training.head import cached_embeddings

    model = ProfileModel.load(args.model, heads=["geolocation"])
    head = model.head("geolocation")
    evidence = head.language_
    if evidence is None or len(evidence.only) != 1:
        raise SystemExit("error: the geolocation head has no one-language evidence to gate")
    lang = evidence.languages.index(evidence.only[0])
    table = evidence.table[lang]
    k = evidence.table.shape[1]
    full, _ = label_given_language(evidence.languages, head.labels)
    countries = np.array([lab != "OTHER" for lab in head.labels])
    widened = {}
    for c in (float(v) for v in args.concentrated.split(",") if v):
        wide = evidence.table.copy()
        for i, code in enumerate(evidence.languages):
            if code != evidence.only[0] and full[i][countries].max() >= c:
                wide[i] = full[i]
        widened[f"conc>={c:g}"] = wide

    def score(probs: np.ndarray, y: np.ndarray, shipped: np.ndarray) -> str:
        pred = probs.argmax(1)
        present = sorted(set(y.tolist()))
        f1 = f1_score(y, pred, labels=present, average="macro", zero_division=0)
        text = f"{(pred == y).mean():.3f} / {f1:.3f}"
        if (pred == shipped).all():
            return text
        # minus the shipped head, in points, with 95% paired bootstrap intervals
        diff = paired_differences(y, pred, shipped, k=k, classes=np.array(present))
        parts = []
        for name in ("accuracy", "macro_f1"):
            d = diff[name]
            lo, hi = d["interval"]
            parts.append(f"{100 * d['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
        return f"{text} ({' / '.join(parts)})"

    for rs in load_sets(Path(args.data)):
        (x,), _ = cached_embeddings(
            model.encoder, [[r.profile for r in rs.rows]], args.cache, show_progress=False
        )
        shipped = head.logits(x)
        base = shipped - evidence.log_evidence(x)
        p_lang = evidence.language_proba(x)[:, lang]

        def gated(w: np.ndarray, base: np.ndarray = base) -> np.ndarray:
            mix = w[:, None] * table[None, :] + (1.0 - w[:, None]) / k
            return head.calibrated_proba(base + evidence.alpha * np.log(np.maximum(mix, 1e-12)))

        variants = {"shipped": head.calibrated_proba(shipped), "none": head.calibrated_proba(base)}
        for g in (float(v) for v in args.powers.split(",") if v):
            variants[f"p**{g:g}"] = gated(p_lang**g)
        for t in (float(v) for v in args.cuts.split(",") if v):
            variants[f"p>{t:g}"] = gated(np.where(p_lang > t, p_lang, 0.0))
        q = evidence.language_proba(x) ** evidence.power
        for name, wide in widened.items():
            mix = q @ wide + (1.0 - q.sum(axis=1, keepdims=True)) / k
            variants[name] = head.calibrated_proba(
                base + evidence.alpha * np.log(np.maximum(mix, 1e-12))
            )
        top = variants["shipped"].argmax(1)
        cells = "  ".join(f"{name} {score(v, rs.y, top)}" for name, v in variants.items())
        print(f"{rs.name} (n {len(rs.y)}, mean P({evidence.only[0]}) {p_lang.mean():.2f}): {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
