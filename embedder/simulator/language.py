"""Languages: which languages a country writes in (CLDR), and Zipf word sampling per language
(wordfreq).

Language shares come from CLDR territory data (babel ``territory_languages``: share of the
population
using each language). Words are drawn with their real frequencies from wordfreq's top lists, so the
text
has the Zipf shape of the language. Languages wordfreq lacks (Thai, Telugu, Swahili...) get a
vocabulary of
CLDR locale strings (month/day, unit, date-field, language and script names) when babel has the
locale; others fall
back to the country's other languages, then to English.
"""

from __future__ import annotations

import logging
import random
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

from babel import Locale, UnknownLocaleError
from babel.core import get_global

from embedder.simulator.sampling import sample_cum
from embedder.simulator.scripts import (
    dominant_script,
    is_spaceless,
    language_script,
    unicode_scripts,
)
from embedder.simulator.tables import cached

logger = logging.getLogger(__name__)

#: Words kept per wordfreq language.
VOCAB_SIZE = 6000
#: CLDR codes whose wordfreq list has another name.
_WORDFREQ_ALIAS = {
    "sr": "sh",
    "hr": "sh",
    "bs": "sh",
    "no": "nb",
    "nn": "nb",
    "tl": "fil",
    "zsm": "ms",
}


@dataclass(frozen=True)
class Vocabulary:
    """Words of one language with cumulative sampling weights.

    Attributes:
        lang: the language code.
        words: the words, most frequent first.
        cum: cumulative weights (real frequencies raised to the configured exponent).
        joiner: "" for scripts written without spaces, else " ".
        script: ISO 15924 script code.
        source: "wordfreq" or "cldr".
    """

    lang: str
    words: tuple[str, ...]
    cum: tuple[float, ...]
    joiner: str
    script: str
    source: str

    def sample(self, rng: random.Random, k: int) -> list[str]:
        """Draw ``k`` words with replacement, by frequency."""
        return sample_cum(rng, self.words, self.cum, k)

    def content_words(self, rng: random.Random, k: int) -> list[str]:
        """Draw ``k`` words uniformly from below the top function words (names, tags, handles)."""
        n = len(self.words)
        lo, hi = min(150, n // 4), min(4000, n)
        r, words, span = rng.random, self.words, hi - lo
        return [words[lo + int(r() * span)] for _ in range(k)]


@lru_cache(maxsize=1)
def wordfreq_languages() -> frozenset[str]:
    """Languages with a wordfreq 'best' list."""
    import wordfreq

    return frozenset(wordfreq.available_languages(wordlist="best"))


def _keep(word: str) -> bool:
    core = word.replace("'", "").replace("-", "").replace("’", "")
    # letters plus combining marks (Devanagari matras, Thai vowels, Arabic harakat)
    return any(c.isalpha() for c in core) and all(
        c.isalpha() or unicodedata.category(c).startswith("M") for c in core
    )


def _wordfreq_table(lang: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    import wordfreq

    script = language_script(lang)
    # wordfreq's Hindi, Bengali and Tamil lists are mostly English/romanized tokens from Twitter:
    # keep the language's own script so "hi" text is written in Devanagari
    own = None if script == "Latn" else set(unicode_scripts(script))
    words: list[str] = []
    freqs: list[float] = []
    # bin i of a wordfreq list holds the words of frequency 10 ** (-i / 100)
    for i, bucket in enumerate(wordfreq.get_frequency_list(lang, wordlist="best")):
        for w in bucket:
            if _keep(w) and (own is None or dominant_script(w) in own):
                words.append(w)
                freqs.append(10 ** (-i / 100))
        if len(words) >= VOCAB_SIZE:
            break
    return tuple(words[:VOCAB_SIZE]), tuple(freqs[:VOCAB_SIZE])


def _cldr_table(lang: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    loc = Locale.parse(lang)
    strings: list[str] = []
    for ctx in ("format", "stand-alone"):
        for width in ("wide", "abbreviated"):
            strings += [str(v) for v in loc.months.get(ctx, {}).get(width, {}).values()]
            strings += [str(v) for v in loc.days.get(ctx, {}).get(width, {}).values()]
    strings += [str(v) for v in loc.day_periods.get("format", {}).get("wide", {}).values()]
    strings += [str(v) for v in loc.languages.values()] + [str(v) for v in loc.scripts.values()]
    for field in loc._data["date_fields"].values():
        strings += [str(v) for v in field.values() if isinstance(v, str)]
    for unit in loc._data["unit_display_names"].values():
        strings += [str(v) for k, v in unit.items() if k == "long" and isinstance(v, str)]
    seen: dict[str, None] = {}
    for s in strings:
        for w in s.split():
            if _keep(w) and len(w) > 1:
                seen.setdefault(w, None)
    words = tuple(seen)
    # no frequencies in CLDR: a Zipf law over the (stable) collection order
    return words, tuple(1.0 / (r + 10) for r in range(len(words)))


def _build_vocab(lang: str) -> Vocabulary | None:
    script = language_script(lang)
    if lang in wordfreq_languages():
        words, freqs = _wordfreq_table(lang)
        source = "wordfreq"
    else:
        try:
            words, freqs = _cldr_table(lang)
        except (UnknownLocaleError, ValueError, KeyError):
            return None
        source = "cldr"
        if len(words) < 40:
            return None
    return Vocabulary(
        lang=lang,
        words=words,
        cum=tuple(accumulate(f**0.85 for f in freqs)),
        joiner="" if is_spaceless(script) else " ",
        script=script,
        source=source,
    )


@lru_cache(maxsize=128)
def vocabulary(lang: str) -> Vocabulary | None:
    """Return the vocabulary of a language (built once, cached on disk), or None if no data
    exists."""
    return cached(f"vocab-{lang}", lambda: _build_vocab(lang))


def resolve_language(code: str) -> str | None:
    """Map a CLDR language tag to a language with a vocabulary ("zh_Hant" -> "zh", "hr" -> "sh")."""
    base = code.split("_")[0]
    base = _WORDFREQ_ALIAS.get(base, base)
    if base in wordfreq_languages():
        return base
    try:
        Locale.parse(base)
    except (UnknownLocaleError, ValueError):
        return None
    return base


@lru_cache(maxsize=512)
def country_languages(iso: str, min_percent: float = 1.0) -> tuple[tuple[str, float], ...]:
    """Return (language, weight) pairs a country writes in, from CLDR population shares.

    Languages without any vocabulary are dropped (and CLDR-strings vocabularies unless the language
    is
    the country's main one); when nothing is left the official languages are
    tried, then English. Weights are CLDR population percents (they may sum to more than 100).
    """
    entries = get_global("territory_languages").get(iso, {})
    top = max(entries, key=lambda c: float(entries[c].get("population_percent") or 0.0), default="")
    merged: dict[str, float] = {}
    for code, info in entries.items():
        pct = float(info.get("population_percent") or 0.0)
        lang = resolve_language(code)
        vocab = vocabulary(lang) if lang is not None and pct >= min_percent else None
        # a CLDR-strings vocabulary is thin: only use it for a country's main language (Thai in TH)
        if vocab is None or (vocab.source == "cldr" and code != top):
            continue
        merged[vocab.lang] = max(merged.get(vocab.lang, 0.0), pct)
    if not merged:
        for code, info in entries.items():
            lang = resolve_language(code)
            if info.get("official_status") and lang and vocabulary(lang) is not None:
                merged[lang] = 1.0
    return tuple(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))) or (("en", 1.0),)


def english_percent(iso: str) -> float:
    """CLDR share of a country's population that uses English, in percent."""
    info = get_global("territory_languages").get(iso, {}).get("en") or {}
    return float(info.get("population_percent") or 0.0)
