"""Which encoder numerics keep a model's accuracy: measured once per model, recorded beside it.

``check_numerics_accuracy`` encodes the same labelled profiles with every numerics this machine can
run, compares the geolocation head's accuracy with fp32 and writes ``M/numerics.json``. Accuracy
is a property of the weights and the numerics, not of the CPU; speed is the opposite, so the
serving machine picks the fastest *accurate* numerics at load time
(``embedder.numerics_choice.choose_numerics``). The build runs the check; ``profile-embed
numerics check`` runs it on an existing model folder (it adds this one file and changes no
weights, so ``embedding_version`` stays).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import ArtifactError, InvalidInputError
from embedder.numerics import NUMERICS

logger = logging.getLogger(__name__)

NUMERICS_FILE = "numerics.json"
#: Largest geolocation accuracy loss a numerics may cost (the issue's half a point).
DEFAULT_TOLERANCE = 0.005
DEFAULT_ROWS = 2000
#: Smallest share of profiles whose argmax must match fp32's. Accuracy alone can hide churn:
#: torch dynamic int8 lost only 0.45 points on 2,000 profiles while changing 6.8% of the argmaxes
#: (min cosine 0.79), so equal accuracy was luck, not fidelity.
DEFAULT_MIN_AGREEMENT = 0.97
#: The numerics measured against fp32 by default.
CANDIDATES: tuple[str, ...] = tuple(n for n in NUMERICS if n != "fp32")


def accurate_numerics(model_dir: str | Path) -> list[str] | None:
    """The numerics ``numerics.json`` found accurate (fp32 first), or None without the file.

    Raises:
        ArtifactError: the file exists but is not a numerics record.
    """
    path = Path(model_dir) / NUMERICS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        names = [str(n) for n in record["accurate"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ArtifactError(
            f"{path} is not a numerics record ({err}); rerun `profile-embed numerics check`"
        ) from err
    unknown = [n for n in names if n not in NUMERICS]
    if unknown:
        raise ArtifactError(f"{path}: unknown numerics {unknown}; allowed: {NUMERICS}")
    return ["fp32", *[n for n in names if n != "fp32"]]


def check_numerics_accuracy(
    model_dir: str | Path,
    data: str | Path,
    *,
    rows: int = DEFAULT_ROWS,
    tolerance: float = DEFAULT_TOLERANCE,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    candidates: Sequence[str] = CANDIDATES,
    head: str = "geolocation",
) -> dict[str, Any]:
    """Measure each candidate against fp32 on ``rows`` labelled profiles; write ``numerics.json``.

    A candidate is accurate when its accuracy is at most ``tolerance`` below fp32's and its argmax
    agrees with fp32's on at least ``min_agreement`` of the profiles. bf16 is
    checked only on a CPU with native bf16 (emulated bf16 would take minutes and is never chosen
    where it is emulated); a candidate that fails to run is recorded with its error.

    Returns:
        The record written: ``{"accurate", "checked": {name: {...}}, "not_checked", ...}``.

    Raises:
        InvalidInputError / ArtifactError: unreadable data or model.
    """
    from embedder.data import read_profiles
    from embedder.numerics_choice import cpu_info
    from heads.model import ProfileModel

    model_dir = Path(model_dir)
    labelled = [r for r in read_profiles(data).rows if r.labels.get("country") is not None]
    labelled = labelled[:rows]
    if not labelled:
        raise InvalidInputError(
            f"{data} has no rows with a labels.country field to check numerics on"
        )
    profiles = [r.profile for r in labelled]
    truth = np.array([str(r.labels["country"]) for r in labelled], dtype=object)
    model = ProfileModel.load(model_dir, heads=[head], numerics="fp32")
    texts = model.encoder.assemble(profiles)
    cpu = cpu_info()

    def measure(encoder: Any) -> tuple[dict[str, Any], np.ndarray]:
        encoder.encode_texts(texts[:16])  # warm-up: int8 copy, ONNX export, allocator
        start = time.perf_counter()
        vectors = encoder.encode_texts(texts, batch_size=64)
        seconds = time.perf_counter() - start
        preds = model.heads[head].predict(vectors)
        argmax = np.array([p.argmax for p in preds], dtype=object)
        result = {
            "accuracy": round(float(np.mean(argmax == truth)), 4),
            "profiles_per_s": round(len(texts) / max(seconds, 1e-9), 1),
        }
        return result, vectors

    reference, ref_vectors = measure(model.encoder)
    ref_argmax = np.array([p.argmax for p in model.heads[head].predict(ref_vectors)], dtype=object)
    checked: dict[str, Any] = {"fp32": reference}
    not_checked: dict[str, str] = {}
    accurate = ["fp32"]
    for name in candidates:
        if name == "bf16" and not cpu.native_bf16:
            not_checked[name] = "this CPU has no native bf16 (avx512_bf16/amx_bf16)"
            continue
        encoder = model.encoder.with_numerics(name)
        try:
            result, vectors = measure(encoder)
        except Exception as err:  # an optional backend (onnxruntime) that fails must not stop us
            logger.warning("numerics %s could not run: %s", name, err)
            not_checked[name] = f"{type(err).__name__}: {err}"
            continue
        argmax = np.array([p.argmax for p in model.heads[head].predict(vectors)], dtype=object)
        loss = reference["accuracy"] - result["accuracy"]
        agreement = float(np.mean(argmax == ref_argmax))
        result.update(
            accuracy_loss=round(loss, 4),
            agreement_with_fp32=round(agreement, 4),
            min_cosine=round(float(np.min(np.sum(vectors * ref_vectors, axis=1))), 4),
        )
        checked[name] = result
        if loss <= tolerance and agreement >= min_agreement:
            accurate.append(name)
    record = {
        "embedding_version": model.embedding_version,
        "head": head,
        "data": str(data),
        "rows": len(texts),
        "tolerance": tolerance,
        "min_agreement": min_agreement,
        "accurate": accurate,
        "checked": checked,
        "not_checked": not_checked,
        "checked_on": cpu.model,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = model_dir / NUMERICS_FILE
    tmp = path.with_name(f".{NUMERICS_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    logger.info("numerics check: accurate %s (%s)", accurate, checked)
    return record
