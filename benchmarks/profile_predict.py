"""Where ``predict`` spends its time: each stage timed alone, in one process, on one slide, then predict end to end.

    python benchmarks/profile_predict.py /tmp/bench-predict-20000-seed0.tif --threads 1   # slide from bench_predict.py

Stages: tissue detection, tile grid, streamed reading (``stream_tiles``, the predict reader threads), the encoder on
the read batches (tiles in memory), colour statistics and encoder preprocessing on the same batches, the
heatmap thumbnail, the slide model (mean of 2), the domain check; then ``predict_slide`` without and with the
heatmap outputs. With the stages pipelined, predict should approach the larger of reading and encoding.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slide")
    parser.add_argument("--model", help="model folder or shipped name (default: the shipped default model)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from wsi_mamba.evaluation.colour import tile_colour_stats
    from wsi_mamba.features.options import ReadOptions
    from wsi_mamba.slide import open_slide
    from wsi_mamba.slide.stream import stream_tiles
    from wsi_mamba.slide.tiling import make_tile_grid
    from wsi_mamba.slide.tissue import detect_tissue
    from wsi_mamba.workflows.bundle import load_bundle
    from wsi_mamba.workflows.domain import domain_warnings
    from wsi_mamba.workflows.predict import predict_slide
    from wsi_mamba.workflows.scoring import score_tiles

    bundle = load_bundle(args.model)
    encoder, options = bundle.encoder, ReadOptions()
    encoder.encode(np.zeros((8, encoder.tile_px, encoder.tile_px, 3), np.uint8))  # first-call costs
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable, *a, **k):
        start = time.perf_counter()
        out = fn(*a, **k)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return out

    with open_slide(args.slide, mpp=options.slide_mpp) as slide:
        tissue = timed("tissue detection", detect_tissue, slide)
        geometry = (encoder.tile_px, encoder.mpp, options.min_tissue)
        grid = timed("tile grid", make_tile_grid, slide, *geometry, tissue=tissue)
        batches = timed(
            f"reading ({options.read_threads} threads)",
            lambda: list(stream_tiles(slide, grid, options.batch_size, workers=options.read_threads)),
        )
        features = np.concatenate([timed("encoder", encoder.encode, tiles) for tiles, _ in batches])
        colour = np.concatenate([timed("colour statistics", tile_colour_stats, tiles) for tiles, _ in batches])
        for tiles, _ in batches:
            timed("(of which preprocessing)", encoder.preprocess, tiles)
        timed("thumbnail", slide.get_thumbnail, 1024)
        mpp = slide.mpp
    for _ in range(2):
        timed("slide model", score_tiles, bundle, features, grid.rows, grid.cols, grid.shape)
    seconds["slide model"] /= 2
    timed("domain check", domain_warnings, bundle.meta.get("domain"), features, colour, mpp, encoder.mpp)
    timed("predict_slide", predict_slide, args.slide, bundle, options)
    with tempfile.TemporaryDirectory() as folder:
        timed("predict_slide + heatmap outputs", predict_slide, args.slide, bundle, options, None, folder, True)
    print(f"# {len(grid)} tiles, model {bundle.name}, {torch.get_num_threads()} torch threads")
    print("| stage | s |\n|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
