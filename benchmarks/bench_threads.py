"""Torch thread counts for ``wsi-mamba predict`` on a quiet and on a busy machine, measured in one run.

    python benchmarks/bench_threads.py SLIDE                 # e.g. a real-tissue slide from `synth --from-patches`
    python benchmarks/bench_threads.py SLIDE --busy 1 --repeats 3

For each load (quiet, then ``--busy`` spinning processes started beside it) and each setting (``--threads 1``,
``--threads N`` for every core, and the default, which picks the cores idle at start: wsi_mamba/threads.py),
``predict SLIDE --json`` runs in a fresh process; the table gives the median ``seconds`` the slide took and
the ratio to the best setting under that load.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time


def spin(stop: multiprocessing.synchronize.Event) -> None:
    """Keep one core busy until ``stop`` is set."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def predict_seconds(slide: str, threads: int | None) -> float:
    argv = [sys.executable, "-m", "wsi_mamba.cli", "predict", slide, "--json"]
    if threads:
        argv += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    return float(json.loads(done.stdout)[0]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slide")
    parser.add_argument("--busy", type=int, default=1, help="spinning processes for the busy rows (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    settings = {"--threads 1": 1, f"--threads {cores}": cores, "default": None}
    predict_seconds(args.slide, 1)  # warm caches (files, numba's compiled kernels)
    print(f"predict {args.slide}: median of {args.repeats}, {cores} cores, load before: {os.getloadavg()[0]:.2f}")
    print(f"{'load':<10} {'setting':<12} {'seconds':>8} {'x best':>7}")
    for busy in (0, args.busy):
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(busy)]
        for p in spinners:
            p.start()
        time.sleep(1.0 if busy else 0.0)
        try:
            times = {
                name: statistics.median(predict_seconds(args.slide, n) for _ in range(args.repeats))
                for name, n in settings.items()
            }
        finally:
            stop.set()
            for p in spinners:
                p.join()
        best = min(times.values())
        for name, seconds in times.items():
            print(f"{'busy ' + str(busy) if busy else 'quiet':<10} {name:<12} {seconds:8.2f} {seconds / best:7.2f}")


if __name__ == "__main__":
    main()
