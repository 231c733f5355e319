"""Writing systems: which script a string is in, and which script a language is written in.

A language's script comes from CLDR likely subtags (babel), e.g. ``th -> th_Thai_TH``; a string's
script
from the Unicode character names of its letters. The only table here maps ISO 15924 codes to the
first
word of Unicode character names, which is how Unicode itself names scripts.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import lru_cache

from babel.core import get_global

#: ISO 15924 script code -> first words of the Unicode names of its letters.
_ISO15924_TO_UNICODE: dict[str, tuple[str, ...]] = {
    "Latn": ("LATIN",), "Cyrl": ("CYRILLIC",), "Arab": ("ARABIC",), "Thai": ("THAI",),
    "Kore": ("HANGUL", "CJK"), "Jpan": ("HIRAGANA", "KATAKANA", "CJK"), "Hans": ("CJK",),
    "Hant": ("CJK",), "Deva": ("DEVANAGARI",), "Beng": ("BENGALI",), "Taml": ("TAMIL",),
    "Grek": ("GREEK",), "Hebr": ("HEBREW",), "Telu": ("TELUGU",), "Knda": ("KANNADA",),
    "Mlym": ("MALAYALAM",), "Gujr": ("GUJARATI",), "Guru": ("GURMUKHI",), "Orya": ("ORIYA",),
    "Ethi": ("ETHIOPIC",), "Khmr": ("KHMER",), "Mymr": ("MYANMAR",), "Laoo": ("LAO",),
    "Geor": ("GEORGIAN",), "Armn": ("ARMENIAN",), "Sinh": ("SINHALA",),
}  # fmt: skip


@lru_cache(maxsize=4096)
def char_script(ch: str) -> str:
    """Return the Unicode script word of one letter (``"LATIN"``, ``"CYRILLIC"``...), or ``""``."""
    if not ch.isalpha():
        return ""
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else ""


def text_scripts(text: str) -> Counter[str]:
    """Count the letters of ``text`` per script."""
    return Counter(s for s in map(char_script, text) if s)


def dominant_script(text: str) -> str:
    """Return the script with the most letters in ``text`` (``""`` when it has no letters)."""
    counts = text_scripts(text)
    return counts.most_common(1)[0][0] if counts else ""


@lru_cache(maxsize=512)
def language_script(lang: str) -> str:
    """Return the ISO 15924 script a language is usually written in (CLDR likely subtags)."""
    likely = get_global("likely_subtags")
    full = likely.get(lang) or likely.get(lang.split("_")[0]) or ""
    parts = full.split("_")
    for part in parts[1:]:
        if len(part) == 4 and part.istitle():
            return part
    return "Latn"


def unicode_scripts(iso15924: str) -> tuple[str, ...]:
    """Return the Unicode script words of an ISO 15924 code (``"Latn"`` -> ``("LATIN",)``)."""
    return _ISO15924_TO_UNICODE.get(iso15924, (iso15924.upper(),))


def is_spaceless(iso15924: str) -> bool:
    """True for scripts written without spaces between words (Thai, Japanese, Chinese...)."""
    return iso15924 in {"Thai", "Jpan", "Hans", "Hant", "Khmr", "Laoo", "Mymr"}
