"""Would a label-free change of the head's prior help on real posts? (issue 12, "the prior")

    python bench/prior_sweep.py --model models/default --data REAL/ \
        --sim data/sim-46000-5000-seed0/val.first8000.jsonl

The geolocation head's posteriors assume its training prior (the simulator's Instagram audience
mix, ``effective_prior`` in its calibration record). Swapping it for a target prior ``q`` is a
re-weighting, ``p'(k | x) ~ p(k | x) q_k / prior_k``, with no labels and no fit. The targets tried:

* ``flat-b``: ``q ~ prior ** (1 - b)``; ``b = 1`` is uniform over the 37 labels (trust the text,
  not the audience sizes: the issue's "the model mostly picks the largest" neighbour);
* ``pop-g``: ``q ~ population share ** g`` (geonames populations; OTHER = the rest of the world):
  a person anywhere rather than an Instagram user;
* ``geo(prior,pop-g)``: the geometric mean of the two.

Printed as a Markdown table of argmax accuracy / macro-F1 (over the labels present) per real set,
and on the first ``--sim-rows`` simulated validation profiles (whose label mix is the training
prior, so any swap can only lose there).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from real_eval import load_sets, summarise  # noqa: E402

from embedder.data import read_profiles  # noqa: E402
from embedder.labels import GEO_LABELS, OTHER  # noqa: E402


def label_populations(labels: list[str]) -> np.ndarray:
    """Each label's share of the world's population (geonames); OTHER gets the rest."""
    from embedder.simulator.gazetteer import load_gazetteer

    countries = load_gazetteer()
    pop = np.array([countries[lab].population if lab in countries else 0 for lab in labels], float)
    pop[labels.index(OTHER)] = sum(c.population for c in countries.values()) - pop.sum()
    return pop / pop.sum()


def target_priors(prior: np.ndarray, pop: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, q)`` for the shipped prior and each swap of the module docstring."""
    yield "shipped (training prior)", prior
    for b in (0.25, 0.5, 0.75, 1.0):
        yield f"flat-{b}", prior ** (1 - b)
    for g in (0.5, 1.0):
        yield f"pop-{g}", pop**g
        yield f"geo(prior,pop-{g})", np.sqrt(prior * pop**g / (pop**g).sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/default"))
    p.add_argument("--data", type=Path, required=True, help="real sets (bench/real_sources.py)")
    p.add_argument("--sim", type=Path, default=None, help="simulated validation JSONL (optional)")
    p.add_argument("--sim-rows", type=int, default=4000)
    p.add_argument("--cache", default=None, help="embedding cache file (SQLite)")
    args = p.parse_args(argv)

    from heads.model import ProfileModel
    from heads.training.head import cached_embeddings

    model = ProfileModel.load(args.model, heads=["geolocation"])
    head = model.head("geolocation")
    labels = list(head.labels)
    if labels != list(GEO_LABELS):
        raise SystemExit(f"error: {args.model}: the geolocation head's labels are not GEO_LABELS")
    effective = (head.calibration_ or {}).get("effective_prior")
    if not effective:
        raise SystemExit(f"error: {args.model}: the head's calibration has no effective_prior")
    prior = np.array([effective[lab] for lab in labels])
    pop = label_populations(labels)

    probs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for rs in load_sets(args.data):
        (x,), _ = cached_embeddings(model.encoder, [[r.profile for r in rs.rows]], args.cache)
        probs[rs.name] = (head.predict_proba(x), rs.y)
    if args.sim is not None:
        rows = read_profiles(args.sim, require=("country",)).rows[: args.sim_rows]
        (x,), _ = cached_embeddings(model.encoder, [[r.profile for r in rows]], args.cache)
        index = {lab: i for i, lab in enumerate(labels)}
        y = np.array([index[r.labels["country"]] for r in rows])
        probs[f"simulated validation ({len(rows)})"] = (head.predict_proba(x), y)

    print(f"model `{model.embedding_version}`, geolocation v{head.head_version}\n")
    print("| target prior | " + " | ".join(probs) + " |")
    print("|---|" + "---|" * len(probs))
    for name, q in target_priors(prior, pop):
        weight = (q / q.sum()) / prior
        cells = []
        for pr, y in probs.values():
            swapped = pr * weight
            res = summarise(swapped / swapped.sum(axis=1, keepdims=True), y, None)
            cells.append(f"{res['accuracy']:.3f} / {res['macro_f1_present']:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
