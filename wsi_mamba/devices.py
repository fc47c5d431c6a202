"""Where models run: ``--device auto|cpu|cuda|cuda:N`` resolved to a ``torch.device``, and the autocast that goes
with it (bf16 on CUDA, with the weights kept in fp32; on the CPU none unless bf16 is asked for).

Every command that runs a model resolves its ``--device`` here; :data:`DEFAULT_DEVICE` is the one default.
torch is imported only when a device is resolved, so building the CLI stays cheap.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEFAULT_DEVICE = "auto"
"""The default of every ``--device`` option and of the workflows' ``device`` parameter: CUDA when available."""

DEVICE_HELP = "where models run: auto (CUDA when available), cpu, cuda or cuda:N (default auto)"

_SPEC = re.compile(r"auto|cpu|cuda(?::\d+)?")


class DeviceError(ValueError):
    """A device that cannot be used here (no CUDA, a GPU index beyond the count) or a bad spelling: one line."""


def check_spec(spec: str) -> str:
    """``spec`` normalised (stripped, lower case) if it is spelled ``auto``, ``cpu``, ``cuda`` or ``cuda:N``;
    :class:`DeviceError` otherwise. Does not import torch."""
    text = str(spec).strip().lower()
    if not _SPEC.fullmatch(text):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return text


def cuda_device_count() -> int:
    """Number of usable CUDA devices (0 without CUDA, or when the CUDA install is broken)."""
    import torch

    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver: treated as no GPU
        return 0


def resolve_device(spec: str | torch.device | None = DEFAULT_DEVICE) -> torch.device:
    """The ``torch.device`` of ``spec``: ``auto`` (or None) is ``cuda`` when a GPU is usable, else ``cpu``.
    :class:`DeviceError` (one line) for ``cuda`` without CUDA or ``cuda:N`` beyond the device count."""
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    text = check_spec(DEFAULT_DEVICE if spec is None else spec)
    if text == "cpu":
        return torch.device("cpu")
    count = cuda_device_count()
    if text == "auto":
        return torch.device("cuda" if count else "cpu")
    if not count:
        raise DeviceError(
            f"--device {text}: CUDA is not available on this machine (torch {torch.__version__}); "
            "use --device cpu or auto"
        )
    index = int(text.partition(":")[2] or 0)
    if index >= count:
        raise DeviceError(f"--device {text}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return torch.device(text)


CPU_PRECISIONS = ("fp32", "bf16")
"""Precisions of model calls on the CPU: fp32, or bf16 autocast (fp32 weights; see :func:`cpu_bf16_native`)."""


def cpu_bf16_native() -> bool:
    """True when this CPU computes bf16 in hardware (AVX-512-BF16 or AMX), where CPU bf16 autocast pays; on
    other CPUs oneDNN emulates it, slower than fp32."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_cpu_precision(requested: str) -> str:
    """The CPU precision to run: ``requested`` (fp32 or bf16), or for ``auto`` bf16 where :func:`cpu_bf16_native`
    (1.3x the tiles/s of fp32 on an AVX-512-BF16 CPU at the same patch AUC; BENCHMARKS.md), else fp32."""
    if requested == "auto":
        return "bf16" if cpu_bf16_native() else "fp32"
    if requested not in CPU_PRECISIONS:
        raise ValueError(f"CPU precision must be auto, {' or '.join(CPU_PRECISIONS)}, got {requested!r}")
    return requested


def autocast(device: torch.device | str, cpu_precision: str = "fp32") -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on a CUDA device (weights stay fp32: mixed precision, not half weights); on the CPU bf16
    autocast when ``cpu_precision`` is "bf16", nothing otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_precision not in CPU_PRECISIONS:
        raise ValueError(f"CPU precision must be {' or '.join(CPU_PRECISIONS)}, got {cpu_precision!r}")
    if device.type == "cpu" and cpu_precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    import torch

    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")
