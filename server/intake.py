"""Memory-bounded intake: request bodies are read only when the byte budget can hold them.

grpc reads a unary request's whole body into memory before a handler runs, and a read may bring
up to ``max_message_bytes``. So :class:`IntakeInterceptor` hands every method a handler of the
same wire shape that reads the body itself, through :class:`Intake`:

* a call the shedding hook refuses (full encoder queue) gets RESOURCE_EXHAUSTED in the
  interceptor itself, before any per-call handler is built: a handler that sets the status
  and returns, no exception, no body read (the cheapest answer grpc's Python server allows);
* a call beyond ``max_calls`` in progress gets RESOURCE_EXHAUSTED before anything is read;
* a read starts only when ``held + reading x max_message_bytes + max_message_bytes`` fits in
  ``max_bytes`` (the worst case of every read in progress), else it waits up to ``wait_s`` and
  then gets RESOURCE_EXHAUSTED; its reservation shrinks to the body's real size once read;
* a read still waiting for its message ``idle_s`` after it started gives its room up
  (RESOURCE_EXHAUSTED) when another read needs that room: otherwise a few callers that open
  calls and send nothing (a ``PredictStream`` waiting for its next item holds a largest
  message's reservation; 8 of them filled the default budget) would lock everyone else out;
* a unary body is held (counted) until its call ends; a stream item's read is released as soon
  as the item is read (the servicer bounds the items a stream keeps, see ``server.service``).

This only bounds memory because the server runs with ``grpc.http2.bdp_probe`` off
(``server.app``): with it on, HTTP/2 flow control lets a client push several MB per call into
the transport before any read; with it off, an unread call holds at most the 64 KiB window.
An unauthenticated call is answered by ``server.auth`` without reading its body at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc

from embedder.errors import OverloadedError
from server.allocator import Trimmer

logger = logging.getLogger(__name__)

#: Longest a read waits for room in the byte budget before RESOURCE_EXHAUSTED.
WAIT_S = 1.0
#: A read whose message has not arrived this long after it started is idle: it is the first to
#: give its room up to a read that waits. A largest message takes milliseconds on a local
#: network; a client that keeps a call open without sending is what this is for. Under WAIT_S,
#: so a waiting read outlasts readers that started just before it sent nothing.
IDLE_S = 0.5
#: How often a waiting read looks again for idle reads to evict (they age while it waits).
EVICT_CHECK_S = 0.1
#: Release of this many bytes or more trims the heap (returns a burst's pages to the kernel) ...
TRIM_BYTES = 1024 * 1024
#: ... this long after the last such release: by then the handlers that parsed the bodies are
#: gone too, and their copies with them (a trim at the release itself came before those frees,
#: and with serve's high trim threshold, server.allocator, nothing else would return them).
TRIM_DELAY_S = 0.25

#: Methods outside the call count: health checks need no token, so callers holding Watch
#: streams open must not be able to take every call slot (their reads are still budgeted).
UNCOUNTED_PREFIXES = ("/grpc.health.v1.Health/",)
#: A call that ends this close to its deadline is counted DEADLINE_EXCEEDED: grpc cancels the
#: handler when the deadline passes, and the server's clock can still read a few ms left then.
DEADLINE_SLACK_S = 0.05
#: ``hook(method) -> reason or None``, asked before a body is read (fast load shedding).
ShedHook = Callable[[str], "str | None"]

if TYPE_CHECKING:
    #: Any method's handler: the interceptors wrap every method alike, whatever its messages.
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    #: The context of a wrapped call, which reads raw request bytes itself.
    Context: TypeAlias = grpc.aio.ServicerContext[bytes, Any]
    # types-grpcio types a handler's behaviours as the sync server's; under grpc.aio the
    # service's are coroutine functions and async generators.
    _Unary: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
    _Streaming: TypeAlias = Callable[[Any, Context], AsyncIterator[Any]]


@dataclass(eq=False)
class _PendingRead:
    """A read in progress: when it started, and the future that evicts it."""

    started: float
    evict: asyncio.Future[None]


class Intake:
    """Counts calls and body bytes; see the module docstring.

    Args:
        max_calls: calls that may be in progress at once (health checks are not counted).
        max_bytes: request-body bytes being read or held at once.
        max_message_bytes: the largest message grpc accepts (what one read may bring).
        wait_s: how long a read waits for room before RESOURCE_EXHAUSTED.
        idle_s: how long a read may wait for its message before a waiting read may evict it.
        on_evict: called at each eviction (the server counts them as a metric).
    """

    def __init__(
        self,
        max_calls: int,
        max_bytes: int,
        max_message_bytes: int,
        wait_s: float = WAIT_S,
        idle_s: float = IDLE_S,
        on_evict: Callable[[], None] | None = None,
    ) -> None:
        if max_bytes < max_message_bytes:
            raise ValueError(
                f"max_bytes ({max_bytes}) must be >= max_message_bytes ({max_message_bytes}), "
                "or a message of the largest allowed size could never be read"
            )
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self.max_message_bytes = max_message_bytes
        self.wait_s = wait_s
        self.idle_s = idle_s
        self._on_evict = on_evict
        self.calls = 0
        self.held = 0
        self.reading = 0
        self.peak_bytes = 0
        # Reads in progress, oldest first (a read appends itself when it starts).
        self._pending: list[_PendingRead] = []
        self._room = asyncio.Condition()
        self._trim = Trimmer(interval_s=TRIM_DELAY_S)
        self._trim_timer: asyncio.TimerHandle | None = None

    @property
    def committed(self) -> int:
        """Bytes held plus the worst case of every read in progress."""
        return self.held + self.reading * self.max_message_bytes

    def enter_call(self, method: str) -> None:
        """Count a new call, or raise OverloadedError when ``max_calls`` are in progress."""
        if self.calls >= self.max_calls:
            raise OverloadedError(
                f"{self.calls} calls in progress, the limit is {self.max_calls} "
                f"(--max-concurrent-calls); retry {method.rsplit('/', 1)[-1]} with backoff"
            )
        self.calls += 1

    def exit_call(self) -> None:
        """Forget a finished call."""
        self.calls -= 1

    async def read(self, context: Context, *, hold: bool) -> Any:
        """Read one message under the budget; hold its bytes (``release`` them) when ``hold``.

        Returns:
            The raw message, or ``grpc.aio.EOF``.

        Raises:
            OverloadedError: no room in the budget within ``wait_s``, or the message had not
                arrived ``idle_s`` after the read started and a waiting read took its room.
        """
        await self._reserve(context)
        pending = _PendingRead(time.monotonic(), asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        added = 0
        try:
            raw = await self._read_unless_evicted(context, pending)
            if raw is not grpc.aio.EOF and hold:
                added = len(raw)
                self.held += added
                self.peak_bytes = max(self.peak_bytes, self.committed)
            return raw
        finally:
            self._pending.remove(pending)
            self.reading -= 1
            try:
                await self._notify(0)
            except BaseException:
                # Cancelled while waiting for the lock: the caller never gets the message,
                # so it cannot release what was added for it.
                self.held -= added
                raise

    async def _read_unless_evicted(self, context: Context, pending: _PendingRead) -> Any:
        read = asyncio.ensure_future(context.read())
        try:
            await asyncio.wait((read, pending.evict), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Evicted, or this call's task cancelled (the client went away): the read is
            # abandoned the way a cancelled call's read always was.
            if not read.done():
                read.cancel()
        if read.done():
            return read.result()
        if self._on_evict is not None:
            self._on_evict()
        raise OverloadedError(
            f"no request message arrived within {self.idle_s:.1f} s of reading while other "
            "calls waited for the request byte budget (--max-inflight-bytes); send messages "
            "without pauses, and retry with backoff"
        )

    async def release(self, size: int) -> None:
        """Give back ``size`` held bytes."""
        self.held -= size
        await self._notify(size)

    def _fits(self) -> bool:
        return self.committed + self.max_message_bytes <= self.max_bytes

    async def _reserve(self, context: Context) -> None:
        if self._fits():
            self.reading += 1
            self.peak_bytes = max(self.peak_bytes, self.committed)
            return
        remaining = context.time_remaining()
        wait = self.wait_s if remaining is None else max(0.0, min(self.wait_s, remaining))
        start = time.monotonic()
        async with self._room:
            while not self._fits():
                self._evict_idle()
                left = start + wait - time.monotonic()
                if left <= 0:
                    raise OverloadedError(
                        f"request bytes in flight are at the limit ({self.committed:,} of "
                        f"{self.max_bytes:,}, --max-inflight-bytes) after waiting "
                        f"{time.monotonic() - start:.1f} s; retry with backoff"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), min(left, EVICT_CHECK_S))
            self.reading += 1
            self.peak_bytes = max(self.peak_bytes, self.committed)

    def _evict_idle(self) -> None:
        """Evict idle reads, oldest first, until a largest message would fit once they go."""
        missing = self.committed + self.max_message_bytes - self.max_bytes
        now = time.monotonic()
        for pending in self._pending:
            if missing <= 0 or now - pending.started < self.idle_s:
                return  # oldest first: the rest are younger still
            if not pending.evict.done():
                pending.evict.set_result(None)
            missing -= self.max_message_bytes

    async def _notify(self, freed: int) -> None:
        if freed >= TRIM_BYTES:
            self._trim_after_burst()
        async with self._room:
            self._room.notify_all()

    def _trim_after_burst(self) -> None:
        """Trim ``TRIM_DELAY_S`` after the last big release (each one re-arms the timer)."""
        loop = asyncio.get_running_loop()

        def trim() -> None:
            # the server may be shutting its executor down meanwhile: then there is nothing to trim
            with contextlib.suppress(RuntimeError):
                loop.run_in_executor(None, self._trim)

        if self._trim_timer is not None:
            self._trim_timer.cancel()
        self._trim_timer = loop.call_later(TRIM_DELAY_S, trim)


class IntakeInterceptor(grpc.aio.ServerInterceptor):
    """Route every method's body reads through an :class:`Intake` (see the module docstring).

    Args:
        intake: the shared budget.
        shed: optional hook asked before a body is read; a reason string means RESOURCE_EXHAUSTED.
        on_reject: called with ``(method, code_name)`` for each call that ends here: refused, or
            gone (cancelled, deadline passed) before its body arrived (metrics).
    """

    def __init__(
        self,
        intake: Intake,
        shed: ShedHook | None = None,
        on_reject: Callable[[str, str], None] | None = None,
    ) -> None:
        self.intake = intake
        self.shed = shed
        self.on_reject = on_reject
        # Per method: (the service's handler, its gated wrapper), built once, not per call.
        self._handlers: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Refuse a shed call at once; else wrap the method's handler (unknown methods pass)."""
        method = handler_call_details.method
        if self.shed is not None:
            reason = self.shed(method)
            if reason is not None:
                if self.on_reject is not None:
                    self.on_reject(method, "RESOURCE_EXHAUSTED")
                return _refusal(reason)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        known = self._handlers.get(method)
        if known is None or known[0] is not handler:
            known = self._handlers[method] = (handler, _gated(handler, method, self))
        return known[1]

    async def refuse(self, method: str, context: Context, err: OverloadedError) -> None:
        """Answer RESOURCE_EXHAUSTED (nothing of the body read)."""
        if self.on_reject is not None:
            self.on_reject(method, "RESOURCE_EXHAUSTED")
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))

    @asynccontextmanager
    async def call(self, method: str, context: Context) -> AsyncIterator[None]:
        """Count one call or refuse it (``max_calls``); forget it when it ends."""
        if method.startswith(UNCOUNTED_PREFIXES):
            yield
            return
        try:
            self.intake.enter_call(method)
        except OverloadedError as err:
            await self.refuse(method, context, err)
        try:
            yield
        finally:
            self.intake.exit_call()


def _refusal(reason: str) -> Handler:
    """A handler of any method's wire shape answering RESOURCE_EXHAUSTED without reading."""

    async def refuse(_: Any, context: Context) -> AsyncIterator[Any]:
        # Status set and returned, not aborted: no exception, no traceback, nothing read.
        context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        context.set_details(reason)
        return
        yield  # pragma: no cover - makes this an async generator

    return grpc.stream_stream_rpc_method_handler(refuse)


def _gated(handler: Handler, method: str, gate: IntakeInterceptor) -> Handler:
    intake = gate.intake
    parse = handler.request_deserializer or (lambda raw: raw)
    serialize = handler.response_serializer

    # Frames that end in an exception live on in its traceback (grpc's AbortError included),
    # sometimes until a full gc run: so each frame drops its body reference before it ends.
    async def one(context: Context) -> tuple[Any, int]:
        raw = await _read_one(gate, method, context)
        size = len(raw)
        try:
            return parse(raw), size
        except BaseException:
            del raw
            await intake.release(size)
            raise

    async def requests(context: Context) -> AsyncIterator[Any]:
        while True:
            try:
                raw = await intake.read(context, hold=False)
            except OverloadedError as err:
                await gate.refuse(method, context, err)
            if raw is grpc.aio.EOF:
                return
            yield parse(raw)

    if not handler.request_streaming:
        if handler.response_streaming:
            behaviour = cast("_Streaming", handler.unary_stream)

            async def unary_stream(_: Any, context: Context) -> AsyncIterator[Any]:
                async with gate.call(method, context):
                    request, size = await one(context)
                    try:
                        async for response in behaviour(request, context):
                            yield response
                    finally:
                        request = None
                        await intake.release(size)

            return grpc.stream_stream_rpc_method_handler(
                unary_stream, response_serializer=serialize
            )

        unary = cast("_Unary", handler.unary_unary)

        async def unary_unary(_: Any, context: Context) -> Any:
            async with gate.call(method, context):
                request, size = await one(context)
                try:
                    return await unary(request, context)
                finally:
                    request = None
                    await intake.release(size)

        return grpc.stream_unary_rpc_method_handler(unary_unary, response_serializer=serialize)

    if handler.response_streaming:
        streaming = cast("_Streaming", handler.stream_stream)

        async def stream_stream(_: Any, context: Context) -> AsyncIterator[Any]:
            async with gate.call(method, context):
                async for response in streaming(requests(context), context):
                    yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)

    stream_unary_behaviour = cast("_Unary", handler.stream_unary)

    async def stream_unary(_: Any, context: Context) -> Any:
        async with gate.call(method, context):
            return await stream_unary_behaviour(requests(context), context)

    return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)


def client_end(context: Context) -> str | None:
    """``"DEADLINE_EXCEEDED"`` or ``"CANCELLED"`` when the call's deadline passed or its client
    cancelled it (the status to count it under), else None."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return "DEADLINE_EXCEEDED"
    if context.cancelled():
        return "CANCELLED"
    return None


async def _read_one(gate: IntakeInterceptor, method: str, context: Context) -> bytes:
    try:
        raw = await gate.intake.read(context, hold=True)
    except OverloadedError as err:
        await gate.refuse(method, context, err)
    if raw is grpc.aio.EOF:
        # The client went away (cancel, deadline) or half-closed without a message.
        code = getattr(grpc.StatusCode, client_end(context) or "INVALID_ARGUMENT")
        if gate.on_reject is not None:
            gate.on_reject(method, code.name)
        await context.abort(code, f"{method}: the call ended before its request message")
    return raw  # type: ignore[no-any-return]
