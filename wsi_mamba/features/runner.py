"""Where the encoding engine's model calls run: the encoder's device and its precision, in one place.

On the CPU a batch's features are ready when computed. On CUDA the tiles go to the device from pinned memory
with non-blocking copies and the features come back the same way, so one batch can be in flight: the GPU
encodes batch k while the caller hands it batch k + 1 (:mod:`.tile_mode`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..devices import CPU_PRECISIONS, autocast


@dataclass(frozen=True)
class Pending:
    """A batch's features on their way to the host: ready on the CPU; on CUDA a pinned host tensor that a
    non-blocking copy fills until ``done`` fires (``keep``, the batch's pinned tiles, lives until then)."""

    features: torch.Tensor
    done: torch.cuda.Event | None = None
    keep: object = None


class DeviceRunner:
    """Runs model calls on ``device`` under inference mode, with bf16 autocast on CUDA (fp32 weights); on the
    CPU in ``cpu_precision`` (:data:`~wsi_mamba.devices.CPU_PRECISIONS`): "bf16" runs the call under CPU bf16
    autocast on a channels-last input (benchmarks/bench_encoder_precision.py)."""

    def __init__(self, device: torch.device | str, cpu_precision: str = "fp32") -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if cpu_precision not in CPU_PRECISIONS:
            raise ValueError(f"CPU precision must be {' or '.join(CPU_PRECISIONS)}, got {cpu_precision!r}")
        self.cpu_precision = cpu_precision
        self.cpu_bf16 = self.device.type == "cpu" and cpu_precision == "bf16"

    @property
    def precision(self) -> str:
        """What the model calls run in: "bf16" (autocast: CUDA, or the CPU in bf16) or "fp32"."""
        return "bf16" if self.cuda or self.cpu_bf16 else "fp32"

    def stage(self, tiles: np.ndarray) -> np.ndarray | torch.Tensor:
        """A batch as it leaves the feeder thread: pinned (for a non-blocking copy) on CUDA, as it is on the CPU."""
        return torch.from_numpy(tiles).pin_memory() if self.cuda else tiles

    def compute(self, model_call: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``model_call(x)`` in the device's precision: the one place the engine sets autocast."""
        if self.cpu_bf16 and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's bf16 convolutions want NHWC
        with torch.inference_mode(), autocast(self.device, self.cpu_precision):
            return model_call(x)

    def launch(self, out: torch.Tensor, keep: object = None) -> Pending:
        """Start bringing ``out`` home as float32: on CUDA a non-blocking copy into pinned memory and the event
        that ends it (``keep``, what the copies read from, held until then), on the CPU at once."""
        if not self.cuda:
            return Pending(out.float().cpu())
        host = torch.empty(tuple(out.shape), dtype=torch.float32, pin_memory=True)
        host.copy_(out.float(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return Pending(host, event, keep)

    @staticmethod
    def finish(pending: Pending) -> np.ndarray:
        """The launched features, once they are on the host."""
        if pending.done is not None:
            pending.done.synchronize()
        return pending.features.numpy()
