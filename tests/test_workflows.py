"""Workflows at the API level: train and evaluate outputs, order of the manifest, resumable extraction,
features of another encoder refused, predict == extract + evaluate, slides without tissue, model folders
that are not ours (nothing unpickled), bad labels."""

from __future__ import annotations

import copy
import csv
import json
import random
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from workflow_fixtures import (
    ENCODER_NAME,
    OTHER_ENCODER_NAME,
    READ_OPTIONS,
    TILE_PX,
    TRAINING,
    WorkflowData,
    copy_tree,
    workflow_data,
    write_blank_slide,
    write_booby_pickle,
)

from wsi_mamba.features.modes import TileMode
from wsi_mamba.features.options import ReadOptions
from wsi_mamba.features.store import PARTIAL, is_complete, read_store, store_path, write_store
from wsi_mamba.models.encoder import load_encoder
from wsi_mamba.outputs.atomic import TEMP_MARKER
from wsi_mamba.workflows import extract as extract_module
from wsi_mamba.workflows.bundle import ModelBundle, load_bundle
from wsi_mamba.workflows.extract import extract_slides
from wsi_mamba.workflows.inputs import read_labels
from wsi_mamba.workflows.predict import predict_slide
from wsi_mamba.workflows.reports.evaluate import evaluate, score_features
from wsi_mamba.workflows.training.slide_examples import SlideSet
from wsi_mamba.workflows.training.slide_training import train_slide_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(data: WorkflowData) -> ModelBundle:
    return load_bundle(data.model)


def file_times(folder: Path) -> dict[str, int]:
    """Modification times (ns) of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_store(a: Path, b: Path) -> None:
    x, y = read_store(a), read_store(b)
    assert x.name == y.name
    for key in ("features", "coords", "grid", "colour", "tissue_mask"):
        np.testing.assert_array_equal(getattr(x, key), getattr(y, key), err_msg=key)
    assert x.attrs == y.attrs


def shuffled_labels(source: Path, target: Path, seed: int) -> Path:
    """``source`` with its data rows in another order (the header stays first)."""
    with open(source, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    order = list(rows)
    while order == rows:
        random.Random(seed).shuffle(order)
        seed += 1
    with open(target, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *order])
    return target


def per_slide_scores(out: Path) -> dict[str, str]:
    with open(out / "per_slide.csv", newline="") as handle:
        return {row["slide"]: row["score"] for row in csv.DictReader(handle)}


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if TEMP_MARKER in p.name or p.name.endswith((PARTIAL, ".tmp"))]


# ------------------------------------------------------------------------------------------------ train


def test_train_writes_model_folder(data: WorkflowData, bundle: ModelBundle) -> None:
    model = data.model
    expected = {
        "model.json",
        "metrics.csv",
        "baseline.json",
        "encoder.safetensors",
        "encoder.json",
        "slide_model.safetensors",
        "slide_model.json",
    }
    assert {p.name for p in model.iterdir()} == expected
    assert not model.with_name(model.name + ".partial").exists()
    meta = json.loads((model / "model.json").read_text())
    encoder_hash = load_encoder(data.encoder).hash
    assert meta["format"] == "wsi-mamba/model"
    assert (meta["encoder"], meta["encoder_hash"], meta["tile_px"]) == (ENCODER_NAME, encoder_hash, TILE_PX)
    training = meta["training"]
    assert training["config"]["epochs"] == TRAINING.epochs and training["epochs_run"] == TRAINING.epochs
    names = set(read_labels(data.labels))
    train, validation = set(training["slides"]["train"]), set(training["slides"]["validation"])
    assert train | validation == names and not train & validation and validation
    with open(model / "metrics.csv", newline="") as handle:
        log = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in log] == [1, 2]
    assert set(log[0]) == {"epoch", "train_loss", "val_loss", "val_auc", "lr"}
    assert all(np.isfinite(float(r["train_loss"])) for r in log)
    baseline = json.loads((model / "baseline.json").read_text())
    assert len(baseline["mean"]) == len(baseline["scale"]) == len(baseline["coef"]) > 0
    assert isinstance(baseline["intercept"], float)
    assert bundle.encoder.hash == encoder_hash and bundle.encoder.name == ENCODER_NAME
    assert bundle.threshold == meta["threshold"] and meta["threshold_rule"]["target_specificity"] == 0.95
    assert bundle.baseline == baseline


def test_train_is_reproducible_and_ignores_label_order(data: WorkflowData, tmp_path: Path) -> None:
    labels = shuffled_labels(data.labels, tmp_path / "labels.csv", seed=1)
    again = train_slide_model(data.features, labels, tmp_path / "model", cfg=TRAINING, progress=False)
    first = load_file(str(data.model / "slide_model.safetensors"))
    second = load_file(str(again / "slide_model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (again / "baseline.json").read_text() == (data.model / "baseline.json").read_text()


def test_train_selects_on_validation_slides_of_another_folder(data: WorkflowData, tmp_path: Path) -> None:
    labels = read_labels(data.labels)
    val_names = sorted(labels)[:2] + sorted(labels)[-2:]  # two of each class: the names sort by class
    assert {labels[n] for n in val_names} == {0, 1}
    val_features = tmp_path / "val-features"
    val_features.mkdir()
    for name in val_names:
        shutil.copytree(store_path(data.features, name), store_path(val_features, name))
    model = train_slide_model(
        data.features,
        data.labels,
        tmp_path / "model",
        cfg=TRAINING,
        progress=False,
        validation=SlideSet(val_features, data.labels),
    )
    training = json.loads((model / "model.json").read_text())["training"]
    assert training["slides"]["train"] == sorted(labels)  # every slide of --features trains
    assert training["slides"]["validation"] == val_names
    assert training["validation"]["features"] == str(val_features)
    log = list(csv.DictReader((model / "metrics.csv").open()))
    assert all(np.isfinite(float(r["val_auc"])) for r in log)
    assert training["best_val_auc"] == max(float(r["val_auc"]) for r in log)
    with pytest.raises(ValueError, match="choose one"):
        train_slide_model(
            data.features,
            data.labels,
            tmp_path / "m2",
            cfg=replace(TRAINING, folds=2),
            progress=False,
            validation=SlideSet(val_features, data.labels),
        )


# ------------------------------------------------------------------------------------------------ evaluate


def test_evaluate_writes_reports(data: WorkflowData, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    metrics = evaluate(
        data.model, data.features, data.labels, out, data.annotations, baseline=True, n_boot=50, progress=False
    )
    assert {p.name for p in out.iterdir()} == {"metrics.json", "per_slide.csv", "roc.png", "froc.json"}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    slides = metrics["slides"]
    assert slides["n"] == 6 and slides["n_positive"] == 3 and 0.0 <= slides["auc"] <= 1.0
    assert slides["auc_ci_low"] <= slides["auc"] <= slides["auc_ci_high"]
    assert metrics["model"] == data.model.name and metrics["missing_features"] == []
    assert 0.0 <= metrics["baseline"]["auc"] <= 1.0
    assert metrics["froc"]["score"] is not None and 0.0 <= metrics["froc"]["score"] <= 1.0
    froc = json.loads((out / "froc.json").read_text())
    assert froc and isinstance(froc, dict)
    assert (out / "roc.png").read_bytes()[:8] == PNG_MAGIC
    with open(out / "per_slide.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["slide"] for r in rows] == sorted(read_labels(data.labels))
    assert all(r["score"] and r["baseline_score"] and r["prediction"] in ("0", "1") for r in rows)
    assert no_temporaries(out)

    plain = evaluate(data.model, data.features, data.labels, tmp_path / "plain", n_boot=50, progress=False)
    assert {p.name for p in (tmp_path / "plain").iterdir()} == {"metrics.json", "per_slide.csv", "roc.png"}
    assert "froc" not in plain and "baseline" not in plain
    assert plain["slides"] == metrics["slides"]


def test_evaluate_ignores_label_order(data: WorkflowData, tmp_path: Path) -> None:
    reference = evaluate(data.model, data.features, data.labels, tmp_path / "ref", n_boot=50, progress=False)
    scores = per_slide_scores(tmp_path / "ref")
    assert len(scores) == 6 and all(scores.values())
    labels = shuffled_labels(data.labels, tmp_path / "labels.csv", seed=2)
    metrics = evaluate(data.model, data.features, labels, tmp_path / "shuffled", n_boot=50, progress=False)
    assert per_slide_scores(tmp_path / "shuffled") == scores
    assert metrics["slides"] == reference["slides"]


# ------------------------------------------------------------------------------------------------ predict


def test_predict_ignores_slide_order(data: WorkflowData, bundle: ModelBundle) -> None:
    slides = data.slides()[:3]

    def scores(order: list[Path]) -> dict[str, tuple]:
        results = [predict_slide(p, bundle, READ_OPTIONS) for p in order]
        return {r["slide"]: (r["score"], r["max_tile_score"], r["tiles"]) for r in results}

    forward = scores(slides)
    assert scores([slides[2], slides[0], slides[1]]) == forward  # every slide at another place
    assert all(score is not None for score, _, _ in forward.values())


def test_predict_does_not_depend_on_batching(data: WorkflowData, bundle: ModelBundle) -> None:
    path = data.slide("tumor_001")
    a = predict_slide(path, bundle, READ_OPTIONS)
    b = predict_slide(path, bundle, ReadOptions(batch_size=3, read_threads=1))
    assert a["tiles"] == b["tiles"] > 3
    assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_predict_records_the_whole_feature_mode(data: WorkflowData, bundle: ModelBundle) -> None:
    path = data.slide("tumor_001")
    assert predict_slide(path, bundle, READ_OPTIONS)["feature_mode"] == {"mode": "tile"}
    region = {"mode": "region", "region_px": 2 * TILE_PX, "region_overlap_px": 0}
    region_bundle = copy.copy(bundle)
    region_bundle.meta = {**bundle.meta, "feature_mode": region}  # a model trained on region features
    with warnings.catch_warnings():  # region features are out of this tile-mode model's domain: warned, not tested
        warnings.simplefilter("ignore")
        result = predict_slide(path, region_bundle, READ_OPTIONS)
    assert (result["feature_mode"], result["views"]) == (region, 1) and result["tiles"] > 0
    with pytest.raises(ValueError, match=r"trained on features of region mode \(128 px, overlap 0 px\)"):
        predict_slide(path, region_bundle, READ_OPTIONS, TileMode(4))


def test_predict_equals_extract_then_score(data: WorkflowData, bundle: ModelBundle) -> None:
    """Features on the fly (predict) and from the stores (evaluate) give the same tiles and scores."""
    for path in data.slides():
        result = predict_slide(path, bundle, READ_OPTIONS)
        stored = read_store(store_path(data.features, path.stem))
        score, tile_scores = score_features(bundle, stored)
        assert result["tiles"] == len(stored) > 0
        assert result["score"] == pytest.approx(score, abs=1e-5)
        assert result["max_tile_score"] == pytest.approx(float(tile_scores.max()), abs=1e-5)
        assert result["prediction"] == ("tumor" if score >= bundle.threshold else "normal")


def test_predict_slide_without_tissue(bundle: ModelBundle, tmp_path: Path) -> None:
    blank = write_blank_slide(tmp_path / "blank.tif")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="no tissue"):
        result = predict_slide(blank, bundle, READ_OPTIONS, out_dir=out, heatmap=True)
    assert result["score"] is None and result["prediction"] is None
    assert result["tiles"] == 0 and result["reason"] == "no tissue found"
    assert [p.name for p in out.iterdir()] == ["blank.json"]  # no heatmap without tiles
    assert json.loads((out / "blank.json").read_text()) == result


# ------------------------------------------------------------------------------------------------ resume


def test_extract_resumes_after_a_crash_mid_slide(data: WorkflowData, tmp_path: Path) -> None:
    """A crash while a slide is encoded leaves no store under its name; the rerun skips what was
    complete (files untouched), does the rest, and ends with the stores of an uninterrupted run."""
    by_size = sorted(data.slides(), key=lambda p: len(read_store(store_path(data.features, p.stem))))
    slides = [by_size[0], by_size[-1], by_size[1]]  # the crash comes after the first batch of the biggest
    assert len(read_store(store_path(data.features, slides[1].stem))) > READ_OPTIONS.batch_size
    # (the calls show that the first slide, already complete, is not encoded again)
    out = tmp_path / "features"
    encoder = load_encoder(data.encoder)
    assert extract_slides(slides[:1], out, encoder, read=READ_OPTIONS, progress=False) == {slides[0].stem: "done"}
    before = file_times(out / f"{slides[0].stem}.zarr")

    real_view_features, calls = encoder.view_features, []

    def crashing_view_features(x: torch.Tensor, views: int = 1) -> torch.Tensor:  # what each batch goes through
        calls.append(len(x))
        if len(calls) > 1:  # an interruption (a per-slide Exception would be recorded and the batch go on)
            raise KeyboardInterrupt("simulated crash")
        return real_view_features(x, views)

    encoder.view_features = crashing_view_features  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt, match="simulated crash"):
        extract_slides(slides, out, encoder, read=READ_OPTIONS, progress=False)
    n_tiles = len(read_store(store_path(data.features, slides[1].stem)))
    assert calls == [READ_OPTIONS.batch_size, min(READ_OPTIONS.batch_size, n_tiles - READ_OPTIONS.batch_size)]
    assert sorted(p.name for p in out.iterdir()) == [f"{slides[0].stem}.zarr"]

    encoder.view_features = real_view_features  # type: ignore[method-assign]
    results = extract_slides(slides, out, encoder, read=READ_OPTIONS, progress=False)
    assert results == {slides[0].stem: "skipped", slides[1].stem: "done", slides[2].stem: "done"}
    assert file_times(out / f"{slides[0].stem}.zarr") == before
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.zarr" for p in slides)
    for path in slides:
        assert_same_store(out / f"{path.stem}.zarr", store_path(data.features, path.stem))


def test_extract_redoes_partial_and_damaged_stores(
    data: WorkflowData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slides = data.slides()[:4]
    names = [p.stem for p in slides]
    out = tmp_path / "features"
    encoder = load_encoder(data.encoder)

    # 0: a crash between writing the store and renaming it: a whole `.partial` folder, nothing under the name
    def write_then_crash(path: Path, store_data) -> Path:
        write_store(path, store_data)
        path.rename(path.with_name(path.name + PARTIAL))
        raise KeyboardInterrupt("simulated crash before the rename")  # not a per-slide failure: it stops the run

    with monkeypatch.context() as patch:
        patch.setattr(extract_module, "write_store", write_then_crash)
        with pytest.raises(KeyboardInterrupt, match="simulated crash"):
            extract_slides(slides[:1], out, encoder, read=READ_OPTIONS, progress=False)
    assert is_complete(out / f"{names[0]}.zarr{PARTIAL}") and not (out / f"{names[0]}.zarr").exists()
    # 1: a bogus partial folder
    (out / f"{names[1]}.zarr{PARTIAL}").mkdir()
    (out / f"{names[1]}.zarr{PARTIAL}" / "zarr.json").write_text("{")
    # 2: a damaged folder under the final name
    (out / f"{names[2]}.zarr").mkdir()
    (out / f"{names[2]}.zarr" / "zarr.json").write_text("not json")
    # 3: a complete store of the same encoder
    copy_tree(store_path(data.features, names[3]), out / f"{names[3]}.zarr")
    before = file_times(out / f"{names[3]}.zarr")

    results = extract_slides(slides, out, encoder, read=READ_OPTIONS, progress=False)
    assert results == {names[0]: "done", names[1]: "done", names[2]: "done", names[3]: "skipped"}
    assert file_times(out / f"{names[3]}.zarr") == before
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.zarr" for n in names)  # no .partial left
    for name in names:
        assert_same_store(out / f"{name}.zarr", store_path(data.features, name))


# ------------------------------------------------------------------------------------------------ encoders


def assert_names_both(message: str, hashes: tuple[str, str], names: tuple[str, ...] = ()) -> None:
    for text in (*hashes, *names):
        assert text in message, (text, message)


def test_extract_into_stores_of_another_encoder_fails(data: WorkflowData, tmp_path: Path) -> None:
    slides = data.slides()[:2]
    out = copy_tree(data.features, tmp_path / "features")
    before = file_times(out)
    other = load_encoder(data.other_encoder)
    ours = load_encoder(data.encoder)
    assert other.hash != ours.hash
    results = extract_slides(slides, out, other, read=READ_OPTIONS, progress=False)
    assert set(results) == {p.stem for p in slides}
    for why in results.values():
        assert why.startswith("failed: ")
        assert_names_both(why, (other.hash, ours.hash), (ENCODER_NAME, OTHER_ENCODER_NAME, "this extraction"))
    assert file_times(out) == before


def test_evaluate_and_train_refuse_features_of_another_encoder(data: WorkflowData, tmp_path: Path) -> None:
    other = load_encoder(data.other_encoder)
    ours = load_encoder(data.encoder)
    hashes = (other.hash, ours.hash)
    foreign = tmp_path / "foreign"
    slides = data.slides()[:2]
    assert set(extract_slides(slides, foreign, other, read=READ_OPTIONS, progress=False).values()) == {"done"}

    with pytest.raises(ValueError) as caught:
        evaluate(data.model, foreign, data.labels, tmp_path / "eval", n_boot=10, progress=False)
    assert_names_both(str(caught.value), hashes, (ENCODER_NAME, OTHER_ENCODER_NAME))
    assert not (tmp_path / "eval").exists()

    mixed = copy_tree(data.features, tmp_path / "mixed")  # one store of the other encoder among ours
    shutil.rmtree(mixed / f"{slides[0].stem}.zarr")
    shutil.copytree(foreign / f"{slides[0].stem}.zarr", mixed / f"{slides[0].stem}.zarr")
    with pytest.raises(ValueError) as caught:
        evaluate(data.model, mixed, data.labels, tmp_path / "eval", n_boot=10, progress=False)
    assert_names_both(str(caught.value), hashes, (ENCODER_NAME, OTHER_ENCODER_NAME, slides[0].stem))
    with pytest.raises(ValueError) as caught:
        train_slide_model(mixed, data.labels, tmp_path / "model", cfg=TRAINING, progress=False)
    assert_names_both(str(caught.value), hashes, (ENCODER_NAME, OTHER_ENCODER_NAME))

    with pytest.raises(ValueError) as caught:  # the stores are ours, the checkpoint passed is not
        train_slide_model(
            data.features,
            data.labels,
            tmp_path / "model",
            encoder_path=data.other_encoder,
            cfg=TRAINING,
            progress=False,
        )
    assert_names_both(str(caught.value), hashes, (ENCODER_NAME,))
    with pytest.raises(ValueError, match="come from encoder") as caught:  # validation slides of another encoder
        train_slide_model(
            data.features,
            data.labels,
            tmp_path / "model",
            cfg=TRAINING,
            progress=False,
            validation=SlideSet(foreign, data.labels),
        )
    assert_names_both(str(caught.value), hashes, (ENCODER_NAME, OTHER_ENCODER_NAME))
    assert not (tmp_path / "model").exists()


def test_model_folder_with_swapped_encoder_is_refused(data: WorkflowData, tmp_path: Path) -> None:
    model = copy_tree(data.model, tmp_path / "model")
    shutil.copyfile(data.other_encoder, model / "encoder.safetensors")
    shutil.copyfile(data.other_encoder.with_suffix(".json"), model / "encoder.json")
    with pytest.raises(ValueError) as caught:
        load_bundle(model)
    assert_names_both(str(caught.value), (load_encoder(data.other_encoder).hash, load_encoder(data.encoder).hash))


# ------------------------------------------------------------------------------------------------ bad inputs


def test_model_loading_never_unpickles(data: WorkflowData, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    pickle_file = write_booby_pickle(tmp_path / "model.pt", marker)

    cases: dict[str, tuple[Path, str]] = {}
    cases["pickle file"] = (pickle_file, "not a wsi-mamba model folder")
    folder = tmp_path / "pickled-manifest"
    folder.mkdir()
    shutil.copyfile(pickle_file, folder / "model.json")
    cases["pickle as model.json"] = (folder, "not valid JSON")
    for part in ("encoder", "slide_model"):
        model = copy_tree(data.model, tmp_path / f"pickled-{part}")
        shutil.copyfile(pickle_file, model / f"{part}.safetensors")
        cases[f"pickle as {part}.safetensors"] = (model, "safetensors file")
    for label, (path, problem) in cases.items():
        with pytest.raises(ValueError, match=problem) as caught:
            load_bundle(path)
        assert str(path) in str(caught.value), label
        assert not marker.exists(), f"{label}: something was unpickled"


def test_model_folder_problems_name_the_folder(data: WorkflowData, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no model\.json") as caught:
        load_bundle(empty)
    assert str(empty) in str(caught.value)
    with pytest.raises(ValueError, match="model not found"):
        load_bundle(tmp_path / "missing")
    corrupt = copy_tree(data.model, tmp_path / "corrupt")
    (corrupt / "model.json").write_text('{"format": "wsi-mamba/model", ')
    with pytest.raises(ValueError, match="not valid JSON") as caught:
        load_bundle(corrupt)
    assert str(corrupt / "model.json") in str(caught.value)
    (corrupt / "model.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a wsi-mamba/model"):
        load_bundle(corrupt)
    broken = copy_tree(data.model, tmp_path / "broken-baseline")
    (broken / "baseline.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON") as caught:
        load_bundle(broken)
    assert str(broken / "baseline.json") in str(caught.value)
    assert load_bundle(data.model / "model.json").encoder.hash == load_encoder(data.encoder).hash


def test_bad_label_names_file_and_line(data: WorkflowData, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\nnormal_001,Normal\ntumor_001,Maybe\n")
    with pytest.raises(ValueError, match=rf"^{labels}:3: label 'Maybe'"):
        read_labels(labels)
    with pytest.raises(ValueError, match=rf"^{labels}:3: "):
        evaluate(data.model, data.features, labels, tmp_path / "eval", n_boot=10, progress=False)
    with pytest.raises(ValueError, match=rf"^{labels}:3: "):
        train_slide_model(data.features, labels, tmp_path / "model", cfg=TRAINING, progress=False)
