"""Choose the encoder numerics on the machine that serves, not the one that built the model.

The build (or ``profile-embed numerics check``) measures which numerics keep geolocation accuracy
within tolerance of fp32 and records them in the model folder (``numerics.json``, see
``heads.evaluation.numerics_check``). Speed, though, depends on the CPU: on an AMX-BF16 Xeon bf16
was measured 2.47x plain sentence-transformers while ``onnx-fp32`` (chosen by the build there) was
0.87x. So at load time, among the accurate candidates this CPU runs natively, a short probe
encodes the same texts with each and keeps the fastest. The result is cached per CPU model, ISA
flags, thread count, ``embedding_version`` and candidate list in
``<PROFILE_EMBED_HOME>/numerics-probe.json``, so only the first start on a machine pays for it
(seconds). ``PROFILE_EMBED_NUMERICS_PROBE=0`` replaces the probe by rules from the CPU flags.

fp32 is always a candidate and the probe's reference, so the choice is never slower than fp32
(the torch path plain sentence-transformers also runs) on the machine it was made on.

An encoder moved to a GPU (``ProfileEncoder.to("cuda")``) chooses among the torch numerics only
(``embedder.devices.CUDA_NUMERICS``: fp32, and bf16 where the GPU has it), keyed by the GPU's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedder.devices import CUDA_NUMERICS
from embedder.numerics import CT2_NUMERICS, NUMERICS, ONNX_NUMERICS

logger = logging.getLogger(__name__)

#: Bump when the probe's workload or timing rule changes, or the speed of a numerics does
#: (invalidates cached choices). 2: fp32 and bf16 run fused linear layers (embedder.cpu_fusion).
#: 3: simulated profiles of traffic-like lengths instead of 12 samples repeated. 4: ``serve``'s
#: malloc thresholds no longer halve the torch numerics (server/allocator.py): re-measure.
#: 5: passes are padded to a multiple of 16 tokens (embedder.encoder.PAD_MULTIPLE), which made
#: bf16 and openvino faster by different amounts.
PROBE_FORMAT = 5
PROBE_ENV = "PROFILE_EMBED_NUMERICS_PROBE"
#: ISA flags that decide which numerics run natively (and fast) on a CPU.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """What the numerics choice needs to know about this CPU."""

    model: str
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls in hardware (AVX512-BF16 or AMX); elsewhere torch emulates them slowly."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def vnni(self) -> bool:
        """int8 dot products without the u8 x s8 saturation of plain AVX2 (``vpmaddubsw``)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    def key(self) -> str:
        """The CPU part of a probe cache key."""
        return f"{self.model}|{','.join(sorted(self.flags & set(ISA_FLAGS)))}"


@dataclass(frozen=True)
class GpuInfo:
    """What the numerics choice needs to know about a CUDA device."""

    model: str
    bf16: bool

    def key(self) -> str:
        """The GPU part of a probe cache key."""
        return f"cuda|{self.model}|bf16={int(self.bf16)}"


def gpu_info(device: Any) -> GpuInfo:
    """Name and bf16 support of the CUDA device ``device`` (a ``torch.device``)."""
    import torch

    return GpuInfo(torch.cuda.get_device_name(device), bool(torch.cuda.is_bf16_supported()))


def runnable_on_gpu(candidates: Sequence[str], gpu: GpuInfo) -> list[str]:
    """Candidates that run on ``gpu``: the torch numerics, bf16 only where the GPU has it."""
    out = [
        name
        for name in dict.fromkeys(candidates)
        if name in CUDA_NUMERICS and (name != "bf16" or gpu.bf16)
    ]
    if "fp32" not in out:
        out.insert(0, "fp32")
    return out


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """Model name and flags of this machine's first CPU (empty on systems without procfs)."""
    model, flags = "unknown", frozenset[str]()
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return CpuInfo(model, flags)
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "model name" and model == "unknown":
            model = value.strip()
        elif name == "flags" and not flags:
            flags = frozenset(value.split())
        if model != "unknown" and flags:
            break
    return CpuInfo(model, flags)


def runnable_here(candidates: Sequence[str], cpu: CpuInfo) -> list[str]:
    """Candidates worth trying on ``cpu``: bf16 only with native bf16, ONNX only if installed."""
    out = []
    for name in candidates:
        if name not in NUMERICS or name in out:
            continue
        if name == "bf16" and not cpu.native_bf16:
            continue
        if name in ONNX_NUMERICS and not _installed("onnxruntime"):
            continue
        if name == "openvino" and not _installed("openvino"):
            continue
        if name == "openvino-int8" and not _installed("openvino", "nncf"):  # nncf quantizes
            continue
        if name in CT2_NUMERICS and not _installed("ctranslate2"):
            continue
        out.append(name)
    if "fp32" not in out:
        out.insert(0, "fp32")
    return out


def rule_choice(candidates: Sequence[str], cpu: CpuInfo | GpuInfo) -> str:
    """The choice without a probe: the usual winner on this kind of processor among ``candidates``.

    CPU order from ``docs/BENCHMARKS.md`` runs: native bf16 first (AMX), then ONNX int8 (fastest
    where VNNI exists, and still ahead on AVX2), then ONNX fp32, then fp32. On a GPU: bf16 where
    it has bf16 tensor cores, else fp32 (not measured here: no GPU in this project's runs).
    """
    if isinstance(cpu, GpuInfo):
        return "bf16" if "bf16" in runnable_on_gpu(candidates, cpu) else "fp32"
    usable = runnable_here(candidates, cpu)
    for name in ("bf16", "onnx-int8", "int8", "onnx-fp32"):
        if name in usable and (name != "int8" or cpu.vnni):
            return name
    return "fp32"


def probe_cache_file() -> Path:
    """``<PROFILE_EMBED_HOME>/numerics-probe.json``."""
    from embedder.base_import import cache_home

    return cache_home() / "numerics-probe.json"


def probe_key(
    cpu: CpuInfo | GpuInfo, threads: int, embedding_version: str, candidates: Sequence[str]
) -> str:
    """Cache key of one probe: a different CPU or GPU, thread count, model, candidate list or
    engine file format re-probes."""
    from embedder.ct2_backend import CT2_FORMAT
    from embedder.onnx_backend import EXPORT_FORMAT
    from embedder.openvino_backend import IR_FORMAT

    raw = json.dumps(
        [
            PROBE_FORMAT,
            EXPORT_FORMAT,
            IR_FORMAT,
            CT2_FORMAT,
            cpu.key(),
            threads,
            embedding_version,
            sorted(candidates),
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def choose_numerics(
    encoder: Any,
    candidates: Sequence[str],
    *,
    cpu: CpuInfo | None = None,
    cache_file: Path | None = None,
    probe: bool | None = None,
) -> dict[str, Any]:
    """Pick the fastest of ``candidates`` for ``encoder`` on this machine and switch it over.

    Args:
        encoder: a loaded ``ProfileEncoder`` (fp32 weights); its ``numerics`` is set to the
            choice, reusing the inference model the probe already built. On a CUDA device
            (``encoder.device``) only fp32 and bf16 are candidates.
        candidates: numerics allowed by the model's accuracy check (fp32 is always added).
        cpu: the CPU to decide for (default: this one; ignored for an encoder on a GPU).
        cache_file: probe cache (default :func:`probe_cache_file`).
        probe: measure (True) or use :func:`rule_choice` (False); None reads
            ``$PROFILE_EMBED_NUMERICS_PROBE`` (default on).

    Returns:
        ``{"chosen", "how": "probe"|"cached"|"rules"|"only", "profiles_per_s": {...}, ...}``.
    """
    device = getattr(encoder, "device", None)
    hw: CpuInfo | GpuInfo
    if device is not None and device.type == "cuda":
        hw = gpu_info(device)
        usable = runnable_on_gpu(candidates, hw)
    else:
        hw = cpu or cpu_info()
        usable = runnable_here(candidates, hw)
    if len(usable) == 1:
        return _switch(encoder, {"chosen": usable[0], "how": "only", "candidates": usable})
    if probe is None:
        probe = os.environ.get(PROBE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    if not probe:
        return _switch(
            encoder, {"chosen": rule_choice(usable, hw), "how": "rules", "candidates": usable}
        )
    from embedder.numerics import default_threads

    threads = int(encoder.threads or default_threads())
    path = cache_file or probe_cache_file()
    key = probe_key(hw, threads, encoder.embedding_version, usable)
    with _locked(path):
        entries = _read_cache(path)  # read once: the lock keeps other probers out meanwhile
        cached = entries.get(key)
        # an entry edited by hand or by another version may not be a record: probe again
        if isinstance(cached, dict) and cached.get("chosen") in usable:
            return _switch(encoder, {**cached, "how": "cached"})
        record, built = _probe(encoder, usable, threads)
        record.update(cpu=hw.model, threads=threads, measured_at=time.strftime("%Y-%m-%d"))
        entries[key] = record
        _write_cache(path, entries)
    return _switch(encoder, {**record, "how": "probe"}, built.get(record["chosen"]))


#: The probe's workload: simulated profiles of a fixed seed and stream (never training data).
PROBE_PROFILES = 384
PROBE_STREAM = "numerics-probe"


def probe_texts(encoder: Any, n: int = PROBE_PROFILES) -> list[str]:
    """The probe's workload: ``n`` simulated profiles, assembled by the encoder.

    Distinct profiles of traffic-like lengths, not a few repeated: engines that compile kernels
    per input shape (OpenVINO) look faster on a handful of repeated shapes than on traffic. With
    the 12 packaged sample profiles x 16, the probe measured openvino-int8 at 748/s against bf16
    at 705/s on the AMX Xeon, where ``make bench``'s 1,000 distinct profiles had bf16 1.16x
    faster (668 vs 575/s).
    """
    from embedder.simulator.core import simulated_texts

    return simulated_texts(encoder.assemble, n, seed=0, stream=PROBE_STREAM)


def _probe(encoder: Any, usable: Sequence[str], threads: int) -> tuple[dict[str, Any], dict]:
    """Time every candidate on the same texts, interleaved, best of ``rounds``."""
    texts = probe_texts(encoder)
    variants: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name in usable:
        variant = encoder.with_numerics(name, threads=threads)
        try:
            variant.encode_texts(texts[:16])  # build: int8 copy, ONNX export/session, warm-up
        except Exception as err:  # an optional backend that fails must not stop the server
            logger.warning("numerics %s unavailable on this machine: %s", name, err)
            failed[name] = f"{type(err).__name__}: {err}"
            continue
        variants[name] = variant
    best: dict[str, float] = {}
    for _ in range(2):  # interleaved rounds: a load change on a shared machine hits all alike
        for name, variant in variants.items():
            start = time.perf_counter()
            variant.encode_texts(texts, batch_size=64)
            rate = len(texts) / max(time.perf_counter() - start, 1e-9)
            best[name] = max(best.get(name, 0.0), rate)
    chosen = max(best, key=lambda n: best[n]) if best else "fp32"
    record = {
        "chosen": chosen,
        "candidates": list(usable),
        "profiles_per_s": {n: round(r, 1) for n, r in best.items()},
        "failed": failed,
        "texts": len(texts),
    }
    return record, variants


def _switch(encoder: Any, record: dict[str, Any], built: Any = None) -> dict[str, Any]:
    """Set ``encoder.numerics``; adopt the probe variant's already built inference model."""
    encoder.numerics = record["chosen"]
    if built is not None:
        encoder._int8_model = built._int8_model
        encoder._bf16_model = built._bf16_model
        encoder._engine_model = built._engine_model
    rates = record.get("profiles_per_s") or {}
    logger.info(
        "numerics %s (%s%s)",
        record["chosen"],
        record["how"],
        ": " + ", ".join(f"{n} {r:.0f}/s" for n, r in rates.items()) if rates else "",
    )
    return record


def _installed(*modules: str) -> bool:
    """Every one of ``modules`` importable (found, not imported)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in modules)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One prober per machine: Ray actors or server workers starting together wait for the first
    one's result instead of probing at once (which would measure each other)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
