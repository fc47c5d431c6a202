"""Start-up cost of ``wsi-mamba predict``: what it spends before and after the slide's own work, against
``python -c "import torch"``, all measured in one run.

    python benchmarks/bench_startup.py                 # a 2048 x 2048 px synthetic slide, the default model
    python benchmarks/bench_startup.py --repeats 5 --threads 1

Per repeat, each in a fresh process: ``python -c "import torch"`` (wall), and ``wsi-mamba predict SLIDE
--json`` (wall, and the ``seconds`` it reports for the slide itself: open, tissue, tiles, encoder, slide
model). ``overhead = predict wall - seconds``: interpreter start, imports, argument parsing, model loading
and exit. ``overhead / import torch`` is the figure the start-up work aims to keep at or below 1.5. Medians
of the repeats. Last, one more process lists the heavy modules (:data:`HEAVY`) the predict path holds after
loading the default model (none of them should be there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Modules predict does not use (scipy.ndimage, ~50 ms, is used: tissue detection's morphology).
HEAVY = ("sklearn", "scipy.stats", "scipy.sparse", "matplotlib", "torch._dynamo", "triton", "dask.array", "pandas")

PREDICT_PATH = """
import sys
from wsi_mamba.cli import build_parser
from wsi_mamba.commands import workflows
from wsi_mamba.outputs import names
from wsi_mamba.workflows import bundle, inputs, predict
bundle.load_bundle()
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


def write_slide(size: int, cache: Path) -> Path:
    """A synthetic tumour slide of ``size``² px (seed 0), written once into ``cache``."""
    from wsi_mamba.synth.procedural import make_spec
    from wsi_mamba.synth.writer import write_slide as write

    path = cache / f"bench-startup-{size}.tif"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        write(make_spec(0, 1, size, size, tumor=True), path, "tiff")
    return path


def wall(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds of one process from start to exit, and its stdout."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="slide side in px (default 2048)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp"), help="folder for the slide (default /tmp)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="pass --threads to predict")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    slide = write_slide(args.size, args.cache)
    python = sys.executable
    cli = shutil.which("wsi-mamba", path=str(Path(python).parent)) or shutil.which("wsi-mamba")
    if cli is None:
        sys.exit("error: the wsi-mamba console script is not installed (pip install -e .)")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    predict = [cli, "predict", str(slide), "--json", *(["--threads", str(args.threads)] if args.threads else [])]
    torch_s, predict_s, slide_s = [], [], []
    for _ in range(args.repeats):
        torch_s.append(wall([python, "-c", "import torch"], env)[0])
        seconds, out = wall(predict, env)
        predict_s.append(seconds)
        slide_s.append(float(json.loads(out)[0]["seconds"]))
    loaded = subprocess.run(
        [python, "-c", PREDICT_PATH.format(heavy=HEAVY)], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    overhead = [p - s for p, s in zip(predict_s, slide_s, strict=True)]
    row = {
        "import torch s": statistics.median(torch_s),
        "predict wall s": statistics.median(predict_s),
        "slide seconds": statistics.median(slide_s),
        "overhead s": statistics.median(overhead),
        "overhead / import torch": statistics.median(o / t for o, t in zip(overhead, torch_s, strict=True)),
    }
    if args.json:
        print(json.dumps({**row, "heavy modules": loaded.split(",") if loaded else [], "repeats": args.repeats}))
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"slide {args.size}² px, {args.repeats} repeats (medians)")
    print("| " + " | ".join(row) + " |")
    print("|" + "---|" * len(row))
    print("| " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    print(f"heavy modules on the predict path after load_bundle(): {loaded or 'none'}")


if __name__ == "__main__":
    main()
