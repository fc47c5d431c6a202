"""The default tile encoder's inference on the CPU in fp32, int8, bf16 and compiled variants: speed and carved AUC.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_encoder_precision.py --rounds 8
    python benchmarks/bench_encoder_precision.py --compile --only int8 "tanh GELU"   # adds torch.compile rows
    python benchmarks/bench_encoder_precision.py --sweep 64 128 256 --only int8     # per-tile speed by batch size

Speed: ``TileEncoder.features`` on one batch of ``--batch`` real patches (96 px, preprocessed as the engine does:
channels-last) with ``--threads`` torch threads. Each round times every variant between two batches of the default
path (fp32, channels-last scan kernel: default, variant, variant, default); the ratio is the median over
``--rounds`` rounds of those paired ratios (the machine may be shared: compare ratios; tiles/s is the best batch).
The CPU-time ratio (process CPU seconds, both threads counted) ignores time spent waiting for a core. Features:
the largest absolute difference from the default path's on that batch, and that over the largest |feature|.
AUC: the encoder's tumour probability (one view) on the carved validation patches (``--csv``: ``path,label``,
paths relative to the CSV; patches the encoder never learnt from), ΔAUC against the default. int8: the linear
layers dynamically quantised (:mod:`wsi_mamba.models.cpu_inference`; ``--qengine``). bf16: CPU bf16 autocast
through :class:`~wsi_mamba.features.runner.DeviceRunner` (``cpu_precision="bf16"``: channels-last input).
torch.compile: inductor on the feature call, the numba scan opaque; its first call's time (compilation) printed.
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
from wsi_mamba.models.cpu_inference import quantize_linears
from wsi_mamba.models.encoder import load_encoder

SHIPPED = Path(__file__).resolve().parents[1] / "wsi_mamba/shipped_models/pcam-camelyon/encoder.safetensors"
DEFAULT_CSV = Path(__file__).resolve().parents[1] / "data/pcam-camelyon/split/validation.csv"
DEFAULT = "fp32 (default: channels-last scan kernel)"


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


def features_of(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The engine's feature call on ``model``: pooled pre-logits."""
    return lambda t: model.forward_head(model.forward_features(t), True)


OPAQUE_SCAN = torch.compiler.disable(cross_scan.cross_selective_scan)


@contextlib.contextmanager
def opaque_scan() -> Iterator[None]:
    """SS2D with its fused numba scan hidden from dynamo (which would trace into the kernel's numpy views)."""
    saved, ss2d.cross_selective_scan = ss2d.cross_selective_scan, OPAQUE_SCAN
    try:
        yield
    finally:
        ss2d.cross_selective_scan = saved


def compiled_features(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`features_of` a copy of ``model`` through ``torch.compile`` (inductor, static shapes); run it
    under :func:`opaque_scan`."""
    torch._dynamo.config.recompile_limit = 64  # each block resumes the same code after its scan: one entry each
    return torch.compile(features_of(copy.deepcopy(model)), dynamic=False)


class Variant:
    """One way of running the model: a feature call (maybe of a modified model), a runner precision, a context
    around each call; the logits are the (fp32) classifier head on those features."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        precision: str = "fp32",
        context: Callable = contextlib.nullcontext,
        features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.name, self.context, self.head = name, context, model.classifier.head
        self.call = features or features_of(model)
        self.runner = DeviceRunner("cpu", precision)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with self.context():
            return self.runner.compute(self.call, x)

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        with self.context():
            logits = self.runner.compute(lambda t: self.head(self.call(t).float()), x)
        return torch.sigmoid(logits[:, 0].float()).numpy()


def seconds(run: Variant, x: torch.Tensor) -> tuple[float, float]:
    """(wall, process CPU) seconds of one batch's features."""
    wall, cpu = time.perf_counter(), time.process_time()
    run.features(x)
    return time.perf_counter() - wall, time.process_time() - cpu


def variants(model: torch.nn.Module, compiled: bool = False) -> list[Variant]:
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    int8 = quantize_linears(model, skip=[model.classifier.head])
    int8_fast = tanh_gelu(copy.deepcopy(int8).to(memory_format=torch.channels_last))
    int8_bf16 = copy.deepcopy(int8).to(memory_format=torch.channels_last)
    runs = [
        Variant("fp32, row-major scan kernel (before)", model, "fp32", row_major_scan),
        Variant(DEFAULT, model),
        Variant("fp32, channels-last model", channels_last),
        Variant("fp32, tanh GELU", tanh_gelu(model)),
        Variant("fp32, channels-last model, tanh GELU", tanh_gelu(channels_last)),
        Variant("int8 linears (in/out_proj, fc1, fc2)", int8),
        Variant("int8 MLP only (fc1, fc2)", quantize_linears(model, names=("fc1", "fc2"))),
        Variant("int8 SS2D projections only (in/out_proj)", quantize_linears(model, names=("in_proj", "out_proj"))),
        Variant("int8 linears, tanh GELU", tanh_gelu(int8)),
        Variant("int8 linears, channels-last model, tanh GELU", int8_fast),
        Variant("bf16", model, "bf16"),
        Variant("bf16, channels-last model", channels_last, "bf16"),
        Variant("bf16, channels-last model, int8 linears", int8_bf16, "bf16"),
    ]
    if compiled:
        runs += [
            Variant("fp32, torch.compile", model, context=opaque_scan, features=compiled_features(model)),
            Variant(
                "fp32, torch.compile, channels-last model, tanh GELU",
                model,
                context=opaque_scan,
                features=compiled_features(tanh_gelu(channels_last)),
            ),
            Variant("int8 linears, torch.compile", model, context=opaque_scan, features=compiled_features(int8)),
        ]
    return runs


def scores(run: Variant, encoder, source, batch: int) -> np.ndarray:
    """Tumour probabilities of every patch of ``source``, in batches of ``batch`` (the last one padded, so a
    compiled model sees one shape)."""
    out = []
    for i in range(0, len(source.labels), batch):
        index = np.arange(i, i + batch).clip(max=len(source.labels) - 1)
        out.append(run.probabilities(encoder.preprocess(source.read(index)))[: len(source.labels) - i])
    return np.concatenate(out)


def batch_sweep(runs: list[Variant], encoder, source, batches: list[int], rounds: int) -> None:
    """tiles/s of each run at each batch size, as a median of ratios paired with the default at the first size."""
    base = next(run for run in runs if run.name == DEFAULT)
    xs = {b: encoder.preprocess(source.read(np.arange(b))) for b in batches}
    for run in runs:
        for x in xs.values():
            run.features(x)
    print(f"| variant | {' | '.join(f'batch {b}: per-tile speed vs default at {batches[0]}' for b in batches)} |")
    print("|---|" + "---:|" * len(batches))
    for run in runs:
        cells = []
        for b, x in xs.items():
            paired = []
            for _ in range(rounds):
                before, first, second, after = (
                    seconds(base, xs[batches[0]]),
                    seconds(run, x),
                    seconds(run, x),
                    seconds(base, xs[batches[0]]),
                )
                paired.append(((before[0] + after[0]) / batches[0]) / ((first[0] + second[0]) / b))
            cells.append(f"{median(paired):.2f}")
        print(f"| {run.name} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=str(SHIPPED), help="encoder .safetensors (default: the shipped one)")
    parser.add_argument("--csv", default=str(DEFAULT_CSV), help="carved validation patches (path,label)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--no-auc", action="store_true", help="speed only")
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants (compile time printed)")
    parser.add_argument("--qengine", default=None, help="torch.backends.quantized.engine (x86, fbgemm, onednn)")
    parser.add_argument("--only", nargs="*", default=None, help="variants whose name contains one of these")
    parser.add_argument("--sweep", type=int, nargs="*", default=None, help="batch sizes: per-tile speed table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.qengine:
        torch.backends.quantized.engine = args.qengine
    encoder = load_encoder(args.encoder)
    model = encoder.model.eval()
    source = open_patches(args.csv)
    labels = np.asarray(source.labels)
    x = encoder.preprocess(source.read(np.arange(args.batch)))
    runs = [
        run
        for run in variants(model, args.compile)
        if run.name == DEFAULT or args.only is None or any(word in run.name for word in args.only)
    ]
    print(
        f"CPU bf16 in hardware: {cpu_bf16_native()}; quantized engine {torch.backends.quantized.engine}; "
        f"batch {args.batch}, {args.threads} threads, {args.rounds} rounds; AUC on {len(labels)} patches of {args.csv}"
    )
    reference = next(run for run in runs if run.name == DEFAULT).features(x).float()
    differences = {}
    for run in runs:  # warm-up: numba compilation, oneDNN primitives, torch.compile
        start = time.perf_counter()
        out = run.features(x).float()
        if "compile" in run.name:
            print(f"{run.name}: first call (compilation) {time.perf_counter() - start:.1f} s")
        diff = (out - reference).abs().max().item()
        differences[run.name] = f"{diff:.1e}, {diff / reference.abs().max().item():.1e}"
    if args.sweep:
        batch_sweep(runs, encoder, source, args.sweep, args.rounds)
        return
    base = next(run for run in runs if run.name == DEFAULT)
    ratios: dict[str, list[float]] = {run.name: [] for run in runs}
    cpu_ratios: dict[str, list[float]] = {run.name: [] for run in runs}
    fastest = {run.name: float("inf") for run in runs}
    for _ in range(args.rounds):
        for run in runs:  # base, run, run, base: a load that drifts within the four calls cancels out
            before, first, second, after = seconds(base, x), seconds(run, x), seconds(run, x), seconds(base, x)
            ratios[run.name].append((before[0] + after[0]) / (first[0] + second[0]))
            cpu_ratios[run.name].append((before[1] + after[1]) / (first[1] + second[1]))
            fastest[run.name] = min(fastest[run.name], first[0], second[0])
    aucs = {}
    if not args.no_auc:
        aucs = {run.name: slide_auc(labels, scores(run, encoder, source, args.batch)) for run in runs}
    print("| variant | tiles/s | ratio vs default | CPU-time ratio | features: max abs, rel diff | carved AUC | ΔAUC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        auc = f"{aucs[run.name]:.4f} | {aucs[run.name] - aucs[DEFAULT]:+.4f}" if aucs else "- | -"
        ratio, cpu_ratio = median(ratios[run.name]), median(cpu_ratios[run.name])
        speed = f"{args.batch / fastest[run.name]:.0f} | {ratio:.2f} | {cpu_ratio:.2f}"
        print(f"| {run.name} | {speed} | {differences[run.name]} | {auc} |")


if __name__ == "__main__":
    main()
