"""How many torch CPU threads a command uses when ``--threads`` is not given.

torch's own default is one thread per core. On a machine whose cores are already busy, OpenMP threads then
wait at each parallel region's barrier for a thread that is not running: measured on the 2-core machine with
one other busy process, ``predict`` of a 911-tile slide took 24.7 s with torch's 2 threads and 8.7 s with one
(BENCHMARKS.md, "Thread defaults"). So the default is the number of cores that are idle *now*, sampled from
``/proc/stat`` over a short interval (Linux), at least one; elsewhere, or when ``OMP_NUM_THREADS`` is set, torch's
default stands. ``--threads N`` always wins; ``wsi-mamba run --threads N`` pins every step's default
(:func:`pinned_threads`), since a step's weights can change in their last bits with the thread count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""OpenMP settings every command process (and cohort worker) gets unless the user set them: threads that spin
while they wait cost 5x with 3 busy processes on 2 cores, and 1.16x of predict's wall time (0.74x CPU) even on the
quiet machine (BENCHMARKS.md, "Thread contention")."""

SAMPLE_SECONDS = 0.05
"""How long the CPU is watched before choosing (part of every model command's start-up)."""

_STAT = Path("/proc/stat")
_pinned: int | None = None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs together, or None where /proc/stat is unreadable."""
    try:
        with _STAT.open() as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(cores: int, sample_seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of ``cores`` are busy right now (a fraction of all CPU time × cores), or None if unknown."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    return cores * (second[0] - first[0]) / (second[1] - first[1])


def idle_threads(cores: int, busy: float | None) -> int:
    """Threads for ``cores`` cores of which ``busy`` are in use: the idle ones, rounded, at least one."""
    if busy is None:
        return cores
    return max(1, min(cores, cores - round(busy)))


@contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Inside, :func:`apply_threads` without a request uses ``threads`` (None: no pin) instead of sampling."""
    global _pinned
    previous, _pinned = _pinned, threads
    try:
        yield
    finally:
        _pinned = previous


def apply_threads(requested: int | None) -> int:
    """Set torch's CPU thread count: ``requested`` when given, else the count pinned by :func:`pinned_threads`,
    else :func:`idle_threads` of the cores now (unless ``OMP_NUM_THREADS`` says otherwise). Returns the count in
    use."""
    import torch

    requested = requested or _pinned
    if requested:
        torch.set_num_threads(requested)
    elif "OMP_NUM_THREADS" not in os.environ:
        cores = os.cpu_count() or torch.get_num_threads()
        cores = min(cores, torch.get_num_threads())
        torch.set_num_threads(idle_threads(cores, busy_cores(cores)))
    return torch.get_num_threads()


def passive_openmp_waits() -> bool:
    """Put :data:`OPENMP_ENV` into this process's environment where the user has not set them, when torch (whose
    OpenMP reads them once, as it loads) is not loaded yet; returns whether they can still take effect here."""
    import sys

    if "torch" in sys.modules:
        return False
    for key, value in OPENMP_ENV.items():
        os.environ.setdefault(key, value)
    return True
