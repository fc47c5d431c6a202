"""``wsi-mamba extract | train | evaluate | predict`` through ``wsi_mamba.cli.main``: JSON output, exit
codes, one-line errors (no traceback), order of the inputs, heatmaps, refused models and labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from workflow_fixtures import (
    ENCODER_NAME,
    OTHER_ENCODER_NAME,
    WorkflowData,
    copy_tree,
    workflow_data,
    write_blank_slide,
    write_booby_pickle,
    write_garbage_slide,
)

import wsi_mamba.workflows.extract as extract_workflow
from wsi_mamba.cli import main
from wsi_mamba.features.modes import TileMode
from wsi_mamba.models.encoder import load_encoder
from wsi_mamba.outputs.atomic import TEMP_MARKER
from wsi_mamba.workflows.bundle import default_model_path, model_tile_mode

FAST = ["--batch-size", "8", "--read-threads", "2"]  # the tile options the shared stores were made with


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert all(text in lines[0] for text in fragments), (fragments, lines[0])


def predict_json(
    data: WorkflowData, slides: list[Path], capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, list[dict], str]:
    code, out, err = run(["predict", *slides, "--model", data.model, "--json", *FAST, *extra], capsys)
    return code, json.loads(out), err


# ------------------------------------------------------------------------------------------------ predict


def test_predict_json(data: WorkflowData, capsys: pytest.CaptureFixture[str]) -> None:
    slides = data.slides("testing")
    code, results, err = predict_json(data, slides, capsys)
    assert code == 0 and error_lines(err) == []
    assert [r["slide"] for r in results] == [p.stem for p in slides]
    for result in results:
        assert {"slide", "score", "prediction", "tiles", "model"} <= set(result)
        assert 0.0 <= result["score"] <= 1.0 and result["tiles"] > 0
        assert result["prediction"] in ("tumor", "normal") and result["model"] == data.model.name


def test_predict_order_changes_no_score(data: WorkflowData, capsys: pytest.CaptureFixture[str]) -> None:
    slides = [data.slide("normal_001"), data.slide("tumor_001"), data.slide("test_002")]
    _, forward, _ = predict_json(data, slides, capsys)
    _, rotated, _ = predict_json(data, [slides[2], slides[0], slides[1]], capsys)
    assert [r["slide"] for r in rotated] == [slides[2].stem, slides[0].stem, slides[1].stem]

    def key(results: list[dict]) -> dict:
        return {r["slide"]: (r["score"], r["prediction"], r["tiles"], r["max_tile_score"]) for r in results}

    assert key(rotated) == key(forward)


def test_predict_text_output(data: WorkflowData, capsys: pytest.CaptureFixture[str]) -> None:
    slide = data.slide("tumor_001")
    code, out, err = run(["predict", slide, "--model", data.model, *FAST], capsys)
    assert code == 0 and error_lines(err) == []
    name, score, prediction = out.strip().split("\t")
    assert name == "tumor_001" and 0.0 <= float(score) <= 1.0 and prediction in ("tumor", "normal")


def test_predict_slide_without_tissue_is_null(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blank = write_blank_slide(tmp_path / "blank.tif")
    good = data.slide("tumor_001")
    with pytest.warns(UserWarning, match="no tissue"):
        code, results, err = predict_json(data, [blank, good], capsys)
    assert code == 0 and error_lines(err) == []
    assert results[0]["slide"] == "blank" and results[0]["score"] is None and results[0]["tiles"] == 0
    assert results[0]["reason"] == "no tissue found"
    assert results[1]["score"] is not None
    with pytest.warns(UserWarning, match="no tissue"):
        code, out, _ = run(["predict", blank, good, "--model", data.model, *FAST], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0] == "blank\tnull\t(no tissue found)" and lines[1].startswith("tumor_001\t")


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_predict_corrupt_slide_next_to_a_good_one(
    kind: str, data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = data.slide("tumor_001")
    bad = write_garbage_slide(tmp_path / "bad.tif", good if kind == "truncated" else None)
    code, out, err = run(["predict", bad, good, "--model", data.model, *FAST], capsys)
    assert code == 1
    assert_one_line_error(err, str(bad))
    assert out.strip().startswith("tumor_001\t") and "bad" not in out  # the good one is still scored
    code, results, err = predict_json(data, [good, bad], capsys)
    assert code == 1
    assert_one_line_error(err, str(bad))
    assert results[0]["slide"] == "tumor_001" and results[0]["score"] is not None
    assert results[1]["slide"] == str(bad) and results[1]["score"] is None and str(bad) in results[1]["error"]


def test_predict_heatmap_outputs(data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slide = data.slide("tumor_003")
    out = tmp_path / "results"
    code, results, err = predict_json(data, [slide], capsys, "--heatmap", "--out", str(out))
    assert code == 0 and error_lines(err) == []
    assert sorted(p.name for p in out.iterdir()) == [
        "tumor_003.heatmap.png",
        "tumor_003.json",
        "tumor_003.regions.geojson",
        "tumor_003.tiles.geojson",
    ]
    assert not [p for p in out.iterdir() if TEMP_MARKER in p.name]
    result = results[0]
    assert json.loads((out / "tumor_003.json").read_text()) == result
    assert result["heatmap"] == str(out / "tumor_003.heatmap.png")
    assert (out / "tumor_003.heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    geojson = json.loads((out / "tumor_003.tiles.geojson").read_text())
    assert geojson["type"] == "FeatureCollection" and len(geojson["features"]) == result["tiles"]
    regions = json.loads((out / "tumor_003.regions.geojson").read_text())
    assert result["regions_geojson"] == str(out / "tumor_003.regions.geojson")
    assert regions["type"] == "FeatureCollection" and len(regions["features"]) == result["regions"]
    call = {"slide_prediction": result["prediction"], "slide_score": result["score"], "threshold": result["threshold"]}
    assert {key: regions["properties"][key] for key in call} == call  # a region on a normal-called slide reads as such
    assert "region_calling" in regions["properties"]  # how the regions were called (tests/test_region_calling.py)
    assert all(feature["properties"]["slide_prediction"] == result["prediction"] for feature in regions["features"])

    plain = tmp_path / "plain"  # --out without --heatmap: the JSON only
    code, _, _ = predict_json(data, [slide], capsys, "--out", str(plain))
    assert code == 0 and [p.name for p in plain.iterdir()] == ["tumor_003.json"]


# ------------------------------------------------------------------------------------------------ models


def model_cases(data: WorkflowData, tmp_path: Path, pickle_file: Path) -> dict[str, tuple[Path, str]]:
    """--model values that are not model folders, with the text their error must contain."""
    no_manifest = tmp_path / "no-manifest"
    no_manifest.mkdir()
    corrupt = copy_tree(data.model, tmp_path / "corrupt")
    (corrupt / "model.json").write_text('{"format": "wsi-mamba/model", "encoder"')
    pickled_manifest = copy_tree(data.model, tmp_path / "pickled-manifest")
    shutil.copyfile(pickle_file, pickled_manifest / "model.json")
    pickled_weights = copy_tree(data.model, tmp_path / "pickled-weights")
    shutil.copyfile(pickle_file, pickled_weights / "slide_model.safetensors")
    return {
        "pickle": (pickle_file, "not a wsi-mamba model folder"),
        "no model.json": (no_manifest, "no model.json"),
        "corrupt model.json": (corrupt, "not valid JSON"),
        "pickle as model.json": (pickled_manifest, "not valid JSON"),
        "pickle as weights": (pickled_weights, "safetensors file"),
    }


def test_bad_model_is_one_line_and_never_unpickled(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "unpickled"
    pickle_file = write_booby_pickle(tmp_path / "model.pt", marker)
    slide = data.slide("tumor_001")
    for label, (model, problem) in model_cases(data, tmp_path, pickle_file).items():
        for argv in (
            ["predict", slide, "--model", model, *FAST],
            ["evaluate", "--model", model, "--features", data.features, "--labels", data.labels,
             "--out", tmp_path / "eval"],
        ):  # fmt: skip
            code, out, err = run(argv, capsys)
            assert code == 1, (label, argv[0])
            assert_one_line_error(err, str(model), problem)
            assert out == "" and not marker.exists(), (label, argv[0])
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------------ labels


def test_bad_label_names_file_and_line(data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\nnormal_001,Normal\ntumor_001,Tumor\nnormal_002,perhaps\n")
    common = ["--features", data.features, "--labels", labels, "--out"]
    for argv in (["evaluate", "--model", data.model, *common, tmp_path / "eval"], ["train", *common, tmp_path / "m"]):
        code, out, err = run(argv, capsys)
        assert code == 1 and out == ""
        assert_one_line_error(err, f"{labels}:4:", "'perhaps'")


# ------------------------------------------------------------------------------------------------ evaluate


def test_evaluate_json_and_reports(data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", data.model, "--features", data.features, "--labels", data.labels]
    code, stdout, err = run(
        [*argv, "--annotations", data.annotations, "--baseline", "--bootstrap", "50", "--out", out, "--json"], capsys
    )
    assert code == 0 and error_lines(err) == []
    metrics = json.loads(stdout)
    assert metrics["model"] == data.model.name
    assert metrics["slides"]["n"] == 6 and 0.0 <= metrics["slides"]["auc"] <= 1.0
    assert {"auc_ci_low", "auc_ci_high", "accuracy_at_0.5", "youden_threshold"} <= set(metrics["slides"])
    assert "auc" in metrics["baseline"] and "score" in metrics["froc"]
    assert sorted(p.name for p in out.iterdir()) == ["froc.json", "metrics.json", "per_slide.csv", "roc.png"]
    assert json.loads((out / "metrics.json").read_text()) == metrics

    code, stdout, _ = run([*argv, "--bootstrap", "50", "--out", tmp_path / "text"], capsys)
    assert code == 0 and "AUC" in stdout and "on 6 slides" in stdout
    assert not (tmp_path / "text" / "froc.json").exists()


# ------------------------------------------------------------------------------------------------ extract / train


def test_extract_json_and_resume(data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slides = data.slides("testing")
    out = tmp_path / "features"
    argv = ["extract", *slides, "--encoder", data.encoder, "--out", out, *FAST]
    code, stdout, err = run([*argv, "--json"], capsys)
    assert code == 0 and error_lines(err) == []
    assert json.loads(stdout) == {p.stem: "done" for p in slides}
    times = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, stdout, _ = run([*argv, "--json"], capsys)
    assert code == 0 and json.loads(stdout) == {p.stem: "skipped" for p in slides}
    code, stdout, _ = run(argv, capsys)
    assert code == 0 and stdout.startswith("0 extracted, 2 already complete, 0 failed")
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == times


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], None),  # None: the default model's own mode (its views, band and stain)
        (["--views", "1"], TileMode()),
        (["--views", "4"], TileMode(views=4)),
    ],
)
def test_extract_with_the_default_encoder_takes_the_default_models_mode(
    data: WorkflowData,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    expected: TileMode | None,
) -> None:
    seen = {}

    def record(slides: list, out: Path, encoder: object, mode: object, options: object) -> dict:
        seen["mode"] = mode
        return {}

    monkeypatch.setattr(extract_workflow, "extract_slides", record)
    code, _, err = run(["extract", *data.slides("testing"), "--out", tmp_path / "f", *extra], capsys)
    assert code == 0, err
    default_mode = model_tile_mode(default_model_path())
    assert default_mode.views > 1 and default_mode.on_demand is not None  # the shipped model uses both
    assert seen["mode"] == (default_mode if expected is None else expected)


def test_extract_into_stores_of_another_encoder(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slides = data.slides()[:2]
    out = copy_tree(data.features, tmp_path / "features")
    hashes = (load_encoder(data.encoder).hash, load_encoder(data.other_encoder).hash)
    argv = ["extract", *slides, "--encoder", data.other_encoder, "--out", out, *FAST]
    code, stdout, err = run(argv, capsys)
    assert code == 1 and stdout.startswith("0 extracted, 0 already complete, 2 failed")
    lines = error_lines(err)
    assert len(lines) == 2
    for path, line in zip(slides, lines, strict=True):
        assert line.startswith(f"error: {path.stem}: ")
        assert all(text in line for text in (*hashes, ENCODER_NAME, OTHER_ENCODER_NAME))
    code, stdout, _ = run([*argv, "--json"], capsys)
    results = json.loads(stdout)
    assert code == 1 and all(why.startswith("failed: ") and hashes[0] in why for why in results.values())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--val-labels", "labels.csv"], "--val-features and --val-labels go together"),
        (["--val-annotations", "ann"], "--val-annotations needs --val-features"),
    ],
)
def test_train_validation_options_go_together(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["train", "--features", data.features, "--labels", data.labels, "--out", tmp_path / "model", *extra]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert_one_line_error(err, message)
    assert not (tmp_path / "model").exists()


def test_train_writes_model_folder(data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    argv = ["train", "--features", data.features, "--labels", data.labels, "--out", out, "--epochs", "1"]
    code, stdout, err = run(argv, capsys)
    assert code == 0 and error_lines(err) == []
    assert stdout.startswith(f"wrote {out} (best epoch 1, validation AUC ")
    assert {"model.json", "metrics.csv", "baseline.json"} <= {p.name for p in out.iterdir()}
    meta = json.loads((out / "model.json").read_text())
    assert meta["encoder"] == ENCODER_NAME and meta["training"]["epochs_run"] == 1

    code, stdout, err = run(["predict", data.slide("test_001"), "--model", out, "--json", *FAST], capsys)
    assert code == 0 and json.loads(stdout)[0]["model"] == "model"
