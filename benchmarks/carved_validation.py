"""Patch AUC of encoder checkpoints on the validation part carved out of their training patches, at 1, 4 and 8
test-time views: the evidence the default model's choices are made on (never PCam ``valid``).

    python benchmarks/carved_validation.py data/pcam-camelyon/encoder/encoder.safetensors \\
        data/pcam-camelyon/encoder-ft/encoder.safetensors --patches ../shared/data/pcam/train

The carve is ``train-encoder``'s (``carve_validation``: stratified, duplicates on one side) with the same
``--val-fraction``, cap and ``--seed``, so it is exactly the part those encoders were validated on. Prints one row
per checkpoint: AUC at each view count (and its gain over one view) and seconds per view count.
"""

from __future__ import annotations

import argparse
import time

import torch

from wsi_mamba.data.patches import open_patches
from wsi_mamba.evaluation.metrics import slide_auc
from wsi_mamba.models.encoder import load_encoder
from wsi_mamba.workflows.training.configs import PatchTrainingConfig
from wsi_mamba.workflows.training.patch_training import carve_validation, duplicate_groups, patch_scores


def main() -> None:
    defaults = PatchTrainingConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="encoder .safetensors files")
    parser.add_argument("--patches", required=True, help="the training source the encoders were trained on")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--max-val-patches", type=int, default=defaults.max_val_patches)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source = open_patches(args.patches)
    _, val_idx = carve_validation(
        source.labels, duplicate_groups(source), args.val_fraction, args.max_val_patches, args.seed
    )
    patches, labels = source.read(val_idx), source.labels[val_idx]
    print(f"carved validation: {len(val_idx)} patches ({int(labels.sum())} tumour) of {source.description}")
    header = " | ".join(f"AUC {v} view{'s' if v > 1 else ''}" for v in args.views)
    print(f"| checkpoint | {header} | seconds ({' / '.join(map(str, args.views))} views) |")
    print("|---|" + "---:|" * (len(args.views) + 1))
    for checkpoint in args.checkpoints:
        encoder = load_encoder(checkpoint)
        aucs, seconds = [], []
        for views in args.views:
            start = time.perf_counter()
            scores = patch_scores(encoder, patches, args.batch_size, views)
            seconds.append(time.perf_counter() - start)
            aucs.append(slide_auc(labels, scores))
        cells = [f"{auc:.4f}" + (f" ({auc - aucs[0]:+.4f})" if i else "") for i, auc in enumerate(aucs)]
        print(f"| {checkpoint} | {' | '.join(cells)} | {' / '.join(f'{s:.0f}' for s in seconds)} |")


if __name__ == "__main__":
    main()
