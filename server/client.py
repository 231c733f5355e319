"""A small synchronous Python client for the profile-embedding service.

Example::

    from server.client import ProfileEmbeddingClient

    with ProfileEmbeddingClient("localhost:50051", token=None) as client:
        print(client.info()["embedding_version"])
        vectors = client.embed([{"id": "1", "biography": "📍 Lyon"}])          # (1, dim) float32
        for row in client.predict([{"id": "1", "biography": "📍 Lyon"}], top_k=3):
            print(row["id"], row["predictions"]["geolocation"]["label"])
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from embedder.profile import Profile
from heads.base import Prediction
from server._proto.profile_embedding.v1 import profile_embedding_pb2 as pb2
from server._proto.profile_embedding.v1 import profile_embedding_pb2_grpc as pb2_grpc

logger = logging.getLogger(__name__)

ProfileLike = Profile | Mapping[str, Any]
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def _bytes(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def to_message(profile: ProfileLike) -> pb2.Profile:
    """Turn a :class:`Profile` or a JSON-like record into a ``profile_embedding.v1.Profile``."""
    if isinstance(profile, Profile):
        record: Mapping[str, Any] = profile.to_dict()
    else:
        record = profile
    return pb2.Profile(
        id=str(record.get("id", "")),
        username=record.get("username") or "",
        full_name=record.get("full_name") or "",
        biography=record.get("biography") or "",
        captions=[c or "" for c in record.get("captions") or ()],
    )


def vector_of(embedding: pb2.Embedding, dim: int) -> np.ndarray:
    """Decode an ``Embedding.vector`` (little-endian float32) into a ``(dim,)`` array."""
    vec = np.frombuffer(embedding.vector, dtype="<f4")
    if vec.shape != (dim,):
        raise ValueError(f"embedding {embedding.id!r} has {vec.size} values, expected dim {dim}")
    return vec.astype(np.float32)


def abstain_reason_name(value: int) -> str | None:
    """Map an ``AbstainReason`` value to ``Prediction.reason`` (UNSPECIFIED -> None).

    A value this client's proto does not know (a newer server) becomes ``"abstain_reason_<n>"``.
    """
    if value == pb2.ABSTAIN_REASON_UNSPECIFIED:
        return None
    if value not in pb2.AbstainReason.values():
        return f"abstain_reason_{int(value)}"
    return str(pb2.AbstainReason.Name(value)).removeprefix("ABSTAIN_REASON_").lower()


def head_prediction(message: pb2.HeadPrediction, labels: Sequence[str]) -> Prediction:
    """A ``HeadPrediction`` message as the in-process :class:`heads.base.Prediction`.

    The one place the client reads a head's answer off the wire into the in-process type, so
    ``Prediction.to_dict`` gives ``profile-embed client predict`` and ``profile-embed predict``
    one JSON shape, every field of ``Prediction`` (``reason`` included) carried.

    Args:
        message: a ``HeadPrediction`` whose ``top`` holds every label (request ``top_k`` >= the
            number of labels, as :meth:`ProfileEmbeddingClient.predict_heads` does).
        labels: the head's labels in output order (``Info``'s ``HeadInfo.labels``).

    Returns:
        The prediction, ``probabilities`` aligned with ``labels``.

    Raises:
        ValueError: ``message.top`` does not hold exactly the labels of ``labels``.
    """
    probs = {t.label: float(t.probability) for t in message.top}
    if len(probs) != len(labels) or any(lab not in probs for lab in labels):
        raise ValueError(
            f"head {message.head!r}: the answer holds the probabilities of {len(probs)} labels, "
            f"the head has {len(labels)}; request top_k >= {len(labels)}"
        )
    return Prediction(
        label=message.label or None,
        argmax=message.argmax,
        score=float(message.score),
        abstained=message.abstained,
        probabilities=np.array([probs[lab] for lab in labels]),
        reason=abstain_reason_name(message.abstain_reason),
    )


def prediction_dict(result: pb2.ProfilePrediction, dim: int = 0) -> dict[str, Any]:
    """A ``ProfilePrediction`` as a JSON-ready dict (``predictions`` keyed by head).

    Each head's dict has ``label`` (None when abstained), ``abstained``, ``argmax``, ``score``,
    ``reason`` (None when assigned, else one of ``heads.base.ABSTAIN_REASONS``) and ``top``.
    """
    out: dict[str, Any] = {"id": result.id, "predictions": {}}
    for p in result.predictions:
        out["predictions"][p.head] = {
            "label": p.label or None,
            "abstained": p.abstained,
            "argmax": p.argmax,
            "score": round(float(p.score), 6),
            "reason": abstain_reason_name(p.abstain_reason),
            "top": [
                {"label": t.label, "probability": round(float(t.probability), 6)} for t in p.top
            ],
        }
    if result.HasField("embedding") and dim:
        out["embedding"] = vector_of(result.embedding, dim).tolist()
    return out


class ProfileEmbeddingClient:
    """Blocking client; every method raises ``grpc.RpcError`` with the server's status on failure.

    Args:
        target: ``host:port``.
        token: bearer token sent as ``authorization`` metadata, when the server wants one.
        tls: use TLS (the system roots unless ``root_certificates`` is given).
        root_certificates: PEM CA bundle (bytes or path) to verify the server.
        client_cert: PEM client certificate for mTLS (bytes or path).
        client_key: PEM key of ``client_cert``.
        timeout: per-call deadline in seconds.
        max_message_bytes: largest message sent or received.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        client_cert: bytes | str | Path | None = None,
        client_key: bytes | str | Path | None = None,
        timeout: float = 60.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls or root_certificates is not None or client_cert is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_bytes(root_certificates),
                private_key=_bytes(client_key),
                certificate_chain=_bytes(client_cert),
            )
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb2_grpc.ProfileEmbeddingServiceStub(self.channel)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._dim = 0
        self._labels: dict[str, tuple[str, ...]] | None = None

    def __enter__(self) -> ProfileEmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable[_Request, _Response], request: _Request
    ) -> _Response:
        return method(request, timeout=self.timeout, metadata=self._metadata)

    def info(self) -> dict[str, Any]:
        """Encoder version, dim, base model, heads (labels, thresholds, validation), limits."""
        from google.protobuf.json_format import MessageToDict

        resp = self._call(self.stub.Info, pb2.InfoRequest())
        self._dim = resp.dim
        return MessageToDict(resp, preserving_proto_field_name=True)

    def embed(self, profiles: Sequence[ProfileLike]) -> np.ndarray:
        """Embed profiles; return ``(n, dim)`` float32 in input order."""
        req = pb2.EmbedRequest(profiles=[to_message(p) for p in profiles])
        resp = self._call(self.stub.Embed, req)
        self._dim = resp.dim
        if not resp.embeddings:
            return np.zeros((0, resp.dim), dtype=np.float32)
        return np.stack([vector_of(e, resp.dim) for e in resp.embeddings])

    def predict(
        self,
        profiles: Sequence[ProfileLike],
        *,
        heads: Sequence[str] = (),
        top_k: int = 1,
        include_embedding: bool = False,
    ) -> list[dict[str, Any]]:
        """Predict heads (all when empty) for profiles; one dict per profile, in input order."""
        req = pb2.PredictRequest(
            profiles=[to_message(p) for p in profiles],
            heads=list(heads),
            top_k=top_k,
            include_embedding=include_embedding,
        )
        resp = self._call(self.stub.Predict, req)
        return [prediction_dict(r, resp.dim) for r in resp.results]

    def head_labels(self) -> dict[str, tuple[str, ...]]:
        """Head name -> its labels in output order (one ``Info`` call, then remembered)."""
        if self._labels is None:
            resp = self._call(self.stub.Info, pb2.InfoRequest())
            self._labels = {h.name: tuple(h.labels) for h in resp.heads}
        return self._labels

    def predict_heads(
        self, profiles: Sequence[ProfileLike], *, heads: Sequence[str] = ()
    ) -> list[tuple[str, dict[str, Prediction]]]:
        """Predict heads (all when empty) as ``heads.base.Prediction`` objects, as in-process.

        Every label's probability is requested, so ``Prediction.to_dict(head_labels()[name])``
        gives the JSON of ``profile-embed predict``.

        Returns:
            ``(id, {head name: Prediction})`` per profile, in input order.
        """
        labels = self.head_labels()
        req = pb2.PredictRequest(
            profiles=[to_message(p) for p in profiles],
            heads=list(heads),
            top_k=max((len(v) for v in labels.values()), default=1),
        )
        resp = self._call(self.stub.Predict, req)
        return [
            (r.id, {p.head: head_prediction(p, labels[p.head]) for p in r.predictions})
            for r in resp.results
        ]

    def predict_stream(
        self, profiles: Iterable[ProfileLike], *, heads: Sequence[str] = (), top_k: int = 1
    ) -> Iterator[dict[str, Any]]:
        """Stream profiles; yield one dict per item (``status``, ``error`` on a bad item)."""
        requests = (
            pb2.PredictStreamRequest(profile=to_message(p), heads=list(heads), top_k=top_k)
            for p in profiles
        )
        for resp in self.stub.PredictStream(requests, metadata=self._metadata):
            row: dict[str, Any] = {"id": resp.id, "index": resp.index}
            row["status"] = pb2.ItemStatus.Name(resp.status)
            if resp.status == pb2.ITEM_STATUS_OK:
                row.update(prediction_dict(resp.result))
            else:
                row["error"] = resp.error
            yield row

    def search(
        self, *, profile: ProfileLike | None = None, id: str | None = None, k: int = 10
    ) -> list[tuple[str, float]]:
        """Nearest indexed profiles to a profile or an indexed id: ``[(id, score), ...]``."""
        if (profile is None) == (id is None):
            raise ValueError("give exactly one of profile= or id=")
        if profile is not None:
            req = pb2.SearchSimilarRequest(profile=to_message(profile), k=k)
        else:
            req = pb2.SearchSimilarRequest(id=id, k=k)
        resp = self._call(self.stub.SearchSimilar, req)
        return [(n.id, float(n.score)) for n in resp.neighbors]

    def upsert(self, profiles: Sequence[ProfileLike]) -> int:
        """Add profiles to the server's index; return the index size."""
        req = pb2.UpsertIndexRequest(profiles=[to_message(p) for p in profiles])
        return int(self._call(self.stub.UpsertIndex, req).index_size)

    def audience(
        self,
        followers: Sequence[ProfileLike] = (),
        *,
        follower_ids: Sequence[str] = (),
        head: str = "",
        confidence: float = 0.0,
        method: str = "",
        n_bootstrap: int = 0,
    ) -> dict[str, Any]:
        """Label shares (with intervals) of a head over followers or indexed follower ids.

        ``method`` is ``""`` (server default), ``"em"``, ``"average"`` or ``"classify_and_count"``.
        """
        from google.protobuf.json_format import MessageToDict

        req = pb2.EstimateAudienceRequest(
            followers=[to_message(p) for p in followers],
            follower_ids=list(follower_ids),
            head=head,
            confidence=confidence,
            method=f"AUDIENCE_METHOD_{method.upper()}"
            if method
            else pb2.AUDIENCE_METHOD_UNSPECIFIED,
            n_bootstrap=n_bootstrap,
        )
        resp = self._call(self.stub.EstimateAudience, req)
        return MessageToDict(resp, preserving_proto_field_name=True)

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name (``SERVING``, ``NOT_SERVING``...)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
