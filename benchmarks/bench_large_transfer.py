"""Does a slide model trained on small slides transfer to real-size ones? The same lesions scored in their small
slide and embedded in a CAMELYON16-size normal slide (issue 22, item 4).

    wsi-mamba extract /work/bench/camelyon-20x-none-seed0.tif --out /work/bench/features-large   # once per model
    python benchmarks/bench_large_transfer.py --large /work/bench/features-large \\
        --small data/pcam-camelyon/features-test --labels data/pcam-camelyon/cohort-test/testing/reference.csv

For every small slide of the cohort (``--small``: feature stores; ``--labels``: reference.csv with
``lesion_class``), its tissue cells are placed, at ``--placements`` positions drawn over the large slide's
tissue (seeded), into the feature grid of each large normal slide (``--large``: stores of large normal slides
extracted with the same encoder and feature mode), replacing the large slide's cells where they overlap. The
embedded slide is then ``size_ratio`` times larger and its lesion that much rarer, exactly the shift between
the small training slides and a real one. Each embedded slide is scored with the model's slide model
(``score_tiles``, as evaluate does); a small slide's large score is the median over its placements.

Prints one table: slide AUC (small against large), the slides called tumour per lesion class at the model's
threshold, and the median change of the tumour slides' scores. Feature space, not pixels: the embedded lesion's
tiles are the ones the encoder produced in the small slide, the context tiles the large slide's own; what is
measured is the slide model's behaviour at real scale, not the encoder's.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from wsi_mamba.evaluation.metrics import slide_auc
from wsi_mamba.features.store import SlideFeatures, check_same_encoder, list_stores, read_attrs, read_store
from wsi_mamba.workflows.bundle import load_bundle
from wsi_mamba.workflows.scoring import score_tiles


def embed(small: SlideFeatures, large: SlideFeatures, offset: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Features, rows and cols of ``large`` with ``small``'s tiles placed at grid ``offset`` (row, col): the
    large slide's tiles inside the small slide's grid box are dropped, the small slide's tissue tiles added."""
    height, width = small.grid_shape
    r0, c0 = offset
    inside = (large.rows >= r0) & (large.rows < r0 + height) & (large.cols >= c0) & (large.cols < c0 + width)
    features = np.concatenate([large.features[~inside], small.features])
    rows = np.concatenate([large.rows[~inside], small.rows + r0])
    cols = np.concatenate([large.cols[~inside], small.cols + c0])
    return features, rows, cols


def placements(small: SlideFeatures, large: SlideFeatures, count: int, rng: np.random.Generator) -> list:
    """``count`` grid offsets where the small slide's box fits inside the large grid, centred on a large-slide
    tissue tile (so the lesion lands in tissue, as a real one does)."""
    height, width = small.grid_shape
    big_h, big_w = large.grid_shape
    if height > big_h or width > big_w:
        raise SystemExit(f"{small.name}: its grid {small.grid_shape} does not fit in {large.name}'s {large.grid_shape}")
    picks = rng.choice(len(large), size=count, replace=len(large) < count)
    rows = np.clip(large.rows[picks] - height // 2, 0, big_h - height)
    cols = np.clip(large.cols[picks] - width // 2, 0, big_w - width)
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def read_reference(path: Path) -> dict[str, tuple[int, str]]:
    """Slide name -> (label 0/1, lesion class) from a cohort's reference.csv / labels.csv."""
    with open(path, newline="") as handle:
        return {
            row["image"]: (int(row["label"].lower() == "tumor"), row.get("lesion_class") or "")
            for row in csv.DictReader(handle)
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", required=True, help="feature stores of CAMELYON16-size normal slides")
    parser.add_argument("--small", required=True, help="feature stores of the small slides")
    parser.add_argument("--labels", required=True, help="the small slides' reference.csv (label, lesion_class)")
    parser.add_argument("--model", help="model folder (default: the shipped default model)")
    parser.add_argument("--placements", type=int, default=3, help="positions per small slide and large slide")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    bundle = load_bundle(args.model)
    reference = read_reference(Path(args.labels))
    small_stores = {n: p for n, p in list_stores(args.small).items() if n in reference}
    large_stores = list_stores(args.large)
    expected = (bundle.encoder.name, bundle.encoder.hash)
    every = {**small_stores, **large_stores}
    check_same_encoder({n: read_attrs(p) for n, p in every.items()}, expected, expected_mode=bundle.feature_mode)
    larges = [read_store(p) for p in large_stores.values()]
    rng = np.random.default_rng(args.seed)
    names, labels, classes, small_scores, large_scores = [], [], [], [], []
    for name, path in sorted(small_stores.items()):
        small = read_store(path)
        embedded = []
        for large in larges:
            for offset in placements(small, large, args.placements, rng):
                features, rows, cols = embed(small, large, offset)
                embedded.append(score_tiles(bundle, features, rows, cols, large.grid_shape)[0])
        names.append(name)
        labels.append(reference[name][0])
        classes.append(reference[name][1])
        small_scores.append(score_tiles(bundle, small.features, small.rows, small.cols, small.grid_shape)[0])
        large_scores.append(float(np.median(embedded)))
        print(f"{name} {classes[-1]:>5}: small {small_scores[-1]:.4f}  large {large_scores[-1]:.4f}", flush=True)

    y, small_p, large_p = np.array(labels), np.array(small_scores), np.array(large_scores)
    threshold = bundle.threshold
    tiles = [len(large) for large in larges]
    print(
        f"\n{len(names)} small slides, each at {args.placements} places in {len(larges)} large normal slide(s) "
        f"({', '.join(f'{t:,}' for t in tiles)} tissue tiles); threshold {threshold:.3f}\n"
    )
    print(f"{'':28}{'small slides':>14}{'embedded in large':>20}")
    print(f"{'slide AUC':28}{slide_auc(y, small_p):>14.4f}{slide_auc(y, large_p):>20.4f}")
    for cls in sorted(set(classes)):
        pick = np.array([c == cls for c in classes])
        label = f"{cls}: called tumour"
        hits_small, hits_large = int((small_p[pick] >= threshold).sum()), int((large_p[pick] >= threshold).sum())
        print(f"{label:28}{f'{hits_small}/{pick.sum()}':>14}{f'{hits_large}/{pick.sum()}':>20}")
    tumour = y == 1
    change = np.median(large_p[tumour] - small_p[tumour]) if tumour.any() else float("nan")
    print(f"{'tumour slides: median change':28}{'':>14}{change:>+20.4f}")


if __name__ == "__main__":
    main()
