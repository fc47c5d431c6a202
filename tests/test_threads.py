"""Default torch thread count: the idle cores now, at least one; --threads and OMP_NUM_THREADS win."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from wsi_mamba import threads


@pytest.fixture(autouse=True)
def keep_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cores", "busy", "expected"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1), (2, 5.0, 1), (16, 3.2, 13), (4, None, 4)],
)
def test_idle_threads(cores: int, busy: float | None, expected: int) -> None:
    assert threads.idle_threads(cores, busy) == expected


def test_busy_cores_reads_proc_stat(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    samples = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  150 0 150 900 0 0 0 0 0 0\n"])
    monkeypatch.setattr(threads, "_STAT", stat)
    monkeypatch.setattr(threads.time, "sleep", lambda s: stat.write_text(next(samples)))
    stat.write_text(next(samples))
    assert threads.busy_cores(2) == pytest.approx(2 * 100 / 200)  # half of all CPU time busy: one core
    monkeypatch.setattr(threads, "_STAT", tmp_path / "missing")
    assert threads.busy_cores(2) is None


def test_apply_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert threads.apply_threads(1) == 1  # --threads wins
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "busy_cores", lambda cores, sample_seconds=0: 1.0)
    assert threads.apply_threads(None) == 1  # one of two cores busy: one thread
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "busy_cores", lambda cores, sample_seconds=0: 0.1)
    assert threads.apply_threads(None) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "busy_cores", lambda cores, sample_seconds=0: 2.0)
    assert threads.apply_threads(None) == 2  # the user's OpenMP setting stands


def test_pinned_threads_replace_the_sampled_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda cores, sample_seconds=0: 0.0)  # both cores idle
    torch.set_num_threads(2)
    with threads.pinned_threads(1):
        assert threads.apply_threads(None) == 1  # the pin, not the idle cores
        assert threads.apply_threads(2) == 2  # a command's own --threads still wins
    torch.set_num_threads(2)
    assert threads.apply_threads(None) == 2  # the pin ends with the block
    with threads.pinned_threads(None):
        assert threads.apply_threads(None) == 2


def test_run_threads_pins_every_step(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from wsi_mamba.cli import main

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda cores, sample_seconds=0: 0.0)
    torch.set_num_threads(2)
    recipe = tmp_path / "recipe.yaml"  # `train` sets its threads first, then fails on the missing features
    recipe.write_text("steps:\n  - name: train\n    run: train --features nothere --labels nothere.csv --out m\n")
    assert main(["run", str(recipe), "--workdir", str(tmp_path / "w"), "--threads", "1"]) != 0
    assert torch.get_num_threads() == 1
    assert "nothere" in capsys.readouterr().err
    assert threads._pinned is None
