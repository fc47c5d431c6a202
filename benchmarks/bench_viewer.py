"""How ``wsi-mamba view`` keeps up on a gigapixel slide: tile request times (cold and cached) at every zoom of a
100,000 x 46,000 px pyramidal JPEG TIFF, and the process's peak memory.

    python benchmarks/bench_viewer.py [--work DIR]

The slide is written from pre-encoded JPEG tiles (a few textured variants, tifffile), so making it takes seconds
and ~0.5 GB of disk; the viewer then runs in-process on a free port and the tiles are fetched over HTTP.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from wsi_mamba.viewer import viewer_in_thread

WIDTH, HEIGHT, TILE = 100_000, 46_000, 256
LEVELS = 5  # downsamples 1, 4, 16, 64, 256


def jpeg_tiles(count: int, variants: int = 8, seed: int = 0) -> list[bytes]:
    """``variants`` textured 256-px JPEG tiles (pink-purple noise, like stained tissue)."""
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(variants):
        base = np.array([200, 120, 170]) + rng.integers(-30, 30, 3)
        pixels = np.clip(base + rng.normal(0, 25, (TILE, TILE, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
        tiles.append(buffer.getvalue())
    return [tiles[i % variants] for i in range(count)]


def write_slide(path: Path) -> Path:
    """A ``WIDTH`` x ``HEIGHT`` pyramidal JPEG TIFF (levels 4x apart) from pre-encoded tiles."""
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(LEVELS):
            w, h = WIDTH // 4**level, HEIGHT // 4**level
            n = -(-w // TILE) * -(-h // TILE)
            tif.write(
                iter(jpeg_tiles(n, seed=level)), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE),
                compression="jpeg", photometric="rgb", subfiletype=1 if level else 0,
                resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER",
            )  # fmt: skip
    return path


def fetch_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as reply:
        reply.read()
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the slide (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wsi-mamba-bench-viewer-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        slide = write_slide(work / "huge.tif")
        seconds = time.perf_counter() - started
        print(f"slide {WIDTH:,} x {HEIGHT:,} px: {slide.stat().st_size / 1e6:.0f} MB in {seconds:.1f} s")
        with viewer_in_thread([slide]) as viewer:
            base = f"{viewer.url}api/slides/huge/tiles"
            top = 9
            print("| zoom | tile spans (level-0 px) | first request (ms) | again, cached (ms) | 16 new tiles (ms) |")
            print("|---|---|---|---|---|")
            for zoom in range(top + 1):
                side0 = TILE * 2 ** (top - zoom)
                col, row = (WIDTH // 2) // side0, (HEIGHT // 2) // side0
                cold = fetch_ms(f"{base}/{zoom}/{col}_{row}.jpeg")
                warm = fetch_ms(f"{base}/{zoom}/{col}_{row}.jpeg")
                cols, rows = -(-WIDTH // side0), -(-HEIGHT // side0)
                block = [(c, r) for r in range(row, min(row + 4, rows)) for c in range(col + 1, min(col + 5, cols))]
                mean = np.mean([fetch_ms(f"{base}/{zoom}/{c}_{r}.jpeg") for c, r in block]) if block else float("nan")
                print(f"| {zoom} | {side0:,} | {cold:.0f} | {warm:.1f} | {mean:.0f} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process (server + client): {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
