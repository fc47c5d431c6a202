"""``train-encoder --resume`` / ``--max-minutes``: an interrupted encoder training continues from its last epoch
and ends with the same weights, bit for bit, as a run that was never interrupted (same thread count)."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error, run
from test_patches import write_folder, write_h5

from wsi_mamba.data.patches import open_patches
from wsi_mamba.models.checkpoint import read_checkpoint_metadata, read_safetensors
from wsi_mamba.workflows.recipe import Recipe, Step, run_recipe
from wsi_mamba.workflows.training import patch_training
from wsi_mamba.workflows.training.configs import PAUSED_EXIT_CODE, PatchTrainingConfig
from wsi_mamba.workflows.training.patch_training import train_encoder_on_patches
from wsi_mamba.workflows.training.training_state import (
    TrainingPaused,
    fingerprint,
    read_state,
    state_folder,
)

TINY = dict(model="vmamba_pico", epochs=3, batch_size=8, lr=3e-3, patience=3, val_fraction=0.25)


def _history(path: Path, skip: tuple[str, ...] = ("seconds",)) -> list[dict]:
    """The epoch log of a checkpoint without the wall-clock seconds (and other ``skip`` columns)."""
    rows = read_checkpoint_metadata(path)["metadata"]["training"]["history"]
    return [{k: v for k, v in row.items() if k not in skip} for row in rows]


@pytest.fixture
def every_epoch_improves(monkeypatch: pytest.MonkeyPatch) -> None:
    """A validation AUC that rises with every call, so the best epoch (what is written) is always the last one:
    the tiny task's real AUC reaches 1 at once, and the output would then hold epoch 1's weights."""
    calls = itertools.count(1)
    monkeypatch.setattr(patch_training, "slide_auc", lambda labels, scores: next(calls) / 1000)


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = read_safetensors(a), read_safetensors(b)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, different[:5]


@pytest.mark.parametrize("ema", [None, 0.5])
def test_resumed_training_equals_the_uninterrupted_run(
    tmp_path: Path,
    one_torch_thread: None,
    every_epoch_improves: None,
    monkeypatch: pytest.MonkeyPatch,
    ema: float | None,
) -> None:
    source = open_patches(write_h5(tmp_path / "h5", 32))
    cfg = PatchTrainingConfig(**TINY, ema_decay=ema)
    whole = train_encoder_on_patches(source, tmp_path / "whole", cfg)
    assert not state_folder(whole).exists()  # a completed run leaves no state behind

    # a crash in epoch 2 (its validation): epoch 1's state is on disk, no output
    real_scores, calls = patch_training.patch_scores, []

    def crash_in_epoch_two(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_scores(*args, **kwargs)

    monkeypatch.setattr(patch_training, "patch_scores", crash_in_epoch_two)
    out = tmp_path / "pieces.safetensors"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_encoder_on_patches(source, out, cfg)
    monkeypatch.setattr(patch_training, "patch_scores", real_scores)
    state = state_folder(out)
    assert not out.exists() and json.loads((state / "state.json").read_text())["epoch"] == 1
    # the rest in pieces: a budget spent at once stops after each epoch, keeping the state
    with pytest.raises(TrainingPaused, match="after epoch 2 of 3"):
        train_encoder_on_patches(source, out, cfg, resume=True, max_minutes=1e-9)
    assert not out.exists() and json.loads((state / "state.json").read_text())["epoch"] == 2
    path = train_encoder_on_patches(source, out, cfg, resume=True, max_minutes=1e-9)  # the last epoch: no pause
    assert read_checkpoint_metadata(path)["metadata"]["training"]["best_epoch"] == cfg.epochs
    _assert_same_weights(whole, path)
    assert _history(path, ("seconds", "val_auc")) == _history(whole, ("seconds", "val_auc"))
    assert len((tmp_path / "pieces.metrics.csv").read_text().splitlines()) == 1 + cfg.epochs
    assert not state.exists()


def test_an_early_stopped_run_interrupted_before_writing_resumes_to_the_same_output(
    tmp_path: Path, one_torch_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = open_patches(write_h5(tmp_path / "h5", 24))
    cfg = PatchTrainingConfig(**{**TINY, "epochs": 4, "patience": 1, "lr": 1e-7})  # no better AUC: stops early
    whole = train_encoder_on_patches(source, tmp_path / "whole", cfg)
    stopped = len(_history(whole))
    assert stopped < cfg.epochs
    out = tmp_path / "crashed.safetensors"

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patched:  # the epochs ran, writing the output failed
        patched.setattr(patch_training, "save_encoder", disk_full)
        with pytest.raises(OSError, match="disk full"):
            train_encoder_on_patches(source, out, cfg)
    assert json.loads((state_folder(out) / "state.json").read_text())["stopped_early"] is True
    path = train_encoder_on_patches(source, out, cfg, resume="auto")  # no epoch is trained again
    _assert_same_weights(whole, path)
    assert len(_history(path)) == stopped and not state_folder(out).exists()


def test_train_encoder_resume_on_the_command_line(
    tmp_path: Path, one_torch_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_folder(tmp_path / "p", 6)
    out = tmp_path / "enc.safetensors"
    state = state_folder(out)
    base = ["train-encoder", "--patches", root, "--out", out, "--model", "vmamba_pico", "--epochs", "2",
            "--batch-size", "8", "--val-fraction", "0.34", "--threads", "1"]
    code, _, err = run([*base, "--resume"], capsys)
    assert code == 1 and assert_one_error(err, str(state), "no training state to resume")
    code, _, err = run([*base, "--max-minutes", "0.000001"], capsys)
    assert code == PAUSED_EXIT_CODE and "paused: stopped after epoch 1 of 2" in err and "--resume" in err
    assert state.is_dir() and not out.exists()
    code, _, err = run(base, capsys)  # a fresh start would throw the state away: refused
    assert code == 1 and assert_one_error(err, str(state), "--resume")
    code, _, err = run([*base, "--resume", "--lr", "0.01"], capsys)  # other options: refused, state kept
    assert code == 1 and assert_one_error(err, str(state), "other options", "lr")
    assert state.is_dir()
    code, out_text, err = run([*base, "--resume"], capsys)
    assert code == 0, err
    assert "resuming after epoch 1 of 2" in err and f"wrote {out}" in out_text and not state.exists()
    code, _, err = run([*base, "--resume", "auto", "--out", tmp_path / "fresh.safetensors"], capsys)  # none: fresh
    assert code == 0, err
    assert "resuming" not in err and not state_folder(tmp_path / "fresh.safetensors").exists()
    code, _, err = run(["train-encoder", root, "--labels", root, "--annotations", root, "--out", out, "--resume"],
                       capsys)
    assert code == 2 and assert_one_error(err, "--resume and --max-minutes apply to training on --patches")


def test_a_state_from_other_patches_or_damaged_is_refused(tmp_path: Path, one_torch_thread: None) -> None:
    source = open_patches(write_h5(tmp_path / "h5", 24))
    cfg = PatchTrainingConfig(**TINY)
    out = tmp_path / "enc.safetensors"
    with pytest.raises(TrainingPaused):
        train_encoder_on_patches(source, out, cfg, max_minutes=1e-9)
    other = open_patches(write_folder(tmp_path / "folder", 12))
    with pytest.raises(ValueError, match="other patches") as refused:
        read_state(state_folder(out), fingerprint(asdict(cfg), other, None), resume=True)
    assert "\n" not in str(refused.value)
    assert read_state(state_folder(out), fingerprint(asdict(cfg), source, None), resume="auto") is not None
    (state_folder(out) / "state.json").write_text('{"format": "wsi-mamba/train-state", "vers')  # cut short
    with pytest.raises(ValueError, match="damaged training state"):
        read_state(state_folder(out), fingerprint(asdict(cfg), source, None), resume=True)


def test_a_paused_recipe_step_stops_the_recipe_and_says_a_rerun_continues(tmp_path: Path) -> None:
    steps = [Step("train-encoder", ["train-encoder"], "encoder.safetensors"), Step("next", ["next"], None)]
    ran, lines = [], []
    recipe = Recipe("r", tmp_path / "r.yaml", tmp_path, steps)
    code = run_recipe(recipe, lambda argv: ran.append(argv[0]) or PAUSED_EXIT_CODE, log=lines.append)
    assert code == PAUSED_EXIT_CODE and ran == ["train-encoder"]
    assert "paused" in lines[-1] and "run the recipe again" in lines[-1]
