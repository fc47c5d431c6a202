"""Peak resident memory of this process (Linux), and running a measurement in a fresh interpreter."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys


def current_rss() -> int:
    """Resident bytes now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> None:
    """Start the peak (VmHWM) afresh from the current RSS, so earlier transient allocations don't count."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss() -> int:
    """Peak resident bytes since the last ``reset_peak_rss`` (or the process start)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_isolated(script: str, spec: dict, extra: list[str] | None = None) -> dict:
    """Run ``script --child JSON`` in a fresh interpreter; its last stdout line is the JSON result."""
    command = [sys.executable, script, "--child", json.dumps(spec), *(extra or [])]
    # A fixed mmap threshold: glibc otherwise raises it as big blocks are freed and keeps later ones in its
    # heap, so RSS would count memory already freed (and differently at each size).
    env = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), **os.environ}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
