"""Peak memory of a command and every process it starts (Linux): the summed RSS and PSS of the process tree.

    python benchmarks/tree_memory.py -- wsi-mamba predict slide.tif --heatmap --out out

``/usr/bin/time -v`` reports the largest single process's peak, which undercounts a command whose work runs in
worker processes (predict's encoding pool). This samples the tree every ``--interval`` seconds: the sum of the
processes' RSS (pages shared between them, such as the encoder's weights in shared memory, counted in each) and
of their PSS (shared pages split between the sharers: what the tree costs the machine). Short peaks between two
samples can be missed; the main process's own VmHWM (exact) is printed beside them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

PROC = Path("/proc")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list)."""
    found = []
    for task in (PROC / str(pid) / "task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, (0, 0) once it is gone."""
    try:
        rss = pss = 0
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
        return rss, pss
    except OSError:
        return 0, 0


def high_water_kib(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default 0.5)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    start = time.perf_counter()
    process = subprocess.Popen(command)
    peak_rss = peak_pss = main_hwm = most = 0
    while process.poll() is None:
        pids = tree(process.pid)
        sizes = [memory_kib(p) for p in pids]
        peak_rss = max(peak_rss, sum(s[0] for s in sizes))
        peak_pss = max(peak_pss, sum(s[1] for s in sizes))
        main_hwm = max(main_hwm, high_water_kib(process.pid))
        most = max(most, len(pids))
        time.sleep(args.interval)
    wall = time.perf_counter() - start
    gib = 1024**2
    print(
        f"| wall | peak summed RSS | peak summed PSS | main process VmHWM | processes |\n|---:|---:|---:|---:|---:|\n"
        f"| {wall:.1f} s | {peak_rss / gib:.2f} GiB | {peak_pss / gib:.2f} GiB | {main_hwm / gib:.2f} GiB | {most} |",
        file=sys.stderr,
    )
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
