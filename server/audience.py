"""``EstimateAudience``: followers (profiles and/or indexed ids) -> label shares with intervals.

Follower vectors come from the embed path (cache, batcher) for profiles and from the similarity
index for ids; the head's calibrated probabilities go to ``heads.audience.estimate_audience`` with
everything the head's calibration record holds (``head_audience_inputs``). With the prior the head
was calibrated under (``effective_prior``) the EM prior-shift estimator is the default, else the
probability average; intervals resample the followers and the head's calibration error. The
response says which estimator produced the shares (``used``), carries the low-evidence ``flags``
and the ``diagnostics`` behind them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.errors import InvalidInputError
from server import errors
from server._proto.profile_embedding.v1 import profile_embedding_pb2 as pb2
from server.runtime import Runtime

if TYPE_CHECKING:
    from embedder.index import SimilarityIndex
    from heads.audience import AudienceEstimate, Method
    from heads.base import Head
    from server.service import ProfileEmbeddingServicer

logger = logging.getLogger(__name__)

#: Bootstrap replicates for the intervals by default, and the most a request may ask for.
N_BOOTSTRAP = 200
MAX_BOOTSTRAP = 1000


def indexed_vectors(index: SimilarityIndex, ids: Sequence[str]) -> np.ndarray:
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


#: AudienceMethod enum name -> heads.audience method.
_METHODS: dict[str, Method] = {
    "AUDIENCE_METHOD_EM": "em",
    "AUDIENCE_METHOD_AVERAGE": "average",
    "AUDIENCE_METHOD_CLASSIFY_AND_COUNT": "cc",
    "AUDIENCE_METHOD_GUARDED": "guarded",
    "AUDIENCE_METHOD_MAP": "map",
    "AUDIENCE_METHOD_FALLBACK": "fallback",
    "AUDIENCE_METHOD_ENSEMBLE": "ensemble",
    "AUDIENCE_METHOD_ACC": "acc",
}


def _prior(head: Head) -> np.ndarray | None:
    stored = (getattr(head, "calibration_", None) or {}).get("effective_prior")
    if not stored:
        return None
    return np.array([float(stored.get(lab, 0.0)) for lab in head.labels])


def _method(requested: int, prior: np.ndarray | None, head: Head | None = None) -> Method:
    """The ``heads.audience`` method of a request's ``AudienceMethod`` (validated).

    Args:
        requested: the enum number.
        prior: the head's calibration prior (``_prior``); None when it recorded none.
        head: the head; given, a method that needs the validation confusion is refused when the
            head recorded none.

    Raises:
        InvalidInputError: an undefined number, or a method the head lacks the inputs for.
    """
    from heads.audience import NEEDS, default_method, head_audience_inputs

    try:
        name = pb2.AudienceMethod.Name(requested)
    except ValueError:
        raise InvalidInputError(
            f"is {requested}, not an AudienceMethod; allowed: {sorted(_METHODS)}", field="method"
        ) from None
    if name == "AUDIENCE_METHOD_UNSPECIFIED":
        confusion = None if head is None else head_audience_inputs(head)["confusion"]
        return default_method(has_prior=prior is not None, has_confusion=confusion is not None)
    method = _METHODS[name]
    missing = []
    if "prior" in NEEDS[method] and prior is None:
        missing.append("the prior it was calibrated under")
    if "confusion" in NEEDS[method] and head is not None:
        if head_audience_inputs(head)["confusion"] is None:
            missing.append("a validation confusion matrix")
    if missing:
        raise InvalidInputError(
            f"{name} needs {' and '.join(missing)} from the head's calibration, and this head "
            "has none recorded; use AUDIENCE_METHOD_AVERAGE",
            field="method",
        )
    return method


def response_fields(est: AudienceEstimate) -> dict[str, Any]:
    """The ``used``/``flags``/``interval``/``diagnostics`` fields of an ``AudienceEstimate``."""
    d = est.diagnostics
    misfit = d.get("label_shift_misfit") or {}
    diagnostics = pb2.AudienceDiagnostics(
        assigned=int(d.get("assigned") or 0),
        assigned_share=float(d.get("assigned_share") or 0.0),
        validation_assigned_share=float(d.get("validation_assigned_share") or 0.0),
        expected_assigned_share=float(d.get("expected_assigned_share") or 0.0),
        label_shift_misfit=float(misfit.get("misfit", 0.0)),
        label_shift_p_value=float(misfit.get("p_value", 0.0)),
        em_refuted=bool(d.get("em_refuted", False)),
        em_vs_acc=float(d.get("em_vs_acc") or 0.0),
        capped=list(d.get("capped") or ()),
        total_variation_to={k: float(v) for k, v in (d.get("total_variation_to") or {}).items()},
    )
    return {
        "used": est.used or est.method,
        "flags": [pb2.AudienceFlag.Value(f"AUDIENCE_FLAG_{f.upper()}") for f in est.flags],
        "interval": est.interval,
        "diagnostics": diagnostics,
    }


def _check_followers_distinct(request: pb2.EstimateAudienceRequest) -> None:
    """Refuse a follower given twice (by id, across both fields): it would count twice."""
    seen: dict[str, str] = {}
    given = (
        ("follower_ids", list(request.follower_ids)),
        ("followers", [f.id for f in request.followers]),
    )
    for field, ids in given:
        for i, follower_id in enumerate(ids):
            where = f"{field}[{i}]"
            if not follower_id:
                if field == "followers":
                    continue  # a profile without an id is refused with the profile's checks
                raise InvalidInputError("must be a non-empty indexed id, got ''", field=where)
            first = seen.setdefault(follower_id, where)
            if first != where:
                raise InvalidInputError(
                    f"follower {follower_id[:100]!r} is given twice ({first} and {where}); "
                    "each follower must appear once",
                    field=where,
                )


async def estimate(
    servicer: ProfileEmbeddingServicer, rt: Runtime, request: pb2.EstimateAudienceRequest
) -> pb2.EstimateAudienceResponse:
    """Serve one ``EstimateAudienceRequest``; see the module docstring."""
    from heads.audience import estimate_audience, head_audience_inputs

    head_name = request.head or "geolocation"
    errors.check_heads([head_name], list(rt.heads))
    confidence = request.confidence or 0.95
    if not 0.5 <= confidence < 1:
        raise InvalidInputError(f"must be in [0.5, 1), got {confidence}", field="confidence")
    total = len(request.followers) + len(request.follower_ids)
    errors.check_count(total, servicer.limits, field="followers + follower_ids")
    head = rt.heads[head_name]
    inputs = {**head_audience_inputs(head), "prior": _prior(head)}
    method = _method(request.method, inputs["prior"], head)
    n_bootstrap = request.n_bootstrap or N_BOOTSTRAP
    if n_bootstrap > MAX_BOOTSTRAP:
        raise InvalidInputError(
            f"is {n_bootstrap}; the most allowed is {MAX_BOOTSTRAP}", field="n_bootstrap"
        )
    _check_followers_distinct(request)
    parts = []
    if request.follower_ids:
        index = rt.require_index()
        parts.append(await rt.run_cpu(indexed_vectors, index, list(request.follower_ids)))
    if request.followers:
        profiles = errors.to_profiles(request.followers, servicer.limits, where="followers")
        parts.append((await rt.embed(profiles)).vectors)
    servicer.metrics.profiles.labels("EstimateAudience").inc(total)
    vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]

    def run() -> AudienceEstimate:
        probs = head.predict_proba(vectors)
        return estimate_audience(
            probs,
            labels=head.labels,
            method=method,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            **inputs,
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
        **response_fields(est),
    )
