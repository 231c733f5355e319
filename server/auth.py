"""Optional bearer-token auth: an aio server interceptor; health checks stay open."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from embedder.errors import ArtifactError

if TYPE_CHECKING:
    from server.intake import Context, Handler

logger = logging.getLogger(__name__)

#: Method prefixes callable without a token (load balancers and orchestrators probe health).
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
#: Least seconds between two log lines about refused calls.
LOG_INTERVAL_S = 10.0


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """Read accepted tokens, one per line (several allow rotation); blank lines and ``#`` skipped.

    Raises:
        ArtifactError: the file is missing, unreadable or holds no token.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ArtifactError(f"cannot read --auth-token-file {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ArtifactError(
            f"--auth-token-file {path} is not UTF-8 text (byte {err.start}); one token per line"
        ) from None
    tokens = tuple(t.strip().encode() for t in lines if t.strip() and not t.startswith("#"))
    if not tokens:
        raise ArtifactError(f"--auth-token-file {path} holds no token (one per line expected)")
    if any(len(t) < 16 for t in tokens):
        raise ArtifactError(f"--auth-token-file {path}: every token must have >= 16 characters")
    return tokens


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Reject calls without ``authorization: Bearer <token>`` metadata as UNAUTHENTICATED.

    The refusal is decided on the metadata alone and answered without reading the request body
    (the denying handler never asks grpc for a message), so an unauthenticated client cannot make
    the server hold its payload. Refusals are logged as one WARNING line per ``log_interval_s``
    with their count, not one line per call.

    Args:
        tokens: accepted tokens (compared in constant time).
        open_prefixes: method prefixes that need no token.
        log_interval_s: least time between two log lines about refused calls.
        on_reject: called with the method of each refused call (metrics).
    """

    def __init__(
        self,
        tokens: Sequence[bytes],
        open_prefixes: Sequence[str] = OPEN_PREFIXES,
        *,
        log_interval_s: float = LOG_INTERVAL_S,
        on_reject: Callable[[str], None] | None = None,
    ):
        self._tokens = tuple(tokens)
        self._open = tuple(open_prefixes)
        self._on_reject = on_reject
        self.log = RateLimitedLog(log_interval_s)

    def _allowed(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key != "authorization":
                continue
            raw = value.encode() if isinstance(value, str) else bytes(value)
            scheme, _, token = raw.partition(b" ")
            if scheme.lower() != b"bearer":
                return False
            # Compare against every token so timing does not reveal which one almost matched.
            return any([hmac.compare_digest(token.strip(), t) for t in self._tokens])
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Pass authorised (or open) calls on; answer the rest with UNAUTHENTICATED."""
        method = handler_call_details.method
        if method.startswith(self._open) or self._allowed(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        self.log.event(method)
        if self._on_reject is not None:
            self._on_reject(method)
        return _DENY


class RateLimitedLog:
    """Count refused calls; log at most one WARNING per ``interval_s``, with the count.

    Args:
        interval_s: least time between two lines.
    """

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.total = 0
        self.lines = 0
        self._pending = 0
        self._last = float("-inf")

    def event(self, method: str) -> None:
        """Count one refused call to ``method``; log when the interval has passed."""
        self.total += 1
        self._pending += 1
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        logger.warning(
            "refused %d unauthenticated call(s) in the last %s (latest: %s; %d since start)",
            self._pending,
            "start" if self._last == float("-inf") else f"{now - self._last:.0f} s",
            method,
            self.total,
        )
        self.lines += 1
        self._pending = 0
        self._last = now


_MESSAGE = "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"


async def _deny(request_iterator: Any, context: Context) -> AsyncIterator[Any]:
    # A stream handler that never reads: grpc does not receive the body (see server.intake).
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)
    yield  # pragma: no cover - makes this an async generator


#: One handler for every refused method: the wire is the same whatever the method's shape.
_DENY: Handler = grpc.stream_stream_rpc_method_handler(_deny)
