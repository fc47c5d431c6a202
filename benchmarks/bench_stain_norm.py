"""Slide scores of the default model with and without stain normalisation on real-tissue cohorts.

    wsi-mamba synth shift3 --from-patches ../shared/data/pcam/valid --stain 3 --slides 8 --seed 5 --test-fraction 1
    wsi-mamba synth shift0 --from-patches ../shared/data/pcam/valid --stain 0 --slides 8 --seed 5 --test-fraction 1
    python benchmarks/bench_stain_norm.py shift3/testing shift0/testing --methods none macenko reinhard

For each cohort folder (``images/`` and ``reference.csv``) and method, every slide is encoded in the model's own
feature mode with the method's built-in target added (:func:`~wsi_mamba.features.modes.with_stain`) and scored by
the model's slide head. This bypasses the CLI's refusal (``predict --stain-norm`` on a model trained without it):
it measures what normalising the input towards the encoder's training stain does for a model that never saw
normalised features, not a model trained with normalisation. Prints a markdown table (slide AUC, mean |score|
change against ``none``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from wsi_mamba.data.stain_norm import builtin_target
from wsi_mamba.features.encode import encode_slide
from wsi_mamba.features.modes import resolve, with_stain
from wsi_mamba.slide import open_slide
from wsi_mamba.workflows.bundle import load_bundle
from wsi_mamba.workflows.inputs import read_labels
from wsi_mamba.workflows.predict import score_encoded


def cohort_scores(folder: Path, bundle, method: str) -> tuple[np.ndarray, np.ndarray]:
    labels = read_labels(folder / "reference.csv")
    mode = with_stain(resolve(None, bundle.feature_mode, bundle.name), builtin_target(method))
    names = sorted(labels)
    scores = []
    for name in names:
        with open_slide(folder / "images" / f"{name}.tif") as slide, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoded = encode_slide(slide, bundle.encoder, mode)
        scores.append(score_encoded(bundle, encoded)[0])
    return np.array([labels[n] for n in names]), np.array(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohorts", nargs="+", type=Path, help="cohort folders: images/ and reference.csv")
    parser.add_argument("--methods", nargs="+", default=["none", "macenko", "reinhard"])
    parser.add_argument("--model", help="model folder (default: the shipped default model)")
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    print("| cohort | stain normalisation | slide AUC | mean score, tumour / normal | mean abs change vs none | s |")
    print("|---|---|---|---|---|---|")
    for folder in args.cohorts:
        base = None
        for method in args.methods:
            started = time.perf_counter()
            labels, scores = cohort_scores(folder, bundle, method)
            base = scores if base is None else base
            change = float(np.abs(scores - base).mean())
            print(
                f"| {folder} | {method} | {roc_auc_score(labels, scores):.3f} | {scores[labels == 1].mean():.3f} / "
                f"{scores[labels == 0].mean():.3f} | {change:.3f} | {time.perf_counter() - started:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
