"""Optional bearer-token auth: an aio server interceptor; health checks stay open."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from embedder.errors import ArtifactError

logger = logging.getLogger(__name__)

#: Method prefixes callable without a token (load balancers and orchestrators probe health).
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """Read accepted tokens, one per line (several allow rotation); blank lines and ``#`` skipped.

    Raises:
        ArtifactError: the file is missing, unreadable or holds no token.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ArtifactError(f"cannot read --auth-token-file {path}: {err.strerror}") from err
    tokens = tuple(t.strip().encode() for t in lines if t.strip() and not t.startswith("#"))
    if not tokens:
        raise ArtifactError(f"--auth-token-file {path} holds no token (one per line expected)")
    if any(len(t) < 16 for t in tokens):
        raise ArtifactError(f"--auth-token-file {path}: every token must have >= 16 characters")
    return tokens


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Reject calls without ``authorization: Bearer <token>`` metadata as UNAUTHENTICATED.

    Args:
        tokens: accepted tokens (compared in constant time).
        open_prefixes: method prefixes that need no token.
    """

    def __init__(self, tokens: Sequence[bytes], open_prefixes: Sequence[str] = OPEN_PREFIXES):
        self._tokens = tuple(tokens)
        self._open = tuple(open_prefixes)

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
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass authorised (or open) calls on; answer the rest with UNAUTHENTICATED."""
        method = handler_call_details.method
        if method.startswith(self._open) or self._allowed(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        logger.info("rejected unauthenticated call to %s", method)
        handler = await continuation(handler_call_details)
        return _denying(handler)


def _denying(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    message = "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    req_stream = bool(handler and handler.request_streaming)
    resp_stream = bool(handler and handler.response_streaming)
    if req_stream and resp_stream:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if req_stream:
        return grpc.stream_unary_rpc_method_handler(deny)
    if resp_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)
