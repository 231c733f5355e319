"""The ``Profile`` record and how it becomes one encoder input.

A profile is the text a human analyst would read: name, username, bio and the most recent captions.
``assemble_texts`` turns it into one string with field markers and a per-field token budget, so
a 2,200 character first caption cannot crowd the bio or the other captions out of the
encoder's window.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from embedder.errors import InvalidInputError

logger = logging.getLogger(__name__)

#: Captions beyond this many are dropped (the input lists the most recent first).
MAX_CAPTIONS = 5
#: Fields of a profile that are fed to the encoder; every other key is kept in ``extra``.
TEXT_FIELDS = ("username", "full_name", "biography", "captions")
#: Upper bound on characters kept per field before tokenizing: a 1 MB bio costs nothing.
_CHARS_PER_TOKEN_BOUND = 24
#: A web address with its scheme: group 1 is scheme, host and port, group 2 its path, query or
#: fragment. The path takes only characters a URL may hold (RFC 3986's, ASCII) and never ends in
#: other punctuation than ")", so what is glued after a link stays: "https://x.co/a.",
#: "...x.co/a📍Lyon". A closing bracket is the link's only while the path opened it
#: (``_cut_link``): "(see https://x.co/a)" keeps its ")", ".../wiki/Lyon_(ville)" does not.
_LINK = re.compile(
    r"(https?://[\w-]+(?:\.[\w-]+)*(?::\d+)?)"
    r"([/?#][A-Za-z0-9\-._~%!$&'()*+,;=:@/?#\[\]]*[A-Za-z0-9\-_~%$&*+=@/#)])?",
    re.IGNORECASE,
)
#: An @handle in text (not an e-mail address: nothing of a word may come before the @).
_MENTION = re.compile(r"(?<![\w@])@\w+(?:\.\w+)*")
#: What ``mask_mentions`` writes instead of each handle.
MENTION_MASK = "@user"


@dataclass(frozen=True)
class Profile:
    """One social-media profile.

    Attributes:
        id: the caller's identifier, echoed in every output.
        username: the handle, without ``@``.
        full_name: the display name.
        biography: the bio (Instagram allows 150 characters; longer text is accepted and truncated).
        captions: the most recent captions, newest first, at most ``MAX_CAPTIONS``.
        extra: any other fields of the input record, kept for the caller, never fed to the encoder.
    """

    id: str
    username: str = ""
    full_name: str = ""
    biography: str = ""
    captions: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_dict(
        cls,
        record: Mapping[str, Any],
        *,
        source: str | None = None,
        line: int | None = None,
        extra_exclude: Sequence[str] = (),
    ) -> tuple[Profile, int]:
        """Validate a JSON-like record and build a profile.

        Args:
            record: mapping with ``id`` and optional text fields.
            source: file or request name used in error messages.
            line: line / row / item number used in error messages.
            extra_exclude: keys that are neither text fields nor ``extra`` (labels, handled by
                the caller).

        Returns:
            The profile and the number of captions dropped beyond ``MAX_CAPTIONS``.

        Raises:
            InvalidInputError: naming the source, line and field, on a missing id or a wrongly
                typed field.
        """
        if not isinstance(record, Mapping):
            raise InvalidInputError(
                f"expected a JSON object, got {type(record).__name__}", source=source, line=line
            )
        raw_id = record.get("id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id) == "":
            raise InvalidInputError(
                f"'id' must be a non-empty string or integer, got {raw_id!r}",
                source=source,
                line=line,
                field="id",
            )
        texts: dict[str, str] = {}
        for name in ("username", "full_name", "biography"):
            value = record.get(name)
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise InvalidInputError(
                    f"must be a string or null, got {type(value).__name__} {_short(value)}",
                    source=source,
                    line=line,
                    field=name,
                )
            _check_text(value, name, source, line)
            texts[name] = value
        if isinstance(raw_id, str):
            _check_text(raw_id, "id", source, line)
        captions, dropped = _validate_captions(record.get("captions"), source=source, line=line)
        skip = {"id", *TEXT_FIELDS, *extra_exclude}
        extra = {k: v for k, v in record.items() if k not in skip}
        profile = cls(id=str(raw_id), captions=captions, extra=extra, **texts)
        return profile, dropped

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready record (extra fields included)."""
        return {
            "id": self.id,
            "username": self.username,
            "full_name": self.full_name,
            "biography": self.biography,
            "captions": list(self.captions),
            **dict(self.extra),
        }


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_text(value: str, field: str, source: str | None, line: int | None) -> None:
    """Refuse a string that is not text: a lone surrogate (JSON's ``"\\ud800"`` escape, which
    Python's json accepts) that no tokenizer, file or gRPC message can carry."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(
            f"holds the lone surrogate {value[err.start]!r} at character {err.start}, which is "
            "not text; a character outside the BMP must be escaped as a surrogate pair",
            source=source,
            line=line,
            field=field,
        ) from None


def _validate_captions(
    value: Any, *, source: str | None, line: int | None
) -> tuple[tuple[str, ...], int]:
    if value is None:
        return (), 0
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidInputError(
            f"must be a list of strings (newest first), got {type(value).__name__} {_short(value)}",
            source=source,
            line=line,
            field="captions",
        )
    captions = []
    for i, caption in enumerate(value):
        if caption is None:
            caption = ""
        if not isinstance(caption, str):
            raise InvalidInputError(
                f"must be a string, got {type(caption).__name__} {_short(caption)}",
                source=source,
                line=line,
                field=f"captions[{i}]",
            )
        _check_text(caption, f"captions[{i}]", source, line)
        captions.append(caption)
    dropped = max(0, len(captions) - MAX_CAPTIONS)
    return tuple(captions[:MAX_CAPTIONS]), dropped


class _Tokenizer(Protocol):
    def __call__(self, text: list[str], **kwargs: Any) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class AssemblyConfig:
    """How a profile becomes one encoder input. Part of the ``embedding_version``.

    Attributes:
        max_tokens: content tokens for the whole profile (special tokens and markers come on top).
        bio_tokens: the most the name, username and bio may take; what they leave goes to captions.
        prefix: the base model's passage prefix (multilingual-e5 was trained with ``"passage: "``).
        bio_marker: marker before the bio.
        caption_marker: marker before each caption.
        link_hosts_only: cut every ``http(s)://`` address to its scheme and host
            (``http://t.co/8Bj6zaWx`` -> ``http://t.co``). What follows the host in a shared link
            is mostly a shortener's code or a tracking id, random pieces that take a short post's
            token budget and move its embedding away from anything seen in training; the host
            (``loja.com.br``) keeps the country its domain names. Off in models saved before the
            setting existed, which keep their ``embedding_version``.
        mask_mentions: write every ``@handle`` in the bio and the captions as ``@user`` (the
            profile's own username, in the header, is kept). A mentioned friend's handle is
            mostly letters and digits the encoder reads as a foreign name; off in models saved
            before the setting existed.
        ignore_names: leave the display name and username out: the encoder reads the bio and
            the captions only. A model fine-tuned on simulated profiles, whose names are random
            words of the profile's language, reads a real name as a word of a language ("Maria"
            as Portuguese); on real profile headers that cost about 5 points of accuracy (4.9 to
            5.2 on three builds, docs/TRAINING_EXPERIMENTS.md, "Twenty-fourth session"). Off in
            models saved before the setting existed.
    """

    max_tokens: int = 192
    bio_tokens: int = 64
    prefix: str = "passage: "
    bio_marker: str = "bio:"
    caption_marker: str = "post:"
    link_hosts_only: bool = False
    mask_mentions: bool = False
    ignore_names: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens must be >= 8, got {self.max_tokens}")
        if not 0 < self.bio_tokens <= self.max_tokens:
            raise ValueError(
                f"bio_tokens must be in 1..max_tokens ({self.max_tokens}), got {self.bio_tokens}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready settings. ``link_hosts_only``, ``mask_mentions`` and
        ``ignore_names`` appear only when on, so the settings, and with them the
        ``embedding_version``, of models saved before they existed are unchanged."""
        out: dict[str, Any] = {
            "max_tokens": self.max_tokens,
            "bio_tokens": self.bio_tokens,
            "prefix": self.prefix,
            "bio_marker": self.bio_marker,
            "caption_marker": self.caption_marker,
        }
        if self.link_hosts_only:
            out["link_hosts_only"] = True
        if self.mask_mentions:
            out["mask_mentions"] = True
        if self.ignore_names:
            out["ignore_names"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AssemblyConfig:
        """Build settings from ``to_dict`` output."""
        return cls(**dict(data))

    @property
    def marker_overhead(self) -> int:
        """A safe bound on tokens taken by prefix and markers (for the max sequence length)."""
        return 8 + 4 * (MAX_CAPTIONS + 1)


def _cut_link(match: re.Match[str]) -> str:
    path = match.group(2) or ""
    unopened = 0  # closing brackets at the path's end that nothing in it opened: the text's
    while path.endswith(")") and path.count(")") > path.count("("):
        path, unopened = path[:-1], unopened + 1
    return match.group(1) + ")" * unopened


def link_hosts(text: str) -> str:
    """``text`` with every ``http(s)://`` address cut to its scheme and host."""
    return _LINK.sub(_cut_link, text) if "://" in text else text


def mask_mentions(text: str) -> str:
    """``text`` with every ``@handle`` written as ``@user``."""
    return _MENTION.sub(MENTION_MASK, text) if "@" in text else text


def _clean(text: str, config: AssemblyConfig) -> str:
    if config.link_hosts_only:
        text = link_hosts(text)
    if config.mask_mentions:
        text = mask_mentions(text)
    return text


def _header(profile: Profile) -> str:
    parts = [profile.full_name.strip()]
    if profile.username.strip():
        parts.append("@" + profile.username.strip().lstrip("@"))
    return " ".join(p for p in parts if p)


def _share(lengths: list[int], budget: int) -> list[int]:
    """Water-filling: each caption gets an equal share; what short ones leave goes to long ones."""
    alloc = [0] * len(lengths)
    remaining = budget
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for rank, i in enumerate(order):
        fair = remaining // (len(lengths) - rank)
        alloc[i] = min(lengths[i], fair)
        remaining -= alloc[i]
    return alloc


def assemble_texts(
    profiles: Sequence[Profile], tokenizer: _Tokenizer, config: AssemblyConfig
) -> list[str]:
    """Turn profiles into encoder inputs, truncating each field to its token budget.

    Args:
        profiles: the profiles, in order.
        tokenizer: a Hugging Face fast tokenizer (used only to count and cut tokens).
        config: the assembly settings.

    Returns:
        One string per profile. An empty profile gives the bare prefix, which is a valid input.
    """
    char_cap = config.max_tokens * _CHARS_PER_TOKEN_BOUND
    clean = config.link_hosts_only or config.mask_mentions
    fields: list[list[str]] = []
    for p in profiles:
        head = "" if config.ignore_names else _header(p)
        bio, captions = p.biography[:char_cap], [c[:char_cap] for c in p.captions]
        if clean:  # the text only: the header's @username is the profile's own
            bio, captions = _clean(bio, config), [_clean(c, config) for c in captions]
        bio = f"{head}\n{bio}" if head else bio
        fields.append([bio[:char_cap], *captions])
    offsets = token_offsets(tokenizer, [t for f in fields for t in f])
    texts = []
    pos = 0
    for f in fields:
        spans = offsets[pos : pos + len(f)]
        pos += len(f)
        bio_len = min(len(spans[0]), config.bio_tokens)
        caption_budget = config.max_tokens - bio_len
        allocs = [bio_len, *_share([len(s) for s in spans[1:]], caption_budget)]
        cut = [_cut(text, span, n) for text, span, n in zip(f, spans, allocs, strict=True)]
        texts.append(_join(cut, config))
    return texts


def token_offsets(tokenizer: _Tokenizer, texts: list[str]) -> list[list[tuple[int, int]]]:
    """The character span of each token of each text (no special tokens, no truncation).

    A fast tokenizer's Rust tokenizer is called directly: the Hugging Face wrapper's conversion of
    each result to Python dicts took 0.62 s of 1.62 s of assembling 6,000 simulated profiles
    (cProfile), and the spans are the same (``tests/test_profile.py``). The wrapper sets the
    truncation and padding it needs on each of its own calls, so setting them here is safe under
    the same lock that already serialises calls to a shared tokenizer
    (``ProfileEncoder._tok_lock``).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        encoded = tokenizer(
            texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return list(encoded["offset_mapping"])
    backend.no_truncation()
    backend.no_padding()
    return [e.offsets for e in backend.encode_batch(texts, add_special_tokens=False)]


def _cut(text: str, spans: Sequence[tuple[int, int]], n_tokens: int) -> str:
    if n_tokens >= len(spans):
        return text.strip()
    if n_tokens == 0:
        return ""
    return text[: spans[n_tokens - 1][1]].strip()


def _join(parts: list[str], config: AssemblyConfig) -> str:
    lines = []
    if parts[0]:
        lines.append(f"{config.bio_marker} {parts[0]}")
    lines.extend(f"{config.caption_marker} {c}" for c in parts[1:] if c)
    return config.prefix + "\n".join(lines)


def text_hash(text: str) -> bytes:
    """The cache key part that identifies an assembled text: its SHA-256 digest."""
    return hashlib.sha256(text.encode("utf-8")).digest()
