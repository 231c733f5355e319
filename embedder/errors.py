"""The one error tree of the project (httpx ``_exceptions.py`` style).

Every error a user can cause derives from :class:`EmbedderError`; the CLI prints its message
without a stack trace and the gRPC layer maps each kind to one status code in one place.
"""

from __future__ import annotations

from collections.abc import Sequence


class EmbedderError(Exception):
    """Base class for every error this project raises on purpose."""


class InvalidInputError(EmbedderError, ValueError):
    """Raised when user-supplied data (a profile, a file row, a request item) is malformed.

    Args:
        message: what was wrong, the value received and what is allowed.
        source: file name or request name, when known.
        line: 1-based line / row / item number, when known.
        field: the offending field name, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = message
        self.source = source
        self.line = line
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source is not None:
            where.append(str(self.source))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason


class ArtifactError(EmbedderError):
    """A saved model, head, cache or index on disk is missing, corrupt or incompatible."""


class VersionMismatchError(ArtifactError):
    """Raised when an artifact built for one ``embedding_version`` meets an encoder of another."""


class UnknownHeadError(EmbedderError, KeyError):
    """Raised when a head name or head kind is not known."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownIdError(EmbedderError, KeyError):
    """Raised when a profile id asked for is not in the similarity index (gRPC: NOT_FOUND).

    Args:
        message: which ids are missing and how many the index holds.
        ids: the missing ids, kept in ``self.ids``.
    """

    def __init__(self, message: str, ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.ids: tuple[str, ...] = tuple(ids)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OverloadedError(EmbedderError):
    """Raised when a bounded queue is full and the caller should retry later."""


class NotReadyError(EmbedderError):
    """Raised when a model or service is asked for work before it has loaded."""


class NotConfiguredError(EmbedderError):
    """Raised when a call needs a part this server was not started with (a similarity index).

    Unlike :class:`NotReadyError` a retry cannot succeed, so gRPC gets ``FAILED_PRECONDITION``,
    which clients' retry policies leave alone, not ``UNAVAILABLE``, which they retry.
    """
