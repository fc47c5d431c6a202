"""Helpers the CLI tests share: run a command in-process, check a one-line error, see that nothing was touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wsi_mamba.cli import main


def run(argv: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``wsi-mamba ARGV`` in this process: exit code, stdout, stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(err: str, *fragments: str) -> str:
    """Exactly one ``error:`` line, holding every fragment, and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert all(text in lines[0] for text in fragments), (fragments, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``folder`` by relative path: equal snapshots = nothing touched."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
