"""Place snippets: short bios that are nothing but a location ("📍 Lyon", "大阪在住", "#curitiba").

Telling Lyon from Liège is gazetteer knowledge: a model learns it from seeing many place names with
their country, and a full simulated profile carries at most a few among ~80 tokens of other words.
A snippet carries one or two in ~10 tokens, so in the same training time a model sees several times
more places. They use the simulator's own cue writers (the same spellings, scripts, templates and
abbreviations as in full profiles) and only location cues that are true of the home country.

They are extra *training* rows; validation and test stay full profiles, so reported accuracy is
still on whole profiles.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from embedder.data import LabelledProfile
from embedder.labels import to_geo_label
from embedder.profile import Profile
from embedder.simulator.core import Simulator
from embedder.simulator.sampling import pick_cum

#: Cue types a snippet draws from, with weights: places first, then the country's own markers.
SNIPPET_CUES: dict[str, float] = {
    "city": 0.45,
    "pattern": 0.30,
    "region": 0.10,
    "country_name": 0.08,
    "flag": 0.07,
}


def place_snippets(
    n: int, seed: int, *, simulator: Simulator | None = None, stream: str = "places"
) -> Iterator[LabelledProfile]:
    """Yield ``n`` labelled place snippets (country label only; no category).

    The country and language are drawn exactly as for full profiles (same prior, same language
    shares), then one or two location cues of that country are written into the bio.

    Args:
        n: how many.
        seed: random seed; snippet ``i`` depends only on ``(seed, stream, i)``.
        simulator: the simulator whose tables and prior to use (default settings otherwise).
        stream: stream name, to draw independent sets from one seed.
    """
    sim = simulator or Simulator()
    _, planter, *_ = sim._tables
    types, weights = list(SNIPPET_CUES), list(SNIPPET_CUES.values())
    for i in range(n):
        rng = random.Random(f"{seed}/{stream}/{i}")
        iso = pick_cum(rng, sim.prior.isos, sim.prior.cum)
        draft = sim._draft(rng, iso)
        k = 1 if rng.random() < 0.7 else 2
        cues = planter.plant(
            rng, rng.choices(types, weights=weights, k=k), draft.country, draft.lang, ""
        )
        text = " ".join(dict.fromkeys(c.text for c in cues))  # a repeated draw is written once
        if not text:
            continue  # a country without cities or regions drew only those: nothing to say
        profile = Profile(
            id=f"place-{seed}-{stream}-{i:07d}",
            biography=text,
            extra={"country_iso": iso, "language": draft.lang, "cues": [c.type for c in cues]},
        )
        yield LabelledProfile(profile=profile, labels={"country": to_geo_label(iso)})
