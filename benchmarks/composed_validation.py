"""Slide models scored on validation slides of real size composed from a validation cohort (the slides
``train --compose-sections`` validates on): slide AUC, normal-slide score spread and the specificity at each
model's own threshold, on the small validation slides and on the composed ones. Validation data only: this is
what chooses between slide models; evaluation cohorts choose nothing.

    python benchmarks/composed_validation.py MODEL... --features data/pcam-camelyon/features-val \\
        --labels data/pcam-camelyon/cohort-val/training/labels.csv \\
        --annotations data/pcam-camelyon/cohort-val/training/lesion_annotations --sections 12 --count 40 --seed 1

``--seed 1`` with the recipe's ``--seed 0`` gives exactly the composed validation slides ``train`` chose on.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from wsi_mamba.evaluation.metrics import slide_auc
from wsi_mamba.features.store import list_stores
from wsi_mamba.workflows.bundle import load_bundle
from wsi_mamba.workflows.inputs import read_labels
from wsi_mamba.workflows.training.composed_slides import ComposedSlides
from wsi_mamba.workflows.training.operating_point import rates_at
from wsi_mamba.workflows.training.slide_examples import Example, read_examples


def scores_of(model: torch.nn.Module, examples) -> tuple[list[int], list[float]]:
    labels, scores = [], []
    with torch.no_grad():
        for example in examples:
            scores.append(float(torch.sigmoid(model(example.features, example.mask).logit).item()))
            labels.append(example.label)
    return labels, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders")
    parser.add_argument("--features", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--annotations")
    parser.add_argument("--sections", type=int, default=12)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    labels = read_labels(args.labels)
    stores = list_stores(args.features)
    names = sorted(n for n in stores if n in labels)
    examples: list[Example] = list(read_examples(stores, names, labels, args.annotations)[1].values())
    composed = ComposedSlides(examples, args.count, args.sections, args.seed, fresh=False, prefix="composed-val")
    print("| model | slides | AUC | normal scores: median / max | at the threshold t: specificity, sensitivity |")
    print("|---|---|---:|---|---|")
    for path in args.models:
        bundle = load_bundle(path)
        model = bundle.slide_model.eval()
        parts = ((f"{len(examples)} small", examples), (f"{args.count} composed of {args.sections}", composed))
        for what, part in parts:
            y, s = scores_of(model, part)
            normal = np.asarray([v for v, c in zip(s, y, strict=True) if c == 0])
            sensitivity, specificity = rates_at(y, s, bundle.threshold)
            print(
                f"| {path} | {what} | {slide_auc(y, s):.4f} | {np.median(normal):.3f} / {normal.max():.3f} | "
                f"t = {bundle.threshold:.4f}: {specificity:.3f}, {sensitivity:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
