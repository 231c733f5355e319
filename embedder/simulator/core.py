"""The simulator: ``simulate_profiles`` draws labelled profiles, ``write_corpus`` writes a corpus
folder.

Every profile has its own ``random.Random`` seeded from ``(seed, stream, index)`` (string seeds are
hashed
with SHA-512 by the standard library, independent of ``PYTHONHASHSEED``), so the output is the same
bytes for
the same seed, and profile ``i`` does not depend on how many profiles are drawn.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import accumulate, pairwise
from typing import Any

from embedder.data import LabelledProfile
from embedder.errors import InvalidInputError
from embedder.labels import CATEGORIES, to_geo_label
from embedder.profile import Profile
from embedder.simulator.config import SimulatorConfig
from embedder.simulator.cues import Cue, CuePlanter
from embedder.simulator.gazetteer import Country, load_gazetteer
from embedder.simulator.language import Vocabulary, country_languages, english_percent, vocabulary
from embedder.simulator.names import display_name, handle_words, names_for
from embedder.simulator.persona import persona_table
from embedder.simulator.priors import CountryPrior, build_prior
from embedder.simulator.sampling import pick_cum
from embedder.simulator.text import Style, compose_bio, compose_caption, make_handle

__all__ = ["Simulator", "SimulatorConfig", "simulate_profiles", "simulated_texts"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Draft:
    """The latent facts of one profile before its text is written."""

    country: Country
    lang: str
    persona: str
    single_post: bool
    has_bio: bool
    n_captions: int


class Simulator:
    """Draws profiles; tables are loaded once per instance.

    Args:
        config: the knobs.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()

    @cached_property
    def prior(self) -> CountryPrior:
        """The country sampling table."""
        return build_prior(self.config.prior_percent)

    @cached_property
    def _tables(self) -> tuple[dict[str, Country], CuePlanter, dict, tuple[str, ...], Vocabulary]:
        personas, general = persona_table()
        english = vocabulary("en")
        assert english is not None  # wordfreq always ships English
        return load_gazetteer(), CuePlanter(self.config, self.prior), personas, general, english

    def english_rate(self, iso: str) -> float:
        """P(main language English) for a country: configured, else derived from CLDR's English
        share."""
        if iso in self.config.english_rate:
            return float(self.config.english_rate[iso])
        return min(0.5, self.config.english_rate_default + english_percent(iso) / 200.0)

    def language_share(self, iso: str, lang: str) -> float:
        """P(a profile of ``iso`` writes mainly in ``lang``), as ``_draft`` draws it."""
        english = self.english_rate(iso)
        langs = country_languages(iso)
        total = sum(w for _, w in langs) or 1.0
        other = (1.0 - english) * sum(w for lg, w in langs if lg == lang) / total
        return (english if lang == "en" else 0.0) + other

    def writers_of(self, lang: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """Countries weighted by how many simulated profiles write mainly in ``lang``: the
        country of a random profile in that language (ISO codes and cumulative weights; both
        empty for a language no profile writes)."""
        if lang not in self._writers:
            shares = (c - p for p, c in pairwise((0.0, *self.prior.cum)))
            weights = {
                iso: s * self.language_share(iso, lang)
                for iso, s in zip(self.prior.isos, shares, strict=True)
            }
            weights = {iso: w for iso, w in weights.items() if w > 0}
            total = sum(weights.values())
            self._writers[lang] = (
                tuple(weights),
                tuple(accumulate(w / total for w in weights.values())),
            )
        return self._writers[lang]

    @cached_property
    def _writers(self) -> dict[str, tuple[tuple[str, ...], tuple[float, ...]]]:
        return {}

    def _draft(self, rng: random.Random, iso: str | None = None) -> _Draft:
        gaz = self._tables[0]
        iso = iso or pick_cum(rng, self.prior.isos, self.prior.cum)
        weights = self.config.persona_weights
        persona = rng.choices(CATEGORIES, weights=[weights.get(c, 0.0) for c in CATEGORIES])[0]
        if rng.random() < self.english_rate(iso):
            lang = "en"
        else:
            langs = country_languages(iso)
            lang = rng.choices([lg for lg, _ in langs], weights=[w for _, w in langs])[0]
        single = rng.random() < self.config.single_post_share
        if single:
            return _Draft(gaz[iso], lang, persona, True, False, 1)
        has_bio = rng.random() < self.config.bio_share
        n = rng.choices(range(6), weights=self.config.caption_count_weights)[0]
        if not has_bio and n == 0:
            n = 1
        return _Draft(gaz[iso], lang, persona, False, has_bio, n)

    def _caption_language(self, rng: random.Random, draft: _Draft) -> str:
        if rng.random() >= self.config.code_switch_rate:
            return draft.lang
        if draft.lang != "en":
            return "en"
        others = [lg for lg, _ in country_languages(draft.country.iso) if lg != "en"]
        return others[0] if others else "en"

    def profile(
        self, seed: int, stream: str, index: int, *, iso: str | None = None
    ) -> LabelledProfile:
        """Draw profile ``index`` of a stream (``iso`` forces the true country, for audiences)."""
        rng = random.Random(f"{seed}/{stream}/{index}")
        _, planter, personas, general, english = self._tables
        d = self._draft(rng, iso)
        vocab = vocabulary(d.lang) or english
        persona = personas[d.persona]
        latin = vocab if vocab.script == "Latn" and len(vocab.words) > 2500 else english
        seeds = [*latin.content_words(rng, 2), rng.choice(persona.tags["en"] or ("me",))]
        cfg = self.config
        names = None
        if cfg.real_name_share > 0 or cfg.name_mention_share > 0:  # else: the old draws, exactly
            names = names_for(d.country.iso, rng)
        # the names this profile is itself named from (None: random words, as before)
        own = names if names is not None and rng.random() < cfg.real_name_share else None
        if own is not None and cfg.foreign_name_share > 0:  # else no draw: old corpora unchanged
            if rng.random() < cfg.foreign_name_share:
                own = names_for(pick_cum(rng, self.prior.isos, self.prior.cum), rng)
        if own is not None and cfg.same_language_name_share > 0:
            isos, cum = self.writers_of(d.lang)
            if isos and rng.random() < cfg.same_language_name_share:
                own = names_for(pick_cum(rng, isos, cum), rng)
        if own is not None:
            seeds = handle_words(rng, own) or seeds
        handle = make_handle(rng, seeds)
        style = Style(vocab, persona, general, handle, latin, names, cfg.name_mention_share)
        cues = planter.plant(rng, planter.draw_types(rng), d.country, d.lang, handle)
        bio_cues: list[str] = []
        cap_cues: list[str] = []
        for c in cues:
            to_bio = d.has_bio and (c.where == "bio" or d.n_captions == 0)
            (bio_cues if to_bio else cap_cues).append(c.text)
        if rng.random() < self.config.decoy_rate:
            decoy = planter.decoy(rng, d.lang, vocab.content_words(rng, 1)[0])
            (bio_cues if d.has_bio else cap_cues).append(decoy)
        bio = compose_bio(rng, style, bio_cues)[0] if d.has_bio else ""
        captions = self._captions(rng, d, style, cap_cues)
        text = "\n".join((bio, *captions))
        planted = [c for c in cues if c.text in text]
        full_name = display_name(rng, own) if own is not None else None
        return self._labelled(
            rng, seed, stream, index, d, handle, bio, captions, planted, full_name
        )

    def _captions(
        self, rng: random.Random, d: _Draft, style: Style, cue_texts: list[str]
    ) -> tuple[str, ...]:
        per_caption: list[list[str]] = [[] for _ in range(d.n_captions)]
        for text in cue_texts:
            per_caption[rng.randrange(d.n_captions)].append(text)
        out = []
        for frags in per_caption:
            lang = self._caption_language(rng, d)
            v = vocabulary(lang) or style.vocab
            short = d.single_post or rng.random() < 0.4
            out.append(compose_caption(rng, replace(style, vocab=v), frags, short=short))
        return tuple(out)

    def _labelled(
        self,
        rng: random.Random,
        seed: int,
        stream: str,
        index: int,
        d: _Draft,
        handle: str,
        bio: str,
        captions: tuple[str, ...],
        cues: list[Cue],
        real_full_name: str | None = None,
    ) -> LabelledProfile:
        iso = d.country.iso
        noisy = rng.random() < self.config.label_noise
        # label noise: the written label is a random draw; country_iso keeps the truth
        label = to_geo_label(pick_cum(rng, self.prior.isos, self.prior.cum) if noisy else iso)
        named = not d.single_post or rng.random() < 0.5
        full_name = ""
        if named and rng.random() < 0.7:
            # the words are drawn either way, so the draws after them do not depend on the names
            words = " ".join(w.capitalize() for w in _name_words(rng, d, 2))
            full_name = words if real_full_name is None else real_full_name
        extra = {
            "country_iso": iso,
            "language": d.lang,
            "cues": [c.type for c in cues],
            "cue_text": [c.text for c in cues],
            "label_noise": noisy,
        }
        profile = Profile(
            id=f"sim-{seed}-{stream}-{index:07d}",
            username=handle if named else "",
            full_name=full_name,
            biography=bio,
            captions=captions,
            extra=extra,
        )
        return LabelledProfile(profile=profile, labels={"country": label, "category": d.persona})

    def iter_profiles(
        self, n: int, seed: int, stream: str = "main", start: int = 0
    ) -> Iterator[LabelledProfile]:
        """Yield profiles ``start .. start + n - 1`` of a stream."""
        for i in range(start, start + n):
            yield self.profile(seed, stream, i)


def _name_words(rng: random.Random, d: _Draft, k: int) -> list[str]:
    vocab = vocabulary(d.lang) or vocabulary("en")
    assert vocab is not None
    return vocab.content_words(rng, rng.randint(1, k))


def simulate_profiles(
    n: int,
    seed: int,
    config: SimulatorConfig | None = None,
    *,
    stream: str = "main",
    progress: Callable[[int], None] | None = None,
) -> list[LabelledProfile]:
    """Draw ``n`` labelled profiles.

    Args:
        n: number of profiles (>= 0).
        seed: random seed; the same seed gives the same profiles.
        config: simulator knobs (defaults: ``SimulatorConfig()``).
        stream: name of an independent stream of profiles ("main", "test", ...), part of each id.
        progress: called with 1 after each profile (e.g. ``tqdm.update``).

    Returns:
        Profiles with labels ``country`` (GEO label) and ``category``, and extras ``country_iso``
        (the true country, also under label noise),
        ``language``, ``cues``, ``cue_text``, ``label_noise``.

    Raises:
        InvalidInputError: when ``n`` is negative.
    """
    if n < 0:
        raise InvalidInputError(f"n must be >= 0, got {n}")
    sim = Simulator(config)
    out = []
    for row in sim.iter_profiles(n, seed, stream):
        out.append(row)
        if progress is not None:
            progress(1)
    return out


def simulated_texts(
    assemble: Callable[[list[Any]], list[str]], n: int, *, seed: int, stream: str
) -> list[str]:
    """``n`` profiles of one stream, turned into encoder inputs by ``assemble`` (an encoder's
    ``assemble``): the workload of speed probes and int8 calibration, never training data."""
    return list(assemble([r.profile for r in simulate_profiles(n, seed, stream=stream)]))
