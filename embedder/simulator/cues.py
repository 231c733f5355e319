"""Location cues: which ones a profile carries, and the exact text fragment of each.

Every cue type has its own rate (``SimulatorConfig.cue_rates``); a profile draws each
independently, so it
can carry several, and a configured share carries none. Fragments vary in spelling (native, ASCII,
alternate script, abbreviation, hashtag), casing and wrapping, so no fixed template marks a cue.
Travel,
expat and multi-city cues name other countries on purpose: the label stays the country of residence.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from embedder.simulator.config import SimulatorConfig
from embedder.simulator.gazetteer import (
    SECOND_LEVEL_TLD,
    City,
    Country,
    country_name,
    currency_symbol,
    load_gazetteer,
)
from embedder.simulator.priors import CountryPrior
from embedder.simulator.sampling import pick_cum
from embedder.simulator.scripts import language_script, unicode_scripts

#: "Where I live" phrase templates per language ({p} = a place); the generic ones apply to all.
PLACE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "": ("📍{p}", "📍 {p}", "{p} 📍", "🏠 {p}", "📌 {p}", "🌍 {p}", "{p} 🏡", "📍{p} 🌎"),
    "en": (
        "based in {p}",
        "living in {p}",
        "from {p}",
        "{p} based",
        "{p} born & raised",
        "home: {p}",
    ),
    "pt": ("morando em {p}", "de {p}", "moro em {p}", "{p} 💚💛"),
    "es": ("viviendo en {p}", "desde {p}", "de {p}", "vivo en {p}"),
    "fr": ("basée à {p}", "depuis {p}", "de {p}", "vit à {p}"),
    "de": ("aus {p}", "wohnhaft in {p}", "lebe in {p}"),
    "it": ("da {p}", "vivo a {p}", "di {p}"),
    "ru": ("г. {p}", "живу: {p}", "{p} ❤️"),
    "uk": ("м. {p}", "{p} 💙💛"),
    "tr": ("{p}'de yaşıyorum", "{p} 🧿", "📍{p}"),
    "id": ("tinggal di {p}", "dari {p}", "asal {p}"),
    "ms": ("tinggal di {p}", "dari {p}"),
    "ja": ("{p}在住", "{p}出身", "{p}住み"),
    "ko": ("{p} 거주", "{p} 출신", "{p} 살아요"),
    "ar": ("من {p}", "مقيم في {p}", "أعيش في {p}"),
    "nl": ("woonachtig in {p}", "uit {p}", "wonend in {p}"),
    "sv": ("bor i {p}", "från {p}"),
    "pl": ("mieszkam: {p}", "📍{p}"),
    "th": ("อยู่ {p}", "จาก {p}"),
    "vi": ("sống ở {p}", "đến từ {p}"),
    "hi": ("{p} से", "{p} में रहते हैं"),
    "fil": ("taga {p}", "nakatira sa {p}"),
}
#: Separators of "Paris | London | NYC" lists.
_LIST_SEPARATORS = (" | ", " • ", " / ", " - ", " ✈️ ", " · ")


@dataclass(frozen=True)
class Cue:
    """One planted location cue.

    Attributes:
        type: a key of ``SimulatorConfig.cue_rates``.
        text: the exact fragment written into the profile.
        where: "bio" or "caption".
    """

    type: str
    text: str
    where: str


def pick_city(rng: random.Random, country: Country, cum: Sequence[float]) -> City | None:
    """Draw a city of a country with the given cumulative weights (None if it has none)."""
    if not country.cities:
        return None
    return pick_cum(rng, country.cities, cum)


def _case(rng: random.Random, text: str) -> str:
    r = rng.random()
    if r < 0.10:
        return text.lower()
    if r < 0.15:
        return text.upper()
    return text


def city_spelling(rng: random.Random, city: City, lang: str) -> str:
    """Spell a city the way a writer of ``lang`` might: native, ASCII, own script, abbreviated,
    #tag."""
    own = next(
        (city.variants[s] for s in unicode_scripts(language_script(lang)) if s in city.variants), ()
    )
    r = rng.random()
    if own and language_script(lang) != "Latn" and r < 0.6:
        name = rng.choice(own)
    elif city.abbreviations and r < 0.07:
        return rng.choice(city.abbreviations)
    elif r < 0.25:
        name = city.ascii
    elif r < 0.32 and city.variants.get("LATIN"):
        name = rng.choice(city.variants["LATIN"])
    else:
        name = city.name
    if rng.random() < 0.12:
        return "#" + name.replace(" ", "").replace("-", "").lower()
    return _case(rng, name)


def country_spelling(rng: random.Random, iso: str, lang: str) -> str:
    """Name a country in the profile's language, in English, or as a hashtag."""
    r = rng.random()
    name = country_name(iso, lang) if r < 0.6 else country_name(iso, "en")
    if rng.random() < 0.1:
        return "#" + name.replace(" ", "").lower()
    return _case(rng, name)


def place_pattern(rng: random.Random, place: str, lang: str) -> str:
    """Wrap a place in a 📍/🏠/"based in"/"from" template of the language (or a generic one)."""
    local = PLACE_TEMPLATES.get(lang, ())
    pool = local + PLACE_TEMPLATES[""] if local and rng.random() < 0.55 else PLACE_TEMPLATES[""]
    return rng.choice(pool).format(p=place)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _phone(rng: random.Random, country: Country) -> str:
    code = country.phone
    r = rng.random()
    if r < 0.3:
        return f"wa.me/{code}{_digits(rng, 9)}"
    body = f"{_digits(rng, 2)} {_digits(rng, 4)}{rng.choice(('-', ' ', ''))}{_digits(rng, 4)}"
    prefix = rng.choice(("", "📞 ", "☎️ ", "WhatsApp ", "📱", "tel: "))
    return f"{prefix}+{code} {body}"


def _currency(rng: random.Random, country: Country, lang: str) -> str:
    code = country.currencies[0] if country.currencies else "USD"
    sym = currency_symbol(code, lang, country.iso)
    whole = rng.choice(
        (5, 9, 10, 15, 19, 25, 29, 39, 49, 50, 99, 100, 150, 199, 250, 500, 1000, 2500)
    )
    price = f"{whole}{rng.choice(('', ',90', '.99', ',00', '.000'))}"
    return rng.choice((f"{sym}{price}", f"{sym} {price}", f"{price}{sym}", f"{price} {code}"))


def _cctld(rng: random.Random, country: Country, handle: str) -> str:
    second = SECOND_LEVEL_TLD.get(country.iso)
    tld = f"{second}.{country.tld}" if second and rng.random() < 0.8 else country.tld
    host = rng.choice((f"{handle}.{tld}", f"www.{handle}.{tld}", f"shop.{handle}.{tld}"))
    return rng.choice((host, f"https://{host}", f"🔗 {host}", f"{host}/links"))


class CuePlanter:
    """Draws the cues of one profile from the configured rates."""

    def __init__(self, config: SimulatorConfig, prior: CountryPrior) -> None:
        self.config = config
        self.prior = prior
        self.gaz = load_gazetteer()
        self._cums: dict[str, tuple[float, ...]] = {}

    def _foreign(self, rng: random.Random, iso: str) -> Country:
        while True:
            other = pick_cum(rng, self.prior.isos, self.prior.cum)
            if other != iso and self.gaz[other].cities:
                return self.gaz[other]

    def _city_cum(self, country: Country) -> tuple[float, ...]:
        cum = self._cums.get(country.iso)
        if cum is None:
            exponent = self.config.city_population_exponent
            cum = tuple(accumulate(c.population**exponent for c in country.cities))
            self._cums[country.iso] = cum
        return cum

    def _city_text(self, rng: random.Random, country: Country, lang: str) -> str | None:
        city = pick_city(rng, country, self._city_cum(country))
        return None if city is None else city_spelling(rng, city, lang)

    def draw_types(self, rng: random.Random) -> list[str]:
        """Return the cue types of one profile ([] for a cue-free one)."""
        if rng.random() < self.config.cue_free_share:
            return []
        rates = self.config.cue_rates
        types = [t for t, p in rates.items() if rng.random() < p]
        if not types and any(rates.values()):
            types = [rng.choices(list(rates), weights=list(rates.values()))[0]]
        return types

    def plant(
        self, rng: random.Random, types: list[str], country: Country, lang: str, handle: str
    ) -> list[Cue]:
        """Build the fragments of the drawn cue types (types impossible for the country are
        skipped)."""
        cues: list[Cue] = []
        for t in types:
            text = self._fragment(rng, t, country, lang, handle)
            if text:
                where = "caption" if t == "travel" else "bio"
                if (
                    t not in ("expat", "multi_city", "travel")
                    and rng.random() > self.config.cue_in_bio
                ):
                    where = "caption"
                cues.append(Cue(type=t, text=text, where=where))
        return cues

    def _fragment(
        self, rng: random.Random, t: str, country: Country, lang: str, handle: str
    ) -> str | None:
        if t == "city":
            return self._city_text(rng, country, lang)
        if t == "pattern":
            place = self._city_text(rng, country, lang) if rng.random() < 0.7 else None
            return place_pattern(rng, place or country_spelling(rng, country.iso, lang), lang)
        if t == "region":
            if not country.regions:
                return None
            name, code = rng.choice(country.regions)
            use_code = code.isalpha() and len(code) <= 3 and rng.random() < 0.35
            return code if use_code else _case(rng, name)
        if t == "country_name":
            return country_spelling(rng, country.iso, lang)
        if t == "flag":
            return country.flag * (2 if rng.random() < 0.1 else 1)
        if t == "phone":
            return _phone(rng, country) if country.phone else None
        if t == "currency":
            return _currency(rng, country, lang)
        if t == "cctld":
            return _cctld(rng, country, handle) if country.tld else None
        return self._conflicting(rng, t, country, lang)

    def _conflicting(self, rng: random.Random, t: str, country: Country, lang: str) -> str | None:
        foreign = self._foreign(rng, country.iso)
        away = self._city_text(rng, foreign, "en")
        if t == "travel":
            return rng.choice(
                (f"✈️ {away} {foreign.flag}", f"{away} {foreign.flag}", f"{foreign.flag} {away}")
            )
        home = self._city_text(rng, country, lang)
        if home is None or away is None:
            return None
        if t == "expat":
            return rng.choice(
                (
                    f"{foreign.flag} in {home}",
                    f"{foreign.flag} → {country.flag}",
                    f"{foreign.flag} 📍{home}",
                    f"{country_name(foreign.iso, lang)} ✈️ {home}",
                )
            )
        third = self._city_text(rng, self._foreign(rng, country.iso), "en") or away
        cities = [home, away, third]
        rng.shuffle(cities)
        return rng.choice(_LIST_SEPARATORS).join(cities)

    def decoy(self, rng: random.Random, lang: str, word: str) -> str:
        """A place template filled with a non-place word, so templates alone never mean
        "location"."""
        return place_pattern(rng, word, lang)
