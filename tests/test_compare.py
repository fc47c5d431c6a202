"""The comparison of issue 11: DeLong's paired test, ``--model-args`` through a checkpoint, the table and figure
writer (``wsi-mamba compare``) on synthetic runs, and ``pipelines/compare.yaml``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_patches import run, write_folder

from wsi_mamba.cli import build_parser
from wsi_mamba.evaluation.delong import delong_covariance, delong_test, paired_permutation_p
from wsi_mamba.outputs.atomic import TEMP_MARKER
from wsi_mamba.workflows.recipe import load_recipe
from wsi_mamba.workflows.reports.compare import _threads_text, compare, markdown_table
from wsi_mamba.workflows.reports.compare_runs import count_gflops, profile_encoder

ROOT = Path(__file__).resolve().parents[1]


def needs_timm() -> None:
    from wsi_mamba.models.encoders.timm import import_timm

    try:
        import_timm()
    except ValueError as exc:
        pytest.skip(str(exc))


# --- DeLong ----------------------------------------------------------------------------------------------


def test_delong_on_a_case_worked_by_hand() -> None:
    """Positives .9 and .4, negatives .5 and .1: AUC 3/4, placements (1, 1/2) and (1/2, 1), each of variance 1/8,
    so var(AUC) = 1/8/2 + 1/8/2 = 1/8. A perfect second scorer has variance 0 and covariance 0, so the difference
    -1/4 has standard error sqrt(1/8): z = -0.7071, p = 2 (1 - Phi(0.7071)) = 0.4795."""
    y = [1, 1, 0, 0]
    aucs, cov = delong_covariance(y, [0.9, 0.4, 0.5, 0.1], [0.9, 0.6, 0.5, 0.1])
    assert aucs == pytest.approx([0.75, 1.0])
    assert cov == pytest.approx(np.array([[0.125, 0.0], [0.0, 0.0]]))
    result = delong_test(y, [0.9, 0.4, 0.5, 0.1], [0.9, 0.6, 0.5, 0.1])
    assert result.difference == pytest.approx(-0.25) and result.se == pytest.approx(math.sqrt(0.125))
    assert result.z == pytest.approx(-1 / math.sqrt(2)) and result.p_value == pytest.approx(0.47950, abs=1e-5)
    assert result.ci_low == pytest.approx(-0.25 - 1.959964 * math.sqrt(0.125), abs=1e-5)


def _brute_force(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DeLong's covariance from the placement values, pair by pair (ties one half)."""
    parts = []
    for s in (a, b):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        parts.append((psi.mean(1), psi.mean(0)))
    m, n = int(y.sum()), int((1 - y).sum())
    return np.cov(np.stack([parts[0][0], parts[1][0]])) / m + np.cov(np.stack([parts[0][1], parts[1][1]])) / n


def test_delong_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = np.array([1] * 9 + [0] * 13)
    a = np.round(rng.normal(size=22) + y, 1)  # rounded: many ties
    b = np.round(rng.normal(size=22) + 0.5 * y, 1)
    _, cov = delong_covariance(y, a, b)
    np.testing.assert_allclose(cov, _brute_force(y, a, b), atol=1e-12)


def test_delong_agrees_with_a_paired_permutation_test() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat([1, 0], 100)
    latent = rng.normal(size=200) + y
    a = latent + rng.normal(scale=0.8, size=200) + 0.4 * y
    b = latent + rng.normal(scale=0.8, size=200)
    delong = delong_test(y, a, b).p_value
    permutation = paired_permutation_p(y, a, b, n_perm=2000, seed=0)
    assert 0.01 < delong < 0.1 and abs(delong - permutation) < 0.01


def test_delong_edge_cases() -> None:
    y = [1, 1, 0, 0]
    same = delong_test(y, [0.9, 0.8, 0.1, 0.2], [0.9, 0.8, 0.1, 0.2])
    assert same.difference == 0 and same.p_value == 1.0
    perfect = delong_test(y, [0.9, 0.8, 0.1, 0.2], [5, 4, 1, 2])  # both perfect, other scale
    assert perfect.p_value == 1.0 and perfect.se == 0
    with pytest.raises(ValueError, match="both positive and negative"):
        delong_test([1, 1], [0.1, 0.2], [0.3, 0.4])
    with pytest.raises(ValueError, match="differ in length"):
        delong_test(y, [0.1, 0.2, 0.3, 0.4], [0.1, 0.2])


# --- model args through a checkpoint ----------------------------------------------------------------------


def test_model_args_are_kept_in_the_checkpoint(
    tmp_path: Path, one_torch_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train-encoder --model timm:NAME --model-args JSON`` builds the narrow model, writes its args into the
    checkpoint (also into a folder that does not exist yet), and loading rebuilds it with the same features."""
    needs_timm()
    from wsi_mamba.models.encoder import load_encoder

    patches = write_folder(tmp_path / "p", 6)
    out = tmp_path / "new" / "folder" / "enc.safetensors"
    args = {"channels": [4, 8, 16, 32]}
    code, _, err = run(
        [
            "train-encoder",
            "--patches",
            patches,
            "--model",
            "timm:resnet18",
            "--model-args",
            json.dumps(args),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--val-fraction",
            "0.34",
            "--out",
            out,
            "--threads",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["model_args"] == args and meta["metadata"]["training"]["config"]["model_args"] == args
    assert (out.parent / "enc.metrics.csv").is_file()
    encoder = load_encoder(out)
    assert encoder.dim == 32 and encoder.num_classes == 1
    assert sum(p.numel() for p in encoder.model.parameters()) < 100_000  # resnet18 at 1/16 width (11.7 M at full)
    tiles = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(encoder.encode(tiles), load_encoder(out).encode(tiles))
    profile = profile_encoder(out, batch=4, repeats=1)  # the comparison's size and speed columns
    assert profile["params"] == sum(p.numel() for p in encoder.model.parameters()) and profile["tile_px"] == 32
    assert profile["gflops"] > 0 and profile["tiles_per_s"] > 0 and profile["train_patches_per_s"] > 0
    # a bad JSON or a reserved key is one line
    code, _, err = run(["train-encoder", "--patches", patches, "--model-args", "[1]", "--out", out], capsys)
    assert code == 2 and "JSON object" in err
    code, _, err = run(
        ["train-encoder", "--patches", patches, "--model-args", '{"num_classes": 3}', "--out", out], capsys
    )
    assert code == 1 and "num_classes" in err


def test_a_timm_model_built_at_another_image_size_takes_tiles_of_that_size() -> None:
    """Swin built with ``img_size=32`` (a fixed-size model) is fed 32 px tiles, not its config's 224 px."""
    needs_timm()
    from wsi_mamba.models.encoder import load_encoder

    args = {"img_size": 32, "window_size": 4, "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2]}
    encoder = load_encoder("timm:swin_tiny_patch4_window7_224", num_classes=1, **args)
    assert encoder.input_px == 32
    tiles = np.zeros((2, 32, 32, 3), np.uint8)
    assert encoder.encode(tiles).shape == (2, encoder.dim)


def test_count_gflops_counts_matmuls_and_restores_fused_attention() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 1))
    model.fused_attn = True
    assert count_gflops(model, torch.zeros(4, 10)) == pytest.approx(2 * (10 * 20 + 20) / 1e9)
    assert model.fused_attn is True


# --- the table and the figure ------------------------------------------------------------------------------


def _encoder_run(folder: Path, seed: int, shift: float) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    config = {"model": "m", "epochs": 2, "epoch_patches": 512, "batch_size": 64, "lr": 5e-4, "seed": 0}
    training = {
        "config": config,
        "patches": {"tumor": 50, "normal": 50},
        "validation": "10 patches carved",
        "best_epoch": 2,
        "best_val_auc": 0.8,
        "history": [{"seconds": 60.0}, {"seconds": 66.0}],
    }
    (folder / "encoder.json").write_text(json.dumps({"metadata": {"name": folder.name, "training": training}}))
    labels = np.repeat([0, 1], 30)
    scores = rng.random(60) + shift * labels
    rows = ["path,index,label,score,error"] + [
        f"p{i}.jpg,,{y},{s:.4f}," for i, (y, s) in enumerate(zip(labels, scores, strict=True))
    ]
    (folder / "valid-patches.csv").write_text("\n".join(rows) + "\n")
    metrics = {"n": 60, "n_positive": 30, "auc": 0.5 + shift / 2, "auc_ci_low": 0.4, "auc_ci_high": 0.9}
    (folder / "valid-patches.metrics.json").write_text(json.dumps(metrics))
    return folder


def _slide_run(folder: Path, seed: int, shift: float) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    labels = np.repeat([0, 1], 10)
    scores = np.clip(rng.random(20) * 0.7 + shift * labels, 0, 1)
    rows = ["slide,label,score,prediction,baseline_score,note"]
    rows += [f"test_{i:03d},{y},{s:.6f},{int(s >= 0.5)},," for i, (y, s) in enumerate(zip(labels, scores, strict=True))]
    rows.append("test_999,1,,,,no tissue")  # unscored slides are left out
    (folder / "per_slide.csv").write_text("\n".join(rows) + "\n")
    by_class = {
        "macro": {"slides": 4, "sensitivity": 1.0, "threshold": 0.5},
        "micro": {"slides": 3, "sensitivity": 2 / 3, "threshold": 0.5},
        "itc": {"slides": 3, "sensitivity": 0.0, "threshold": 0.5},
        "none": {"slides": 10, "false_positive_rate": 0.1, "threshold": 0.5},
    }
    metrics = {
        "model": folder.name,
        "slides": {"n": 20, "n_positive": 10, "auc": 0.6 + shift / 3, "auc_ci_low": 0.5, "auc_ci_high": 0.95},
        "by_lesion_class": by_class,
        "froc": {"score": 0.5},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_compare_writes_one_table_one_figure_and_the_paired_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    encoders = [(name, _encoder_run(runs / name, i, 0.3 + 0.1 * i)) for i, name in enumerate(["VMamba", "ResNet"])]
    modes = [(name, _slide_run(runs / name, 10 + i, 0.3)) for i, name in enumerate(["tile", "region"])]
    aggs = [
        (name, _slide_run(runs / f"agg-{name}", 20 + i, 0.2 * i)) for i, name in enumerate(["mean", "SS2D", "ABMIL"])
    ]
    out = tmp_path / "out"
    (out).mkdir()
    (out / "comparison.png").write_bytes(b"old")
    summary = compare(out, encoders, modes, aggs, [("SS2D", "ABMIL"), ("region", "tile")], profile=False)
    text = (out / "comparison.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 + 2 + 3  # header, rule, encoders, modes, aggregators
    for label in ["VMamba", "ResNet", "tile", "region", "mean", "SS2D", "ABMIL"]:
        assert any(f"| {label} |" in line for line in table)
    assert "2 epochs × 512 class-balanced draws" in text and "the same for every encoder" in text
    assert "4/4 · 2/3 · 0/3" in text and "1/10" in text  # sensitivity per lesion class, false positives
    assert "batch 64, torch's thread count," in text  # not profiled: no thread count recorded
    paired, modes_paired = summary["paired"]  # one test per pair, in the order given
    assert paired["a"] == "SS2D" and paired["b"] == "ABMIL" and paired["n"] == 20 and 0 <= paired["p_value"] <= 1
    assert (modes_paired["a"], modes_paired["b"]) == ("region", "tile")
    for test in (paired, modes_paired):
        shown = "p < 0.001" if test["p_value"] < 0.001 else f"p = {test['p_value']:.3f}"
        assert f"Paired test, {test['a']} vs {test['b']} on the same 20 slides" in text and shown in text
    (test,) = summary["encoder_tests"]  # each encoder against the first, on the same patches
    assert test["a"] == "ResNet" and test["b"] == "VMamba" and test["n"] == 60 and "Patch AUC against VMamba" in text
    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and not list(out.glob(f"*{TEMP_MARKER}*"))  # no temporary file left
    data = json.loads((out / "comparison.json").read_text())
    assert [e["label"] for e in data["encoders"]] == ["VMamba", "ResNet"] and "scores" not in data["encoders"][0]
    # the CLI: the same through `wsi-mamba compare`, and its usage errors
    args = [
        "compare",
        "--out",
        tmp_path / "cli",
        "--no-profile",
        "--aggregator",
        f"SS2D={runs / 'agg-SS2D'}",
        "--aggregator",
        f"ABMIL={runs / 'agg-ABMIL'}",
        "--paired",
        "SS2D",
        "ABMIL",
        "--paired",
        "ABMIL",
        "SS2D",
    ]
    code, out_text, err = run(args, capsys)
    assert code == 0, err
    assert "SS2D vs ABMIL: DeLong p =" in out_text and "ABMIL vs SS2D: DeLong p =" in out_text
    assert (tmp_path / "cli" / "comparison.png").is_file()
    code, _, err = run(["compare", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "at least one" in err
    code, _, err = run(
        ["compare", "--out", tmp_path / "x", "--aggregator", f"A={runs / 'agg-SS2D'}", "--paired", "A", "B"], capsys
    )
    assert code == 1 and "no aggregator or mode labelled B" in err
    code, _, err = run(
        ["compare", "--out", tmp_path / "x", "--aggregator", f"A={runs / 'agg-SS2D'}", "--mode", f"A={runs / 'tile'}"],
        capsys,
    )
    assert code == 1 and "labels given twice: A" in err and not (tmp_path / "x").exists()
    code, _, err = run(
        ["compare", "--out", tmp_path / "x", "--aggregator", f"A={runs / 'agg-SS2D'}", "--paired", "A", "A"], capsys
    )
    assert code == 1 and "A against itself" in err


def test_the_figure_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from wsi_mamba.evaluation.roc_plot import write_roc_panels

    path = tmp_path / "fig.png"
    path.write_bytes(b"old")

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        write_roc_panels({"a": {"x": ([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.7])}}, path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["fig.png"]
    with pytest.raises(ValueError, match="no curves"):
        write_roc_panels({"empty": {}}, path)


def test_caption_names_the_thread_counts_the_encoders_were_timed_with() -> None:
    assert _threads_text([{"threads": 1}, {"threads": 1}]) == "1 torch thread"
    assert _threads_text([{"threads": 2}, {"threads": 1}, {}]) == "1 / 2 torch threads"
    assert _threads_text([{}]) == "torch's thread count"


def test_markdown_table_escapes_pipes() -> None:
    assert markdown_table(["a", "b"], [["x|y", "1"]]).splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


# --- the recipe --------------------------------------------------------------------------------------------


def test_compare_recipe_steps_are_valid_commands_with_one_budget_for_every_encoder() -> None:
    recipe = load_recipe(ROOT / "pipelines" / "compare.yaml", {"pcam": "/data/pcam"}, workdir="/tmp/unused")
    parser = build_parser()
    parsed = {}
    for step in recipe.steps:
        args = parser.parse_args(step.argv)  # every step is a valid wsi-mamba command line
        assert args.command == step.argv[0]
        parsed[step.name] = args
    trainings = [a for a in parsed.values() if a.command == "train-encoder"]
    assert {a.model for a in trainings} == {"vmamba_nano", "timm:resnet50", "timm:swin_tiny_patch4_window7_224"}
    budget = {(a.epochs, a.epoch_patches, a.lr, a.seed, a.val_fraction, a.patience) for a in trainings}
    assert len(budget) == 1 and all(a.patches == ["/data/pcam/train"] for a in trainings)
    # PCam valid patches are used for scoring only; the slide models never see the test cohort
    uses_valid = {
        name for name, s in zip(parsed, recipe.steps, strict=True) if any("/data/pcam/valid" in x for x in s.argv)
    }
    assert uses_valid == {"score-vmamba", "score-resnet", "score-swin"}
    for args in parsed.values():
        if args.command == "train":
            assert "test" not in args.features and "cohort-train" in args.labels
    aggregators = {a.aggregator for a in parsed.values() if a.command == "train"}
    assert aggregators == {"mean", "max", "abmil", "clam-sb", "transmil", "ss2d"}
    assert parsed["compare"].paired[0] == ["SS2D", "ABMIL"]
    # (b): region mode and one-view tile mode are extracted from the same three cohorts
    for cohort in ("train", "val", "test"):
        assert parsed[f"extract-region-{cohort}"].region_px == int(_recipe_vars(recipe)["region_px"])
        assert parsed[f"extract-tile1-{cohort}"].views == 1 and parsed[f"extract-tile1-{cohort}"].region_px is None


def _recipe_vars(recipe) -> dict[str, str]:
    """The variables of a loaded recipe, read back from its file (``load_recipe`` keeps only the steps)."""
    import yaml

    return {str(k): str(v) for k, v in yaml.safe_load(recipe.path.read_text())["vars"].items()}


def _resolved(workdir: Path, value: str) -> Path:
    return Path(os.path.normpath(workdir / value))


def test_compare_slide_models_are_the_default_recipes_slide_training_with_only_the_aggregator_changed() -> None:
    """(c)'s SS2D row is the shipped slide model's recipe: same features, cohorts, validation and budget."""
    overrides = {"pcam": "/data/pcam"}
    default = load_recipe(ROOT / "pipelines" / "pcam-camelyon.yaml", overrides)
    compare = load_recipe(ROOT / "pipelines" / "compare.yaml", overrides)
    parser = build_parser()
    shipped = parser.parse_args(next(s for s in default.steps if s.name == "train").argv)
    paths = ("features", "labels", "annotations", "val_features", "val_labels", "val_annotations")
    budget = ("epochs", "patience", "seed", "lr", "val_fraction", "folds")
    trainings = [parser.parse_args(s.argv) for s in compare.steps if s.argv[0] == "train"]
    tile = [a for a in trainings if Path(a.features).name == "features-train"]
    assert {a.aggregator for a in tile} == {"mean", "max", "abmil", "clam-sb", "transmil", "ss2d"}
    for args in tile:
        for name in paths:
            assert _resolved(compare.workdir, getattr(args, name)) == _resolved(default.workdir, getattr(shipped, name))
    for args in trainings:
        assert {n: getattr(args, n) for n in budget} == {n: getattr(shipped, n) for n in budget}
        assert args.val_features == args.features.replace("-train", "-val")  # each mode validates on its own features
    assert shipped.aggregator == "ss2d"
