"""Bio and caption composition with the look of Instagram.

Words are Zipf-sampled from the language's vocabulary; around them go emoji runs, hashtags,
@mentions,
links, numbers and line breaks, in varied order. Cue fragments are inserted at random positions
(start,
middle or end), so position never says "this is the location".
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from embedder.simulator.gazetteer import strip_accents
from embedder.simulator.language import Vocabulary
from embedder.simulator.names import CountryNames, handle_words
from embedder.simulator.persona import PersonaData
from embedder.simulator.sampling import pick

#: Instagram's bio limit.
BIO_MAX_CHARS = 150
#: Instagram's caption limit.
CAPTION_MAX_CHARS = 2200
#: Tags used across every language and persona on Instagram.
GENERIC_TAGS = (
    "instagood",
    "photooftheday",
    "love",
    "instadaily",
    "reels",
    "explore",
    "fyp",
    "tbt",
)
_LINK_HOSTS = ("linktr.ee/{h}", "{h}.com", "youtube.com/@{h}", "beacons.ai/{h}", "tiktok.com/@{h}",
               "bit.ly/{h}", "{h}.store", "lnk.bio/{h}")  # fmt: skip
_BIO_SEPARATORS = ("\n", "\n", " | ", " • ", " ", " ✨ ", " · ", ". ", " / ")
_END_PUNCT = {
    "default": (".", "!", "", "", "...", "!!", "?", " :)"),
    "Jpan": ("。", "！", "", "", "…"), "Hans": ("。", "！", ""), "Hant": ("。", "！", ""),
    "Deva": ("।", "!", "", ""), "Arab": (".", "!", "", "؟", "..."), "Thai": ("", "", "!", "..."),
}  # fmt: skip


@dataclass(frozen=True)
class Style:
    """What one profile writes with: its words, persona emoji and tags.

    Attributes:
        vocab: the language's vocabulary.
        persona: the persona's emoji and localized tag words.
        general_emoji: emoji every persona uses.
        handle: the profile's username (used in links and emails).
        mention_pool: vocabulary (Latin script) to build @mentions from.
        mention_names: real names of the profile's country, for @mentions of friends.
        name_mention_share: P(an @mention is built from ``mention_names``).
    """

    vocab: Vocabulary
    persona: PersonaData
    general_emoji: tuple[str, ...]
    handle: str
    mention_pool: Vocabulary
    mention_names: CountryNames | None = None
    name_mention_share: float = 0.0


def ascii_word(word: str) -> str:
    """Lower-case ASCII letters and digits of a word ("São" -> "sao")."""
    return "".join(c for c in strip_accents(word).lower() if c.isascii() and c.isalnum())


def make_handle(rng: random.Random, words: Sequence[str]) -> str:
    """Build an Instagram-like username from 1-2 ASCII words, separators and digits."""
    parts = [w for w in (ascii_word(x) for x in words) if w][: pick(rng, (1, 2, 2))] or ["user"]
    sep = pick(rng, ("", "", "_", ".", "__"))
    handle = sep.join(parts)
    if rng.random() < 0.45:
        handle += pick(rng, ("", "_", ".")) + str(
            pick(rng, (rng.randint(1, 99), rng.randint(1970, 2012)))
        )
    if rng.random() < 0.1:
        handle = pick(rng, ("the", "its", "real", "official.")) + handle
    return handle[:30]


def emoji_run(rng: random.Random, style: Style, k: int) -> str:
    """``k`` emoji, mostly the persona's, sometimes repeated ("🔥🔥🔥")."""
    out = []
    for _ in range(k):
        pool = (
            style.persona.emoji
            if style.persona.emoji and rng.random() < 0.55
            else style.general_emoji
        )
        e = pick(rng, pool)
        out.append(e * (pick(rng, (2, 3)) if rng.random() < 0.12 else 1))
    return "".join(out)


def hashtags(rng: random.Random, style: Style, k: int) -> str:
    """``k`` hashtags from persona tag words (localized), vocabulary words and generic tags."""
    tags = style.persona.tags
    local = tags.get(style.vocab.lang) or tags["en"]
    out = []
    for _ in range(k):
        r = rng.random()
        if r < 0.4 and local:
            tag = pick(rng, local)
        elif r < 0.55 and tags["en"]:
            tag = pick(rng, tags["en"])
        elif r < 0.7:
            tag = pick(rng, GENERIC_TAGS)
        else:
            tag = "".join(style.vocab.content_words(rng, pick(rng, (1, 1, 2)))).lower()
        out.append("#" + tag)
    return " ".join(out)


def mention(rng: random.Random, style: Style) -> str:
    """An @mention of another (simulated) account: a friend's name, or words."""
    if style.mention_names is not None and rng.random() < style.name_mention_share:
        words = handle_words(rng, style.mention_names)
        if words:
            return "@" + make_handle(rng, words)
    return "@" + make_handle(rng, style.mention_pool.content_words(rng, 2))


def sentence(rng: random.Random, vocab: Vocabulary, n: int) -> str:
    """``n`` Zipf-sampled words with a capital and end punctuation as people type them."""
    text = vocab.joiner.join(vocab.sample(rng, n))
    if vocab.script in ("Latn", "Cyrl", "Grek") and rng.random() < 0.7:
        text = text[:1].upper() + text[1:]
    return text + pick(rng, _END_PUNCT.get(vocab.script, _END_PUNCT["default"]))


def _number(rng: random.Random) -> str:
    return pick(
        rng,
        (
            str(rng.randint(2015, 2025)),
            f"{rng.randint(1, 10)}/10",
            str(rng.randint(2, 99)),
            f"{rng.randint(1, 30)}k",
            f"{rng.randint(5, 90)}%",
            f"#{rng.randint(1, 12)}",
        ),
    )


def _insert(rng: random.Random, chunks: list[str], fragment: str) -> None:
    r = rng.random()
    pos = 0 if r < 0.3 else len(chunks) if r < 0.65 else rng.randint(0, len(chunks))
    chunks.insert(pos, fragment)


def caption_words(rng: random.Random, short: bool) -> int:
    """Words in a caption: log-normal, many short, some long (clipped to 1..300)."""
    mu = math.log(4.0 if short else 8.0)
    return max(1, min(300, int(rng.lognormvariate(mu, 1.0))))


def compose_caption(rng: random.Random, style: Style, cues: Sequence[str], *, short: bool) -> str:
    """One caption: sentences, emoji, mentions, numbers, line breaks, hashtags, and the cue
    fragments."""
    chunks: list[str] = []
    if rng.random() < 0.9:
        left = caption_words(rng, short)
        while left > 0:
            n = min(left, rng.randint(3, 14))
            chunks.append(sentence(rng, style.vocab, n))
            left -= n
            if rng.random() < 0.25:
                chunks.append(emoji_run(rng, style, rng.randint(1, 3)))
            if rng.random() < 0.15:
                chunks.append("\n")
    if not chunks or rng.random() < 0.35:
        chunks.append(emoji_run(rng, style, rng.randint(1, 4)))
    if rng.random() < 0.2:
        _insert(rng, chunks, pick(rng, ("📸 ", "w/ ", "", "")) + mention(rng, style))
    if rng.random() < 0.1:
        _insert(rng, chunks, _number(rng))
    for fragment in cues:
        _insert(rng, chunks, fragment)
    text = " ".join(chunks).replace(" \n ", "\n")
    if rng.random() < 0.55:
        glue = pick(rng, ("\n\n", " ", "\n.\n.\n.\n", "\n"))
        text += glue + hashtags(rng, style, min(30, int(rng.expovariate(1 / 5)) + 1))
    if len(text) > CAPTION_MAX_CHARS:
        text = text[:CAPTION_MAX_CHARS]
    return text.strip()


def _bio_segments(rng: random.Random, style: Style) -> list[str]:
    segs = []
    if rng.random() < 0.7:
        segs.append(
            sentence(rng, style.vocab, rng.randint(2, 8)).rstrip(".")
            if rng.random() < 0.8
            else style.vocab.joiner.join(style.vocab.content_words(rng, rng.randint(1, 3)))
        )
    if rng.random() < 0.6:
        segs.append(emoji_run(rng, style, rng.randint(1, 4)))
    if rng.random() < 0.3:
        segs.append(hashtags(rng, style, rng.randint(1, 3)))
    if rng.random() < 0.2:
        segs.append(mention(rng, style))
    if rng.random() < 0.35:
        segs.append(
            pick(rng, ("", "🔗 ", "👇 ", "⬇️ ")) + pick(rng, _LINK_HOSTS).format(h=style.handle)
        )
    if rng.random() < 0.1:
        segs.append(
            pick(rng, ("📩 ", "✉️ ", ""))
            + f"{style.handle}@{pick(rng, ('gmail.com', 'outlook.com'))}"
        )
    if rng.random() < 0.1:
        segs.append(_number(rng))
    return segs


def compose_bio(rng: random.Random, style: Style, cues: Sequence[str]) -> tuple[str, list[str]]:
    """A bio of at most 150 characters holding as many cue fragments as fit.

    Returns:
        The bio and the cue fragments it actually contains.
    """
    segs: list[tuple[str, bool]] = [(s, False) for s in _bio_segments(rng, style)]
    for fragment in cues:
        segs.insert(rng.randint(0, len(segs)), (fragment, True))
    sep = pick(rng, _BIO_SEPARATORS)
    while len(sep.join(s for s, _ in segs)) > BIO_MAX_CHARS:
        plain = [i for i, (_, is_cue) in enumerate(segs) if not is_cue]
        segs.pop(pick(rng, plain) if plain else len(segs) - 1)
    return sep.join(s for s, _ in segs).strip(), [s for s, is_cue in segs if is_cue]
