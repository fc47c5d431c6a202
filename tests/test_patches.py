"""Labelled patch sources (folders, PCam HDF5, CSV), augmentations, patch training and ``score-patches``."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import run
from PIL import Image

from wsi_mamba.data.augment import AugmentConfig, augment_patches, dihedral, hed_jitter
from wsi_mamba.data.patches import PatchReadError, open_patches, require_labelled
from wsi_mamba.models.checkpoint import read_checkpoint_metadata, read_safetensors
from wsi_mamba.workflows.training.configs import PatchTrainingConfig
from wsi_mamba.workflows.training.patch_training import (
    carve_validation,
    duplicate_groups,
    train_encoder_on_patches,
    weight_average,
)

PCAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam"
PX = 32


def fake_patch(rng: np.random.Generator, label: int, px: int = PX) -> np.ndarray:
    """Pink 'normal' or purple, darker 'tumour' texture: separable, so a tiny model learns it."""
    base = np.array([225, 160, 200]) if label == 0 else np.array([150, 80, 170])
    noise = rng.normal(0, 18, (px, px, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_folder(root: Path, n_per_class: int, names: tuple[str, str] = ("0", "1"), suffix: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(fake_patch(rng, label)).save(root / name / f"p{i:03d}{suffix}")
    return root


def write_h5(folder: Path, n: int, y_len: int | None = None, split: str = "train") -> Path:
    rng = np.random.default_rng(1)
    labels = np.arange(n) % 2
    x = np.stack([fake_patch(rng, int(label)) for label in labels])
    folder.mkdir(parents=True, exist_ok=True)
    x_file = folder / f"camelyonpatch_level_2_split_{split}_x.h5"
    with h5py.File(x_file, "w") as f:
        f.create_dataset("x", data=x, chunks=(1, PX, PX, 3))
    with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
        f.create_dataset("y", data=labels[: y_len or n].reshape(-1, 1, 1, 1).astype(np.uint8))
    return x_file



# --- sources -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "suffix"), [(("0", "1"), ".png"), (("normal", "tumor"), ".jpg"), (("0", "1"), ".tif")]
)
def test_folder_layouts(tmp_path: Path, names: tuple[str, str], suffix: str) -> None:
    root = write_folder(tmp_path / "patches", 3, names, suffix)
    source = open_patches(root)
    assert source.counts() == {"tumor": 3, "normal": 3, "unknown": 0}
    patches = source.read([5, 0])
    assert patches.shape == (2, PX, PX, 3) and patches.dtype == np.uint8
    assert source.labels[5] == 1 and source.labels[0] == 0
    assert source.location(0) == (str(root / names[0] / f"p000{suffix}"), None)
    # a class folder itself is labelled by its own name
    assert open_patches(root / names[1]).counts()["tumor"] == 3


def test_hdf5_reads_lazily_in_any_order(tmp_path: Path) -> None:
    x_file = write_h5(tmp_path, 10)
    source = open_patches(x_file)
    with h5py.File(x_file) as f:
        expected = np.asarray(f["x"])
    assert source.labels.tolist() == [0, 1] * 5
    np.testing.assert_array_equal(source.read([7, 2, 7]), expected[[7, 2, 7]])
    assert source.location(3) == (str(x_file), 3)
    assert source.geometry.px == PX


def test_hdf5_length_mismatch_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x_file = write_h5(tmp_path, 6, y_len=4)
    with pytest.raises(ValueError, match=r"4 labels .* 6 patches"):
        open_patches(x_file)
    code, _, err = run(["score-patches", x_file, "--out", tmp_path / "s.csv"], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and "_y.h5" in err
    assert not (tmp_path / "s.csv").exists()


def test_csv_source_and_bad_label(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "p", 2)
    (tmp_path / "list.csv").write_text("path,label\np/0/p000.png,normal\np/1/p001.png,1\n")
    source = open_patches(tmp_path / "list.csv")
    assert source.labels.tolist() == [0, 1] and source.read([1]).shape == (1, PX, PX, 3)
    assert Path(source.location(1)[0]) == root / "1" / "p001.png"
    (tmp_path / "bad.csv").write_text("path,label\np/0/p000.png,maybe\n")
    with pytest.raises(ValueError, match="line 2"):
        open_patches(tmp_path / "bad.csv")


def test_folder_without_labelled_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "misc").mkdir()
    Image.fromarray(np.zeros((PX, PX, 3), np.uint8)).save(tmp_path / "misc" / "a.png")
    with pytest.raises(ValueError, match="no labelled images"):
        require_labelled(open_patches(tmp_path / "misc"))
    code, _, err = run(["train-encoder", "--patches", tmp_path / "misc", "--out", tmp_path / "e"], capsys)
    assert code == 1 and "no labelled images" in err and err.count("\n") == 1
    assert not list(tmp_path.glob("e*"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        open_patches(tmp_path / "empty")


def test_wrong_size_patch_is_resized(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "p", 2)
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(root / "1" / "odd.png")
    source = open_patches(root)
    assert source.read(np.arange(len(source))).shape == (len(source), PX, PX, 3)


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "p", 2, suffix=".jpg")
    bad = root / "1" / "p001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    source = open_patches(root)
    with pytest.raises(PatchReadError, match=r"p001\.jpg"):
        source.read(np.arange(len(source)))


def test_train_encoder_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["train-encoder", "--out", tmp_path / "e"], capsys)
    assert code == 2 and err.startswith("error: ") and "--patches" in err


# --- augmentations -------------------------------------------------------------------------------------


def test_dihedral_group() -> None:
    x = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).view(2, 4, 4, 3)
    views = {tuple(dihedral(x[:1], torch.tensor([k])).flatten().tolist()) for k in range(8)}
    assert len(views) == 8  # eight distinct transforms
    k = torch.tensor([0, 5])
    out = dihedral(x, k)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], torch.rot90(x[1], 1, dims=(0, 1)).flip(1))


def test_hed_jitter_without_strength_is_identity() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(3, 8, 8, 3, generator=g)
    np.testing.assert_allclose(hed_jitter(rgb, 0.0, g).numpy(), rgb.numpy(), atol=1e-4)


def test_augmentations_keep_each_patch_its_own() -> None:
    """Per-patch transforms: output i comes from input i (labels stay attached), geometry and dtype kept."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 8)
    x = torch.from_numpy(np.stack([fake_patch(rng, int(label)) for label in labels]))
    out = augment_patches(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == torch.uint8
    means = out.float().mean(dim=(1, 2))
    tumour_like = (means[:, 1] < 130).numpy()  # the purple class stays darker in green
    assert (tumour_like == (labels == 1)).all()
    geometric = augment_patches(x, torch.Generator().manual_seed(3), AugmentConfig(
        hed_sigma=0, brightness=0, contrast=0, saturation=0, blur_probability=0))
    for i in range(len(x)):
        assert any(torch.equal(geometric[i], dihedral(x[i : i + 1], torch.tensor([k]))[0]) for k in range(8))
    again = augment_patches(x, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)  # seeded


# --- training ------------------------------------------------------------------------------------------


def test_carve_validation_is_stratified_and_keeps_duplicates_together(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "p", 20)
    (root / "0" / "dup.png").write_bytes((root / "0" / "p000.png").read_bytes())
    source = open_patches(root)
    groups = duplicate_groups(source)
    assert len(np.unique(groups)) == len(source) - 1
    train, val = carve_validation(source.labels, groups, 0.25, 100, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == len(source)
    assert 4 <= (source.labels[val] == 0).sum() <= 6 and 4 <= (source.labels[val] == 1).sum() <= 6
    dup = [i for i in range(len(source)) if groups[i] == groups[source.paths.index(root / "0" / "dup.png")]]
    assert len(dup) == 2 and (set(dup) <= set(train) or set(dup) <= set(val))


def test_split_patches_writes_train_encoders_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder(tmp_path / "p", 20)
    source = open_patches(root)
    _, expected_val = carve_validation(source.labels, duplicate_groups(source), 0.25, 4000, seed=3)
    argv = ["split-patches", root, "--out", tmp_path / "split", "--val-fraction", "0.25", "--seed", "3"]
    code, out, err = run(argv, capsys)
    assert code == 0 and "validation.csv" in out, err
    train, val = open_patches(tmp_path / "split" / "train.csv"), open_patches(tmp_path / "split" / "validation.csv")
    assert sorted(p.resolve() for p in val.paths) == sorted(source.paths[i].resolve() for i in expected_val)
    assert not {p.resolve() for p in train.paths} & {p.resolve() for p in val.paths}
    assert len(train) + len(val) == len(source) and set(val.labels.tolist()) == {0, 1}
    assert (tmp_path / "split" / "validation.csv").read_text().splitlines()[0] == "path,label"
    code, _, err = run(["split-patches", write_h5(tmp_path / "h5", 8), "--out", tmp_path / "s2"], capsys)
    assert code == 1 and err.count("\n") == 1 and "as file paths" in err and not (tmp_path / "s2").exists()


def test_train_on_patches_writes_checkpoint_with_geometry(
    tmp_path: Path, one_torch_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    x_file = write_h5(tmp_path / "h5", 48)
    source = open_patches(x_file)
    cfg = PatchTrainingConfig(model="vmamba_pico", epochs=3, batch_size=16, lr=3e-3, patience=2, val_fraction=0.25)
    path = train_encoder_on_patches(source, tmp_path / "enc", cfg)
    meta = read_checkpoint_metadata(path)["metadata"]
    assert path.name == "enc.safetensors" and meta["tile_px"] == PX and meta["mpp"] == pytest.approx(0.972)
    training = meta["training"]
    assert 1 <= training["best_epoch"] <= 3 and len(training["history"]) >= training["best_epoch"]
    lines = (tmp_path / "enc.metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_auc") and len(lines) == len(training["history"]) + 1
    # the separable toy task is learnt (validation AUC of the best epoch)
    assert training["best_val_auc"] > 0.8
    # ... and score-patches uses the checkpoint's head: CSV, metrics, ROC, JSON with HDF5 indices
    code, out, err = run(["score-patches", x_file, "--model", path, "--out", tmp_path / "s" / "scores.csv"], capsys)
    assert code == 0, err
    assert "patch AUC" in out
    header, *rows = (tmp_path / "s" / "scores.csv").read_text().splitlines()
    assert header == "path,index,label,score,error" and len(rows) == 48
    assert (tmp_path / "s" / "scores.roc.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "s" / "scores.metrics.json").read_text())
    assert metrics["n"] == 48 and 0.5 < metrics["auc"] <= 1 and metrics["auc_ci_low"] <= metrics["auc"]
    assert metrics["views"] == 1  # an encoder checkpoint: one view unless told
    code, out, _ = run(["score-patches", x_file, "--model", path, "--json", "--tta"], capsys)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 48 and {"path", "index", "score", "label"} <= set(rows[0])
    assert [r["index"] for r in rows] == list(range(48)) and all(0 <= r["score"] <= 1 for r in rows)


def test_weight_average_is_an_exponential_moving_average() -> None:
    model = torch.nn.Linear(3, 2)
    averaged = weight_average(model, 0.9)
    expected: dict[str, torch.Tensor] = {}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        averaged.update_parameters(model)
        # the first update copies the weights; each later one moves a tenth of the way towards them
        expected = {k: 0.9 * expected[k] + 0.1 * v if expected else v.clone() for k, v in model.state_dict().items()}
    for key, value in averaged.module.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    assert weight_average(model, None) is None
    with pytest.raises(ValueError, match="decay"):
        weight_average(model, 1.5)


def test_train_on_patches_keeps_the_averaged_weights(tmp_path: Path, one_torch_thread: None) -> None:
    source = open_patches(write_h5(tmp_path / "h5", 32))
    common = dict(model="vmamba_pico", epochs=1, batch_size=8, lr=3e-3, patience=1, val_fraction=0.25)
    raw = read_safetensors(train_encoder_on_patches(source, tmp_path / "raw", PatchTrainingConfig(**common)))
    path = train_encoder_on_patches(source, tmp_path / "ema", PatchTrainingConfig(**common, ema_decay=0.5))
    ema = read_safetensors(path)
    assert read_checkpoint_metadata(path)["metadata"]["training"]["config"]["ema_decay"] == 0.5
    # same seed, same steps: the averaged weights lag the raw ones, so they differ
    assert raw.keys() == ema.keys() and any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_score_patches_reports_a_corrupt_jpeg_and_scores_the_rest(
    tmp_path: Path, one_torch_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_folder(tmp_path / "p", 3, suffix=".jpg")
    bad = root / "0" / "p001.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    encoder = tmp_path / "enc.safetensors"
    train_encoder_on_patches(
        open_patches(write_folder(tmp_path / "train", 6)), encoder,
        PatchTrainingConfig(model="vmamba_pico", epochs=1, batch_size=8, val_fraction=0.34),
    )
    capsys.readouterr()
    code, out, err = run(["score-patches", root, "--model", encoder, "--json"], capsys)
    rows = json.loads(out)
    assert code == 1
    assert [r["score"] is None for r in rows].count(True) == 1
    failed = next(r for r in rows if r["score"] is None)
    assert failed["path"].endswith("p001.jpg") and "readable" in failed["error"]
    assert "p001.jpg" in err and all(line.startswith(("error: ", "patch AUC")) for line in err.splitlines() if line)


@pytest.mark.skipif(not PCAM.is_dir(), reason=f"real PCam patches not found at {PCAM}")
def test_real_pcam_folders() -> None:
    valid = open_patches(PCAM / "valid")
    assert valid.counts() == {"tumor": 1500, "normal": 1500, "unknown": 0}
    assert valid.read([0, 2999]).shape == (2, 96, 96, 3)
    assert valid.geometry.px == 96 and 0.9 < valid.geometry.mpp < 1.0


def test_train_encoder_patch_mpp_keeps_the_patch_size(
    tmp_path: Path, one_torch_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_folder(tmp_path / "p", 6)  # 32 px patches
    out = tmp_path / "enc.safetensors"
    argv = ["train-encoder", "--patches", root, "--out", out, "--model", "vmamba_pico", "--epochs", "1",
            "--batch-size", "8", "--val-fraction", "0.34", "--patch-mpp", "0.5", "--max-val-patches", "2"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    meta = read_checkpoint_metadata(out)["metadata"]
    assert meta["tile_px"] == PX and meta["mpp"] == 0.5
    # --max-val-patches caps the carved part (4 of the 12 patches without it)
    assert meta["training"]["validation"].startswith("2 patches carved")


def test_train_on_patches_in_bf16_autocast_records_it_and_learns(tmp_path: Path, one_torch_thread: None) -> None:
    source = open_patches(write_h5(tmp_path / "h5", 48))
    common = dict(model="vmamba_pico", epochs=3, batch_size=16, lr=3e-3, patience=3, val_fraction=0.25)
    fp32 = read_safetensors(train_encoder_on_patches(source, tmp_path / "fp32", PatchTrainingConfig(**common)))
    path = train_encoder_on_patches(source, tmp_path / "bf16", PatchTrainingConfig(**common, precision="bf16"))
    training = read_checkpoint_metadata(path)["metadata"]["training"]
    assert training["config"]["precision"] == "bf16"
    bf16 = read_safetensors(path)
    # the weights stay fp32 and differ from the fp32 run's (bf16 products), and the toy task is still learnt
    assert all(v.dtype == torch.float32 for v in bf16.values())
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)
    assert training["best_val_auc"] > 0.8
    with pytest.raises(ValueError, match="precision must be fp32 or bf16, got 'fp16'"):
        PatchTrainingConfig(precision="fp16")
