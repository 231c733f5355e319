"""On-the-fly profile augmentation for fine-tuning: the degraded inputs the service really sees.

Real requests are often a bare username and one short post, a bio full of emoji, or captions in any
order. Each transform below turns a full simulated profile into one of those, with its own rate.
Randomness comes from a per-(seed, epoch, row) generator, so a run is reproducible and a resumed
run sees exactly the augmentations an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import emoji

from embedder.profile import Profile


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Rates (probability per profile per epoch) of each augmentation.

    Attributes:
        single_post: drop bio, names and all captions but one (the key real-world input:
            no bio, a single short post).
        drop_bio: drop the biography.
        keep_one_caption: keep only one caption (bio and names stay).
        shuffle_captions: shuffle the caption order.
        truncate_captions: cut each caption to a random 20-60% prefix (at least 3 words).
        strip_emoji: remove every emoji from every field.
        drop_names: drop username and full name.
    """

    single_post: float = 0.15
    drop_bio: float = 0.15
    keep_one_caption: float = 0.1
    shuffle_captions: float = 0.3
    truncate_captions: float = 0.15
    strip_emoji: float = 0.1
    drop_names: float = 0.15

    def __post_init__(self) -> None:
        for name, value in self.to_dict().items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation rate '{name}' must be in [0, 1], got {value}")

    def to_dict(self) -> dict[str, float]:
        """Return the JSON-ready rates."""
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Build from ``to_dict`` output."""
        return cls(**{k: float(v) for k, v in data.items()})

    @classmethod
    def none(cls) -> AugmentConfig:
        """All rates zero: the identity."""
        return cls(**dict.fromkeys(cls.__dataclass_fields__, 0.0))


def row_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A generator that depends only on (seed, epoch, row index), never on batch order."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def _strip(text: str) -> str:
    return " ".join(emoji.replace_emoji(text, "").split())


def _truncate(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) <= 3:
        return text
    keep = max(3, round(len(words) * rng.uniform(0.2, 0.6)))
    return " ".join(words[:keep])


def augment_profile(profile: Profile, rng: random.Random, config: AugmentConfig) -> Profile:
    """Return a degraded copy of ``profile`` (never modifies it).

    Args:
        profile: the original profile.
        rng: the random generator for this row (see ``row_rng``).
        config: the rates.

    Returns:
        A new profile; ``id`` and ``extra`` are unchanged.
    """
    username, full_name, bio = profile.username, profile.full_name, profile.biography
    captions = list(profile.captions)
    if captions and rng.random() < config.single_post:
        username, full_name, bio = "", "", ""
        captions = [rng.choice(captions)]
    else:
        # A bio-only profile (or a place snippet) without its bio says nothing: keep its bio.
        if captions and rng.random() < config.drop_bio:
            bio = ""
        if rng.random() < config.drop_names:
            username, full_name = "", ""
        if len(captions) > 1 and rng.random() < config.keep_one_caption:
            captions = [rng.choice(captions)]
    if len(captions) > 1 and rng.random() < config.shuffle_captions:
        rng.shuffle(captions)
    if captions and rng.random() < config.truncate_captions:
        captions = [_truncate(c, rng) for c in captions]
    if rng.random() < config.strip_emoji:
        username, full_name, bio = _strip(username), _strip(full_name), _strip(bio)
        captions = [_strip(c) for c in captions]
    return replace(
        profile, username=username, full_name=full_name, biography=bio, captions=tuple(captions)
    )


def augment_profiles(
    profiles: Sequence[Profile],
    indices: Sequence[int],
    *,
    seed: int,
    epoch: int,
    config: AugmentConfig,
) -> list[Profile]:
    """Augment ``profiles[i]`` for each ``i`` in ``indices`` with that row's own generator.

    Args:
        profiles: the training profiles.
        indices: which rows (a batch), in batch order.
        seed: the run's seed.
        epoch: the 0-based epoch.
        config: the rates.

    Returns:
        The augmented profiles, aligned with ``indices``.
    """
    return [augment_profile(profiles[i], row_rng(seed, epoch, i), config) for i in indices]
