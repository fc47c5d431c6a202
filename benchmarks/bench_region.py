"""Region mode: whole-region forward time and memory per region size (one pass of the encoder over the region).

    python benchmarks/bench_region.py --threads 1                               # vmamba_nano, 512 1024 2048 px
    python benchmarks/bench_region.py --threads 1 --sizes 512 1024 2048 4096 --compare-tiles
    python benchmarks/bench_region.py --device cuda --sizes 2048 4096 8192 10240

Each row runs :func:`wsi_mamba.features.region_mode.region_features` (the production path: uint8 region →
normalised input → last-stage map → per-cell features) on one random ``size``² region of 128 px tiles, once after
a warm-up at 256 px, in a fresh process. ``MiB``: on CPU the growth of peak RSS over the RSS once the model and the
uint8 region exist; on CUDA the peak allocated bytes. ``x prev``: memory over the previous row's (4 when linear in
pixels and the side doubles). ``B/px``: memory per region pixel. ``tiles s`` (``--compare-tiles``): tile mode on
the same pixels (``TileEncoder.encode``, batches of 64). The last line extrapolates the largest square region that
fits in ``--budget-gib`` from a linear fit of the two largest rows.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np
import torch
from rss import current_rss, peak_rss, reset_peak_rss, run_isolated

from wsi_mamba.features.region_mode import region_features
from wsi_mamba.models.encoder import load_encoder

TILE_PX = 128


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_case(size: int, args: argparse.Namespace) -> dict:
    """One row: a ``size``² region through ``args.model`` in one pass."""
    encoder = load_encoder(args.model, seed=0, tile_px=TILE_PX, mpp=0.5, scan_backend=args.backend).to(args.device)
    rng = np.random.default_rng(0)
    region_features(encoder, rng.integers(0, 256, (2 * TILE_PX, 2 * TILE_PX, 3), dtype=np.uint8))  # warm-up
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    _sync(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = current_rss()
    start = time.perf_counter()
    features = region_features(encoder, pixels)
    _sync(args.device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else peak_rss()
    row = {"size": size, "cells": features.shape[0] * features.shape[1], "seconds": seconds}
    row["mib"] = (peak - base) / 2**20
    if args.compare_tiles:
        n = size // TILE_PX
        tiles = pixels.reshape(n, TILE_PX, n, TILE_PX, 3).transpose(0, 2, 1, 3, 4).reshape(-1, TILE_PX, TILE_PX, 3)
        start = time.perf_counter()
        for i in range(0, len(tiles), 64):
            encoder.encode(tiles[i : i + 64])
        _sync(args.device)
        row["tiles_seconds"] = time.perf_counter() - start
    return row


def largest_fitting(rows: list[dict], budget_mib: float) -> int | None:
    """Side of the largest square region whose memory fits ``budget_mib``, from a line through the two largest
    rows (memory = a + b · pixels)."""
    if len(rows) < 2:
        return None
    (p1, m1), (p2, m2) = ((r["size"] ** 2, r["mib"]) for r in sorted(rows, key=lambda r: r["size"])[-2:])
    slope = (m2 - m1) / (p2 - p1)
    if slope <= 0:
        return None
    side = math.sqrt(max(0.0, (budget_mib - (m2 - slope * p2)) / slope))
    return int(side // TILE_PX * TILE_PX)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vmamba_nano")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024, 2048])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", help="selective-scan backend")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--compare-tiles", action="store_true", help="also time tile mode on the same pixels")
    parser.add_argument("--budget-gib", type=float, help="memory for the extrapolation (default: RAM or GPU - 2)")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(bench_case(json.loads(args.child)["size"], args)))
        return
    if any(size % TILE_PX for size in args.sizes):
        parser.error(f"sizes must be multiples of {TILE_PX}")
    passed = ["--model", args.model, "--device", args.device, "--backend", args.backend, "--threads", str(args.threads)]
    passed += ["--compare-tiles"] if args.compare_tiles else []
    rows = [run_isolated(__file__, {"size": size}, passed) for size in args.sizes]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if args.device.startswith("cuda"):
        device = torch.cuda.get_device_name()
        total = torch.cuda.get_device_properties(0).total_memory
    else:
        device = f"{platform.processor() or 'cpu'}, {args.threads} thread(s)"
        total = _ram_bytes()
    print(f"# {args.model}, {device}, float32 input (bf16 autocast on CUDA), torch {torch.__version__}")
    compare = args.compare_tiles
    print("| region px | megapixels | cells | forward s | MiB | x prev | B/px |" + (" tiles s |" if compare else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if compare else ""))
    previous = None
    for r in rows:
        ratio = f"{r['mib'] / previous:.2f}" if previous else ""
        previous = r["mib"]
        line = (
            f"| {r['size']} | {r['size'] ** 2 / 1e6:.2f} | {r['cells']} | {r['seconds']:.2f} | {r['mib']:.0f} | "
            f"{ratio} | {r['mib'] * 2**20 / r['size'] ** 2:.0f} |"
        )
        print(line + (f" {r['tiles_seconds']:.2f} |" if compare else ""))
    budget = args.budget_gib if args.budget_gib else total / 2**30 - 2
    side = largest_fitting(rows, budget * 1024)
    if side:
        print(f"\nlargest square region in {budget:.1f} GiB (linear fit of the two largest rows): ~{side} px")


def _ram_bytes() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
