"""The one place where errors become gRPC statuses, and where request limits are checked.

Every servicer method's errors go through :func:`status_for`; stream items use :func:`item_status`.
Both map the project's error tree the same way (TEI router style):

==========================  =====================  ==========================
error                       gRPC status            stream item status
==========================  =====================  ==========================
InvalidInputError           INVALID_ARGUMENT       ITEM_STATUS_INVALID_ARGUMENT
UnknownHeadError            NOT_FOUND              ITEM_STATUS_NOT_FOUND
UnknownIdError              NOT_FOUND              ITEM_STATUS_NOT_FOUND
OverloadedError             RESOURCE_EXHAUSTED     ITEM_STATUS_RESOURCE_EXHAUSTED
NotReadyError               UNAVAILABLE            ITEM_STATUS_UNAVAILABLE
NotConfiguredError          FAILED_PRECONDITION    ITEM_STATUS_FAILED_PRECONDITION
anything else               INTERNAL               ITEM_STATUS_INTERNAL
==========================  =====================  ==========================

An unexpected exception is logged with a short error id and the caller gets only
``"internal error (id ...)"``: never the raw exception text, which could echo profile text.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from embedder.errors import (
    InvalidInputError,
    NotConfiguredError,
    NotReadyError,
    OverloadedError,
    UnknownHeadError,
    UnknownIdError,
)
from embedder.profile import MAX_CAPTIONS, Profile
from server.config import INSTAGRAM_BIO_CHARS, INSTAGRAM_CAPTION_CHARS, ServerConfig

logger = logging.getLogger(__name__)

#: Longest accepted profile id.
MAX_ID_CHARS = 512

_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode, str], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (UnknownHeadError, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    (UnknownIdError, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    (NotConfiguredError, grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
)


def _describe(err: BaseException, rpc: str) -> tuple[grpc.StatusCode, str, str]:
    for kind, code, name in _STATUS:
        if isinstance(err, kind):
            return code, name, str(err)
    error_id = uuid.uuid4().hex[:12]
    # Log the type and traceback for operators; the message goes to the log only, not the caller.
    logger.error("internal error id=%s in %s: %s", error_id, rpc, type(err).__name__, exc_info=err)
    return grpc.StatusCode.INTERNAL, "INTERNAL", f"internal error (id {error_id}); see server log"


def status_for(err: BaseException, rpc: str = "?") -> tuple[grpc.StatusCode, str]:
    """Map an exception to the gRPC status code and the message the caller may see.

    Args:
        err: the exception raised while serving.
        rpc: the method name, logged with an unexpected error.

    Returns:
        ``(code, message)``; for an unexpected error the message is generic and carries an error id.
    """
    code, _, message = _describe(err, rpc)
    return code, message


def item_status(err: BaseException, rpc: str = "PredictStream") -> tuple[str, str]:
    """Map an exception to a stream item's ``ItemStatus`` name (``ITEM_STATUS_...``) and message."""
    _, name, message = _describe(err, rpc)
    return f"ITEM_STATUS_{name}", message


@dataclass(frozen=True)
class RequestLimits:
    """The request limits the servicer enforces (from :class:`ServerConfig`)."""

    max_profiles: int
    max_field_chars: int
    max_captions: int
    max_search_k: int
    max_message_bytes: int

    @classmethod
    def from_config(cls, config: ServerConfig) -> RequestLimits:
        """Take the limits out of the server config."""
        return cls(
            max_profiles=config.max_profiles_per_request,
            max_field_chars=config.max_field_chars,
            max_captions=config.max_captions,
            max_search_k=config.max_search_k,
            max_message_bytes=config.max_message_bytes,
        )


def check_count(
    n: int, limits: RequestLimits, *, field: str = "profiles", allow_empty: bool = False
) -> None:
    """Reject an empty or oversized batch.

    Raises:
        InvalidInputError: naming the field, the count received and the allowed range.
    """
    if n == 0 and not allow_empty:
        raise InvalidInputError(
            f"needs at least 1 item, got 0 (at most {limits.max_profiles})", field=field
        )
    if n > limits.max_profiles:
        raise InvalidInputError(
            f"has {n:,} items; the most accepted in one request is {limits.max_profiles:,} "
            "(split the batch, or use PredictStream)",
            field=field,
        )


def _field_error(index: int, field: str, message: str, where: str) -> InvalidInputError:
    return InvalidInputError(message, source=f"{where}[{index}]", field=field)


def _check_text(value: str, index: int, field: str, limit: int, instagram: int, where: str) -> None:
    if len(value) > limit:
        raise _field_error(
            index,
            field,
            f"has {len(value):,} characters; the most accepted is {limit:,} (Instagram allows "
            f"{instagram:,}; text up to the cap is accepted and cut to the encoder's token budget)",
            where,
        )


def to_profile(msg: Any, index: int, limits: RequestLimits, *, where: str = "profiles") -> Profile:
    """Validate one ``profile_embedding.v1.Profile`` message and build an ``embedder`` Profile.

    Args:
        msg: the protobuf message.
        index: its position in the request, named in errors.
        limits: the request limits.
        where: the request field holding the profiles, named in errors.

    Returns:
        The profile, with captions beyond ``MAX_CAPTIONS`` dropped.

    Raises:
        InvalidInputError: naming ``where[index]`` and the field, on an empty or too long id,
            a field over ``max_field_chars`` or more than ``max_captions`` captions.
    """
    if not msg.id:
        raise _field_error(index, "id", "must be a non-empty string, got ''", where)
    if len(msg.id) > MAX_ID_CHARS:
        raise _field_error(
            index, "id", f"has {len(msg.id):,} characters; the most is {MAX_ID_CHARS}", where
        )
    cap = limits.max_field_chars
    _check_text(msg.username, index, "username", cap, INSTAGRAM_BIO_CHARS, where)
    _check_text(msg.full_name, index, "full_name", cap, INSTAGRAM_BIO_CHARS, where)
    _check_text(msg.biography, index, "biography", cap, INSTAGRAM_BIO_CHARS, where)
    if len(msg.captions) > limits.max_captions:
        raise _field_error(
            index,
            "captions",
            f"has {len(msg.captions):,} captions; the most accepted is {limits.max_captions} "
            f"(the first {MAX_CAPTIONS}, newest first, are used)",
            where,
        )
    for j, caption in enumerate(msg.captions):
        _check_text(caption, index, f"captions[{j}]", cap, INSTAGRAM_CAPTION_CHARS, where)
    return Profile(
        id=msg.id,
        username=msg.username,
        full_name=msg.full_name,
        biography=msg.biography,
        captions=tuple(msg.captions[:MAX_CAPTIONS]),
    )


def to_profiles(
    msgs: Sequence[Any], limits: RequestLimits, *, where: str = "profiles"
) -> list[Profile]:
    """Validate a batch of profile messages (count, then each item); see :func:`to_profile`."""
    check_count(len(msgs), limits, field=where)
    return [to_profile(m, i, limits, where=where) for i, m in enumerate(msgs)]


def check_heads(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Return the requested head names (all when empty), rejecting unknown and repeated ones.

    Raises:
        UnknownHeadError: naming the unknown head and the loaded ones.
        InvalidInputError: on a repeated head name.
    """
    if not requested:
        return list(available)
    seen: set[str] = set()
    for name in requested:
        if name not in available:
            raise UnknownHeadError(
                f"head {name[:100]!r} is not loaded; loaded heads are {sorted(available)!r}"
            )
        if name in seen:
            raise InvalidInputError(f"head {name!r} is listed twice", field="heads")
        seen.add(name)
    return list(requested)


def check_k(k: int, limits: RequestLimits, *, field: str = "k") -> int:
    """Return ``k`` (0 -> 10), rejecting values above ``max_search_k``."""
    if k == 0:
        return 10
    if k > limits.max_search_k:
        raise InvalidInputError(
            f"is {k:,}; the most allowed is {limits.max_search_k:,}", field=field
        )
    return k
