"""False regions and lesions hit by a model's region calling against the uncalibrated calling (every group of
tiles at or above the slide threshold), on labelled feature stores with lesion annotations (issue 22 item 6).

    python benchmarks/bench_region_calling.py --model MODEL --features FEATURES --labels CSV --annotations DIR

Prints one row per slide and the totals: tiles, false regions (touching no lesion) and lesions hit, for each
calling, and the false regions per mm² of normal tissue (scaled to a 60,000-tile slide).
"""

from __future__ import annotations

import argparse

import numpy as np

from wsi_mamba.evaluation.region_calibration import ValidationGrid, false_regions, lesions_hit
from wsi_mamba.features.store import list_stores, read_store
from wsi_mamba.outputs.grid import score_grid
from wsi_mamba.outputs.region_calling import RegionCalling, tile_area_mm2
from wsi_mamba.workflows.bundle import load_bundle, region_calling_of
from wsi_mamba.workflows.inputs import read_labels
from wsi_mamba.workflows.scoring import score_tiles
from wsi_mamba.workflows.training.slide_examples import tile_targets

SLIDE_TILES = 60_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--annotations", required=True)
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    callings = {"uncalibrated": RegionCalling.uncalibrated(bundle.threshold), "model": region_calling_of(bundle)}
    area = tile_area_mm2(bundle.encoder.tile_px, bundle.encoder.mpp)
    labels, stores = read_labels(args.labels), list_stores(args.features)
    totals = {name: np.zeros(3, int) for name in callings}
    normal_tiles = 0
    print("slide\tlabel\ttiles\t" + "\t".join(f"{n} false\t{n} lesions hit" for n in callings))
    for name in sorted(n for n in stores if n in labels):
        data = read_store(stores[name])
        targets = tile_targets(data, labels[name], args.annotations)
        if targets is None or not len(data):
            continue
        _, tiles = score_tiles(bundle, data.features, data.rows, data.cols, data.grid_shape)
        scores = score_grid(data.rows, data.cols, tiles, data.grid_shape)
        normal = score_grid(data.rows, data.cols, (targets == 0).astype(np.float32), data.grid_shape) == 1
        grid = ValidationGrid(name, scores, normal)
        normal_tiles += int(normal.sum())
        cells = []
        for key, calling in callings.items():
            false = false_regions(grid, calling)
            lesions, hit = lesions_hit([grid], calling)
            totals[key] += (false, lesions, hit)
            cells.append(f"{false}\t{hit}/{lesions}")
        print(f"{name}\t{labels[name]}\t{len(data)}\t" + "\t".join(cells))
    mm2 = normal_tiles * area
    print(f"normal tissue: {normal_tiles} tiles, {mm2:.1f} mm² ({area:.5f} mm² a tile)")
    for key, (false, lesions, hit) in totals.items():
        rate = false / mm2 if mm2 else float("nan")
        print(
            f"{key}: {false} false regions ({rate:.4f} per mm², {rate * SLIDE_TILES * area:.1f} per "
            f"{SLIDE_TILES:,}-tile slide), {hit}/{lesions} lesions hit"
        )
    print(f"model calling: {callings['model'].to_json() if callings['model'].is_calibrated else 'uncalibrated'}")


if __name__ == "__main__":
    main()
