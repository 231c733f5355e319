"""Numeric modes and CPU thread defaults of the inference path: the one list every flag checks.

Light on purpose (no torch import), so CLI parsers and ``ServerConfig`` can validate
``--numerics`` before anything heavy loads. ``embedding_version`` never depends on the numerics:
they are a runtime choice, like the thread count.

- ``fp32``: the PyTorch model as trained.
- ``bf16``: a bfloat16 copy of the weights, run under PyTorch CPU autocast (norms stay fp32).
- ``int8``: PyTorch dynamic quantization of the Linear layers (int8 weights, per-batch
  activation scales), on a copy.
- ``onnx-fp32``: the transformer exported to ONNX and run by ONNX Runtime.
- ``onnx-int8``: that export with MatMul weights quantized to int8 by
  ``onnxruntime.quantization.quantize_dynamic``.
- ``openvino``: that export run by OpenVINO's CPU plugin at its default precision (bf16 where
  the CPU has it natively, f32 elsewhere).
- ``openvino-int8``: that export quantized to static int8 by NNCF, run by OpenVINO.
- ``ct2-int8``: the transformer converted to CTranslate2 with int8 weights, run by its
  ``Encoder`` (the fastest engine measured on an AVX2-only CPU).
"""

from __future__ import annotations

import os
from pathlib import Path

NUMERICS = (
    "fp32", "bf16", "int8", "onnx-fp32", "onnx-int8", "openvino", "openvino-int8", "ct2-int8",
)  # fmt: skip
ONNX_NUMERICS = ("onnx-fp32", "onnx-int8")
OPENVINO_NUMERICS = ("openvino", "openvino-int8")
CT2_NUMERICS = ("ct2-int8",)
#: Numerics run by an engine on an export of the model, not by torch.
EXPORTED_NUMERICS = ONNX_NUMERICS + OPENVINO_NUMERICS + CT2_NUMERICS
DEFAULT_NUMERICS = "fp32"
#: What ``--numerics`` accepts: a fixed mode, or ``auto`` (the fastest accurate one on this
#: machine, see ``embedder.numerics_choice``; also what an unset flag means).
AUTO = "auto"
NUMERICS_OPTIONS = (AUTO, *NUMERICS)


def check_numerics(value: str) -> str:
    """Return ``value`` when it is a known numeric mode.

    Raises:
        ValueError: naming the value and the allowed ones.
    """
    if value not in NUMERICS:
        raise ValueError(f"numerics must be one of {NUMERICS}, got {value!r}")
    return value


def check_numerics_option(value: str) -> str:
    """Return ``value`` when ``--numerics`` accepts it (a mode, or ``auto``).

    Raises:
        ValueError: naming the value and the allowed ones.
    """
    if value not in NUMERICS_OPTIONS:
        raise ValueError(f"numerics must be one of {NUMERICS_OPTIONS}, got {value!r}")
    return value


def allowed_cpus() -> set[int]:
    """CPUs this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return set(range(os.cpu_count() or 1))


def physical_cores(
    cpus: set[int] | None = None, sysfs: Path = Path("/sys/devices/system/cpu")
) -> int:
    """Distinct physical cores among ``cpus`` (default: :func:`allowed_cpus`).

    SMT siblings share one core's FMA units, so a second thread per core rarely speeds up
    GEMM-bound inference and often slows it down. Falls back to one core per CPU when the
    topology files are not readable.
    """
    cpus = allowed_cpus() if cpus is None else cpus
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = sysfs / f"cpu{cpu}" / "topology"
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            package, core = "cpu", str(cpu)
        cores.add((package, core))
    return max(1, len(cores))


def default_threads() -> int:
    """Intra-op threads for encoding: one per physical core this process may run on."""
    return physical_cores()
