"""Where the encoder runs: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and which numerics run there.

Light on purpose (torch is imported only inside :func:`choose_device`), so flag parsers and the
Ray driver can check a device and a numerics choice before anything heavy loads.

On CUDA only the torch numerics run: ``fp32`` and ``bf16`` (a bf16 copy of the weights under CUDA
autocast). ``int8`` is torch's dynamic quantization, whose kernels are CPU-only, and the ONNX
numerics run on the ONNX Runtime CPU provider this project installs.
"""

from __future__ import annotations

from embedder.errors import InvalidInputError

AUTO = "auto"
#: The forms a device option takes (``cuda:N`` with N a GPU index).
DEVICE_FORMS = (AUTO, "cpu", "cuda", "cuda:N")
#: Numerics that run on a CUDA device.
CUDA_NUMERICS = ("fp32", "bf16")


def check_device_spec(spec: str, *, field: str = "device") -> str:
    """Return ``spec`` when it has one of :data:`DEVICE_FORMS` (no hardware check).

    Raises:
        InvalidInputError: naming the field, the value and the allowed forms.
    """
    if spec in (AUTO, "cpu", "cuda"):
        return spec
    index = spec[5:] if spec.startswith("cuda:") else ""
    if index.isdigit():
        return spec
    raise InvalidInputError(
        f"{field} must be one of {', '.join(DEVICE_FORMS)}, got {spec!r}", field=field
    )


def choose_device(spec: str = AUTO, *, field: str = "device") -> str:
    """Resolve a device option to the device to run on.

    Args:
        spec: ``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        field: the option's name, for error messages.

    Returns:
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        InvalidInputError: a malformed value, CUDA asked for where torch sees no GPU, or a GPU
            index this machine does not have.
    """
    check_device_spec(spec, field=field)
    import torch

    available = torch.cuda.is_available()
    if spec == AUTO:
        return "cuda" if available else "cpu"
    if spec == "cpu":
        return spec
    if not available:
        raise InvalidInputError(
            f"{field} {spec!r} asks for a GPU but torch sees no CUDA device on this machine "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
            f"use {field} cpu or auto",
            field=field,
        )
    count = torch.cuda.device_count()
    if spec.startswith("cuda:") and int(spec[5:]) >= count:
        raise InvalidInputError(
            f"{field} {spec!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}",
            field=field,
        )
    return spec


def check_numerics_on(numerics: str, device: str) -> str:
    """Return ``numerics`` when it runs on ``device`` (any numerics runs on CPU).

    Raises:
        InvalidInputError: a CPU-only numerics on a CUDA device, naming the ones allowed there.
    """
    if device.startswith("cuda") and numerics not in CUDA_NUMERICS:
        raise InvalidInputError(
            f"numerics {numerics!r} runs on CPU only; on device {device!r} use one of "
            f"{', '.join(CUDA_NUMERICS)} (or device cpu)",
            field="numerics",
        )
    return numerics
