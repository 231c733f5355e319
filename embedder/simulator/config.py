"""``SimulatorConfig``: every rate and share of the simulator, with documented defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from embedder.errors import InvalidInputError
from embedder.labels import CATEGORIES
from embedder.simulator.priors import DEFAULT_PRIOR_PERCENT

#: P(cue type | the profile carries cues). Each type is drawn independently (often several).
DEFAULT_CUE_RATES: Mapping[str, float] = MappingProxyType({
    "city": 0.45, "region": 0.10, "country_name": 0.22, "flag": 0.35, "pattern": 0.30,
    "phone": 0.05, "currency": 0.06, "cctld": 0.08, "travel": 0.08, "expat": 0.03,
    "multi_city": 0.02,
})  # fmt: skip
#: P(main language is English) on top of CLDR shares: lingua-franca use on Instagram.
DEFAULT_ENGLISH_RATE: Mapping[str, float] = MappingProxyType({
    "IN": 0.45, "PH": 0.50, "NG": 0.70, "MY": 0.35, "AE": 0.50, "SA": 0.15, "EG": 0.12,
    "NL": 0.30, "SE": 0.30, "BE": 0.20, "CH": 0.20, "DE": 0.12, "PT": 0.12, "PL": 0.10,
    "ID": 0.12, "TH": 0.12, "VN": 0.10, "KR": 0.08, "JP": 0.06, "FR": 0.08, "IT": 0.08,
    "ES": 0.08, "TR": 0.08, "BR": 0.06, "MX": 0.07, "AR": 0.06, "CO": 0.07, "CL": 0.06,
    "PE": 0.06, "RU": 0.05, "UA": 0.08, "ZA": 0.40,
})  # fmt: skip
#: Persona shares (the ``category`` label).
DEFAULT_PERSONA_WEIGHTS: Mapping[str, float] = MappingProxyType({
    "fashion": 0.14, "beauty": 0.12, "travel": 0.10, "food": 0.13, "fitness": 0.11,
    "music": 0.10, "gaming": 0.08, "parenting": 0.08, "business": 0.14,
})  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """All knobs of the simulator (see docs/SIMULATOR.md for what each default is based on).

    Attributes:
        prior_percent: percent of profiles per target country; OTHER gets the rest.
        persona_weights: relative weight of each category.
        english_rate: P(main language English) per country; others use ``english_rate_default``
            plus half the CLDR English share (capped at 0.5).
        english_rate_default: base lingua-franca rate for countries not listed.
        code_switch_rate: P(a caption is in another language than the profile's main one).
        cue_free_share: share of profiles with no planted location cue at all.
        cue_rates: P(cue type | profile has cues); at least one is forced.
        label_noise: share of profiles whose country label is replaced by a random draw from the
        prior.
        single_post_share: share of "one short post, no bio" profiles.
        bio_share: P(bio present) for the other profiles.
        caption_count_weights: relative weights of 0..5 captions for the other profiles.
        cue_in_bio: P(a cue goes to the bio rather than a caption) when both exist.
        decoy_rate: P(a location-pattern template filled with a non-place word: "📍 new drop").
        city_population_exponent: cities are drawn with weight population ** this.
        real_name_share: P(a profile's display name and username come from real names of its
            country, ``embedder.simulator.names``) rather than random words.
        name_mention_share: P(an @mention is a friend's real name from the profile's country).
        foreign_name_share: P(a real display name and username are drawn from the names of a
            country drawn from the prior instead of the profile's own (migrants, diasporas, names
            shared across borders): at 1 a name says nothing about the label).
        same_language_name_share: P(a real display name and username are drawn from the names
            of the country of a random profile written in the same main language (a Portuguese
            profile's name is Brazilian or Portuguese, an English one's American, Indian,
            British, ...): a name then tells the language area, not the country).
    """

    prior_percent: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PRIOR_PERCENT))
    persona_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_PERSONA_WEIGHTS)
    )
    english_rate: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_ENGLISH_RATE))
    english_rate_default: float = 0.08
    code_switch_rate: float = 0.15
    cue_free_share: float = 1 / 3
    cue_rates: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CUE_RATES))
    label_noise: float = 0.02
    single_post_share: float = 0.18
    bio_share: float = 0.85
    caption_count_weights: tuple[float, ...] = (0.12, 0.16, 0.16, 0.14, 0.12, 0.30)
    cue_in_bio: float = 0.6
    decoy_rate: float = 0.06
    city_population_exponent: float = 0.9
    real_name_share: float = 0.0
    name_mention_share: float = 0.0
    foreign_name_share: float = 0.0
    same_language_name_share: float = 0.0

    def __post_init__(self) -> None:
        rates = {
            "english_rate_default": self.english_rate_default,
            "code_switch_rate": self.code_switch_rate,
            "cue_free_share": self.cue_free_share,
            "label_noise": self.label_noise,
            "single_post_share": self.single_post_share,
            "bio_share": self.bio_share,
            "cue_in_bio": self.cue_in_bio,
            "decoy_rate": self.decoy_rate,
            "real_name_share": self.real_name_share,
            "name_mention_share": self.name_mention_share,
            "foreign_name_share": self.foreign_name_share,
            "same_language_name_share": self.same_language_name_share,
            **{f"english_rate[{k}]": v for k, v in self.english_rate.items()},
            **{f"cue_rates[{k}]": v for k, v in self.cue_rates.items()},
        }
        for name, value in rates.items():
            if not 0.0 <= float(value) <= 1.0:
                raise InvalidInputError(f"SimulatorConfig.{name} must be in [0, 1], got {value!r}")
        if self.foreign_name_share > 0 and self.same_language_name_share > 0:
            raise InvalidInputError(
                "SimulatorConfig: set at most one of foreign_name_share and "
                f"same_language_name_share (where a real name comes from), got "
                f"{self.foreign_name_share!r} and {self.same_language_name_share!r}"
            )
        unknown = sorted(set(self.cue_rates) - set(DEFAULT_CUE_RATES))
        if unknown:
            raise InvalidInputError(
                f"unknown cue types {unknown}; allowed {sorted(DEFAULT_CUE_RATES)}"
            )
        if set(self.persona_weights) - set(CATEGORIES) or not any(self.persona_weights.values()):
            raise InvalidInputError(
                f"persona_weights keys must be among {CATEGORIES} with a positive weight, "
                f"got {dict(self.persona_weights)}"
            )
        bad_iso = sorted(k for k in self.english_rate if len(k) != 2 or not k.isupper())
        if bad_iso:
            raise InvalidInputError(f"english_rate keys must be ISO alpha-2 codes, got {bad_iso}")
        if len(self.caption_count_weights) != 6 or min(self.caption_count_weights) < 0:
            raise InvalidInputError(
                f"caption_count_weights needs 6 non-negative weights (0..5 captions), "
                f"got {self.caption_count_weights!r}"
            )
