"""Real first and last names per country, for display names, usernames and @mentions.

Real profiles carry their country in names: a display name "Dewi Lestari", a username
``budi.santoso92``, a caption that tags ``@quispe.rosa``. The simulator's names were random
frequent words, so the model could not learn that cue. The names come from ``names-dataset``
(Philippe Remy; Apache-2.0 licence file, MIT in its metadata): the 2021 Facebook data of 106
countries, each name with its rank per country. A country's names are drawn by rank with Zipf
weights ``1 / rank``, genders equally likely. Countries it lacks borrow a neighbour's names
(:data:`BORROWED`); any other country draws from a random covered country, so a name never
says "this country is uncovered".

Loading the package takes ~20 s and ~2 GB once; the derived table is cached like the other
simulator tables (``embedder.simulator.tables``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from itertools import accumulate
from typing import Any

from embedder.errors import InvalidInputError
from embedder.simulator.gazetteer import strip_accents
from embedder.simulator.sampling import pick, pick_cum
from embedder.simulator.tables import cached

logger = logging.getLogger(__name__)

#: Names per gender (first names) and last names kept per country, in rank order.
TOP_FIRST = 400
TOP_LAST = 600
#: Target countries names-dataset does not cover, and whose names they borrow.
BORROWED = {"AU": "GB", "UA": "RU"}


@dataclass(frozen=True)
class CountryNames:
    """One country's first and last names, each with cumulative Zipf weights (in the country's
    own scripts: Arabic, Cyrillic, Hangul... beside Latin spellings)."""

    first: tuple[str, ...]
    first_cum: tuple[float, ...]
    last: tuple[str, ...]
    last_cum: tuple[float, ...]

    def first_name(self, rng: random.Random) -> str:
        """One first name."""
        return pick_cum(rng, self.first, self.first_cum)

    def last_name(self, rng: random.Random) -> str:
        """One last name."""
        return pick_cum(rng, self.last, self.last_cum)


def _zipf(names_by_rank: list[list[str]]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Merge rank-ordered lists (one per gender, equally likely) into names and cumulative
    weights; a name in several lists sums its weights."""
    weight: dict[str, float] = {}
    for names in names_by_rank:
        norm = sum(1.0 / (i + 1) for i in range(len(names))) or 1.0
        for i, name in enumerate(names):
            weight[name] = weight.get(name, 0.0) + 1.0 / (i + 1) / norm / len(names_by_rank)
    items = tuple(weight)
    return items, tuple(accumulate(weight[n] for n in items))


def _build() -> dict[str, tuple[tuple[Any, ...], ...]]:
    from names_dataset import NameDataset  # heavy: only when the cache is cold

    logger.info("reading names-dataset (once per package version, ~20 s)")
    nd = NameDataset()
    first = nd.get_top_names(n=TOP_FIRST)
    last = nd.get_top_names(n=TOP_LAST, use_first_names=False)
    table: dict[str, tuple[tuple[Any, ...], ...]] = {}
    for iso in sorted(set(first) & set(last)):
        genders = [list(v) for v in first[iso].values() if v]
        f, f_cum = _zipf(genders)
        la, la_cum = _zipf([list(last[iso])])
        if f and la:
            table[iso] = (f, f_cum, la, la_cum)
    return table


@lru_cache(maxsize=1)
def name_table() -> dict[str, CountryNames]:
    """Country ISO code -> its names (the countries names-dataset covers)."""
    try:
        version = metadata.version("names-dataset")
    except metadata.PackageNotFoundError:
        raise InvalidInputError(
            "SimulatorConfig.real_name_share / name_mention_share > 0 need the names-dataset "
            "package, which is not installed: pip install 'profile-embeddings[names]'",
            field="real_name_share",
        ) from None
    raw = cached(f"names-{version}", _build)
    return {iso: CountryNames(*row) for iso, row in raw.items()}


def names_for(iso: str, rng: random.Random) -> CountryNames:
    """The names a profile of ``iso`` is named from: its own, a neighbour's (:data:`BORROWED`),
    else those of a random covered country."""
    table = name_table()
    own = table.get(iso) or table.get(BORROWED.get(iso, ""))
    return own or table[pick(rng, sorted(table))]


def display_name(rng: random.Random, names: CountryNames) -> str:
    """A display name as people write theirs: "First Last", "First", "FIRST LAST", "first"."""
    first = names.first_name(rng)
    r = rng.random()
    if r < 0.55:
        text = f"{first} {names.last_name(rng)}"
    elif r < 0.8:
        text = first
    elif r < 0.9:
        text = f"{first} {names.first_name(rng)} {names.last_name(rng)}"
    else:
        text = f"{first} {names.last_name(rng)[:1]}."
    case = rng.random()
    return text.upper() if case < 0.07 else text.lower() if case < 0.17 else text


def handle_words(rng: random.Random, names: CountryNames) -> list[str]:
    """One or two name parts with a Latin spelling, for a username or an @mention; a part in
    another script is dropped, so the list can be empty (callers then build the handle from
    words)."""
    parts = [names.first_name(rng), names.last_name(rng)]
    if rng.random() < 0.25:
        parts.reverse()
    if rng.random() < 0.3:
        parts = parts[:1]
    return [p for p in parts if any(c.isascii() and c.isalpha() for c in strip_accents(p))]
