"""The GPU check: one call on a CUDA machine, one markdown table (issue 12, item 6).

    bash benchmarks/gpu_check.sh                         # on a GPU machine: about 5-8 minutes on one H100/H200
    bash benchmarks/gpu_check.sh --smoke                 # every row at tiny sizes on the CPU (a minute or two)
    python benchmarks/gpu_check.py --out gpu_check.md --only scan-speed vmamba

Rows (each section can be picked with ``--only`` or left out with ``--skip``):

- ``scan-correct``: the Triton scan (forward and gradients) against the chunked ``cpu`` backend on the same fp32
  inputs, dim 64, N 1/16, L up to 2^20, and dim 384, N 16, L 65,536: worst relative error (max |a - b| / max |b|)
  over y and every gradient;
- ``scan-speed``: Triton forward and forward + backward, bf16, dim 384, N 1 and 16, L 65,536 and 2^20, batch 1,
  4 groups (``triton.testing.do_bench`` medians) against a device-to-device copy of the bytes the call moves
  (the bandwidth floor, ``bench_scan.floor_seconds``);
- ``vmamba``: VMamba-T forward (bf16 autocast, batch 1) at 1024², 2048², 4096²: median time and peak memory;
- ``predict``: ``bench_predict.py`` on a 20000² px synthetic slide with the encoder on the GPU, against the same
  on the CPU (default torch threads), each with its reading-alone time;
- ``train-encoder``: one ``wsi-mamba train-encoder`` epoch (``--epoch-patches``) on the GPU against the CPU, on
  a PCam subset (``../shared/data/pcam/train`` or ``shared/data/pcam/train``) or on synthetic patches it writes.

Needs no network and changes no GPU setting (no clocks, modes or persistence; it only allocates and times). A
row that fails or whose packages are missing says so in the table and the others go on; rows past
``--budget-s`` are skipped. ``--smoke`` runs every row at tiny sizes on the CPU ("gpu" rows run on the CPU
too, so their ratios are about 1): a test of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTIONS = ("scan-correct", "scan-speed", "vmamba", "predict", "train-encoder")
SLIDES = ("tifffile", "imagecodecs", "zarr", "openslide", "scipy", "PIL", "safetensors", "yaml", "tqdm")
NEEDS = {  # modules a section imports beyond torch and numpy (the device tool's GPU image lacks zarr, imagecodecs
    # and openslide: carry them as wheels in .whl/, see BENCHMARKS.md "GPU check")
    "scan-correct": ("triton",),
    "scan-speed": ("triton",),
    "vmamba": ("safetensors", "yaml", "PIL", "tqdm"),
    "predict": SLIDES,
    "train-encoder": (*SLIDES, "h5py", "sklearn"),
}
TOLERANCE = 2e-3  # fp32 Triton vs cpu backend, relative to the largest magnitude, at L up to 2^20


@dataclass
class Row:
    """One line of the table: a measurement against its baseline, or a check's result."""

    section: str
    case: str
    device: str
    seconds: float | None = None
    baseline: str = ""
    baseline_seconds: float | None = None
    peak_mib: float | None = None
    result: str = ""

    def cells(self) -> list[str]:
        ratio = self.seconds / self.baseline_seconds if self.seconds and self.baseline_seconds else None
        return [
            self.section,
            self.case,
            self.device,
            "" if self.seconds is None else f"{self.seconds * 1e3:.2f}",
            self.baseline,
            "" if self.baseline_seconds is None else f"{self.baseline_seconds * 1e3:.2f}",
            "" if ratio is None else f"{ratio:.2f}",
            "" if self.peak_mib is None else f"{self.peak_mib:.0f}",
            self.result,
        ]


HEADER = ["section", "case", "device", "time ms", "baseline", "baseline ms", "x baseline", "peak MiB", "result"]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up, synchronised on CUDA."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ scan rows


def scan_inputs(dim: int, dstate: int, length: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """VMamba-shaped scan inputs (batch 1, 4 groups of B/C), seeded, with D and delta_softplus as VSSM calls it."""
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "u": torch.randn(1, dim, length, generator=gen),
        "delta": torch.rand(1, dim, length, generator=gen) * 0.1 - 2.0,
        "A": -torch.rand(dim, dstate, generator=gen) - 0.1,
        "B": torch.randn(1, 4, dstate, length, generator=gen),
        "C": torch.randn(1, 4, dstate, length, generator=gen),
        "D": torch.ones(dim),
    }
    return {
        k: v.to(device=device, dtype=torch.float32 if k in ("A", "D") else dtype).requires_grad_(True)
        for k, v in tensors.items()
    }


def scan_outputs(inputs: dict[str, torch.Tensor], backend: str, grad_y: torch.Tensor) -> dict[str, torch.Tensor]:
    from wsi_mamba_scan import selective_scan

    y = selective_scan(**inputs, delta_softplus=True, backend=backend)
    y.backward(grad_y)
    out = {"y": y.detach()} | {f"d{k}": v.grad.detach() for k, v in inputs.items()}
    for value in inputs.values():
        value.grad = None
    return out


def scan_correct_rows(args: argparse.Namespace) -> list[Row]:
    """Tested backend on the device against the cpu backend on the CPU, forward and every gradient."""
    tested = "reference" if args.smoke else "triton"
    cases = [(16, 4, 256), (16, 1, 1024)] if args.smoke else [(64, 16, 4096), (64, 16, 65536), (64, 1, 2**20)]
    if not args.smoke:  # dim 384 is scan-speed's shape: 11 L-segments of 12 channel blocks per group on an H100
        cases += [(384, 16, 65536), (64, 16, 2**20)]
    rows = []
    for dim, dstate, length in cases:
        inputs = scan_inputs(dim, dstate, length, torch.float32, args.device)
        grad_y = torch.randn(1, dim, length, generator=torch.Generator().manual_seed(1)).to(args.device)
        start = time.perf_counter()
        got = scan_outputs(inputs, tested, grad_y)
        sync(args.device)
        seconds = time.perf_counter() - start
        cpu_inputs = {k: v.detach().cpu().requires_grad_(True) for k, v in inputs.items()}
        start = time.perf_counter()
        want = scan_outputs(cpu_inputs, "cpu", grad_y.cpu())
        cpu_seconds = time.perf_counter() - start
        errors = {
            k: float((got[k].cpu().float() - want[k].float()).abs().max() / want[k].float().abs().max().clamp_min(1e-6))
            for k in want
        }
        worst = max(errors, key=errors.get)  # type: ignore[arg-type]
        verdict = "ok" if errors[worst] <= TOLERANCE else "FAIL"
        rows.append(
            Row(
                "scan-correct", f"{tested} fp32 dim {dim} N {dstate} L {length} fwd+bwd", args.device, seconds,
                "cpu backend (first call)", cpu_seconds,
                result=f"{verdict}: worst rel. error {errors[worst]:.1e} ({worst}; tolerance {TOLERANCE:g})",
            )
        )
        del inputs, cpu_inputs, got, want
    return rows


def scan_speed_rows(args: argparse.Namespace) -> list[Row]:
    """Forward and forward + backward against the floor (GPU: a device copy of the bytes moved)."""
    sys.path.insert(0, str(HERE))
    from bench_scan import Shape, floor_seconds, measure

    dtype = "float32" if args.smoke else "bfloat16"
    lengths = (1024, 4096) if args.smoke else (65_536, 2**20)
    dim = 64 if args.smoke else 384
    floor_name = "exp over dim*N*L (CPU)" if args.device == "cpu" else "D2D copy of bytes moved"
    rows = []
    for dstate in (1, 16):
        for length in lengths:
            shape = Shape(dim, dstate, length, dtype, "cuda" if args.device.startswith("cuda") else "cpu")
            backend = "triton" if shape.device == "cuda" else "cpu"
            for backward in (False, True):
                timing = measure(shape, backend, backward, repeats=3)
                rows.append(
                    Row(
                        "scan-speed",
                        f"{backend} {dtype} dim {dim} N {dstate} L {length} {'fwd+bwd' if backward else 'fwd'}",
                        args.device, timing["seconds"], floor_name, floor_seconds(shape, backward),
                        timing["peak_bytes"] / 2**20,
                        f"{shape.io_bytes(backward) / 1e6:.0f} MB moved",
                    )
                )
                if shape.device == "cuda":
                    torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------- VMamba rows


def vmamba_rows(args: argparse.Namespace) -> list[Row]:
    """VMamba-T forward, batch 1 (bf16 autocast on CUDA, fp32 on the CPU): median time and peak memory."""
    from wsi_mamba.devices import autocast
    from wsi_mamba.models import create_model

    sys.path.insert(0, str(HERE))
    from rss import current_rss, peak_rss, reset_peak_rss

    model = create_model("vmamba_tiny").to(args.device).eval()
    sizes = (64, 128) if args.smoke else (1024, 2048, 4096)
    rows = []
    for size in sizes:
        x = torch.randn(1, 3, size, size, device=args.device)

        def forward(x: torch.Tensor = x) -> None:
            with torch.inference_mode(), autocast(args.device):
                model(x)

        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            seconds = median_seconds(forward, args.device, 3)
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            reset_peak_rss()
            base = current_rss()
            seconds = median_seconds(forward, args.device, 1)
            peak = (peak_rss() - base) / 2**20
        precision = "bf16 autocast" if args.device.startswith("cuda") else "fp32"
        case = f"VMamba-T forward {size}² ({precision}, batch 1)"
        rows.append(Row("vmamba", case, args.device, seconds, peak_mib=peak))
        del x
    return rows


# ------------------------------------------------------------------------------------- predict, train rows


def run_logged(command: list[str], log: Path) -> subprocess.CompletedProcess:
    """Run a child (stdout captured, stderr appended to ``log``); raises with the log's tail when it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "a") as err:
        err.write(f"$ {' '.join(command)}\n")
        err.flush()
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
    if done.returncode:
        tail = " | ".join(log.read_text().strip().splitlines()[-3:])
        raise RuntimeError(f"exit {done.returncode}: {tail[-300:]}")
    return done


def predict_rows(args: argparse.Namespace) -> list[Row]:
    """bench_predict.py with the encoder on the device and on the CPU (same slide, written once)."""
    size = 3072 if args.smoke else 20000
    results = {}
    for device in dict.fromkeys((args.device, "cpu")):  # once in a smoke run, where both are the CPU
        command = [sys.executable, str(HERE / "bench_predict.py"), "--size", str(size), "--cache", str(args.work)]
        command += ["--device", device.split(":")[0], "--json"]
        results[device] = json.loads(run_logged(command, args.work / "predict.log").stdout)
    device, cpu = results[args.device], results["cpu"]
    note = (
        f"{device['tiles']} tiles, model {device['model']}; read alone {device['read_s']:.1f} s; "
        f"predict / read {device['predict_over_read']:.2f} ({cpu['predict_over_read']:.2f} on the CPU, "
        f"{cpu['torch_threads']} threads)"
    )
    return [
        Row(
            "predict", f"bench_predict {size}² px slide", args.device, device["predict_s"], "same on the CPU",
            cpu["predict_s"], device["predict_peak_rss_mib"], note,
        )
    ]


def patch_folder(args: argparse.Namespace) -> tuple[Path, str]:
    """A labelled patch folder for one epoch: a PCam subset (links) if PCam is here, else synthetic patches."""
    per_class = 32 if args.smoke else args.patches_per_class
    target = args.work / "patches"
    if target.exists():
        shutil.rmtree(target)
    pcam = [ROOT.parent / "shared/data/pcam/train", ROOT / "shared/data/pcam/train"]
    sources = [Path(args.patches)] if args.patches else pcam
    for source in sources:
        if (source / "0").is_dir() and (source / "1").is_dir():
            for label in ("0", "1"):
                (target / label).mkdir(parents=True)
                for path in sorted((source / label).iterdir())[:per_class]:
                    (target / label / path.name).symlink_to(path.resolve())
            return target, f"{per_class} PCam patches per class from {source}"
    from PIL import Image

    rng = np.random.default_rng(0)
    px = 32 if args.smoke else 96
    for label, base in enumerate(((225, 160, 200), (150, 80, 170))):  # pink normal, purple darker tumour
        (target / str(label)).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(base) + rng.normal(0, 18, (px, px, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(target / str(label) / f"p{i:05d}.png")
    return target, f"{per_class} synthetic {px}-px patches per class (no PCam here)"


def train_rows(args: argparse.Namespace) -> list[Row]:
    """One train-encoder epoch on the device and on the CPU; the epoch's seconds include its validation."""
    folder, description = patch_folder(args)
    model = "vmamba_pico" if args.smoke else "vmamba_nano"
    epoch_patches = 64 if args.smoke else args.epoch_patches
    seconds = {}
    for device in dict.fromkeys((args.device, "cpu")):
        out = args.work / f"encoder-{device.replace(':', '')}.safetensors"
        command = [sys.executable, "-m", "wsi_mamba.cli", "train-encoder", "--patches", str(folder), "--out", str(out)]
        command += ["--model", model, "--epochs", "1", "--epoch-patches", str(epoch_patches), "--device", device]
        run_logged(command, args.work / "train.log")
        with open(out.with_name(out.stem + ".metrics.csv")) as handle:
            seconds[device] = float(next(csv.DictReader(handle))["seconds"])
    return [
        Row(
            "train-encoder", f"1 epoch, {model}, {epoch_patches} patches + validation", args.device,
            seconds[args.device], "same on the CPU", seconds["cpu"], result=description,
        )
    ]


# ------------------------------------------------------------------------------------------------------ main

RUNNERS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "scan-correct": scan_correct_rows,
    "scan-speed": scan_speed_rows,
    "vmamba": vmamba_rows,
    "predict": predict_rows,
    "train-encoder": train_rows,
}


def environment(args: argparse.Namespace) -> str:
    """One line: where this ran."""
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(args.device)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
    else:
        gpu = "no GPU (smoke run on the CPU)"
    triton = importlib.util.find_spec("triton")
    triton_version = __import__("triton").__version__ if triton else "none"
    return (
        f"{gpu}; torch {torch.__version__}, triton {triton_version}, Python {platform.python_version()}; "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="every row at tiny sizes on the CPU (tests the script)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--device", default="cuda", help="the GPU to check (default cuda; cpu with --smoke)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="leave these sections out")
    parser.add_argument("--budget-s", type=float, default=450, help="skip the sections left after this (default 450)")
    parser.add_argument("--work", type=Path, help="scratch folder (slide, patches, logs; default a temporary one)")
    parser.add_argument("--patches", help="labelled patch folder ROOT/0, ROOT/1 (default: PCam train if here)")
    parser.add_argument("--patches-per-class", type=int, default=1024, help="subset size (default 1024)")
    parser.add_argument("--epoch-patches", type=int, default=2048, help="train-encoder draws (default 2048)")
    args = parser.parse_args()
    if args.smoke:
        args.device = "cpu"
    elif not args.device.startswith("cuda") or not torch.cuda.is_available():
        print(f"error: no CUDA device here (torch {torch.__version__}); use --smoke for the CPU run", file=sys.stderr)
        return 2
    scratch = None
    if args.work is None:
        scratch = tempfile.TemporaryDirectory(prefix="gpu-check-")
        args.work = Path(scratch.name)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[Row] = []
    for section in args.only or SECTIONS:
        if section in args.skip:
            continue
        missing = [m for m in NEEDS[section] if importlib.util.find_spec(m) is None]
        if missing:
            rows.append(Row(section, "", args.device, result=f"skipped: missing {', '.join(missing)} (carry wheels)"))
        elif time.perf_counter() - started > args.budget_s:
            rows.append(Row(section, "", args.device, result=f"skipped: past the {args.budget_s:.0f} s budget"))
        else:
            section_start = time.perf_counter()
            try:
                rows += RUNNERS[section](args)
            except Exception as exc:  # one failing section does not lose the others
                traceback.print_exc()
                rows.append(Row(section, "", args.device, result=f"error: {type(exc).__name__}: {exc}"[:300]))
            print(f"[{section}: {time.perf_counter() - section_start:.0f} s]", file=sys.stderr, flush=True)
    text = (
        f"GPU check ({'smoke, not a measurement' if args.smoke else 'benchmarks/gpu_check.sh'}): {environment(args)}; "
        f"total {time.perf_counter() - started:.0f} s\n\n{table(rows)}\n"
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if scratch is not None:
        scratch.cleanup()
    return 1 if any(r.result.startswith(("error", "FAIL")) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
