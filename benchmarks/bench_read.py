"""Tiles/s and peak RSS: streaming every tissue tile of a synthetic slide at 0.5 µm/px through
``wsi_mamba.slide.stream`` vs a plain loop of ``openslide.OpenSlide.read_region`` over the same tiles.

Each reader runs in its own process so that peak RSS is its own. Example:

    python benchmarks/bench_read.py --size 32768 --workers 4 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("openslide-loop", "stream-openslide", "stream-tifffile")


def grid_for(path: Path, mpp: float, tile: int):
    from wsi_mamba.slide import open_slide
    from wsi_mamba.slide.tiling import make_tile_grid

    with open_slide(path) as slide:
        return make_tile_grid(slide, tile, mpp)


def run_mode(mode: str, path: Path, mpp: float, tile: int, batch: int, workers: int) -> dict:
    """Read every tile once; returns tiles, seconds and peak RSS of this process."""
    from PIL import Image

    grid = grid_for(path, mpp, tile)
    checksum = 0
    start = time.perf_counter()
    if mode == "openslide-loop":
        import openslide

        osr = openslide.OpenSlide(str(path))
        for x, y in zip(grid.x.tolist(), grid.y.tolist(), strict=True):
            region = osr.read_region((x, y), grid.level, (grid.read_px, grid.read_px)).convert("RGB")
            pixels = np.asarray(region.resize((tile, tile), Image.Resampling.BILINEAR))
            checksum += int(pixels[0, 0, 0])
        osr.close()
    else:
        from wsi_mamba.slide import open_slide
        from wsi_mamba.slide.stream import stream_tiles

        backend = mode.split("-", 1)[1]
        with open_slide(path, backend=backend) as slide:
            for tiles, _ in stream_tiles(slide, grid, batch_size=batch, workers=workers):
                checksum += int(tiles[:, 0, 0, 0].sum())
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode,
        "tiles": len(grid),
        "seconds": seconds,
        "peak_rss_mb": peak_kb / 1024,
        "checksum": checksum,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slide", type=Path, help="slide to read (default: write a synthetic one)")
    parser.add_argument("--size", type=int, default=16384, help="synthetic slide width in px")
    parser.add_argument("--flavour", default="tiff", choices=("tiff", "svs"))
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs per reader (best is reported)")
    parser.add_argument("--run", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_mode(args.run, args.slide, args.mpp, args.tile, args.batch, args.workers)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = args.slide
        if path is None:
            from wsi_mamba.synth import make_spec, write_slide

            path = Path(tmp) / f"bench.{args.flavour}.tif"
            start = time.perf_counter()
            write_slide(make_spec(0, 1, args.size, args.size, tumor=True), path, args.flavour)
            print(f"wrote {args.size} x {args.size} synthetic slide in {time.perf_counter() - start:.0f} s")
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.repeat):  # interleaved, so that a busy machine slows every reader alike
            for mode in MODES:
                cmd = [
                    sys.executable,
                    __file__,
                    "--run",
                    mode,
                    "--slide",
                    str(path),
                    "--mpp",
                    str(args.mpp),
                    "--tile",
                    str(args.tile),
                    "--batch",
                    str(args.batch),
                    "--workers",
                    str(args.workers),
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[mode].append(json.loads(out))
    best = {mode: min(r, key=lambda x: x["seconds"]) for mode, r in runs.items()}
    base = best[MODES[0]]
    base_rate = base["tiles"] / base["seconds"]
    print(
        f"{base['tiles']} tissue tiles of {args.tile} px at {args.mpp} µm/px, batch {args.batch}, "
        f"{args.workers} dask threads, best of {args.repeat} runs"
    )
    print(
        f"{'reader':<18} {'tiles/s':>9} {'ratio':>6} {'all runs tiles/s':>22} "
        f"{'peak RSS MB':>12} {'RSS ratio':>9}"
    )
    for mode in MODES:
        r = best[mode]
        rate = r["tiles"] / r["seconds"]
        every = " ".join(f"{x['tiles'] / x['seconds']:.0f}" for x in runs[mode])
        rss = max(x["peak_rss_mb"] for x in runs[mode])
        print(
            f"{mode:<18} {rate:9.1f} {rate / base_rate:6.2f} {every:>22} {rss:12.0f} "
            f"{rss / max(x['peak_rss_mb'] for x in runs[MODES[0]]):9.2f}"
        )


if __name__ == "__main__":
    main()
