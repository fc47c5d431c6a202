"""``train-encoder --distill-from``: a teacher's multi-view probabilities as soft targets of patch training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_error, run
from test_patches import write_h5
from test_resume import TINY, _assert_same_weights, _history

from wsi_mamba.data.patches import PatchGeometry, open_patches
from wsi_mamba.models.checkpoint import read_checkpoint_metadata
from wsi_mamba.models.encoder import load_encoder
from wsi_mamba.workflows.training import distillation, patch_training
from wsi_mamba.workflows.training.configs import PatchTrainingConfig
from wsi_mamba.workflows.training.distillation import distillation_loss, file_sha256
from wsi_mamba.workflows.training.patch_training import carve_validation, duplicate_groups, patch_scores
from wsi_mamba.workflows.training.patch_training import train_encoder_on_patches as train
from wsi_mamba.workflows.training.training_state import TrainingPaused, state_folder

CFG = PatchTrainingConfig(**{**TINY, "epochs": 2, "patience": 2})


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_h5(tmp_path_factory.mktemp("h5"), 24)


@pytest.fixture(scope="module")
def teacher(patches: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = replace(CFG, epochs=1, patience=1, seed=7)
        return train(open_patches(patches), tmp_path_factory.mktemp("teacher") / "teacher.safetensors", cfg)
    finally:
        torch.set_num_threads(threads)


def test_the_loss_mixes_hard_and_soft_targets() -> None:
    logit = torch.tensor([2.0, -1.0, 0.5])
    label = torch.tensor([1.0, 0.0, 0.0])
    soft = torch.tensor([0.9, 0.3, 0.6])

    def bce(z: torch.Tensor, y: torch.Tensor) -> float:  # by hand
        p = 1 / (1 + np.exp(-z.numpy().astype(np.float64)))
        return float(np.mean(-(y.numpy() * np.log(p) + (1 - y.numpy()) * np.log(1 - p))))

    hard, teach = bce(logit, label), bce(logit, soft)
    for w in (0.25, 0.5, 1.0):
        assert float(distillation_loss(logit, label, soft, w)) == pytest.approx((1 - w) * hard + w * teach, rel=1e-6)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logit, label)
    assert torch.equal(distillation_loss(logit, label, soft, 0.0), plain)
    assert torch.equal(distillation_loss(logit, label, None, 0.5), plain)


def test_teacher_targets_are_its_multi_view_scores_on_the_training_part(
    patches: Path, teacher: Path, one_torch_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = open_patches(patches)
    train_idx, val_idx = carve_validation(
        source.labels, duplicate_groups(source), CFG.val_fraction, CFG.max_val_patches, CFG.seed
    )
    seen = {}
    real = distillation.teacher_targets

    def keep(*args: object, **kwargs: object) -> np.ndarray:
        seen["targets"] = real(*args, **kwargs)
        return seen["targets"]

    monkeypatch.setattr(patch_training, "teacher_targets", keep)
    cfg = replace(CFG, epochs=1, distill_from=str(teacher), distill_views=4, distill_weight=0.5)
    path = train(source, patches.parent / "student.safetensors", cfg)
    targets = seen["targets"]
    assert np.isnan(targets[val_idx]).all() and not np.isnan(targets[train_idx]).any()
    expected = patch_scores(load_encoder(teacher), source.read(train_idx), views=4)
    np.testing.assert_allclose(targets[train_idx], expected, rtol=1e-5, atol=1e-6)
    one_view = patch_scores(load_encoder(teacher), source.read(train_idx), views=1)
    assert not np.allclose(targets[train_idx], one_view, atol=1e-6)  # the views count
    recorded = read_checkpoint_metadata(path)["metadata"]["training"]["config"]
    assert recorded["distill_from"] == str(teacher) and recorded["distill_sha256"] == file_sha256(teacher)
    assert (recorded["distill_views"], recorded["distill_weight"]) == (4, 0.5)


def test_weight_zero_is_the_run_without_distillation(
    patches: Path, teacher: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    source = open_patches(patches)
    plain = train(source, tmp_path / "plain", CFG)
    zero = train(source, tmp_path / "zero", replace(CFG, distill_from=str(teacher), distill_weight=0.0))
    _assert_same_weights(plain, zero)
    half = train(source, tmp_path / "half", replace(CFG, distill_from=str(teacher), distill_weight=0.5))
    assert _history(half, ("seconds", "val_auc", "val_accuracy")) != _history(
        plain, ("seconds", "val_auc", "val_accuracy")
    )


def test_a_resumed_distillation_equals_the_uninterrupted_run_without_rescoring(
    patches: Path, teacher: Path, tmp_path: Path, one_torch_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = open_patches(patches)
    cfg = replace(CFG, distill_from=str(teacher), distill_views=4, distill_weight=0.5)
    whole = train(source, tmp_path / "whole", cfg)
    out = tmp_path / "pieces.safetensors"
    with pytest.raises(TrainingPaused):
        train(source, out, cfg, max_minutes=1e-9)
    state = json.loads((state_folder(out) / "state.json").read_text())
    assert state["fingerprint"]["options"]["distill_sha256"] == file_sha256(teacher)

    def no_rescoring(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher's targets were computed again")

    with monkeypatch.context() as patched:
        patched.setattr(patch_training, "teacher_targets", no_rescoring)
        path = train(source, out, cfg, resume=True)
    _assert_same_weights(whole, path)
    with pytest.raises(TrainingPaused):
        train(source, out, cfg, max_minutes=1e-9)
    for other in ({"distill_weight": 1.0}, {"distill_views": 8}):  # other distillation options: refused
        with pytest.raises(ValueError, match=next(iter(other))):
            train(source, out, replace(cfg, **other), resume=True)


def test_a_bad_teacher_is_one_line(
    patches: Path, teacher: Path, tmp_path: Path, one_torch_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train-encoder", "--patches", patches, "--model", "vmamba_pico", "--epochs", "1", "--batch-size", "8",
            "--val-fraction", "0.25", "--threads", "1", "--out", tmp_path / "s.safetensors"]  # fmt: skip
    code, _, err = run([*base, "--distill-from", tmp_path / "none.safetensors"], capsys)
    assert code == 1 and assert_one_error(err, "none.safetensors", "distillation teacher")
    code, _, err = run([*base, "--distill-from", teacher, "--patch-mpp", "0.5"], capsys)
    assert code == 1 and assert_one_error(err, "teacher.safetensors", "µm/px")
    code, _, err = run([*base, "--distill-from", teacher, "--distill-weight", "1.5"], capsys)
    assert code == 2 and assert_one_error(err, "--distill-weight")
    code, _, err = run([*base, "--distill-from", teacher, "--distill-views", "3"], capsys)
    assert code == 2 and assert_one_error(err, "--distill-views")
    source = open_patches(patches)
    source.geometry = PatchGeometry(48, source.geometry.mpp)
    with pytest.raises(ValueError, match="48 px"):
        train(source, tmp_path / "t.safetensors", replace(CFG, distill_from=str(teacher)))
