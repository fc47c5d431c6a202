"""Tile encoders on patches: size, CPU speed and patch AUC, to choose the encoder size by the trade-off.

    python benchmarks/bench_encoders.py                                    # pico and nano, random weights
    python benchmarks/bench_encoders.py --checkpoints pico=enc-pico.safetensors nano=enc-nano.safetensors \\
        --patches ../shared/data/pcam/valid                                  # + patch AUC of trained encoders

Per model: parameters, analytic GFLOPs at the tile size, inference tiles/s and training patches/s on the CPU
(median over ``--repeats`` batches after a warm-up, ``--threads`` torch threads), each also as a ratio to the
first model's (the baseline, run in the same process); with ``--checkpoints`` and ``--patches`` the patch AUC
of each trained encoder (95 % bootstrap interval) on those patches.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wsi_mamba.models import create_model
from wsi_mamba.models.analysis import analyze, count_params


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(name: str, tile: int, batch: int, repeats: int) -> dict:
    """Inference tiles/s and training patches/s of registry model ``name`` (1 output) at ``tile`` px."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=1)
    x = torch.randn(batch, 3, tile, tile)
    target = torch.randint(0, 2, (batch,)).float()
    optimiser = torch.optim.AdamW(model.parameters(), 1e-4)

    def infer() -> None:
        with torch.inference_mode():
            model.eval()(x)

    def step() -> None:
        model.train()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    return {
        "params": count_params(model.config),
        "gflops": sum(s.flops for s in analyze(model.config, tile)) / 1e9,
        "infer": batch / _median_seconds(infer, repeats),
        "train": batch / _median_seconds(step, repeats),
    }


def patch_auc(checkpoint: str, patches: str) -> tuple[float, float, float]:
    from wsi_mamba.data.patches import open_patches
    from wsi_mamba.workflows.reports.score_patches import load_patch_classifier, patch_metrics, score_patch_source

    result = score_patch_source(open_patches(patches), load_patch_classifier(checkpoint)[0])
    metrics = patch_metrics(result)
    if metrics is None:
        raise SystemExit(f"{patches}: needs labelled patches of both classes for an AUC")
    return metrics["auc"], metrics["auc_ci_low"], metrics["auc_ci_high"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vmamba_pico", "vmamba_nano"])
    parser.add_argument("--tile", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoints", nargs="*", default=[], metavar="SHORT=PATH",
                        help="trained encoders, e.g. pico=enc.safetensors (SHORT = model name without vmamba_)")
    parser.add_argument("--patches", help="labelled patches for the AUC column (e.g. ../shared/data/pcam/valid)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoints)
    print(f"tile {args.tile} px, batch {args.batch}, {args.threads} torch thread(s), median of {args.repeats}")
    header = f"{'model':<14}{'params':>11}{'GFLOPs':>9}{'infer tiles/s':>15}{'x base':>8}{'train/s':>9}{'x base':>8}"
    if args.patches:
        header += f"{'patch AUC (95% CI)':>28}"
    print(header)
    base = None
    for name in args.models:
        row = speed(name, args.tile, args.batch, args.repeats)
        base = base or row
        line = (
            f"{name:<14}{row['params']:>11,}{row['gflops']:>9.3f}{row['infer']:>15.0f}"
            f"{row['infer'] / base['infer']:>8.2f}{row['train']:>9.0f}{row['train'] / base['train']:>8.2f}"
        )
        short = name.removeprefix("vmamba_")
        if args.patches and short in checkpoints:
            auc, low, high = patch_auc(checkpoints[short], args.patches)
            line += f"{auc:>12.4f} ({low:.4f}-{high:.4f})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
