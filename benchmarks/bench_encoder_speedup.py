"""The default model's tile encoding as issue 22 found it against today's, step by step, side by side in one run:
slide tiles/s and PCam ``valid`` patch AUC (issue 22, item 2 and its acceptance).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_encoder_speedup.py --slide /work/bench/camelyon-20x-micro-seed0.tif

``--tiles`` tissue tiles of the slide (seeded draw, read into memory before any clock starts) are encoded by each
way in turn, in batches of ``--batch-size``, for ``--repeats`` alternating rounds (each way keeps its fastest):

1. issue 22's baseline: every tile in all the model's views, the row-major scan kernel, one process of
   ``--threads`` torch threads;
2. the channels-last scan kernel (the fused kernel reading the engine's NHWC maps in place);
3. views on demand (the model's band: the other views only for tiles of uncertain first view);
4. and ``--threads`` encoding processes of one thread each (:mod:`wsi_mamba.features.encoder_pool`), fp32: the
   default for slides of 2,048 tiles or more on a CPU without bf16 hardware;
5. the same in bf16 (CPU autocast): the default (``--precision auto``) on CPUs with AVX-512-BF16 or AMX.

The pool's start (spawning the workers, loading the encoder) is timed apart. Patch AUC: every patch of
``--patches`` (PCam ``valid``, evaluation data: reported, never used to choose) through the same batch step
(:func:`~wsi_mamba.features.encoder_pool.encode_batch`), in process (a pool's features equal the in-process ones
to float32 rounding: tests/test_encoder_pool.py).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_encoder_precision import row_major_scan
from bench_views_on_demand import DEFAULT_PATCHES, slide_tiles

from wsi_mamba.features.encoder_pool import BatchEncoding, EncoderPool, encode_batch
from wsi_mamba.features.runner import DeviceRunner


def in_process(encoder, how: BatchEncoding, context=None):
    """A way that encodes a batch in this process (under ``context``, e.g. the old scan kernel)."""
    runner = DeviceRunner("cpu", how.precision)

    def run(tiles: np.ndarray, batch_size: int) -> None:
        with torch.inference_mode(), (context or contextlib.nullcontext)():
            for s in range(0, len(tiles), batch_size):
                encode_batch(encoder, runner, tiles[s : s + batch_size], how)

    return run


def in_pool(pool: EncoderPool):
    """A way that sends every batch to ``pool`` as the engine does (:meth:`EncoderPool.encode_all`)."""

    def run(tiles: np.ndarray, batch_size: int) -> None:
        for _ in pool.encode_all((s, tiles[s : s + batch_size]) for s in range(0, len(tiles), batch_size)):
            pass

    return run


def patch_auc(encoder, how: BatchEncoding, patches: Path, batch_size: int) -> tuple[float, float]:
    """(AUC, accuracy at 0.5) of the encoder's tumour probability on every patch of ``patches``."""
    from sklearn.metrics import roc_auc_score

    from wsi_mamba.data.patches import open_patches

    source = open_patches(patches)
    labels = np.asarray(source.labels)
    runner = DeviceRunner("cpu", how.precision)
    scores = []
    with torch.inference_mode():
        for s in range(0, len(labels), batch_size):
            index = np.arange(s, min(s + batch_size, len(labels)))
            features, _ = encode_batch(encoder, runner, source.read(index), how)
            logits = encoder.logits_from_features(features.float())
            scores.append(torch.sigmoid(logits[:, 0].float()).numpy())
    p = np.concatenate(scores)
    return float(roc_auc_score(labels, p)), float(((p >= 0.5) == labels).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, required=True, help="a real-tissue slide (tissue tiles are timed)")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    parser.add_argument("--patches", type=Path, default=DEFAULT_PATCHES, help="labelled patches for the AUC")
    parser.add_argument("--tiles", type=int, default=2048, help="slide tiles timed (default 2048)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds per way (fastest kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-auc", action="store_true", help="speed only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from wsi_mamba.workflows.bundle import load_bundle, model_path

    bundle = load_bundle(model_path(args.model))
    encoder = bundle.encoder
    mode = bundle.feature_mode or {}
    views = int(mode.get("views", 4))
    band = tuple(mode.get("views_on_demand") or (0.05, 0.95))
    tiles, grid_tiles = slide_tiles(args.slide, encoder, args.tiles, args.batch_size)
    every = BatchEncoding(views)
    on_demand = BatchEncoding(views, band)
    bf16 = BatchEncoding(views, band, "bf16")
    started = time.perf_counter()
    pools = {how.precision: EncoderPool(encoder, args.threads, how) for how in (on_demand, bf16)}
    for pool in pools.values():  # the start: each worker has loaded the encoder once it answers a batch
        in_pool(pool)(tiles[: args.batch_size * args.threads], args.batch_size)
    start_s = time.perf_counter() - started
    n, lo_hi = args.threads, f"[{band[0]:g}, {band[1]:g}]"
    ways = {
        f"1. baseline: all {views} views, row-major scan kernel, 1 process x {n} threads": (
            in_process(encoder, every, row_major_scan),
            every,
        ),
        f"2. + channels-last scan kernel (all {views} views)": (in_process(encoder, every), every),
        f"3. + views on demand {lo_hi}": (in_process(encoder, on_demand), on_demand),
        f"4. + {n} encoding processes x 1 thread, fp32": (in_pool(pools["fp32"]), on_demand),
        "5. + bf16 (the default on CPUs with bf16 hardware)": (in_pool(pools["bf16"]), bf16),
    }
    best = dict.fromkeys(ways, float("inf"))
    for run, _ in ways.values():  # warm-up: kernels compiled, oneDNN primitives made
        run(tiles[: args.batch_size], args.batch_size)
    for _ in range(args.repeats):
        for name, (run, _) in ways.items():
            start = time.perf_counter()
            run(tiles, args.batch_size)
            best[name] = min(best[name], time.perf_counter() - start)
    for pool in pools.values():
        pool.close()
    aucs: dict[BatchEncoding, tuple[float, float]] = {}
    if not args.no_auc:
        for how in (every, on_demand, bf16):
            with row_major_scan() if how is every else contextlib.nullcontext():
                aucs[how] = patch_auc(encoder, how, args.patches, args.batch_size)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(
        f"{args.slide.name}: {len(tiles)} of {grid_tiles} tissue tiles timed, best of {args.repeats}; patch AUC on "
        f"{args.patches}; {n} threads; pool start {start_s:.1f} s (both pools); load {' '.join(load)}",
        file=sys.stderr,
    )
    base = best[next(iter(ways))]
    print("| encoding | slide tiles/s | speed vs baseline | PCam valid patch AUC | Δ AUC | accuracy at 0.5 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (_, how) in ways.items():
        auc = "- | - | -"
        if aucs:
            a, acc = aucs[how]
            auc = f"{a:.4f} | {a - aucs[every][0]:+.4f} | {acc:.4f}"
        print(f"| {name} | {len(tiles) / best[name]:.0f} | {base / best[name]:.2f}x | {auc} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
