"""Personas (the ``category`` label): their emoji and hashtag words, from the emoji package.

Each persona has a handful of English keywords; the emoji whose CLDR English name contains one of
them are
the persona's emoji, and their localized CLDR names (emoji package: 14 languages) are its hashtag
words
("💄 lipstick" -> #batom in Portuguese). General emoji (faces, hearts, sparkles) are shared by
everyone.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache, lru_cache

from embedder.labels import CATEGORIES

logger = logging.getLogger(__name__)

#: English keywords matched against emoji names (whole words).
PERSONA_KEYWORDS: dict[str, tuple[str, ...]] = {
    "fashion": ("dress", "shirt", "shoe", "handbag", "purse", "ring", "sunglasses", "jeans", "coat",
                "scarf", "kimono", "sari", "boot", "gem", "necktie", "lipstick"),
    "beauty": ("lipstick", "nail", "kiss", "sparkles", "haircut", "massage", "mirror", "lotion",
               "hibiscus", "rose", "bouquet", "bubbles"),
    "travel": ("airplane", "beach", "island", "mountain", "luggage", "camping", "compass", "map",
               "passport", "ship", "sunrise", "camera", "palm", "volcano", "tent"),
    "food": ("pizza", "burger", "taco", "sushi", "coffee", "cake", "bread", "wine", "cooking",
             "curry", "ramen", "croissant", "avocado", "cheese", "chef", "spaghetti"),
    "fitness": ("weight", "running", "biking", "flexed", "swimming", "yoga", "person lifting",
                "boxing", "sports", "muscle", "trophy", "soccer", "basketball"),
    "music": ("musical", "guitar", "microphone", "headphone", "piano", "violin", "drum",
              "saxophone", "trumpet", "notes", "radio", "studio"),
    "gaming": ("video game", "joystick", "game die", "controller", "alien", "robot",
               "space invader", "crossed swords", "trophy", "laptop", "desktop"),
    "parenting": ("baby", "child", "family", "teddy", "pregnant", "breast", "bottle", "girl", "boy",
                  "balloon", "nursery"),
    "business": ("briefcase", "chart", "money", "dollar", "office", "handshake", "rocket", "memo",
                 "calendar", "bank", "light bulb", "laptop", "envelope"),
}  # fmt: skip
#: Keywords of emoji every persona uses.
GENERAL_KEYWORDS = ("heart", "smiling", "grinning", "sparkles", "fire", "folded hands", "star",
                    "tears of joy", "hundred", "clapping", "thumbs up", "party", "sun")  # fmt: skip
#: Languages the emoji package has localized names for.
EMOJI_LANGUAGES = ("es", "ja", "ko", "pt", "it", "fr", "de", "fa", "id", "zh", "ru", "tr", "ar")


@dataclass(frozen=True)
class PersonaData:
    """The emoji of one persona and hashtag words per language.

    Attributes:
        emoji: the persona's emoji.
        tags: language -> hashtag words (localized emoji names); "en" always present.
    """

    emoji: tuple[str, ...]
    tags: dict[str, tuple[str, ...]]


@cache
def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str]:
    # One alternation per keyword set, compiled once: the table is built at every simulator start
    # (the server's warm-up included), and a search per keyword per emoji cost ~0.5 s of it.
    return re.compile(r"\b(?:" + "|".join(re.escape(k) for k in keywords) + r")(?:e?s)?\b")


def _matches(name: str, keywords: tuple[str, ...]) -> bool:
    """Whether one of ``keywords`` (or its plural) is a whole word of the emoji name."""
    words = name.strip(":").replace("_", " ").lower()
    return _keyword_pattern(keywords).search(words) is not None


def _is_candidate(emj: str, data: dict) -> bool:
    # fully-qualified, not a flag, no skin-tone/ZWJ variants: the forms people type most
    return (
        data.get("status") == 2
        and len(emj) <= 2
        and not any("\U0001f3fb" <= c <= "\U0001f3ff" for c in emj)
        and not ("\U0001f1e6" <= emj[0] <= "\U0001f1ff")
        and float(data.get("E", 99)) <= 13
    )


def _tag(name: str) -> str:
    return re.sub(r"[\s_\-:’'.,!()&]+", "", name.lower())


@lru_cache(maxsize=1)
def persona_table() -> tuple[dict[str, PersonaData], tuple[str, ...]]:
    """Return ({persona: PersonaData}, general emoji) built from the emoji package."""
    import emoji

    for lang in EMOJI_LANGUAGES:
        emoji.config.load_language(lang)
    items = sorted((e, d) for e, d in emoji.EMOJI_DATA.items() if _is_candidate(e, d))
    table = {}
    for persona in CATEGORIES:
        chosen = [(e, d) for e, d in items if _matches(d["en"], PERSONA_KEYWORDS[persona])]
        tags: dict[str, tuple[str, ...]] = {}
        for lang in ("en", *EMOJI_LANGUAGES):
            # short names only: people tag #guitar, not #personliftingweightsmediumskintone
            names = (d[lang] for _, d in chosen if lang in d and len(d[lang].split("_")) <= 2)
            words = {_tag(n): None for n in names if len(_tag(n)) <= 14}
            tags[lang] = tuple(w for w in words if w)
        table[persona] = PersonaData(emoji=tuple(e for e, _ in chosen), tags=tags)
    general = tuple(e for e, d in items if _matches(d["en"], GENERAL_KEYWORDS))
    logger.info("personas: %s", {p: len(v.emoji) for p, v in table.items()})
    return table, general
