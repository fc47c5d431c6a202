"""Seconds, tiles/s and peak RSS of ``wsi-mamba predict`` on one large synthetic slide, against only reading
the same tiles.

    python benchmarks/bench_predict.py                          # 20000 x 20000 px, the shipped default model
    python benchmarks/bench_predict.py --size 4096 --model runs/model --threads 2
    python benchmarks/bench_predict.py --slide my.svs --model runs/model --json
    python benchmarks/bench_predict.py --views 1            # one view's time instead of the model's (score meaningless)
    python benchmarks/bench_predict.py --camelyon --cache ~/wsi-bench   # a CAMELYON16-size real-tissue slide
    python benchmarks/bench_predict.py --camelyon --cache ~/wsi-bench --slide-only   # only write that slide

``--camelyon``: the slide is a real-tissue one at CAMELYON16 scale, the size of issue 22's: 99,840 x 46,080 px
at 20x (0.486 µm/px; ``--magnification 40``: 0.243 µm/px, twice the pixels a side; ``10``: the patches' own
0.972 µm/px, half), 520 x 240 cells of 96 px at 0.972 µm/px, several tissue sections, PCam patches
(``--patches``, default ../shared/data/pcam/valid: evaluation patches, never the model's training ones)
upsampled from 10x, with one micro-metastasis (``--lesion``), written tile by tile
(``wsi_mamba.synth.from_patches.write_patch_slide``; coarser levels averaged from level 0's tiles) into
``--cache`` once. Predict's time is then also split by stage
(tissue and grid; reading and encoding, which overlap; slide model; regions GeoJSON; heatmap PNG; tiles GeoJSON),
with the heatmap and GeoJSON written (to ``--cache``/predict-out), as ``wsi-mamba predict --heatmap`` does.

The slide (a tumour slide of the synthetic cohort, seed ``--seed``) is written once into ``--cache`` and
reused. Both phases run in this process, one after the other, on the same tile grid (the model encoder's
tile_px and mpp, tissue tiles only):

- ``read``: tissue detection, tile grid and every tile streamed with ``wsi_mamba.slide.stream.stream_tiles``
  (same batch size and reader threads), no encoder: the floor for predict;
- ``encode``: the encoder alone on tiles already in memory (the first ``--encode-tiles`` tiles, read before the
  clock starts), its seconds scaled to all tiles: the other floor;
- ``predict``: ``wsi_mamba.workflows.predict.predict_slide`` end to end (open, tissue, grid, read, encode,
  slide model), as ``wsi-mamba predict`` runs it, after one warm-up batch through the encoder.

``predict / read`` is how many times longer predict takes than reading alone; ``predict / floor`` divides by the
larger of the two floors (1.0: reading and encoding fully overlapped, nothing else on the critical path). Peak
RSS is the process's peak resident memory during the read and predict phases (reset in between; glibc's mmap
threshold is fixed at 1 MiB so that memory freed by the first phase does not count in the second).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from rss import current_rss, peak_rss, reset_peak_rss

MMAP_THRESHOLD = str(1 << 20)


def slide_path(args: argparse.Namespace) -> Path:
    """The slide to measure: ``--slide``, or the cached synthetic one (written on first use)."""
    if args.slide is not None:
        if not args.slide.exists():
            sys.exit(f"error: {args.slide}: no such slide")
        return args.slide
    from tqdm import tqdm

    from wsi_mamba.synth.procedural import make_spec
    from wsi_mamba.synth.writer import tile_count, write_slide

    path = args.cache / f"bench-predict-{args.size}-seed{args.seed}.tif"
    if not path.exists():
        args.cache.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with tqdm(total=tile_count(args.size, args.size, "tiff"), desc="write slide", unit="tile") as bar:
            write_slide(make_spec(args.seed, 1, args.size, args.size, tumor=True), path, "tiff", tick=bar.update)
        print(f"wrote {path} ({args.size} x {args.size} px) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


def camelyon_slide(args: argparse.Namespace) -> Path:
    """The CAMELYON16-size real-tissue slide in ``--cache`` (written on first use), its lesion XML beside it."""
    from tqdm import tqdm

    from wsi_mamba.synth.from_patches import CAMELYON_CELLS, write_patch_slide
    from wsi_mamba.synth.writer import tile_count

    upsample = args.magnification // 10
    path = args.cache / f"camelyon-{args.magnification}x-{args.lesion}-seed{args.seed}.tif"
    if path.exists():
        return path
    if not args.patches.is_dir():
        sys.exit(f"error: {args.patches}: no such folder of labelled patches (--patches)")
    start = time.perf_counter()
    rows, cols = CAMELYON_CELLS
    total = tile_count(cols * 96 * upsample, rows * 96 * upsample, "tiff")  # PCam's 96 px cells
    with tqdm(total=total, desc="write slide", unit="tile") as bar:
        spec = write_patch_slide(path, args.patches, CAMELYON_CELLS, args.lesion, args.seed, upsample, tick=bar.update)
    lesions = ", ".join(f"{x.kind} {x.diameter_um:.0f} µm ({len(x.cells)} cells)" for x in spec.lesions) or "none"
    print(
        f"wrote {path}: {spec.width} x {spec.height} px at {spec.mpp:g} µm/px, {len(spec.ovals)} tissue pieces, "
        f"{len(spec.cells)} tissue cells, lesions: {lesions}; written in {time.perf_counter() - start:.0f} s, "
        f"{path.stat().st_size / 2**30:.2f} GiB",
        file=sys.stderr,
    )
    return path


class StageClock:
    """Seconds spent in named functions of ``wsi_mamba.workflows.predict`` during one ``predict_slide`` call
    (each wrapped for the call, then restored); ``on_total`` marks the end of tissue detection and grid."""

    STAGES: ClassVar[dict[str, str]] = {
        "encode_slide": "tissue, grid, read + encode",
        "score_encoded": "slide model",
        "call_regions": "region calling",
        "write_called_regions_geojson": "regions GeoJSON",
        "write_heatmap_png": "heatmap PNG",
        "write_tiles_geojson": "tiles GeoJSON",
    }

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(self.STAGES.values(), 0.0)
        self.grid_at: float | None = None
        self.started = time.perf_counter()

    def on_total(self, _tiles: int) -> None:
        self.grid_at = time.perf_counter()

    def __enter__(self) -> StageClock:
        import wsi_mamba.workflows.predict as module

        self.module, self.saved = module, {name: getattr(module, name) for name in self.STAGES}
        for name, label in self.STAGES.items():
            setattr(module, name, self._timed(self.saved[name], label))
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        for name, function in self.saved.items():
            setattr(self.module, name, function)

    def _timed(self, function, label: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start

        return timed


def load_model(args: argparse.Namespace, parser: argparse.ArgumentParser):
    from wsi_mamba.workflows.bundle import default_model_path, load_bundle

    if args.model is None and not default_model_path().exists():
        parser.error(
            f"no model: the shipped default model ({default_model_path()}) does not exist yet. Train it with "
            "`wsi-mamba run pipelines/synthetic-camelyon.yaml` (and copy it there, see the recipe), or pass "
            "--model MODEL_FOLDER (a folder written by `wsi-mamba train`)"
        )
    try:
        return load_bundle(args.model)
    except ValueError as exc:
        parser.error(str(exc))


def read_phase(path: Path, encoder, reading) -> dict:
    """Tissue, grid and every tile read, no encoder."""
    from wsi_mamba.slide import open_slide
    from wsi_mamba.slide.stream import stream_tiles
    from wsi_mamba.slide.tiling import make_tile_grid
    from wsi_mamba.slide.tissue import detect_tissue

    checksum = 0
    start = time.perf_counter()
    with open_slide(path, mpp=reading.slide_mpp) as slide:
        tissue = detect_tissue(slide)
        grid = make_tile_grid(slide, encoder.tile_px, encoder.mpp, reading.min_tissue, tissue=tissue)
        for tiles, _ in stream_tiles(slide, grid, reading.batch_size, workers=reading.read_threads):
            checksum += int(tiles[:, 0, 0, 0].sum())
        dimensions = slide.dimensions
    return {"seconds": time.perf_counter() - start, "tiles": len(grid), "dimensions": dimensions}


def encode_phase(path: Path, encoder, reading, views: int, limit: int) -> dict:
    """The encoder alone on up to ``limit`` tiles read beforehand, its time scaled to every tissue tile."""
    from wsi_mamba.slide import open_slide
    from wsi_mamba.slide.stream import stream_tiles
    from wsi_mamba.slide.tiling import make_tile_grid
    from wsi_mamba.slide.tissue import detect_tissue

    batches, count = [], 0
    with open_slide(path, mpp=reading.slide_mpp) as slide:
        grid = make_tile_grid(slide, encoder.tile_px, encoder.mpp, reading.min_tissue, tissue=detect_tissue(slide))
        stream = stream_tiles(slide, grid, reading.batch_size, workers=reading.read_threads)
        for tiles, _ in stream:
            batches.append(tiles)
            count += len(tiles)
            if count >= limit:
                break
        stream.close()
    start = time.perf_counter()
    for tiles in batches:
        encoder.encode(tiles, views)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds * len(grid) / max(count, 1), "sampled": count}


def predict_phase(path: Path, bundle, reading, out_dir: Path | None = None) -> dict:
    """``predict_slide`` end to end; with ``out_dir``, the heatmap and GeoJSONs too, and seconds by stage."""
    from wsi_mamba.workflows.predict import predict_slide

    with StageClock() as clock:
        drawing = out_dir is not None
        result = predict_slide(path, bundle, reading, out_dir=out_dir, heatmap=drawing, on_total=clock.on_total)
        if bundle.encoder.device.type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - clock.started
    stages = dict(clock.seconds)
    if clock.grid_at is not None:  # encode_slide = tissue and grid, then reading + encoding (overlapped)
        grid_s = clock.grid_at - clock.started
        read_encode = stages.pop("tissue, grid, read + encode") - grid_s
        stages = {"tissue + grid": grid_s, "read + encode": read_encode, **stages}
    stages["other (open, thumbnail, domain check, JSON)"] = seconds - sum(stages.values())
    return {
        "seconds": seconds,
        "tiles": result["tiles"],
        "score": result["score"],
        "prediction": result["prediction"],
        "regions": result.get("regions"),  # how many predicted regions (with out_dir)
        "stages": stages,
    }


def measure(phase, *args) -> dict:
    reset_peak_rss()
    row = phase(*args)
    row["peak_rss_mib"] = peak_rss() / 2**20
    return row


def print_floors(path: Path, read: dict, encode: dict | None) -> None:
    """The read and encode phases alone (``--skip-predict``): predict takes at least the larger of the two."""
    width, height = read["dimensions"]
    encode_s = encode["seconds"] if encode else float("nan")
    print(f"# {path}: read and encode floors only (--skip-predict), {torch.get_num_threads()} torch threads")
    print("| slide px | tissue tiles | read s | read tiles/s | read peak RSS MiB | encode s (sampled) |", end="")
    print(" encode tiles/s |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {width} x {height} | {read['tiles']} | {read['seconds']:.1f} | {read['tiles'] / read['seconds']:.0f} | "
        f"{read['peak_rss_mib']:.0f} | {encode_s:.0f} ({encode['sampled'] if encode else 0} tiles) | "
        f"{read['tiles'] / encode_s:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", type=Path, help="slide to measure (default: a synthetic one in --cache)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp"), help="folder for the synthetic slide")
    parser.add_argument("--size", type=int, default=20000, help="synthetic slide side in px (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic slide seed")
    parser.add_argument("--model", help="model folder (default: the shipped default model)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the tile encoder runs")
    parser.add_argument("--batch-size", type=int, default=64, help="tiles per encoder batch (as predict)")
    parser.add_argument("--read-threads", type=int, default=4, help="tile-reading threads (as predict)")
    parser.add_argument(
        "--views", type=int, choices=(1, 4, 8), help="test-time views (default: the model's; others: time only)"
    )
    parser.add_argument("--encode-tiles", type=int, default=1024, help="tiles timed in the encode phase (0: none)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--camelyon", action="store_true", help="a CAMELYON16-size real-tissue slide (99,840 x 46,080 px at 20x)"
    )
    parser.add_argument("--magnification", type=int, choices=(10, 20, 40), default=20, help="--camelyon's level 0")
    parser.add_argument(
        "--lesion", choices=("micro", "macro", "itc", "none"), default="micro", help="--camelyon's largest lesion"
    )
    parser.add_argument(
        "--patches",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam" / "valid",
        help="--camelyon's labelled patches (default ../shared/data/pcam/valid)",
    )
    parser.add_argument("--slide-only", action="store_true", help="only write the --camelyon slide (time it alone)")
    parser.add_argument(
        "--skip-predict", action="store_true", help="only the read and encode floors (predict's time bounded below)"
    )
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:  # must be set before the process starts
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")

    from wsi_mamba.features.options import ReadOptions

    if args.camelyon and args.slide is None:
        path = camelyon_slide(args)
        if args.slide_only:
            print(path)
            return
    bundle = load_model(args, parser)
    bundle.encoder.to(args.device)
    path = path if args.camelyon and args.slide is None else slide_path(args)
    model_views = int(bundle.feature_mode.get("views", 1))
    views = args.views or model_views
    if views != model_views:  # speed only: predict refuses other views for a reason
        print(f"note: --views {views} overrides the model's views; time only, the score means nothing", file=sys.stderr)
        bundle.meta["feature_mode"] = {**bundle.feature_mode, "views": views}
        if views == 1:  # one view has no others to add on demand
            bundle.meta["feature_mode"].pop("views_on_demand", None)
    reading = ReadOptions(batch_size=args.batch_size, read_threads=args.read_threads)
    warm = np.zeros((min(args.batch_size, 8), bundle.encoder.tile_px, bundle.encoder.tile_px, 3), np.uint8)
    bundle.encoder.encode(warm)  # first-call costs (allocator, kernels) are not the slide's
    base_mib = current_rss() / 2**20

    read = measure(read_phase, path, bundle.encoder, reading)
    encode = encode_phase(path, bundle.encoder, reading, views, args.encode_tiles) if args.encode_tiles > 0 else None
    if args.skip_predict:
        print_floors(path, read, encode)
        return
    outputs = args.cache / "predict-out" if args.camelyon else None
    predict = measure(predict_phase, path, bundle, reading, outputs)
    if predict["tiles"] != read["tiles"]:
        sys.exit(f"error: predict saw {predict['tiles']} tiles, the read phase {read['tiles']}")
    width, height = read["dimensions"]
    result = {
        "slide": str(path),
        "width": width,
        "height": height,
        "model": bundle.name,
        "encoder": bundle.encoder.name,
        "tile_px": bundle.encoder.tile_px,
        "mpp": bundle.encoder.mpp,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "reader_threads": args.read_threads,
        "batch_size": args.batch_size,
        "views": views,
        "tiles": read["tiles"],
        "read_s": read["seconds"],
        "predict_s": predict["seconds"],
        "predict_over_read": predict["seconds"] / read["seconds"],
        "encode_s": encode["seconds"] if encode else None,
        "encode_sampled_tiles": encode["sampled"] if encode else None,
        "predict_over_floor": predict["seconds"] / max(read["seconds"], encode["seconds"] if encode else 0.0),
        "read_tiles_per_s": read["tiles"] / read["seconds"],
        "predict_tiles_per_s": predict["tiles"] / predict["seconds"],
        "base_rss_mib": base_mib,
        "read_peak_rss_mib": read["peak_rss_mib"],
        "predict_peak_rss_mib": predict["peak_rss_mib"],
        "score": predict["score"],
        "prediction": predict["prediction"],
        "regions": predict["regions"] if outputs else None,
        "predict_stages_s": predict["stages"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    r = result
    print(
        f"# model {r['model']} (encoder {r['encoder']}, {r['tile_px']} px tiles at {r['mpp']} µm/px) on "
        f"{r['device']}, {r['torch_threads']} torch threads, {r['reader_threads']} reader threads, "
        f"batch {r['batch_size']}, {r['views']} view(s); RSS before {r['base_rss_mib']:.0f} MiB; score {r['score']}"
    )
    print(
        "| slide px | tissue tiles | read s | encode s | predict s | predict / read | predict / floor | read tiles/s "
        "| predict tiles/s | read peak RSS MiB | predict peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    encode_s = "" if r["encode_s"] is None else f"{r['encode_s']:.1f}"
    print(
        f"| {r['width']} x {r['height']} | {r['tiles']} | {r['read_s']:.1f} | {encode_s} | {r['predict_s']:.1f} | "
        f"{r['predict_over_read']:.2f} | {r['predict_over_floor']:.2f} | {r['read_tiles_per_s']:.1f} | "
        f"{r['predict_tiles_per_s']:.1f} | "
        f"{r['read_peak_rss_mib']:.0f} | {r['predict_peak_rss_mib']:.0f} |"
    )

    if outputs is not None:
        print(f"\n# predict by stage ({r['prediction']}, {r['regions']} predicted regions; outputs in {outputs})")
        print("| stage | s | share |\n|---|---|---|")
        for stage, seconds in r["predict_stages_s"].items():
            print(f"| {stage} | {seconds:.1f} | {seconds / r['predict_s']:.0%} |")


if __name__ == "__main__":
    main()
