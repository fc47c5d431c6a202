"""Seconds and peak RSS of the shipped default slide model (SS2D, ``pcam-camelyon``) on CPU at the grid sizes of real
slides, against today's training slides, each case in a fresh process.

    python benchmarks/bench_slide_model_scale.py                      # 30x40, 250x570, 500x1100; 2 torch threads
    python benchmarks/bench_slide_model_scale.py --grids 30x40 250x570 --repeats 5 --json
    python benchmarks/bench_slide_model_scale.py --modes infer train --max-rss-gib 12

Grids (rows x cols of cells): 30 x 40 (the baseline: the size of today's training slides, about a thousand cells),
250 x 570 (a CAMELYON16 slide at the model's 0.972 µm/px, 10x tiles) and 500 x 1100 (the same slide in 40x-scale
tiles). Tissue: ``--tissue`` (default 40 %) of the cells, in ``--pieces`` smooth blobs at the same relative places
at every size; features: random normal vectors of the model's ``in_dim`` at tissue cells, 0 elsewhere, as
``grid_tensors`` places them. Batch 1. Modes, each grid in its own interpreter (so that no case inherits another's
high-water mark):

- ``infer``: one forward under ``torch.inference_mode`` (eval mode), as predict scores a slide;
- ``train``: forward + backward + AdamW step (lr 1e-3, weight decay 0.05; gradient norm clipped to 1; slide BCE
  + 0.5 x tile BCE on random tile targets, as slide training does with annotations), train mode;
- ``train-ckpt``: the same with ``SlideMamba.set_grad_checkpointing(True)`` (each block recomputed in backward).

Each case warms up once on a small grid (numba compiles its kernels, the optimiser's state is created), then runs
``--repeats`` times, and a cheap case again until ``--min-seconds`` have passed: ``s`` is the median wall time,
``CPU s`` the median process CPU time (all threads; less sensitive to other jobs on a shared machine). ``peak MiB``
is the growth of the peak RSS (VmHWM, reset after the warm-up) over the RSS with the model and the input grid in
memory (``input MiB``: features and mask). ``backend``: the selective scan that ran (the model's ``"auto"``: numba
on CPU; ``cpu`` when numba failed and ``auto`` fell back). ``x base``: tissue cells, time and memory over the first
grid's row (30 x 40) of the same mode, measured in the same run. The parent watches each child's RSS and stops it
above ``--max-rss-gib`` (default 20): such a case is reported as not fitting rather than crashing the run. The load
average (as ``uptime`` prints it) before and after is printed: figures compare only within one run on a shared
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from rss import current_rss, peak_rss, reset_peak_rss

MODES = ("infer", "train", "train-ckpt")
DEFAULT_GRIDS = ("30x40", "250x570", "500x1100")
WARM_GRID = (12, 16)
MAX_RUNS = 50  # of a cheap case, repeated until --min-seconds have passed
MMAP_THRESHOLD = str(1 << 20)  # as rss.run_isolated: big freed blocks go back to the OS, not into glibc's heap


def parse_grid(text: str) -> tuple[int, int]:
    """``"ROWSxCOLS"`` → (rows, cols)."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid {text!r}: expected ROWSxCOLS, e.g. 250x570") from None
    if rows < 4 or cols < 4:
        raise argparse.ArgumentTypeError(f"grid {text!r}: at least 4 x 4 cells")
    return rows, cols


def tissue_mask(rows: int, cols: int, fraction: float, pieces: int, seed: int = 0) -> np.ndarray:
    """(rows, cols) bool: ``fraction`` of the cells in ``pieces`` elliptical blobs (the same layout at any size)."""
    rng = np.random.default_rng(seed)
    r = (np.arange(rows, dtype=np.float32)[:, None] + 0.5) / rows
    c = (np.arange(cols, dtype=np.float32)[None, :] + 0.5) / cols
    field = np.zeros((rows, cols), np.float32)
    for _ in range(pieces):
        cr, cc = rng.uniform(0.15, 0.85, 2)
        sr, sc = rng.uniform(0.08, 0.22, 2)
        np.maximum(field, np.exp(-0.5 * (((r - cr) / sr) ** 2 + ((c - cc) / sc) ** 2)), out=field)
    mask = np.zeros(rows * cols, bool)
    mask[np.argsort(-field, axis=None, kind="stable")[: round(fraction * rows * cols)]] = True
    return mask.reshape(rows, cols)


def load_default_slide_model():
    """The shipped default model's slide model, loaded as ``load_bundle`` does (scan backend ``auto``)."""
    from wsi_mamba.models.slide_model_io import load_slide_model
    from wsi_mamba.workflows.bundle import default_model_path

    model, _ = load_slide_model(default_model_path() / "slide_model.safetensors", scan_backend="auto")
    return model


def grid_inputs(rows: int, cols: int, in_dim: int, fraction: float, pieces: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (1, in_dim, rows, cols) float32, random at tissue cells and 0 elsewhere; mask (1, rows, cols)."""
    mask = torch.from_numpy(tissue_mask(rows, cols, fraction, pieces))[None]
    features = torch.randn(1, in_dim, rows, cols, generator=torch.Generator().manual_seed(0))
    return features.masked_fill_(~mask[:, None], 0.0), mask


def make_step(model, mode: str):
    """``step(features, mask)``: one case of ``mode`` on ``model`` (inference, or one training step)."""
    if mode == "infer":
        model.eval()

        def infer(features: torch.Tensor, mask: torch.Tensor) -> None:
            with torch.inference_mode():
                model(features, mask)

        return infer
    model.train()
    model.set_grad_checkpointing(mode == "train-ckpt")
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def train(features: torch.Tensor, mask: torch.Tensor) -> None:
        out = model(features, mask)
        targets = torch.randint(0, 2, mask.shape, generator=torch.Generator().manual_seed(1)).float()
        loss = F.binary_cross_entropy_with_logits(out.logit, torch.ones_like(out.logit))
        loss = loss + 0.5 * F.binary_cross_entropy_with_logits(out.tile_logits[mask], targets[mask])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()

    return train


def scan_backend_ran() -> str:
    """The backend ``selective_scan(backend="auto")`` runs on CPU tensors in this process now: numba, or the
    chunked ``cpu`` path when numba is missing or failed (then ``auto`` fell back on its first call)."""
    from wsi_mamba_scan import resolve_backend

    return resolve_backend("auto", torch.device("cpu"))


def run_case(spec: dict) -> dict:
    """One (grid, mode) case in this process: warm-up, then ``repeats`` timed runs and the peak RSS growth."""
    torch.set_num_threads(spec["threads"])
    model = load_default_slide_model()
    in_dim = model.config.in_dim
    step = make_step(model, spec["mode"])
    step(*grid_inputs(*WARM_GRID, in_dim, spec["tissue"], spec["pieces"]))
    features, mask = grid_inputs(spec["rows"], spec["cols"], in_dim, spec["tissue"], spec["pieces"])
    reset_peak_rss()
    base = current_rss()
    seconds, cpu = [], []
    while len(seconds) < spec["repeats"] or (sum(seconds) < spec["min_seconds"] and len(seconds) < MAX_RUNS):
        start, start_cpu = time.perf_counter(), time.process_time()
        step(features, mask)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "seconds": statistics.median(seconds),
        "cpu_seconds": statistics.median(cpu),
        "runs": len(seconds),
        "runs_s": seconds,
        "peak_mib": (peak_rss() - base) / 2**20,
        "base_rss_mib": base / 2**20,
        "input_mib": (features.nbytes + mask.nbytes) / 2**20,
        "tissue_cells": int(mask.sum()),
        "in_dim": in_dim,
        "backend": scan_backend_ran(),
        "torch_threads": torch.get_num_threads(),
    }


def rss_of(pid: int) -> int:
    """Resident bytes of process ``pid`` now (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_watched(spec: dict, limit_bytes: int, timeout_s: float) -> dict:
    """``run_case(spec)`` in a fresh interpreter, stopped above ``limit_bytes`` of RSS or after ``timeout_s``: then
    (or on any failure) ``{"error": why}`` instead of the measurements."""
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    started, highest, why = time.monotonic(), 0, None
    while child.poll() is None:
        highest = max(highest, rss_of(child.pid))
        if highest > limit_bytes:
            why = f"does not fit: RSS passed {limit_bytes / 2**30:g} GiB (stopped)"
        elif time.monotonic() - started > timeout_s:
            why = f"stopped after {timeout_s:.0f} s"
        if why:
            child.kill()
            break
        time.sleep(0.05)
    out, err = child.communicate()
    if why:
        return {"error": why}
    if child.returncode != 0:
        last = (err.strip().splitlines() or ["no message"])[-1]
        if "MemoryError" in err or "can't allocate memory" in err or child.returncode == -9:
            return {"error": f"does not fit: out of memory ({last[:160]})"}
        return {"error": f"failed (exit {child.returncode}): {last[:200]}"}
    return json.loads(out.strip().splitlines()[-1])


def cpu_name() -> str:
    """The CPU's model name (Linux), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def print_table(rows: list[dict], head: dict) -> None:
    print(
        f"# shipped default slide model ({head['model']}: SS2D, in_dim {head['in_dim']}), {head['cpu']}, "
        f"{head['threads']} torch threads, torch {head['torch']}; batch 1, {head['tissue']:.0%} tissue in "
        f"{head['pieces']} blobs; median of {head['repeats']}+ runs (cheap cases repeated for "
        f"{head['min_seconds']:g} s); load average (1, 5, 15 min) before {head['load_before']}, after "
        f"{head['load_after']}"
    )
    print(
        "| grid | tissue cells | mode | backend | runs | s | CPU s | ms / 1k cells | peak MiB | input MiB "
        "| x base cells | x base s | x base MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = {r["mode"]: r for r in rows if r["grid"] == head["baseline"] and "error" not in r}
    for r in rows:
        if "error" in r:
            print(f"| {r['grid']} | | {r['mode']} | | | **{r['error']}** | | | | | | | |")
            continue
        b = base.get(r["mode"])
        ratios = (
            f"{r['tissue_cells'] / b['tissue_cells']:.1f} | {r['seconds'] / b['seconds']:.1f} | "
            f"{r['peak_mib'] / max(b['peak_mib'], 1e-9):.1f}"
            if b
            else " | "
        )
        print(
            f"| {r['grid']} | {r['tissue_cells']:,} | {r['mode']} | {r['backend']} | {r['runs']} | {r['seconds']:.2f} "
            f"| {r['cpu_seconds']:.2f} | {1e6 * r['seconds'] / r['tissue_cells']:.0f} | {r['peak_mib']:.0f} "
            f"| {r['input_mib']:.0f} | {ratios} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--grids",
        nargs="+",
        type=parse_grid,
        default=[parse_grid(g) for g in DEFAULT_GRIDS],
        help=f"grids ROWSxCOLS, the first is the baseline (default: {' '.join(DEFAULT_GRIDS)})",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="cases per grid")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case; the median is reported")
    parser.add_argument(
        "--min-seconds", type=float, default=10.0, help="repeat a cheap case until this long has passed (default 10)"
    )
    parser.add_argument("--tissue", type=float, default=0.4, help="fraction of the grid's cells that are tissue")
    parser.add_argument("--pieces", type=int, default=5, help="tissue blobs per grid")
    parser.add_argument("--max-rss-gib", type=float, default=20.0, help="stop a case above this RSS (default 20)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="stop a case after this long")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return
    if not 0.0 < args.tissue <= 1.0 or args.pieces < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--tissue must be in (0, 1], --pieces, --repeats and --threads at least 1")
    load_before = load_average()
    rows = []
    for rows_, cols in args.grids:
        for mode in args.modes:
            spec = {
                "rows": rows_,
                "cols": cols,
                "mode": mode,
                "threads": args.threads,
                "repeats": args.repeats,
                "min_seconds": args.min_seconds,
                "tissue": args.tissue,
                "pieces": args.pieces,
            }
            result = run_watched(spec, int(args.max_rss_gib * 2**30), args.timeout_s)
            rows.append({"grid": f"{rows_} x {cols}", **spec, **result})
            done = result["error"] if "error" in result else f"{result['seconds']:.2f} s"
            print(f"{rows[-1]['grid']} {mode}: {done}", file=sys.stderr)
    model = load_default_slide_model()
    head = {
        "model": "pcam-camelyon",
        "in_dim": model.config.in_dim,
        "cpu": cpu_name(),
        "threads": args.threads,
        "torch": torch.__version__,
        "tissue": args.tissue,
        "pieces": args.pieces,
        "repeats": args.repeats,
        "min_seconds": args.min_seconds,
        "baseline": f"{args.grids[0][0]} x {args.grids[0][1]}",
        "load_before": load_before,
        "load_after": load_average(),
    }
    if args.json:
        print(json.dumps({**head, "rows": rows}, indent=2))
        return
    print_table(rows, head)


if __name__ == "__main__":
    main()
