"""``EstimateAudience``: followers (profiles and/or indexed ids) -> label shares with intervals.

Follower vectors come from the embed path (cache, batcher) for profiles and from the similarity
index for ids; the head's calibrated probabilities go to ``heads.audience.estimate_audience``. With
the prior the head was calibrated under (``effective_prior``) the EM prior-shift estimator is used,
else the probability average; both with bootstrap intervals over followers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from embedder.errors import InvalidInputError
from server import errors
from server._codegen import modules
from server.runtime import Runtime

logger = logging.getLogger(__name__)

pb2, _ = modules()

#: Bootstrap replicates for the intervals by default, and the most a request may ask for.
N_BOOTSTRAP = 200
MAX_BOOTSTRAP = 1000


def indexed_vectors(index: Any, ids: Sequence[str]) -> np.ndarray:
    """Vectors of ids already in the index, in order.

    Raises:
        UnknownIdError: naming the first id that is not indexed.
    """
    missing = [i for i in ids if i not in index]
    if missing:
        raise errors.UnknownIdError(
            f"{len(missing)} follower ids are not in the index, e.g. {missing[0][:80]!r}; "
            "add them with UpsertIndex or send the profiles",
            ids=missing,
        )
    return np.asarray(index.get_vectors(list(ids)), dtype=np.float32)


def _prior(head: Any) -> np.ndarray | None:
    stored = (getattr(head, "calibration_", None) or {}).get("effective_prior")
    if not stored:
        return None
    return np.array([float(stored.get(lab, 0.0)) for lab in head.labels])


def _method(requested: int, prior: np.ndarray | None) -> str:
    name = pb2.AudienceMethod.Name(requested)
    if name == "AUDIENCE_METHOD_EM" and prior is None:
        raise InvalidInputError(
            "EM needs the prior the head was calibrated under, and this head has none recorded; "
            "use AUDIENCE_METHOD_AVERAGE",
            field="method",
        )
    return {
        "AUDIENCE_METHOD_UNSPECIFIED": "em" if prior is not None else "average",
        "AUDIENCE_METHOD_EM": "em",
        "AUDIENCE_METHOD_AVERAGE": "average",
        "AUDIENCE_METHOD_CLASSIFY_AND_COUNT": "cc",
    }[name]


async def estimate(servicer: Any, rt: Runtime, request: Any) -> Any:
    """Serve one ``EstimateAudienceRequest``; see the module docstring."""
    from heads.audience import estimate_audience

    head_name = request.head or "geolocation"
    errors.check_heads([head_name], list(rt.heads))
    confidence = request.confidence or 0.95
    if not 0.5 <= confidence < 1:
        raise InvalidInputError(f"must be in [0.5, 1), got {confidence}", field="confidence")
    total = len(request.followers) + len(request.follower_ids)
    errors.check_count(total, servicer.limits, field="followers + follower_ids")
    parts = []
    if request.follower_ids:
        index = rt.require_index()
        parts.append(await rt.run_cpu(indexed_vectors, index, list(request.follower_ids)))
    if request.followers:
        profiles = errors.to_profiles(request.followers, servicer.limits, where="followers")
        parts.append((await rt.embed(profiles)).vectors)
    servicer.metrics.profiles.labels("EstimateAudience").inc(total)
    vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]
    head = rt.heads[head_name]
    prior = _prior(head)
    method = _method(request.method, prior)
    n_bootstrap = request.n_bootstrap or N_BOOTSTRAP
    if n_bootstrap > MAX_BOOTSTRAP:
        raise InvalidInputError(
            f"is {n_bootstrap}; the most allowed is {MAX_BOOTSTRAP}", field="n_bootstrap"
        )

    def run() -> Any:
        probs = head.predict_proba(vectors)
        return estimate_audience(
            probs,
            labels=head.labels,
            method=method,
            prior=prior,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
        )

    est = await rt.run_cpu(run)
    return pb2.EstimateAudienceResponse(
        embedding_version=rt.embedding_version,
        head=head_name,
        head_version=int(head.head_version),
        n=int(est.n),
        confidence=float(est.confidence),
        method=method,
        shares=[
            pb2.LabelShare(label=lab, share=float(s), lower=float(lo), upper=float(hi))
            for lab, s, lo, hi in zip(est.labels, est.shares, est.lower, est.upper, strict=True)
        ],
    )
