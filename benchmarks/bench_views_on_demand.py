"""Test-time views on demand against all views, side by side in one process: encoder throughput on a slide's
tissue tiles and patch AUC on PCam ``valid`` (issue 22, item 2).

    python benchmarks/bench_views_on_demand.py --slide /work/bench/camelyon-20x-micro-seed0.tif --band 0.1,0.9
    python benchmarks/bench_views_on_demand.py --slide big.tif --model runs/model --tiles 4096 --json

The slide (``--slide``, e.g. the CAMELYON16-size one ``bench_predict.py --camelyon --slide-only`` writes) gives
``--tiles`` tissue tiles drawn at random (seed 0) from its grid at the encoder's tile_px and mpp, read into memory
before any clock starts. Each mode encodes the same tiles in the same batches (``--batch-size``) through the
product's engine calls (``TileEncoder.view_features`` for all views, ``TileEncoder.views_on_demand`` for the
band); the modes alternate for ``--repeats`` rounds and each keeps its fastest round. The patch AUC of both modes
is then computed on every patch of ``--patches`` (PCam ``valid``: evaluation data, used here to report, never to
choose the band) with ``score_patch_source``, as ``wsi-mamba score-patches`` scores them.

Columns: tiles/s on the slide's tiles and the ratio against all views; the share of tiles that got the extra views;
patch AUC (and its difference from all views) and accuracy at 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

DEFAULT_PATCHES = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam" / "valid"


def parse_band(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    return lo, hi


def slide_tiles(slide_path: Path, encoder, count: int, batch_size: int) -> tuple[np.ndarray, int]:
    """``count`` tissue tiles (seeded draw) of the slide at the encoder's geometry, in memory, and the grid's size."""
    from wsi_mamba.slide import open_slide
    from wsi_mamba.slide.stream import stream_tiles
    from wsi_mamba.slide.tiling import make_tile_grid
    from wsi_mamba.slide.tissue import detect_tissue

    with open_slide(slide_path) as slide:
        grid = make_tile_grid(slide, encoder.tile_px, encoder.mpp, 0.5, tissue=detect_tissue(slide))
        keep = np.sort(np.random.default_rng(0).choice(len(grid), min(count, len(grid)), replace=False))
        sample = replace(grid, **{k: getattr(grid, k)[keep] for k in ("rows", "cols", "x", "y", "tissue")})
        tiles = np.concatenate([batch for batch, _ in stream_tiles(slide, sample, batch_size)])
    return tiles, len(grid)


def time_mode(encode, tiles: np.ndarray, batch_size: int) -> tuple[float, int]:
    """Seconds to encode every tile in batches, and how many tiles got more than one view."""
    extra = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(tiles), batch_size):
            extra += encode(tiles[s : s + batch_size])
    return time.perf_counter() - start, extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, required=True, help="a real-tissue slide (tissue tiles are timed)")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    parser.add_argument("--band", type=parse_band, default=None, help="LO,HI (default: the model's band)")
    parser.add_argument("--views", type=int, default=None, help="all views (default: the model's)")
    parser.add_argument("--patches", type=Path, default=DEFAULT_PATCHES, help="labelled patches for the AUC")
    parser.add_argument("--tiles", type=int, default=2048, help="slide tiles timed (default 2048)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds per mode (fastest kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sklearn.metrics import roc_auc_score

    from wsi_mamba.data.patches import open_patches
    from wsi_mamba.workflows.bundle import load_bundle, model_path
    from wsi_mamba.workflows.reports.score_patches import score_patch_source

    bundle = load_bundle(model_path(args.model))
    encoder = bundle.encoder
    mode = bundle.feature_mode or {}
    views = args.views or int(mode.get("views", 4))
    band = args.band or tuple(mode.get("views_on_demand") or (0.1, 0.9))
    tiles, grid_tiles = slide_tiles(args.slide, encoder, args.tiles, args.batch_size)

    def all_views(batch: np.ndarray) -> int:
        encoder.view_features(encoder.preprocess(batch), views)
        return len(batch)

    def on_demand(batch: np.ndarray) -> int:
        _, used = encoder.views_on_demand(encoder.preprocess(batch), views, band)
        return int((used > 1).sum())

    modes = {f"all {views} views": all_views, f"on demand [{band[0]:g}, {band[1]:g}]": on_demand}
    best = dict.fromkeys(modes, float("inf"))
    extra = dict.fromkeys(modes, 0)
    time_mode(on_demand, tiles[: args.batch_size], args.batch_size)  # warm-up
    for _ in range(args.repeats):
        for name, encode in modes.items():
            seconds, extra[name] = time_mode(encode, tiles, args.batch_size)
            best[name] = min(best[name], seconds)

    source = open_patches(args.patches)
    labels = np.asarray(source.labels)
    rows = []
    base_auc = None
    for name, on in zip(modes, (None, band), strict=True):
        scores = score_patch_source(source, encoder, views=views, on_demand=on).scores
        auc = float(roc_auc_score(labels, scores))
        base_auc = auc if base_auc is None else base_auc
        rows.append(
            {
                "mode": name,
                "tiles_per_s": len(tiles) / best[name],
                "speed": best[next(iter(modes))] / best[name],
                "extra_view_share": extra[name] / len(tiles),
                "patch_auc": auc,
                "auc_change": auc - base_auc,
                "accuracy": float(((scores >= 0.5) == labels).mean()),
            }
        )
    header = {
        "slide": str(args.slide),
        "slide_tiles": grid_tiles,
        "timed_tiles": len(tiles),
        "patches": str(args.patches),
        "threads": args.threads,
        "load": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }
    if args.json:
        print(json.dumps({**header, "rows": rows}, indent=1))
        return 0
    print(
        f"{args.slide.name}: {len(tiles)} of {grid_tiles} tissue tiles timed; patch AUC on {len(labels)} patches "
        f"of {args.patches}; {args.threads} threads, load {' '.join(header['load'] or [])}",
        file=sys.stderr,
    )
    print(
        "| mode | slide tiles/s | speed vs all views | tiles given extra views | patch AUC | Δ AUC | accuracy at 0.5 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['tiles_per_s']:.0f} | {r['speed']:.2f}x | {100 * r['extra_view_share']:.1f} % | "
            f"{r['patch_auc']:.4f} | {r['auc_change']:+.4f} | {r['accuracy']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
