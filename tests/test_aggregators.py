"""Slide aggregators (issue 11): the registry, each family's forward on a masked grid (shapes, background
without influence, gradients), checkpoint round trips, ``train --aggregator X`` → ``evaluate`` → ``predict``
from the CLI for each, ``train --folds K`` (splits and outputs), and a real-tissue cohort when PCam is here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from workflow_fixtures import TILE_PX, WorkflowData, workflow_data

from wsi_mamba.cli import main
from wsi_mamba.models import SlideMamba, load_slide_model, save_slide_model
from wsi_mamba.models.aggregators import aggregator_spec, create_aggregator, list_aggregators
from wsi_mamba.workflows.bundle import load_bundle
from wsi_mamba.workflows.training.slide_examples import fold_splits

AGGREGATORS = ["ss2d", "abmil", "clam-sb", "transmil", "mean", "max"]
IN_DIM = 6
SMALL = {"dim": 16, "depth": 1, "d_state": 2, "dropout": 0.0}
FAST = ["--batch-size", "8", "--read-threads", "2"]
PCAM_VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam" / "valid"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = create_aggregator(name, IN_DIM, ignore_unknown=True, **SMALL)
    with torch.no_grad():  # random biases so that no masking bug hides behind a zero init
        for key, param in model.named_parameters():
            if key.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def inputs(batch: int = 2, rows: int = 5, cols: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, IN_DIM, rows, cols, generator=gen)
    mask = torch.rand(batch, rows, cols, generator=gen) < 0.5
    mask[:, 0, 0] = mask[:, -1, -1] = True
    return features, mask


def outputs(out) -> tuple[torch.Tensor, ...]:
    return out.logit, out.tile_logits, out.attention


# ------------------------------------------------------------------------------------------------ registry


def test_registry_lists_the_six() -> None:
    assert sorted(list_aggregators()) == sorted(AGGREGATORS)
    with pytest.raises(ValueError, match="unknown aggregator 'nope'; available: abmil"):
        create_aggregator("nope", IN_DIM)
    assert isinstance(create_aggregator("ss2d", IN_DIM), SlideMamba)  # today's slide model, same class tree
    with pytest.raises(ValueError, match="dropout"):
        create_aggregator("abmil", IN_DIM, dropout=1.5)


# ------------------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("name", AGGREGATORS)
def test_forward_shapes_and_masking(name: str) -> None:
    model = make(name)
    features, mask = inputs()
    with torch.no_grad():
        out = model(features, mask)
        noisy = features.clone()
        noisy[~mask[:, None].expand_as(noisy)] = float("nan")
        noisy[:, :, 1, 1] = torch.where(mask[:, None, 1, 1], noisy[:, :, 1, 1], torch.full_like(noisy[:, :, 1, 1], 1e4))
        other = model(noisy, mask)
    assert out.logit.shape == (2,) and out.tile_logits.shape == (2, 5, 7) and out.attention.shape == (2, 5, 7)
    for a, b in zip(outputs(out), outputs(other), strict=True):
        assert torch.equal(a, b), name  # background features have no influence at all (NaN included)
    assert torch.all(out.tile_logits[~mask] == 0) and torch.all(out.attention[~mask] == 0)
    assert torch.allclose(out.attention.flatten(1).sum(1), torch.ones(2), atol=1e-5)
    assert torch.all(out.attention[mask] >= 0) and torch.isfinite(out.logit).all()


@pytest.mark.parametrize("name", AGGREGATORS)
def test_gradients_flow_to_tissue_only(name: str) -> None:
    model = make(name).train()
    features, mask = inputs()
    features.requires_grad_(True)
    out = model(features, mask)
    loss = out.logit.sum() + out.tile_logits.sum() + model.aux_loss(out, torch.tensor([1.0, 0.0]))
    loss.backward()
    grad = features.grad
    assert torch.all(grad[~mask[:, None].expand_as(grad)] == 0)
    assert grad[mask[:, None].expand_as(grad)].abs().sum() > 0
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
    assert sum(bool(g.abs().sum() > 0) for g in grads.values()) >= 0.8 * len(grads), name


@pytest.mark.parametrize("name", AGGREGATORS)
def test_sample_without_tissue_is_zero(name: str) -> None:
    model = make(name)
    features, mask = inputs()
    mask[1] = False
    with torch.no_grad():
        out = model(features, mask)
    assert out.logit[1] == 0 and torch.all(out.tile_logits[1] == 0) and torch.all(out.attention[1] == 0)
    assert torch.isfinite(out.logit).all()


def test_clam_instance_loss_uses_the_slide_class() -> None:
    model = make("clam-sb").train()
    features, mask = inputs(batch=1)
    out = model(features, mask)
    positive, negative = model.aux_loss(out, torch.tensor([1.0])), model.aux_loss(out, torch.tensor([0.0]))
    assert positive > 0 and negative > 0 and not torch.equal(positive, negative)
    assert make("abmil").aux_loss(out, torch.tensor([1.0])) == 0  # the default hook: no extra loss


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("name", AGGREGATORS)
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = make(name)
    path = save_slide_model(model, tmp_path / "slide_model", metadata={"note": name})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["aggregator"] == name and meta["config"]["in_dim"] == IN_DIM
    loaded, metadata = load_slide_model(path, scan_backend="cpu")  # scan_backend is dropped where there is no scan
    assert type(loaded) is type(model) and metadata == {"note": name}
    if hasattr(model, "set_scan_backend"):
        model.set_scan_backend("cpu")  # the same scan on both sides (auto may pick numba: equal only to rounding)
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved), name
    features, mask = inputs()
    with torch.no_grad():  # equal weights; the outputs only to rounding (oneDNN may pick kernels by memory layout)
        for a, b in zip(outputs(model(features, mask)), outputs(loaded(features, mask)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_checkpoint_without_aggregator_name_is_ss2d(tmp_path: Path) -> None:
    path = save_slide_model(make("ss2d"), tmp_path / "old")
    meta_file = path.with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    del meta["aggregator"]  # as written before the registry
    meta_file.write_text(json.dumps(meta))
    loaded, _ = load_slide_model(path)
    assert type(loaded) is aggregator_spec("ss2d").cls
    meta["aggregator"] = "nope"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown aggregator 'nope'"):
        load_slide_model(path)


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)


def run(argv: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def train_evaluate_predict(
    name: str, features: Path, labels: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> dict:
    model = tmp_path / f"model-{name}"
    code, out, err = run(
        ["train", "--features", features, "--labels", labels, "--out", model, "--aggregator", name, "--epochs", "2"],
        capsys,
    )
    assert code == 0, err
    assert out.startswith(f"wrote {model} (best epoch ") and out.strip().endswith(f"aggregator {name})")
    assert json.loads((model / "model.json").read_text())["aggregator"] == name
    assert json.loads((model / "slide_model.json").read_text())["aggregator"] == name
    assert load_bundle(model).slide_model.aggregator_name == name

    code, out, err = run(
        ["evaluate", "--model", model, "--features", features, "--labels", labels, "--out", tmp_path / f"eval-{name}",
         "--bootstrap", "20", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["model"] == model.name and 0.0 <= metrics["slides"]["auc"] <= 1.0

    results = tmp_path / f"predict-{name}"
    code, out, err = run(["predict", slide, "--model", model, "--json", "--heatmap", "--out", results, *FAST], capsys)
    assert code == 0, err
    result = json.loads(out)[0]
    assert 0.0 <= result["score"] <= 1.0 and 0.0 <= result["max_tile_score"] <= 1.0
    assert (results / f"{slide.stem}.heatmap.png").is_file()
    return metrics


@pytest.mark.parametrize("name", AGGREGATORS)
def test_cli_train_evaluate_predict(
    name: str, data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = train_evaluate_predict(name, data.features, data.labels, data.slide("test_001"), tmp_path, capsys)
    assert metrics["slides"]["n"] == 6


def test_cli_unknown_aggregator_is_one_line(data: WorkflowData, tmp_path: Path, capsys) -> None:
    argv = ["train", "--features", data.features, "--labels", data.labels, "--out", tmp_path / "m"]
    code, out, err = run([*argv, "--aggregator", "nope"], capsys)
    assert code == 1 and out == "" and "unknown aggregator 'nope'" in err and not (tmp_path / "m").exists()
    code, out, err = run([*argv, "--folds", "1"], capsys)
    assert code == 1 and "--folds must be at least 2" in err


# ------------------------------------------------------------------------------------------------ folds


def test_fold_splits_cover_every_slide_once() -> None:
    labels = {f"n{i}": 0 for i in range(7)} | {f"t{i}": 1 for i in range(5)}
    names = sorted(labels)
    for k in (2, 3, 5):
        folds = fold_splits(names, labels, k, seed=0)
        assert len(folds) == k and len({tuple(f) for f in folds}) == k  # K distinct validation splits
        assert sorted(n for f in folds for n in f) == names  # every slide exactly once
        assert max(map(len, folds)) - min(map(len, folds)) <= 1
        for cls in (0, 1):  # stratified
            counts = [sum(labels[n] == cls for n in f) for f in folds]
            assert max(counts) - min(counts) <= 1 and min(counts) >= 1
    assert fold_splits(names, labels, 3, seed=0) == fold_splits(names, labels, 3, seed=0)
    assert fold_splits(names, labels, 3, seed=0) != fold_splits(names, labels, 3, seed=1)
    with pytest.raises(ValueError, match="at least 6 slides of each class, class 1 has 5"):
        fold_splits(names, labels, 6, seed=0)


def test_cli_train_folds(data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cv"
    argv = ["train", "--features", data.features, "--labels", data.labels, "--out", out, "--folds", "3"]
    code, stdout, err = run([*argv, "--aggregator", "mean", "--epochs", "2"], capsys)
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["fold 1", "fold 2", "fold 3"]
    assert lines[3].startswith("mean: 3-fold validation AUC ") and "(mean ± sd)" in lines[3]
    assert lines[4].startswith(f"wrote {out} (trained on all 6 slides for ")
    summary = json.loads((out / "folds.json").read_text())
    validation = [row["validation"] for row in summary["per_fold"]]
    assert sorted(n for fold in validation for n in fold) == sorted(json.loads((out / "model.json").read_text())[
        "training"]["slides"]["train"])  # fmt: skip
    assert len({tuple(v) for v in validation}) == 3
    for i, fold in enumerate(validation, 1):
        meta = json.loads((out / f"fold-{i}" / "model.json").read_text())
        assert meta["training"]["slides"]["validation"] == fold and meta["aggregator"] == "mean"
        assert not set(fold) & set(meta["training"]["slides"]["train"])
        assert meta["training"]["best_val_auc"] == summary["per_fold"][i - 1]["val_auc"]
        load_bundle(out / f"fold-{i}")
    with open(out / "folds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["fold"] for r in rows] == ["1", "2", "3", "mean", "sd"]
    assert float(rows[3]["val_auc"]) == pytest.approx(summary["mean_val_auc"])
    final = json.loads((out / "model.json").read_text())["training"]
    assert final["slides"]["validation"] == [] and final["epochs_run"] == summary["final"]["epochs"]
    code, stdout, err = run(["predict", data.slide("test_001"), "--model", out, "--json", *FAST], capsys)
    assert code == 0, err


# ------------------------------------------------------------------------------------------------ real tissue


@pytest.mark.skipif(not PCAM_VALID.is_dir(), reason=f"no PCam patches at {PCAM_VALID} (real-tissue cohort)")
def test_real_tissue_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsi_mamba.models.checkpoint import save_checkpoint
    from wsi_mamba.models.encoder import load_encoder

    cohort = tmp_path / "cohort"
    code, _, err = run(
        ["synth", cohort, "--from-patches", PCAM_VALID, "--slides", "4", "--size", "3600", "--test-fraction", "0"],
        capsys,
    )
    assert code == 0, err
    encoder = save_checkpoint(  # tiles of 64 px at 4 µm/px: a few hundred per slide
        load_encoder("vmamba_pico", seed=0).model, tmp_path / "encoder", metadata={"name": "pico", "tile_px": TILE_PX,
                                                                                  "mpp": 4.0},
    )  # fmt: skip
    training = cohort / "training"
    code, _, err = run(["extract", training, "--encoder", encoder, "--out", tmp_path / "features", *FAST], capsys)
    assert code == 0, err
    slide = sorted(training.rglob("*.tif"))[0]
    for name in ("abmil", "mean"):
        metrics = train_evaluate_predict(name, tmp_path / "features", training / "labels.csv", slide, tmp_path, capsys)
        assert metrics["slides"]["n"] == 4
