"""Audience samples: influencers whose followers come from a known country mixture.

Each influencer has a home label drawn from the prior; its mixture is a Dirichlet draw centred on
``home_weight`` x home + (1 - home_weight) x prior, with ``concentration`` controlling how far it
strays.
Followers' true countries are drawn from the mixture (OTHER expands to a real country via the
prior), and
the mixture is saved as the truth an audience estimator should recover.
"""

from __future__ import annotations

import random
from dataclasses import replace

from embedder.data import LabelledProfile
from embedder.errors import InvalidInputError
from embedder.labels import COUNTRIES, GEO_LABELS, OTHER
from embedder.simulator.core import Simulator
from embedder.simulator.sampling import pick_cum


def _mixture(
    rng: random.Random, sim: Simulator, concentration: float, home_weight: float
) -> dict[str, float]:
    share = sim.prior.label_share
    labels = list(GEO_LABELS)
    home = pick_cum(rng, labels, _cum([share[lb] for lb in labels]))
    base = [home_weight * (lb == home) + (1 - home_weight) * share[lb] for lb in labels]
    draws = [rng.gammavariate(max(concentration * b, 1e-3), 1.0) for b in base]
    total = sum(draws)
    return {lb: d / total for lb, d in zip(labels, draws, strict=True)}


def _cum(weights: list[float]) -> list[float]:
    out, acc = [], 0.0
    for w in weights:
        acc += w
        out.append(acc)
    return out


def _other_iso(rng: random.Random, sim: Simulator) -> str:
    while True:
        iso = pick_cum(rng, sim.prior.isos, sim.prior.cum)
        if iso not in COUNTRIES:
            return iso


def simulate_audience(
    sim: Simulator,
    seed: int,
    influencers: int,
    followers_per: int,
    *,
    concentration: float = 30.0,
    home_weight: float = 0.6,
) -> tuple[list[LabelledProfile], dict[str, dict[str, float]]]:
    """Draw follower profiles for ``influencers`` accounts and their true country mixtures.

    Args:
        sim: the simulator (its prior and config are used).
        seed: random seed.
        influencers: number of influencers (>= 1).
        followers_per: followers per influencer (>= 1).
        concentration: Dirichlet concentration (higher = mixtures closer to the centre).
        home_weight: weight of the home country in the centre of the Dirichlet.

    Returns:
        (followers, truth): followers carry extra ``influencer_id``; truth maps influencer id to
        {label: share} over ``GEO_LABELS`` (shares sum to 1).

    Raises:
        InvalidInputError: on non-positive counts or a ``home_weight`` outside [0, 1].
    """
    if influencers < 1 or followers_per < 1 or not 0.0 <= home_weight <= 1.0 or concentration <= 0:
        raise InvalidInputError(
            "audience needs influencers >= 1, followers_per >= 1, concentration > 0 and "
            f"home_weight in [0, 1]; got {influencers}, {followers_per}, {concentration}, "
            f"{home_weight}"
        )
    rows: list[LabelledProfile] = []
    truth: dict[str, dict[str, float]] = {}
    for k in range(influencers):
        rng = random.Random(f"{seed}/audience/{k}")
        inf_id = f"sim-{seed}-influencer-{k:05d}"
        mixture = _mixture(rng, sim, concentration, home_weight)
        truth[inf_id] = {lb: round(v, 6) for lb, v in mixture.items()}
        labels = list(mixture)
        cum = _cum(list(mixture.values()))
        for j in range(followers_per):
            label = pick_cum(rng, labels, cum)
            iso = _other_iso(rng, sim) if label == OTHER else label
            row = sim.profile(seed, f"aud{k}", j, iso=iso)
            extra = {**row.profile.extra, "influencer_id": inf_id}
            rows.append(replace(row, profile=replace(row.profile, extra=extra)))
    return rows, truth
