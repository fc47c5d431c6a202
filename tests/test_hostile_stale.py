"""Stale results and provenance (issue 25, items 1, 15, 16c, 16d, 17): results record the model and the slide
file that produced them and a rerun redoes what no longer matches; cohort.csv cells are never spreadsheet
formulas and predict's tab-separated lines never split; an unreachable scheduler leaves nothing; worker warnings
are one line; a synthetic cohort is never mixed with another. See docs/hostile-inputs.md, "Second round"."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_error, run, snapshot
from PIL import Image
from workflow_fixtures import WorkflowData, copy_tree, workflow_data, write_blank_slide

from wsi_mamba.cli import main
from wsi_mamba.workflows.provenance import model_sha256, slide_identity

pytest.importorskip("distributed")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)


@pytest.fixture(scope="module")
def scheduler():
    """A running scheduler with one single-threaded worker process (each cohort run connects to it: no
    worker start-up per run); closed after the module."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    ) as cluster:
        yield cluster.scheduler_address





def cohort(manifest: Path, out: Path, model: Path, scheduler: str, capsys) -> tuple[int, dict, str]:
    """``wsi-mamba cohort ... --json`` on the module's scheduler: exit code, summary, stderr."""
    argv = ["cohort", manifest, "--out", out, "--model", model, "--scheduler", scheduler]
    code, stdout, err = run([*argv, "--torch-threads", "1", "--no-progress", "--json"], capsys)
    assert "Traceback" not in err, err
    return code, json.loads(stdout), err


def rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "cohort.csv", newline="") as handle:
        return {row["slide"]: row for row in csv.DictReader(handle)}


def result(out: Path, name: str) -> dict:
    return json.loads((out / "slides" / f"{name}.json").read_text())


def model_name(model: Path) -> str:
    return json.loads((model / "model.json").read_text())["name"]


def two_slides(data: WorkflowData, folder: Path) -> Path:
    """images/a.tif and images/b.tif (the two testing slides) and manifest.csv listing them."""
    (folder / "images").mkdir(parents=True)
    for name, source in zip("ab", data.slides("testing"), strict=True):
        shutil.copyfile(source, folder / "images" / f"{name}.tif")
    (folder / "manifest.csv").write_text("slide\nimages/a.tif\nimages/b.tif\n")
    return folder / "manifest.csv"


# ----------------------------------------------------------------------------------- 1. stale results


def test_cohort_redoes_results_of_other_weights(
    data: WorkflowData, scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Results record the model's hash; another folder of the same name, then the model retrained in place
    (`train --out model1 --overwrite`), make a rerun redo every slide, saying so; then nothing is redone."""
    manifest = two_slides(data, tmp_path)
    out = tmp_path / "out"
    model1 = copy_tree(data.model, tmp_path / "model1")
    code, summary, _ = cohort(manifest, out, model1, scheduler, capsys)
    assert code == 0 and summary["processed"] == 2
    first = model_sha256(model1)
    assert {result(out, n)["model_sha256"] for n in "ab"} == {first}
    assert {row["model_sha256"] for row in rows(out).values()} == {first}

    other = copy_tree(data.model, tmp_path / "elsewhere" / "model1")  # same name, another threshold
    meta = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**meta, "threshold": 0.01}))
    code, summary, err = cohort(manifest, out, other, scheduler, capsys)
    assert code == 0 and (summary["processed"], summary["skipped"]) == (2, 0), err
    assert summary["redone"] == {"a": "model changed", "b": "model changed"}
    assert "2 redone: model changed (a, b)" in err
    assert {result(out, n)["model_sha256"] for n in "ab"} == {model_sha256(other)} != {first}
    assert {row["prediction"] for row in rows(out).values()} == {"tumor"}  # the new threshold's answers

    argv = ["train", "--features", data.features, "--labels", data.labels, "--out", model1, "--overwrite"]
    code, _, err = run([*argv, "--epochs", "1", "--seed", "7", "--name", model_name(other)], capsys)
    assert code == 0, err
    retrained = model_sha256(model1)
    assert retrained != first
    code, summary, err = cohort(manifest, out, model1, scheduler, capsys)
    assert code == 0 and (summary["processed"], summary["skipped"]) == (2, 0), err
    assert "2 redone: model changed" in err
    for name, row in rows(out).items():
        assert result(out, name)["model_sha256"] == row["model_sha256"] == retrained
        assert float(row["score"]) == result(out, name)["score"]

    code, summary, err = cohort(manifest, out, model1, scheduler, capsys)  # nothing changed: nothing redone
    assert code == 0 and (summary["processed"], summary["skipped"], summary["redone"]) == (0, 2, {})
    assert "redone" not in err


def test_cohort_redoes_a_slide_whose_file_changed(
    data: WorkflowData, scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest that points a slide's name at another file, and a file replaced in place: each slide is
    redone ("slide file changed"), its row shows the new file's score, the other slide is kept."""
    manifest = two_slides(data, tmp_path)
    out = tmp_path / "out"
    code, summary, _ = cohort(manifest, out, data.model, scheduler, capsys)
    assert code == 0 and summary["processed"] == 2
    kept = (out / "slides" / "b.json").stat().st_mtime_ns
    assert result(out, "a")["slide_file"] == slide_identity(tmp_path / "images" / "a.tif")

    (tmp_path / "other").mkdir()
    shutil.copyfile(data.slide("tumor_001"), tmp_path / "other" / "a.tif")
    moved = tmp_path / "moved.csv"
    moved.write_text("slide\nother/a.tif\nimages/b.tif\n")
    code, summary, err = cohort(moved, out, data.model, scheduler, capsys)
    assert code == 0 and (summary["processed"], summary["skipped"]) == (1, 1), err
    assert summary["redone"] == {"a": "slide file changed"} and "1 redone: slide file changed (a)" in err
    assert result(out, "a")["slide_file"] == slide_identity(tmp_path / "other" / "a.tif")
    row = rows(out)["a"]
    assert row["path"] == "other/a.tif" and float(row["score"]) == result(out, "a")["score"]
    assert row["slide_head_sha256"] == slide_identity(tmp_path / "other" / "a.tif")["head_sha256"]
    assert (out / "slides" / "b.json").stat().st_mtime_ns == kept

    shutil.copyfile(data.slide("tumor_002"), tmp_path / "images" / "b.tif")  # replaced in place
    code, summary, err = cohort(moved, out, data.model, scheduler, capsys)
    assert code == 0 and summary["redone"] == {"b": "slide file changed"} and summary["processed"] == 1, err
    assert result(out, "b")["slide_file"] == slide_identity(tmp_path / "images" / "b.tif")


def test_predict_results_record_their_model_and_slide(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two `predict --out` runs with two models of one name: each result JSON names its own model's hash and
    the slide file; no heatmap of the first model is left beside the second model's result."""
    slide = data.slide("test_001")
    out = tmp_path / "out"
    first = copy_tree(data.model, tmp_path / "one" / "model1")
    second = copy_tree(data.model, tmp_path / "two" / "model1")
    meta = json.loads((second / "model.json").read_text())
    (second / "model.json").write_text(json.dumps({**meta, "threshold": 0.01}))
    assert run(["predict", slide, "--out", out, "--model", first, "--heatmap"], capsys)[0] == 0
    written = json.loads((out / "test_001.json").read_text())
    assert written["model_sha256"] == model_sha256(first) and written["slide_file"] == slide_identity(slide)
    assert (out / "test_001.heatmap.png").exists()

    code, _, err = run(["predict", slide, "--out", out, "--model", second], capsys)
    assert code == 0, err
    written = json.loads((out / "test_001.json").read_text())
    assert written["model_sha256"] == model_sha256(second) != model_sha256(first)
    assert written["model"] == model_name(first) and written["prediction"] == "tumor"
    assert sorted(p.name for p in out.iterdir()) == ["test_001.json"]


# ----------------------------------------------------------------------------------- 15. CSV and TSV text


def test_cohort_csv_cells_are_never_formulas(
    data: WorkflowData, scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    names = ["=cmd|' calc'!A0", "@SUM(1+1)"]
    for name, source in zip(names, data.slides("testing"), strict=True):
        shutil.copyfile(source, images / f"{name}.tif")
    out = tmp_path / "out"
    code, summary, err = cohort(images, out, data.model, scheduler, capsys)
    assert code == 0 and summary["done"] == 2, err
    with open(out / "cohort.csv", newline="") as handle:
        table = list(csv.reader(handle))
    cells = [row[:2] for row in table[1:]]
    assert sorted(cells) == sorted([f"'{n}", f"'{n}.tif"] for n in names)
    assert all(float(row[2]) >= 0 and int(row[4]) > 0 for row in table[1:])  # numbers stay numbers
    assert not [cell for row in table for cell in row if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]


def test_predict_lines_escape_tabs_and_newlines(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slide = tmp_path / "a\tb\nc\\d\re.tif"
    shutil.copyfile(data.slide("test_001"), slide)
    code, stdout, err = run(["predict", slide, "--model", data.model], capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[0] == "a\\tb\\nc\\\\d\\re", stdout
    assert len(lines[0].split("\t")) == 3


# ----------------------------------------------------------------------------------- 16. scheduler, warnings


def test_unreachable_scheduler_leaves_no_output(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = two_slides(data, tmp_path)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    argv = ["cohort", manifest, "--out", out, "--model", data.model, "--scheduler", "tcp://127.0.0.1:1"]
    code, stdout, err = run(argv, capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, "tcp://127.0.0.1:1: cannot reach the dask scheduler")
    assert not out.exists() and snapshot(tmp_path) == before, "no folder, no pending CSV, no lock"


def test_cohort_worker_warnings_are_one_line(
    data: WorkflowData, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A slide without tissue warns in the worker process (a local cluster): one `warning:` line, no file
    name and line number of the source, no source line."""
    images = tmp_path / "images"
    images.mkdir()
    write_blank_slide(images / "blank.tif", size=512)
    argv = ["cohort", images, "--out", tmp_path / "out", "--model", data.model, "--workers", "1"]
    code = main([str(a) for a in [*argv, "--torch-threads", "1", "--no-progress"]])
    err = capfd.readouterr().err
    assert code == 0, err
    warned = [line for line in err.splitlines() if "no tissue" in line]
    assert warned and all(line.startswith("warning: ") for line in warned), err
    assert "warnings.warn(" not in err and "UserWarning" not in err, err


# ----------------------------------------------------------------------------------- 17. synth reruns


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_synth_rerun_with_other_parameters_is_refused_or_replaces_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "synth"
    argv = ["synth", out, "--slides", "4", "--size", "256", "--flavour", "tiff", "--seed"]
    assert run([*argv, "0"], capsys)[0] == 0
    assert run([*argv, "0"], capsys)[0] == 0  # the same parameters: resumed
    before = snapshot(tmp_path)
    code, stdout, err = run([*argv, "3"], capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, f"{out}: holds a synthetic cohort of other parameters (seed 0 -> 3)", "--overwrite")
    assert snapshot(tmp_path) == before

    code, _, err = run([*argv, "3", "--overwrite"], capsys)
    assert code == 0, err
    assert run(["synth", tmp_path / "fresh", *argv[2:], "3"], capsys)[0] == 0
    assert digests(out) == digests(tmp_path / "fresh"), "slides, labels and annotations all of seed 3"


def write_patches(root: Path, seed: int) -> Path:
    """A few random H&E-coloured 96 px patches in 0/ and 1/ (as tests/test_synth_from_patches.py's)."""
    rng = np.random.default_rng(seed)
    for label, count, base in (("0", 12, (225, 150, 190)), ("1", 6, (130, 70, 165))):
        (root / label).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(np.asarray(base) + rng.normal(0, 18, (96, 96, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"p{i:03d}.png")
    return root


def test_synth_from_patches_rerun_with_another_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patches = write_patches(tmp_path / "patches", seed=1)
    out = tmp_path / "real"
    argv = ["synth", out, "--from-patches", patches, "--slides", "1", "--size", "1152", "--seed"]
    assert run([*argv, "0"], capsys)[0] == 0
    before = snapshot(tmp_path)
    code, _, err = run([*argv, "3"], capsys)
    assert code == 1
    assert_one_error(err, f"{out}: holds a synthetic cohort of other parameters (seed 0 -> 3)", "--overwrite")
    assert snapshot(tmp_path) == before
    (out / "synth.json").unlink()  # parameters not recorded (an older wsi-mamba): refused as well
    code, _, err = run([*argv, "0"], capsys)
    assert code == 1
    assert_one_error(err, "whose parameters are not recorded", "--overwrite")

    assert run([*argv, "3", "--overwrite"], capsys)[0] == 0
    assert run(["synth", tmp_path / "fresh", *argv[2:], "3"], capsys)[0] == 0
    assert digests(out) == digests(tmp_path / "fresh"), "the slide, its labels and patches of seed 3"


def test_cohort_warns_about_results_without_a_fingerprint(
    data: WorkflowData, tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A result written before results recorded their provenance is kept (it cannot be shown stale), but the run
    says so once, naming the slide, so a user knows those scores were not checked against the model."""
    from wsi_mamba.workflows.bundle import load_bundle

    images = tmp_path / "images"
    images.mkdir()
    shutil.copyfile(data.slide("test_001"), images / "old.tif")
    out = tmp_path / "out"
    (out / "slides").mkdir(parents=True)
    legacy = {"slide": "old", "score": 0.5, "tiles": 3, "model": load_bundle(data.model).name}
    (out / "slides" / "old.json").write_text(json.dumps(legacy))
    with pytest.warns(UserWarning) as caught:
        code, summary, err = cohort(images, out, data.model, scheduler, capsys)
    assert code == 0 and summary["skipped"] == 1, (summary, err)
    warned = [str(w.message) for w in caught if "no model or slide fingerprint" in str(w.message)]
    assert len(warned) == 1 and "(old)" in warned[0], [str(w.message) for w in caught]
    (out / "slides" / "old.json").unlink()
    code, summary, err = cohort(images, out, data.model, scheduler, capsys)
    assert code == 0 and summary["processed"] == 1
    with warnings.catch_warnings(record=True) as caught:  # a result of this version: nothing to warn about
        warnings.simplefilter("always")
        code, summary, err = cohort(images, out, data.model, scheduler, capsys)
    assert code == 0 and summary["skipped"] == 1
    assert not [w for w in caught if "fingerprint" in str(w.message)]
