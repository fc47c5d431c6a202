"""The default tile encoder's inference on the CPU in fp32 and bf16 variants: speed and carved-validation AUC.

    OMP_NUM_THREADS=2 python benchmarks/bench_encoder_precision.py
    python benchmarks/bench_encoder_precision.py --rounds 8 --csv ../explore/split/validation.csv

Speed: ``TileEncoder.features`` on one batch of ``--batch`` real patches (96 px, preprocessed as the engine does:
channels-last) with ``--threads`` torch threads. Each round times every variant right after a batch of the first row
(fp32 with the row-major scan kernel, as before the channels-last one); the ratio is the median over ``--rounds``
rounds of those paired ratios (the machine may be shared: compare ratios; tiles/s is the best batch). The CPU-time
ratio (process CPU seconds, both threads counted) ignores time spent waiting for a core.
AUC: the encoder's tumour probability (one view) on the carved validation patches (``--csv``: ``path,label``,
paths relative to the CSV; patches the encoder never learnt from), ΔAUC against the first row. The bf16 variants
run under CPU bf16 autocast through :class:`~wsi_mamba.features.runner.DeviceRunner` (``cpu_precision="bf16"``:
channels-last input); "unfused scan" is bf16 as it ran before the fused cross scan took bf16 maps (the per-route
scan with casts around it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import median

import numpy as np
import torch

import wsi_mamba.models.ss2d as ss2d
import wsi_mamba_scan.cross_scan as cross_scan
from wsi_mamba.data.patches import open_patches
from wsi_mamba.devices import cpu_bf16_native
from wsi_mamba.evaluation.metrics import slide_auc
from wsi_mamba.features.runner import DeviceRunner
from wsi_mamba.models.encoder import load_encoder

SHIPPED = Path(__file__).resolve().parents[1] / "wsi_mamba/shipped_models/pcam-camelyon/encoder.safetensors"
DEFAULT_CSV = Path(__file__).resolve().parents[2] / "explore/split/validation.csv"


@contextlib.contextmanager
def unfused_half_scan() -> Iterator[None]:
    """SS2D as before the fused cross scan took half-precision maps: those go the per-route way."""
    supported = ss2d.cross_scan_supported
    ss2d.cross_scan_supported = lambda h: h.dtype in (torch.float32, torch.float64) and supported(h)
    try:
        yield
    finally:
        ss2d.cross_scan_supported = supported


@contextlib.contextmanager
def row_major_scan() -> Iterator[None]:
    """SS2D as before the channels-last cross-scan kernel: every map goes through the row-major kernel."""
    saved = ss2d.is_channels_last, cross_scan.is_channels_last
    ss2d.is_channels_last = cross_scan.is_channels_last = lambda h: False
    try:
        yield
    finally:
        ss2d.is_channels_last, cross_scan.is_channels_last = saved


def tanh_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every GELU in its tanh approximation."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, torch.nn.GELU):
            module.approximate = "tanh"
    return model


class Variant:
    """One way of running the model: a model (maybe modified), a runner precision, a context around each call."""

    def __init__(self, name: str, model: torch.nn.Module, precision: str, context: Callable = contextlib.nullcontext):
        self.name, self.model, self.context = name, model, context
        self.runner = DeviceRunner("cpu", precision)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with self.context():
            return self.runner.compute(lambda t: self.model.forward_head(self.model.forward_features(t), True), x)

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        with self.context():
            logits = self.runner.compute(self.model, x)
        return torch.sigmoid(logits[:, 0].float()).numpy()


def seconds(run: Variant, x: torch.Tensor) -> tuple[float, float]:
    """(wall, process CPU) seconds of one batch's features."""
    wall, cpu = time.perf_counter(), time.process_time()
    run.features(x)
    return time.perf_counter() - wall, time.process_time() - cpu


def variants(model: torch.nn.Module) -> list[Variant]:
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return [
        Variant("fp32, row-major scan kernel (before)", model, "fp32", row_major_scan),
        Variant("fp32", model, "fp32"),
        Variant("fp32, channels-last model", channels_last, "fp32"),
        Variant("fp32, tanh GELU", tanh_gelu(model), "fp32"),
        Variant("bf16, unfused scan (before)", model, "bf16", unfused_half_scan),
        Variant("bf16", model, "bf16"),
        Variant("bf16, channels-last model", channels_last, "bf16"),
        Variant("bf16, channels-last model, tanh GELU", tanh_gelu(channels_last), "bf16"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=str(SHIPPED), help="encoder .safetensors (default: the shipped one)")
    parser.add_argument("--csv", default=str(DEFAULT_CSV), help="carved validation patches (path,label)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--no-auc", action="store_true", help="speed only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.encoder)
    model = encoder.model.eval()
    source = open_patches(args.csv)
    labels = np.asarray(source.labels)
    x = encoder.preprocess(source.read(np.arange(args.batch)))
    runs = variants(model)
    print(
        f"CPU bf16 in hardware: {cpu_bf16_native()}; batch {args.batch}, {args.threads} threads, "
        f"best of {args.rounds} rounds; AUC on {len(labels)} patches of {args.csv}"
    )
    for run in runs:  # warm-up: numba compilation, oneDNN primitives
        run.features(x)
    ratios: dict[str, list[float]] = {run.name: [] for run in runs}
    cpu_ratios: dict[str, list[float]] = {run.name: [] for run in runs}
    fastest = {run.name: float("inf") for run in runs}
    for _ in range(args.rounds):
        for run in runs:
            (wall_base, cpu_base), (wall, cpu) = seconds(runs[0], x), seconds(run, x)
            ratios[run.name].append(wall_base / wall)
            cpu_ratios[run.name].append(cpu_base / cpu)
            fastest[run.name] = min(fastest[run.name], wall)
    aucs: dict[str, float] = {}
    if not args.no_auc:
        for run in runs:
            scores = [
                run.probabilities(encoder.preprocess(source.read(np.arange(i, min(i + args.batch, len(labels))))))
                for i in range(0, len(labels), args.batch)
            ]
            aucs[run.name] = slide_auc(labels, np.concatenate(scores))
    base = runs[0].name
    print("| variant | tiles/s | ratio vs first row | CPU-time ratio | carved AUC | ΔAUC |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in runs:
        auc = f"{aucs[run.name]:.4f} | {aucs[run.name] - aucs[base]:+.4f}" if aucs else "- | -"
        ratio, cpu_ratio = median(ratios[run.name]), median(cpu_ratios[run.name])
        speed = f"{args.batch / fastest[run.name]:.0f} | {ratio:.2f} | {cpu_ratio:.2f}"
        print(f"| {run.name} | {speed} | {auc} |")


if __name__ == "__main__":
    main()
