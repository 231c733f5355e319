"""The ``profile_embedding.v1.ProfileEmbeddingService`` servicer.

Handlers are registered with raw-bytes deserialisation (:func:`add_to_server`) so a request that is
not a valid message (wrong wire types, invalid UTF-8 such as a lone surrogate) becomes
``INVALID_ARGUMENT`` instead of grpc's generic INTERNAL "Exception deserializing request!". Every
method's errors go through ``server.errors`` (the one mapping) and are counted per RPC and code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from embedder.errors import InvalidInputError, NotReadyError, OverloadedError
from embedder.profile import Profile
from server import errors
from server._proto.profile_embedding.v1 import profile_embedding_pb2 as pb2
from server.errors import RequestLimits
from server.intake import client_end
from server.metrics import ServerMetrics
from server.runtime import Embedded, Runtime

if TYPE_CHECKING:
    from embedder.index import SimilarityIndex
    from heads.base import Head, Prediction
    from server.intake import Context

logger = logging.getLogger(__name__)

SERVICE_NAME = pb2.DESCRIPTOR.services_by_name["ProfileEmbeddingService"].full_name
SERVER_VERSION = "0.1.0"
#: Stream items processed together (one embed + heads call) and chunks in flight per stream.
STREAM_CHUNK = 128
STREAM_CHUNKS_IN_FLIGHT = 4
#: A partial chunk goes to the encoder when no further item arrives within this many seconds,
#: so a client that sends one item and waits for its answer gets it (the batcher still
#: gathers work across calls for its own ``max_wait_ms``).
STREAM_FLUSH_S = 0.005
#: Methods that queue encoder work: refused before their body is read when the queue is full.
SHED_METHODS = frozenset(
    f"/{SERVICE_NAME}/{name}"
    for name in (
        "Embed",
        "Predict",
        "PredictStream",
        "SearchSimilar",
        "UpsertIndex",
        "EstimateAudience",
    )
)


_M = TypeVar("_M", bound=Message)


def _parse(cls: type[_M], raw: bytes) -> _M:
    try:
        return cls.FromString(raw)
    except DecodeError:
        pass
    # Raised outside the except block: a DecodeError as __context__ would keep this frame, and
    # with it the whole body, alive until the cyclic garbage collector runs.
    raise InvalidInputError(
        f"request is not a valid {cls.DESCRIPTOR.full_name} message ({len(raw)} bytes; "
        "strings must be valid UTF-8)"
    )


#: A stream's responses in order; None marks the end.
_Responses: TypeAlias = "asyncio.Queue[pb2.PredictStreamResponse | None]"


def _vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


class ProfileEmbeddingServicer:
    """Implements every RPC on top of a :class:`Runtime` (None until the models have loaded).

    Args:
        limits: the request limits.
        metrics: per-RPC counters and latency histograms.
    """

    def __init__(self, limits: RequestLimits, metrics: ServerMetrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.runtime: Runtime | None = None

    def shed(self, method: str) -> str | None:
        """Why a call to ``method`` is refused before its body is read (full queue), or None.

        Only methods that queue work for the encoder are shed; Info and health stay answered.
        """
        if self.runtime is None or method not in SHED_METHODS:
            return None
        return self.runtime.batcher.overloaded(1)

    def _rt(self) -> Runtime:
        if self.runtime is None:
            raise NotReadyError("models are still loading; retry shortly (health is NOT_SERVING)")
        return self.runtime

    # ------------------------------------------------------------------ Info
    async def Info(self, request: pb2.InfoRequest, context: Context) -> pb2.InfoResponse:
        """Describe the encoder, heads, limits and index."""
        rt = self._rt()
        return pb2.InfoResponse(
            embedding_version=rt.embedding_version,
            dim=rt.dim,
            base_model=rt.base_model,
            heads=[_head_info(name, head) for name, head in sorted(rt.heads.items())],
            limits=pb2.Limits(
                max_profiles_per_request=self.limits.max_profiles,
                max_field_chars=self.limits.max_field_chars,
                max_captions=self.limits.max_captions,
                max_message_bytes=self.limits.max_message_bytes,
                max_top_k=max((len(h.labels) for h in rt.heads.values()), default=0),
                max_search_k=self.limits.max_search_k,
            ),
            index_size=len(rt.index) if rt.index is not None else 0,
            cache_enabled=rt.cache is not None,
            server_version=SERVER_VERSION,
            numerics=rt.encoder.numerics,
            numerics_chosen_by=str(rt.encoder.numerics_choice.get("how", "")),
        )

    # ------------------------------------------------------------------ Embed / Predict
    async def Embed(self, request: pb2.EmbedRequest, context: Context) -> pb2.EmbedResponse:
        """Embed a batch of profiles."""
        rt = self._rt()
        profiles = errors.to_profiles(request.profiles, self.limits)
        self.metrics.profiles.labels("Embed").inc(len(profiles))
        emb = await rt.embed(profiles)
        return pb2.EmbedResponse(
            embedding_version=rt.embedding_version,
            dim=rt.dim,
            embeddings=[
                pb2.Embedding(id=p.id, vector=_vector_bytes(v), cache_hit=bool(h))
                for p, v, h in zip(profiles, emb.vectors, emb.cache_hits, strict=True)
            ],
        )

    async def Predict(self, request: pb2.PredictRequest, context: Context) -> pb2.PredictResponse:
        """Predict every requested head for a batch of profiles."""
        rt = self._rt()
        heads = errors.check_heads(request.heads, list(rt.heads))
        profiles = errors.to_profiles(request.profiles, self.limits)
        self.metrics.profiles.labels("Predict").inc(len(profiles))
        emb = await rt.embed(profiles)
        preds = await rt.predict(emb.vectors, heads)
        results = _profile_predictions(
            rt, [p.id for p in profiles], emb, preds, request.top_k, request.include_embedding
        )
        return pb2.PredictResponse(
            embedding_version=rt.embedding_version,
            head_versions={h: int(rt.heads[h].head_version) for h in heads},
            dim=rt.dim,
            results=results,
        )

    # ------------------------------------------------------------------ PredictStream
    async def PredictStream(
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[pb2.PredictStreamResponse]:
        """Bulk predictions: one response per item, errors per item, the stream goes on."""
        rt = self._rt()
        out: _Responses = asyncio.Queue(maxsize=STREAM_CHUNK * STREAM_CHUNKS_IN_FLIGHT)
        reader = asyncio.ensure_future(self._read_stream(rt, request_iterator, out))
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                yield item
            await reader  # re-raise a reader failure (mapped by the wrapper)
        finally:
            reader.cancel()

    async def _read_stream(
        self, rt: Runtime, request_iterator: AsyncIterator[bytes], out: _Responses
    ) -> None:
        slots = asyncio.Semaphore(STREAM_CHUNKS_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        submitted: set[asyncio.Task[Any]] = set()  # chunks inside rt.embed now
        chunk: list[tuple[int, bytes]] = []
        chunk_bytes = 0
        index = 0
        cancelled = False
        items = aiter(request_iterator)
        # The read of the next item: a task, so that waiting for it can time out (and the
        # partial chunk go) without cancelling the read itself.
        reading: asyncio.Future[bytes | None] | None = None
        try:
            while True:
                if reading is None:
                    reading = asyncio.ensure_future(_next_item(items))
                if chunk:
                    done, _ = await asyncio.wait((reading,), timeout=STREAM_FLUSH_S)
                    if not done:
                        await self._dispatch(rt, chunk, out, slots, tasks, submitted)
                        chunk, chunk_bytes = [], 0
                        continue
                raw = await reading
                reading = None
                if raw is None:
                    break
                chunk.append((index, raw))
                chunk_bytes += len(raw)
                index += 1
                # A chunk also closes at max_message_bytes, so a stream keeps at most
                # (STREAM_CHUNKS_IN_FLIGHT + 1) chunks of about that size.
                if len(chunk) >= STREAM_CHUNK or chunk_bytes >= self.limits.max_message_bytes:
                    await self._dispatch(rt, chunk, out, slots, tasks, submitted)
                    chunk, chunk_bytes = [], 0
            if chunk:
                await self._dispatch(rt, chunk, out, slots, tasks, submitted)
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if reading is not None:
                reading.cancel()
            for t in tasks:
                t.cancel()
            # After a cancel nobody reads ``out`` any more: waiting for room there (the queue
            # may be full) would never end, so the end marker goes only to a live reader.
            if not cancelled:
                await out.put(None)

    async def _dispatch(
        self,
        rt: Runtime,
        chunk: list[tuple[int, bytes]],
        out: _Responses,
        slots: asyncio.Semaphore,
        tasks: set[asyncio.Task[None]],
        submitted: set[asyncio.Task[Any]],
    ) -> None:
        await slots.acquire()
        earlier = {t for t in tasks if not t.done()}
        tasks.add(
            asyncio.ensure_future(self._stream_chunk(rt, chunk, out, slots, earlier, submitted))
        )

    async def _stream_chunk(
        self,
        rt: Runtime,
        chunk: list[tuple[int, bytes]],
        out: _Responses,
        slots: asyncio.Semaphore,
        earlier: set[asyncio.Task[None]],
        submitted: set[asyncio.Task[Any]],
    ) -> None:
        try:
            for response in await self._predict_items(rt, chunk, earlier, submitted):
                await out.put(response)
        finally:
            slots.release()

    async def _predict_items(
        self,
        rt: Runtime,
        chunk: list[tuple[int, bytes]],
        earlier: set[asyncio.Task[None]],
        submitted: set[asyncio.Task[Any]],
    ) -> list[pb2.PredictStreamResponse]:
        responses: dict[int, pb2.PredictStreamResponse] = {}
        valid: list[tuple[int, pb2.PredictStreamRequest, Profile, list[str]]] = []
        for index, raw in chunk:
            req = None
            try:
                req = _parse(pb2.PredictStreamRequest, raw)
                heads = errors.check_heads(req.heads, list(rt.heads))
                profile = errors.to_profile(req.profile, index, self.limits, where="stream")
                valid.append((index, req, profile, heads))
            except Exception as err:
                responses[index] = _item_error(index, req, err)
        self.metrics.profiles.labels("PredictStream").inc(len(valid))
        if valid:
            try:
                emb = await _embed_paced(rt, [v[2] for v in valid], earlier, submitted)
                preds = await _predict_asked(rt, emb.vectors, [v[3] for v in valid])
            except Exception as err:
                for index, req, _, _ in valid:
                    responses[index] = _item_error(index, req, err)
            else:
                for row, (index, req, profile, heads) in enumerate(valid):
                    responses[index] = _stream_ok(rt, row, index, req, profile, heads, emb, preds)
        return [responses[i] for i, _ in chunk]

    # ------------------------------------------------------------------ index
    async def SearchSimilar(
        self, request: pb2.SearchSimilarRequest, context: Context
    ) -> pb2.SearchSimilarResponse:
        """k nearest indexed profiles to a profile or to an indexed id."""
        rt = self._rt()
        index = rt.require_index()
        k = errors.check_k(request.k, self.limits)
        which = request.WhichOneof("query")
        ids: Sequence[str]
        scores: Sequence[float]
        if which == "profile":
            profile = errors.to_profile(request.profile, 0, self.limits, where="profile")
            emb = await rt.embed([profile])
            all_ids, all_scores = await rt.run_cpu(index.search, emb.vectors, k)
            ids, scores = all_ids[0], all_scores[0]
        elif which == "id":
            if not request.id:
                raise InvalidInputError("must be a non-empty indexed id, got ''", field="id")
            ids, scores = await rt.run_cpu(_search_by_id, index, request.id, k)
        else:
            raise InvalidInputError("set either 'profile' or 'id'", field="query")
        neighbors = [
            pb2.Neighbor(id=str(i), score=float(s))
            for i, s in zip(ids, scores, strict=True)
            if i is not None and str(i) != ""
        ]
        return pb2.SearchSimilarResponse(
            embedding_version=rt.embedding_version, neighbors=neighbors
        )

    async def UpsertIndex(
        self, request: pb2.UpsertIndexRequest, context: Context
    ) -> pb2.UpsertIndexResponse:
        """Embed profiles and add (or replace) them in the index."""
        rt = self._rt()
        rt.require_index()
        profiles = errors.to_profiles(request.profiles, self.limits)
        ids = [p.id for p in profiles]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InvalidInputError(f"id {dup[:80]!r} appears more than once", field="profiles")
        self.metrics.profiles.labels("UpsertIndex").inc(len(profiles))
        emb = await rt.embed(profiles)
        size = await rt.run_cpu(rt.upsert, ids, emb.vectors)
        return pb2.UpsertIndexResponse(
            embedding_version=rt.embedding_version, upserted=len(ids), index_size=size
        )

    # ------------------------------------------------------------------ audience
    async def EstimateAudience(
        self, request: pb2.EstimateAudienceRequest, context: Context
    ) -> pb2.EstimateAudienceResponse:
        """Label shares of one head over a set of followers, with confidence intervals."""
        from server.audience import estimate

        return await estimate(self, self._rt(), request)


async def _next_item(items: AsyncIterator[bytes]) -> bytes | None:
    """The stream's next raw item, or None at its end."""
    try:
        return await anext(items)
    except StopAsyncIteration:
        return None


async def _predict_asked(
    rt: Runtime, vectors: np.ndarray, asked: list[list[str]]
) -> dict[str, dict[int, Prediction]]:
    """Each head's predictions for the rows that asked for it: ``{head: {row: prediction}}``.

    Rows are grouped by the heads they name (one call per group; one in the usual stream), so a
    head runs, and is counted in the metrics, only for the items that asked for it.
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for row, heads in enumerate(asked):
        groups.setdefault(tuple(sorted(heads)), []).append(row)
    preds: dict[str, dict[int, Prediction]] = {}
    for names, rows in groups.items():
        got = await rt.predict(vectors[rows], names)
        for head, head_preds in got.items():
            preds.setdefault(head, {}).update(zip(rows, head_preds, strict=True))
    return preds


async def _embed_paced(
    rt: Runtime,
    profiles: list[Profile],
    earlier: set[asyncio.Task[None]],
    submitted: set[asyncio.Task[Any]],
) -> Embedded:
    """Embed a stream chunk; while the queue is over its bounds and this stream's own work is in
    it, wait for that work and retry instead of failing the items (a stream paces itself; only
    a stream with nothing queued gets RESOURCE_EXHAUSTED items).

    The stream's work is its earlier chunks, or else any of its chunks inside ``rt.embed`` now
    (``submitted``, shared by the stream's chunks): a later chunk can get into the queue first
    when two wake together, and waiting for it cannot deadlock, since a chunk leaves
    ``submitted`` before it waits.
    """
    me = asyncio.current_task()
    assert me is not None  # a stream chunk always runs in its own task
    while True:
        submitted.add(me)
        try:
            return await rt.embed(profiles)
        except OverloadedError:
            pending = {t for t in earlier if not t.done()} or {
                t for t in submitted if t is not me and not t.done()
            }
            if not pending:
                raise
        finally:
            submitted.discard(me)
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)


def _search_by_id(
    index: SimilarityIndex, profile_id: str, k: int
) -> tuple[Sequence[str], Sequence[float]]:
    if profile_id not in index:
        raise errors.UnknownIdError(
            f"id {profile_id[:80]!r} is not in the index ({len(index)} profiles)"
        )
    return index.search_by_id(profile_id, k)


def _head_info(name: str, head: Head) -> pb2.HeadInfo:
    labels = list(head.labels)
    thresholds = getattr(head, "thresholds_", None)
    per_class = (getattr(head, "calibration_", None) or {}).get("per_class") or {}
    classes = []
    for i, label in enumerate(labels):
        rep = per_class.get(label) or {}
        thr = float("inf") if thresholds is None else float(thresholds[i])
        info = pb2.ClassInfo(label=label, threshold=0.0 if thresholds is None else thr)
        if rep.get("precision") is not None:
            info.validation_precision = float(rep["precision"])
        if rep.get("coverage") is not None:
            info.validation_coverage = float(rep["coverage"])
        classes.append(info)
    msg = pb2.HeadInfo(
        name=name,
        kind=str(getattr(head, "kind", "")),
        head_version=int(head.head_version),
        labels=labels,
        classes=classes,
        temperature=float(getattr(head, "temperature_", 1.0) or 1.0),
    )
    assigned = sum(int(r.get("assigned", 0)) for r in per_class.values())
    correct = sum(int(r.get("correct", 0)) for r in per_class.values())
    predicted = sum(int(r.get("predicted", 0)) for r in per_class.values())
    if assigned:
        msg.validation_precision = correct / assigned
    if predicted:
        msg.validation_coverage = assigned / predicted
    return msg


def abstain_reason_value(reason: str | None) -> pb2.AbstainReason:
    """Map ``Prediction.reason`` to ``AbstainReason`` (None -> ``ABSTAIN_REASON_UNSPECIFIED``).

    Raises:
        ValueError: a reason the proto enum does not define (naming the defined ones).
    """
    if reason is None:
        return pb2.ABSTAIN_REASON_UNSPECIFIED
    name = "ABSTAIN_REASON_" + reason.upper()
    if name not in pb2.AbstainReason.keys():
        raise ValueError(
            f"abstain reason {reason!r} has no AbstainReason value; defined: "
            f"{list(pb2.AbstainReason.keys())}"
        )
    # protoc's stub types EnumTypeWrapper.Value as a plain int.
    return cast("pb2.AbstainReason", pb2.AbstainReason.Value(name))


def _head_predictions(
    rt: Runtime, name: str, preds: list[Prediction], top_k: int
) -> list[pb2.HeadPrediction]:
    labels = rt.heads[name].labels
    k = min(max(top_k, 1), len(labels))
    probs = np.stack([p.probabilities for p in preds]) if preds else np.zeros((0, len(labels)))
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        pb2.HeadPrediction(
            head=name,
            label=p.label or "",
            abstained=bool(p.abstained),
            argmax=p.argmax,
            score=float(p.score),
            top=[pb2.LabelScore(label=labels[j], probability=float(probs[row, j])) for j in t],
            abstain_reason=abstain_reason_value(p.reason),
        )
        for row, (p, t) in enumerate(zip(preds, top, strict=True))
    ]


def _profile_predictions(
    rt: Runtime,
    ids: list[str],
    emb: Embedded,
    preds: dict[str, list[Prediction]],
    top_k: int,
    include: bool,
) -> list[pb2.ProfilePrediction]:
    per_head = {name: _head_predictions(rt, name, p, top_k) for name, p in preds.items()}
    results = []
    for row, pid in enumerate(ids):
        msg = pb2.ProfilePrediction(id=pid, predictions=[per_head[h][row] for h in per_head])
        if include:
            msg.embedding.CopyFrom(
                pb2.Embedding(
                    id=pid,
                    vector=_vector_bytes(emb.vectors[row]),
                    cache_hit=bool(emb.cache_hits[row]),
                )
            )
        results.append(msg)
    return results


def _stream_ok(
    rt: Runtime,
    row: int,
    index: int,
    req: pb2.PredictStreamRequest,
    profile: Profile,
    heads: list[str],
    emb: Embedded,
    preds: dict[str, dict[int, Prediction]],
) -> pb2.PredictStreamResponse:
    mine = {h: [preds[h][row]] for h in heads}
    one = type(emb)(emb.vectors[row : row + 1], emb.cache_hits[row : row + 1])
    result = _profile_predictions(rt, [profile.id], one, mine, req.top_k, req.include_embedding)
    return pb2.PredictStreamResponse(
        id=profile.id,
        index=index,
        status=pb2.ITEM_STATUS_OK,
        result=result[0],
        embedding_version=rt.embedding_version,
        head_versions={h: int(rt.heads[h].head_version) for h in heads},
    )


def _item_error(
    index: int, req: pb2.PredictStreamRequest | None, err: BaseException
) -> pb2.PredictStreamResponse:
    status, message = errors.item_status(err)
    return pb2.PredictStreamResponse(
        id=req.profile.id if req is not None else "",
        index=index,
        # By name: the stub types ItemStatus.Value as a plain int, the field takes either.
        status=status,
        error=message,
    )


# ---------------------------------------------------------------------- registration
def _final_code(code: str, context: Context) -> str:
    """The code to count: a call the client cancelled or whose deadline passed is not OK."""
    if code not in ("OK", "CANCELLED"):
        return code
    return client_end(context) or code


def _unary(
    servicer: ProfileEmbeddingServicer, name: str, req_cls: type[Message]
) -> Callable[[bytes, Context], Awaitable[Message]]:
    impl = getattr(servicer, name)
    metrics = servicer.metrics

    async def handler(raw: bytes, context: Context) -> Message:
        start = time.perf_counter()
        code = "OK"
        try:
            try:
                return await impl(_parse(req_cls, raw), context)
            except grpc.aio.AbortError:
                code = "ABORTED_BY_HANDLER"
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as err:
                status, message = errors.status_for(err, name)
            # Aborting outside the except block: inside it, the bound error and this frame would
            # form a cycle that keeps the request body in memory until a full gc run.
            code = status.name
            await context.abort(status, message)
        finally:
            raw = b""  # this frame may outlive the call in a traceback: not with the body
            metrics.observe_request(name, _final_code(code, context), time.perf_counter() - start)

    return handler


def _bidi(
    servicer: ProfileEmbeddingServicer, name: str
) -> Callable[[AsyncIterator[bytes], Context], AsyncIterator[Message]]:
    impl = getattr(servicer, name)
    metrics = servicer.metrics

    async def handler(
        request_iterator: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[Message]:
        start = time.perf_counter()
        code: str | None = "OK"
        try:
            try:
                async for response in impl(request_iterator, context):
                    yield response
                return
            except grpc.aio.AbortError:
                # Only the intake aborts inside a stream (its request iterator refused a read),
                # and it has counted the call under the status it sent.
                code = None
                raise
            except (asyncio.CancelledError, GeneratorExit):
                # GeneratorExit: grpc closed the stream (client gone) while it waited at a yield.
                code = "CANCELLED"
                raise
            except Exception as err:
                status, message = errors.status_for(err, name)
            code = status.name
            await context.abort(status, message)
        finally:
            if code is not None:
                metrics.observe_request(
                    name, _final_code(code, context), time.perf_counter() - start
                )

    return handler


def add_to_server(servicer: ProfileEmbeddingServicer, server: grpc.aio.Server) -> None:
    """Register every RPC of the service with raw-bytes request parsing (see module docstring)."""
    service = pb2.DESCRIPTOR.services_by_name["ProfileEmbeddingService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        req_cls = getattr(pb2, method.input_type.name)
        resp_cls = getattr(pb2, method.output_type.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _bidi(servicer, method.name), response_serializer=resp_cls.SerializeToString
            )
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(servicer, method.name, req_cls),
                response_serializer=resp_cls.SerializeToString,
            )
        else:  # pragma: no cover - the proto has no such method
            raise TypeError(f"unsupported streaming shape for {method.full_name}")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
