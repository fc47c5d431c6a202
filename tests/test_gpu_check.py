"""benchmarks/gpu_check.py: the smoke mode runs and writes its table; without CUDA the full check is one error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_smoke_scan_rows_write_the_table(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    done = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", "--only", "scan-correct", "--out", out, "--work", tmp_path / "work"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text in done.stdout and "| section | case | device | time ms |" in text
    rows = [line for line in text.splitlines() if line.startswith("| scan-correct")]
    assert len(rows) == 2 and all("| ok: worst rel. error" in row for row in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the check")
def test_full_check_without_cuda_is_one_line_error() -> None:
    done = subprocess.run([sys.executable, SCRIPT, "--only", "vmamba"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: no CUDA device") and not done.stdout
