"""Encoder training steps on the CPU: forward, backward and AdamW step of the default encoder on real PCam
patches, fp32 against bf16 autocast (weights fp32), timed alternately in one process (issue 23, item 1).

    OMP_NUM_THREADS=2 python benchmarks/bench_train_step.py --patches ../shared/data/pcam/train --rounds 8

Prints one row per variant: median seconds per step, the ratio against fp32 (medians of per-round ratios, so a
load change between rounds cancels), and the loss after the last step (both variants start from the same weights
and see the same batches, so the losses show the numerical difference).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from wsi_mamba.data.augment import augment_patches
from wsi_mamba.data.patches import open_patches
from wsi_mamba.devices import autocast
from wsi_mamba.models.encoder import load_encoder
from wsi_mamba.workflows.training.configs import PatchTrainingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", required=True)
    parser.add_argument("--model", default="vmamba_micro")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    args = parser.parse_args()
    source = open_patches(args.patches)
    rng = np.random.default_rng(0)
    cfg = PatchTrainingConfig()
    base = load_encoder(args.model, seed=0, drop_path_rate=cfg.drop_path_rate, num_classes=1)
    variants = {"fp32": "fp32", "bf16 autocast": "bf16"}
    models = {name: copy.deepcopy(base.model) for name in variants}
    optimisers = {name: torch.optim.AdamW(m.parameters(), lr=cfg.lr) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)
    for round_index in range(args.rounds + 1):  # round 0 warms up
        batches = []
        for _ in range(args.steps):
            idx = np.sort(rng.choice(len(source), args.batch_size, replace=False))
            x = augment_patches(torch.from_numpy(source.read(idx)), generator, cfg.augment)
            batches.append((base.preprocess(x), torch.from_numpy(source.labels[idx]).float()))
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            model, optimiser = models[name], optimisers[name]
            model.train()
            started = time.perf_counter()
            for x, y in batches:
                with autocast("cpu", variants[name]):
                    logit = model(x).squeeze(1)
                loss = F.binary_cross_entropy_with_logits(logit.float(), y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses[name] = float(loss.detach())
            if round_index:
                times[name].append((time.perf_counter() - started) / args.steps)
    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print("| variant | s / step (median) | speed vs fp32 | last loss |")
    print("|---|---:|---:|---:|")
    for name in variants:
        ratio = statistics.median(a / b for a, b in zip(times["fp32"], times[name], strict=True))
        print(f"| {name} | {statistics.median(times[name]):.3f} | {ratio:.2f}x | {losses[name]:.4f} |")


if __name__ == "__main__":
    main()
