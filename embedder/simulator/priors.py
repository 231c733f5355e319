"""The country prior: how often each label occurs, and which real country an OTHER profile is from.

The 36 target countries get the shares of ``DEFAULT_PRIOR_PERCENT`` (the seed's order of audience
size,
top 12 ~ two thirds). The remaining mass is OTHER, spread over every other country of geonames with
a
weight of ``population ** OTHER_POPULATION_EXPONENT``: Instagram audiences grow with population but
less
than linearly (poorer and more populous countries have lower penetration), and tiny territories
(< 50,000 people) are left out; countries that block Instagram (CN, KP) are scaled down. See
docs/SIMULATOR.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate

from embedder.errors import InvalidInputError
from embedder.labels import COUNTRIES, OTHER
from embedder.simulator.gazetteer import load_gazetteer

logger = logging.getLogger(__name__)

#: Percent of profiles per target country; OTHER gets 100 - sum (about 11%).
DEFAULT_PRIOR_PERCENT: dict[str, float] = {
    "US": 14.0, "BR": 9.0, "IN": 8.5, "ID": 6.0, "TR": 4.5, "JP": 4.0,
    "MX": 4.0, "GB": 3.6, "DE": 3.2, "IT": 3.0, "FR": 3.0, "ES": 2.8,
    "PH": 1.8, "AR": 1.7, "KR": 1.6, "CO": 1.5, "RU": 1.6, "CA": 1.5,
    "TH": 1.4, "VN": 1.3, "EG": 1.2, "MY": 1.1, "SA": 1.0, "PL": 0.95,
    "UA": 0.9, "PE": 0.85, "AU": 0.85, "CL": 0.75, "NL": 0.75, "NG": 0.7,
    "ZA": 0.65, "AE": 0.65, "PT": 0.55, "BE": 0.5, "CH": 0.45, "SE": 0.45,
}  # fmt: skip
#: OTHER countries are weighted by population to this power.
OTHER_POPULATION_EXPONENT = 0.8
#: Countries where Instagram is blocked keep only this fraction of their weight (VPN users,
# diaspora).
BLOCKED_FACTOR: dict[str, float] = {"CN": 0.05, "KP": 0.0}
#: Territories smaller than this are never drawn as OTHER.
OTHER_MIN_POPULATION = 50_000


@dataclass(frozen=True)
class CountryPrior:
    """Sampling table over real ISO countries (OTHER already expanded).

    Attributes:
        isos: ISO codes (the 36 targets, then the OTHER countries).
        cum: cumulative probabilities aligned with ``isos`` (last = 1).
        label_share: expected share of each label (36 + OTHER).
    """

    isos: tuple[str, ...]
    cum: tuple[float, ...]
    label_share: dict[str, float]


def build_prior(percent: Mapping[str, float] | None = None) -> CountryPrior:
    """Build the sampling table from target-country percents.

    Args:
        percent: {ISO: percent} for target countries (missing ones get 0); OTHER = 100 - sum.

    Returns:
        The prior.

    Raises:
        InvalidInputError: on unknown codes, negative values or a sum above 100.
    """
    percent = dict(DEFAULT_PRIOR_PERCENT if percent is None else percent)
    bad = sorted(k for k in percent if k not in COUNTRIES)
    if bad:
        raise InvalidInputError(
            f"prior has codes outside the 36 target countries: {bad}; allowed {COUNTRIES}"
        )
    total = sum(percent.values())
    if any(v < 0 for v in percent.values()) or total > 100.0 + 1e-9:
        raise InvalidInputError(
            f"prior percents must be >= 0 and sum to <= 100, got sum {total:.2f}"
        )
    gaz = load_gazetteer()
    others = sorted(
        iso
        for iso, c in gaz.items()
        if iso not in COUNTRIES and c.population >= OTHER_MIN_POPULATION
    )
    other_w = [
        gaz[iso].population ** OTHER_POPULATION_EXPONENT * BLOCKED_FACTOR.get(iso, 1.0)
        for iso in others
    ]
    other_mass = (100.0 - total) / 100.0
    probs = [percent.get(c, 0.0) / 100.0 for c in COUNTRIES]
    norm = sum(other_w)
    probs += [other_mass * w / norm for w in other_w]
    cum = list(accumulate(probs))
    cum[-1] = 1.0
    shares = {c: percent.get(c, 0.0) / 100.0 for c in COUNTRIES} | {OTHER: other_mass}
    return CountryPrior(isos=(*COUNTRIES, *others), cum=tuple(cum), label_share=shares)
