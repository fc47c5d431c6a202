"""The ``wsi-mamba`` console script: version, help with an example, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wsi_mamba import __version__
from wsi_mamba.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"wsi-mamba {__version__}"


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: wsi-mamba" in out and "examples:" in out
    assert "Slide AUC (95% bootstrap" in out  # a % in a command's help reaches the list as one %...
    assert main(["evaluate", "--help"]) == 0
    assert "Slide AUC (95% bootstrap" in capsys.readouterr().out  # ... and its own --help too


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "usage: wsi-mamba" in capsys.readouterr().out


def test_bad_usage_exits_2() -> None:
    done = subprocess.run([sys.executable, "-m", "wsi_mamba", "--no-such-flag"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unrecognized arguments" in done.stderr and "Traceback" not in done.stderr


def test_console_script_runs() -> None:
    script = Path(sys.executable).with_name("wsi-mamba")  # installed beside this interpreter
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and __version__ in done.stdout


def test_console_script_delivers_all_output_before_its_fast_exit(tmp_path: Path) -> None:
    """The console script skips the interpreter's teardown (os._exit): stdout, stderr and the files a command
    wrote are complete, and the exit code is main's."""
    script = Path(sys.executable).with_name("wsi-mamba")
    done = subprocess.run([str(script), "model-info", "vmamba_nano", "--resolution", "64", "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)  # the whole JSON document arrived
    out = tmp_path / "c"
    done = subprocess.run([str(script), "synth", str(out), "--slides", "1", "--size", "512"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.endswith("\n") and (out / "training" / "labels.csv").stat().st_size
    done = subprocess.run([str(script), "info", str(tmp_path / "missing.svs")], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("error:")


def test_closed_pipe_is_quiet() -> None:
    """`wsi-mamba ... | head`: no traceback and no error line when the reader has gone away."""
    script = Path(sys.executable).with_name("wsi-mamba")
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the child's stdout now fails with EPIPE
    try:
        done = subprocess.run([str(script), "model-info", "vmamba_nano", "--resolution", "64"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 1
