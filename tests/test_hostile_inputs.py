"""Hostile and careless inputs (issue 13): outputs never destroy what they did not create, locks, integrity
checks, batches that survive a bad slide, bounded decoding. Each case: one ``error:`` line, the right exit
code, nothing outside the output touched, no partial result under a final name, the previous result intact.
See docs/hostile-inputs.md for the catalogue."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_helpers import assert_one_error, dead_pid, run, snapshot
from slide_fixtures import gradient_image, shared_file, write_pyramid
from workflow_fixtures import TRAINING, WorkflowData, copy_tree, copy_with_small_tiles, workflow_data

from wsi_mamba.features.store import read_store
from wsi_mamba.outputs.atomic import TEMP_MARKER
from wsi_mamba.outputs.lock import lock_path, output_lock
from wsi_mamba.slide import open_slide
from wsi_mamba.slide.base import set_max_pixels
from wsi_mamba.slide.errors import SlideError
from wsi_mamba.workflows import bundle as bundle_module
from wsi_mamba.workflows import extract as extract_module
from wsi_mamba.workflows import predict as predict_module
from wsi_mamba.workflows.training.slide_training import train_slide_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)






# ----------------------------------------------------------------------------------- 1. train --out


def train_argv(data: WorkflowData, out: Path, *extra: str) -> list:
    return ["train", "--features", data.features, "--labels", data.labels, "--out", out, "--epochs", "1", *extra]


def test_train_refuses_a_folder_that_is_not_a_model(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("years of work\n")
    (tmp_path / "file.txt").write_text("a file\n")
    before = snapshot(tmp_path)
    for out in (notes, tmp_path / "file.txt", tmp_path):
        code, stdout, err = run(train_argv(data, out), capsys)
        assert code == 1 and stdout == ""
        assert_one_error(err, f"--out {out} exists and is not a wsi-mamba model folder")
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "notes"]


def test_train_refuses_its_own_inputs(data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features = copy_tree(data.features, tmp_path / "work" / "features")
    labels = tmp_path / "work" / "labels.csv"
    labels.write_bytes(data.labels.read_bytes())
    before = snapshot(tmp_path)
    argv = ["train", "--features", features, "--labels", labels, "--epochs", "1", "--overwrite", "--out"]
    for out in (features, tmp_path / "work", tmp_path, labels):
        code, _, err = run([*argv, out], capsys)
        assert code == 1
        assert_one_error(err, f"--out {out} is or contains an input of this command")
    assert snapshot(tmp_path) == before


def test_train_replaces_a_model_only_with_overwrite(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = copy_tree(data.model, tmp_path / "model")
    before = snapshot(model)
    code, _, err = run(train_argv(data, model), capsys)
    assert code == 1
    assert_one_error(err, f"--out {model} already holds a model", "--overwrite")
    assert snapshot(model) == before

    code, stdout, err = run(train_argv(data, model, "--overwrite", "--name", "again"), capsys)
    assert code == 0 and stdout.startswith(f"wrote {model} ")
    assert json.loads((model / "model.json").read_text())["name"] == "again"
    assert (model / "metrics.csv").exists()  # written inside the new folder before the swap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folder, no old copy, no lock


def test_failed_save_keeps_the_previous_model(
    data: WorkflowData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = copy_tree(data.model, tmp_path / "model")
    before = snapshot(model)

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module, "save_slide_model", crash)
    with pytest.raises(OSError, match="No space left"):
        train_slide_model(data.features, data.labels, model, cfg=TRAINING, progress=False, overwrite=True)
    assert snapshot(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not any(TEMP_MARKER in p.name for p in tmp_path.iterdir())


def test_model_folder_lock(data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    lock = lock_path(out)
    holder = {"pid": os.getppid(), "host": socket.gethostname()}  # a live process that is not us
    lock.write_text(json.dumps(holder))
    code, _, err = run(train_argv(data, out), capsys)
    assert code == 1
    assert_one_error(err, f"{out}: being written by process {os.getppid()} on {socket.gethostname()}")
    assert not out.exists() and lock.exists()

    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))  # stale: taken over
    code, _, err = run(train_argv(data, out), capsys)
    assert code == 0, err
    assert (out / "model.json").exists() and not lock.exists()


def test_lock_is_reentrant_and_released(tmp_path: Path) -> None:
    target = tmp_path / "x"
    with output_lock(target) as lock:
        with output_lock(target):
            assert lock.exists()
        assert lock.exists()
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert not lock.exists()


# ----------------------------------------------------------------------------------- 2. feature stores


def test_missing_or_damaged_chunk_is_an_error_naming_the_slide(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    features = copy_tree(data.features, tmp_path / "features")
    name = sorted(p.name for p in features.iterdir())[0].removesuffix(".zarr")
    chunk = features / f"{name}.zarr" / "features" / "c" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()  # zarr alone would read the missing chunk as zeros
    with pytest.raises(ValueError, match=f"slide {name} is damaged: features differs"):
        read_store(features / f"{name}.zarr")
    argv = ["evaluate", "--model", data.model, "--features", features, "--labels", data.labels, "--bootstrap", "10"]
    code, stdout, err = run([*argv, "--out", tmp_path / "eval"], capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, f"slide {name} is damaged", "re-run extract")
    assert not (tmp_path / "eval").exists()

    chunk.write_bytes(b"\x00garbage" * 10)  # undecodable
    with pytest.raises(ValueError, match=f"slide {name} is damaged: features cannot be read"):
        read_store(features / f"{name}.zarr")


def test_train_refuses_incomplete_stores_loudly(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    features = copy_tree(data.features, tmp_path / "features")
    names = sorted(p.name.removesuffix(".zarr") for p in features.iterdir())
    unmarked = features / f"{names[0]}.zarr" / "zarr.json"  # marked incomplete
    meta = json.loads(unmarked.read_text())
    meta["attributes"]["complete"] = False
    unmarked.write_text(json.dumps(meta))
    (features / f"{names[1]}.zarr").rename(features / f"{names[1]}.zarr.partial")  # an interrupted extract
    argv = ["train", "--features", features, "--labels", data.labels, "--epochs", "1", "--out", tmp_path / "m"]
    code, _, err = run(argv, capsys)
    assert code == 1
    assert_one_error(err, "2 incomplete or damaged feature store(s)", f"{names[0]}.zarr", f"{names[1]}.zarr.partial")
    assert not (tmp_path / "m").exists()

    features = copy_tree(data.features, tmp_path / "truncated")
    shutil.rmtree(features / f"{names[2]}.zarr" / "grid")  # a truncated group, still marked complete
    code, _, err = run([*argv[:2], features, *argv[3:]], capsys)
    assert code == 1
    assert_one_error(err, f"slide {names[2]} is damaged: grid cannot be read")


def test_extract_store_locked_by_another_process_and_damaged_store_redone(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slides = data.slides()[:2]
    out = tmp_path / "features"
    out.mkdir()
    locked = lock_path(out / f"{slides[0].stem}.zarr")
    locked.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    argv = ["extract", *slides, "--encoder", data.encoder, "--out", out, "--batch-size", "8", "--read-threads", "2"]
    code, stdout, _ = run([*argv, "--json"], capsys)
    assert code == 1
    results = json.loads(stdout)
    assert results[slides[1].stem] == "done"
    assert results[slides[0].stem].startswith("failed: ") and "being written by process" in results[slides[0].stem]
    assert not (out / f"{slides[0].stem}.zarr").exists() and locked.exists()
    locked.unlink()

    code, _, _ = run(argv, capsys)
    assert code == 0
    (out / f"{slides[1].stem}.zarr" / "coords" / "c" / "0" / "0").unlink()
    with pytest.warns(UserWarning, match=f"extracting {slides[1].stem} again: .* damaged: coords differs"):
        code, stdout, _ = run([*argv, "--json"], capsys)
    assert code == 0 and json.loads(stdout) == {slides[0].stem: "skipped", slides[1].stem: "done"}
    read_store(out / f"{slides[1].stem}.zarr")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.zarr" for p in slides)


# ----------------------------------------------------------------------------------- 3. model folders


def _set(path: Path, keys: tuple, value: object) -> None:
    """Set ``keys`` (a path into the JSON of ``path``) to ``value``; an empty ``keys`` replaces the document."""
    doc = json.loads(path.read_text())
    if not keys:
        doc = value
    else:
        node = doc
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(json.dumps(doc))


TAMPERED = [
    ("model.json", ("threshold",), float("nan"), "threshold must be a finite number in [0.0, 1.0], got nan"),
    ("model.json", ("threshold",), 1.5, "threshold must be a finite number in [0.0, 1.0], got 1.5"),
    ("model.json", ("threshold",), "0.5", "threshold must be a number"),
    ("encoder.json", ("config",), [16, [1, 1, 2, 1]], "'config' and 'metadata' must be JSON objects"),
    ("encoder.json", ("config", "embed_dim"), "16", "embed_dim must be an integer, got '16'"),
    ("encoder.json", ("config", "embed_dim"), 10**9, "embed_dim must be in [1, 16384]"),
    ("encoder.json", ("config", "depths"), [1, 1, 10**6, 1], "depths must be in [0, 128]"),
    ("encoder.json", ("config", "depths"), "1122", "depths must be a list"),
    ("encoder.json", ("metadata", "tile_px"), 10**9, "tile_px must be in [8, 8192]"),
    ("slide_model.json", ("config", "dim"), 10**9, "dim must be in [1, 4096]"),
    ("slide_model.json", ("config", "depth"), 10**6, "depth must be in [0, 64]"),
    ("baseline.json", (), [1, 2, 3], "expected a JSON object, got list"),
    ("baseline.json", ("mean",), ["a"], "mean must be a number"),
    ("baseline.json", ("intercept",), float("inf"), "intercept must be a finite number"),
]


@pytest.mark.parametrize(("file", "keys", "value", "message"), TAMPERED, ids=[f"{t[0]}-{t[3][:20]}" for t in TAMPERED])
def test_tampered_model_folder_is_one_line(
    data: WorkflowData,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    file: str,
    keys: tuple,
    value: object,
    message: str,
) -> None:
    model = copy_tree(data.model, tmp_path / "model")
    _set(model / file, keys, value)
    code, stdout, err = run(["predict", data.slide("test_001"), "--model", model, "--json"], capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, f"{model / file}: ", message)


# ----------------------------------------------------------------------------------- 4. batches survive


FAST = ["--batch-size", "8", "--read-threads", "2"]


def test_predict_records_any_per_slide_failure_and_goes_on(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = data.slide("test_001")
    io_error = tmp_path / "io.tif"  # (a 250-character name no longer fails: see test_predict_out_with_a_250_...)
    odd = {
        io_error: OSError(5, "Input/output error"),
        tmp_path / "zero.tif": ZeroDivisionError("float division by zero"),
        tmp_path / "memory.tif": MemoryError(),
    }
    for path in odd:
        path.write_bytes(good.read_bytes())
    real = predict_module.predict_slide

    def predict_or_raise(path, *args, **kwargs):
        if Path(path) in odd:
            raise odd[Path(path)]
        return real(path, *args, **kwargs)

    monkeypatch.setattr(predict_module, "predict_slide", predict_or_raise)
    out = tmp_path / "out"
    slides = [io_error, tmp_path / "zero.tif", good, tmp_path / "memory.tif"]
    code, stdout, err = run(["predict", *slides, "--model", data.model, "--out", out, "--json", *FAST], capsys)
    assert code == 1 and "Traceback" not in err
    results = json.loads(stdout)
    assert [r["slide"] for r in results][2] == "test_001" and results[2]["score"] is not None
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert errors[0] == f"error: {io_error}: OSError: [Errno 5] Input/output error"
    assert errors[1] == f"error: {tmp_path / 'zero.tif'}: ZeroDivisionError: float division by zero"
    assert errors[2] == f"error: {tmp_path / 'memory.tif'}: MemoryError"
    assert [r.get("error") for r in results] == [e.removeprefix("error: ") for e in errors[:2]] + [None, errors[2][7:]]
    assert sorted(p.name for p in out.iterdir()) == ["test_001.json"]


def test_predict_refuses_duplicate_names_with_out(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = data.slide("test_001")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.tif").write_bytes(good.read_bytes())
    slides = [tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"]
    out = tmp_path / "out"
    code, stdout, err = run(["predict", *slides, "--out", out, "--heatmap", *FAST], capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, str(slides[0]), str(slides[1]), "share the name 'x'")
    assert not out.exists()
    code, stdout, err = run(["predict", *slides, "--model", data.model, *FAST], capsys)  # no files: fine
    assert code == 0 and len(stdout.splitlines()) == 2


def test_extract_records_any_per_slide_failure(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    slides = data.slides()[:2]
    real = extract_module.open_slide

    def open_or_raise(path, *args, **kwargs):
        if Path(path) == slides[0]:
            raise OSError(5, "Input/output error")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(extract_module, "open_slide", open_or_raise)
    out = tmp_path / "features"
    code, stdout, err = run(["extract", *slides, "--encoder", data.encoder, "--out", out, *FAST], capsys)
    assert code == 1 and stdout.startswith("1 extracted, 0 already complete, 1 failed")
    assert_one_error(err, f"error: {slides[0].stem}: OSError: [Errno 5] Input/output error")
    assert sorted(p.name for p in out.iterdir()) == [f"{slides[1].stem}.zarr"]


# ----------------------------------------------------------------------------------- 5. resolution metadata


def write_aperio(path: Path, mpp: str, appmag: str = "20", size: int = 512) -> Path:
    """A small Aperio-style SVS (tiled level 0 + one reduced level) whose description says ``MPP = mpp``."""
    image = gradient_image(size, size)
    description = (
        f"Aperio Image Library v12.0.0\r\n{size}x{size} [0,0 {size}x{size}] (128x128) RAW"
        f"|AppMag = {appmag}|MPP = {mpp}"
    )
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(128, 128), photometric="rgb", description=description, metadata=None)
        tw.write(image[::2, ::2], tile=(128, 128), photometric="rgb", subfiletype=1, metadata=None)
    return path


def write_aperio_tiled_second_page(path: Path) -> Path:
    """An SVS as tools other than Aperio's write it: levels on pages 0, 1 and 3 (all tiled), a stripped
    thumbnail on page 2, then a label and a macro."""
    image = gradient_image(512, 384)
    header = "Aperio Image Library v12.0.0\r\n"
    tiled = dict(tile=(128, 128), photometric="rgb", compression="jpeg", metadata=None)
    stripped = dict(photometric="rgb", compression="jpeg", metadata=None, rowsperstrip=16)
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, description=f"{header}512x384 [0,0 512x384] (128x128) JPEG/RGB|AppMag = 20|MPP = 0.5", **tiled)
        tw.write(image[::2, ::2], description=f"{header}512x384 -> 256x192", **tiled)
        tw.write(image[::4, ::4], description=f"{header}512x384 -> 128x96 - thumbnail", **stripped)
        tw.write(image[::4, ::4], description=f"{header}512x384 -> 128x96", **tiled)
        tw.write(image[:100, :100], description=f"{header}label 100x100", subfiletype=1, **stripped)
        tw.write(image[:120, :200], description=f"{header}macro 200x120", subfiletype=9, **stripped)
    return path


def test_aperio_tiled_pages_are_levels_as_in_openslide(tmp_path: Path) -> None:
    path = write_aperio_tiled_second_page(tmp_path / "tiled-second-page.svs")
    with tifffile.TiffFile(path) as tf:  # what tifffile alone makes of it: page 1 is the "thumbnail"
        assert tf.is_svs and len(tf.series[0].levels) == 1
    described = {}
    for backend in ("tifffile", "openslide"):
        with open_slide(path, backend=backend) as slide:
            info = slide.describe()
            described[backend] = (info["levels"], info["associated_images"], info["mpp"])
            assert slide.level_count == 3
            region = slide.read_region((64, 32), 1, (100, 80)).astype(int)  # at level-0 (64, 32)
            expected = gradient_image(512, 384)[::2, ::2][16:96, 32:132].astype(int)
            assert np.abs(region - expected).mean() < 8  # JPEG
    assert described["tifffile"] == described["openslide"]
    levels, associated, mpp = described["tifffile"]
    assert [level["dimensions"] for level in levels] == [[512, 384], [256, 192], [128, 96]]
    assert associated == {"label": [100, 100], "macro": [200, 120]} and mpp == 0.5


def strict_json(text: str) -> object:
    """Parse JSON, refusing the non-standard tokens Python's json writes by default (NaN, Infinity)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("mpp", ["inf", "-inf", "nan", "1e-300", "1e30", "0.001", "352.8"])
def test_implausible_mpp_is_missing_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mpp: str
) -> None:
    path = write_aperio(tmp_path / "slide.svs", mpp, appmag="inf")
    with pytest.warns(UserWarning) as caught, open_slide(path) as slide:
        assert slide.mpp is None and slide.native_mpp is None and slide.objective_power is None
    messages = [str(w.message) for w in caught]
    if mpp in ("nan", "-inf"):  # no positive number at all: the usual "no microns-per-pixel" warning
        assert messages == [f"{path}: no microns-per-pixel in the file; pass mpp= to set it"]
    else:
        assert len(messages) == 1 and "is not a microscope's (expected 0.05-20 µm/px): ignored" in messages[0]

    code, stdout, err = run(["info", path, "--json"], capsys)
    assert code == 0
    info = strict_json(stdout)
    assert info["mpp"] is None and info["objective_power"] is None and len(info["warnings"]) == 1

    code, stdout, err = run(["tiles", path, "--tile", "64", "--min-tissue", "0"], capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, str(path), "no microns-per-pixel known", "--slide-mpp")
    code, stdout, err = run(["tiles", path, "--tile", "64", "--min-tissue", "0", "--slide-mpp", "0.5"], capsys)
    assert code == 0 and "tiles of 64 px" in stdout


@pytest.mark.parametrize("dpi", [72, 96])
@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_screen_dpi_is_not_a_microscope_resolution(tmp_path: Path, dpi: int, backend: str) -> None:
    path = tmp_path / "screen.tif"
    image = gradient_image(512, 512)
    with tifffile.TiffWriter(path) as tw:
        options = dict(tile=(128, 128), photometric="rgb", resolution=(dpi, dpi), resolutionunit="INCH")
        tw.write(image, metadata=None, **options)
        tw.write(image[::2, ::2], subfiletype=1, metadata=None, **options)
    with pytest.warns(UserWarning), open_slide(path, backend=backend) as slide:
        assert slide.mpp is None
    with open_slide(path, backend=backend, mpp=0.25) as slide:
        assert slide.mpp == 0.25
    with pytest.raises(SlideError, match=r"mpp must be a positive number within 0\.05-20"):
        open_slide(path, backend=backend, mpp=1e-5)


def test_openslide_boxes_sample_has_no_mpp() -> None:
    path = shared_file("openslide-boxes.tiff")
    with pytest.warns(UserWarning, match="352.8 µm/px|352.778 µm/px"), open_slide(path) as slide:
        assert slide.mpp is None


def test_predict_good_slide_and_slide_with_infinite_mpp(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_aperio(tmp_path / "bad.svs", "inf")
    good = data.slide("test_001")
    code, stdout, err = run(["predict", bad, good, "--model", data.model, "--json", *FAST], capsys)
    assert code == 1
    results = strict_json(stdout)
    assert results[1]["score"] is not None and results[0]["score"] is None
    assert_one_error(err, str(bad), "no microns-per-pixel")


# ----------------------------------------------------------------------------------- 6. bounded decoding


def write_level_bomb(path: Path, side: int = 1_000_000) -> Path:
    """A 0.5 KB tiled TIFF whose tags claim ``side`` x ``side`` px in one file tile of that size."""
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            np.full((256, 256, 3), 200, np.uint8),
            tile=(256, 256),
            photometric="rgb",
            compression="zlib",
            resolution=(2e4, 2e4),
            resolutionunit="CENTIMETER",
            metadata=None,
        )
    with tifffile.TiffFile(path, mode="r+b") as tf:
        for name in ("ImageWidth", "ImageLength", "TileWidth", "TileLength"):
            tf.pages[0].tags[name].overwrite(side)
    return path


def write_thumbnail_bomb(path: Path, side: int = 60_000) -> Path:
    """An Aperio SVS (small on disk) whose stripped thumbnail page claims ``side`` x ``side`` px."""
    image = np.full((512, 512, 3), 200, np.uint8)
    description = "Aperio Image Library v12.0.0\r\n512x512 [0,0 512x512] (128x128) ZLIB|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(128, 128), photometric="rgb", compression="zlib", description=description, metadata=None)
        tw.write(
            image[::4, ::4],
            photometric="rgb",
            compression="zlib",
            rowsperstrip=128,
            description="Aperio Image Library v12.0.0\r\nthumbnail",
            metadata=None,
        )
    with tifffile.TiffFile(path, mode="r+b") as tf:
        for name in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tf.pages[1].tags[name].overwrite(side)
    return path


# Linux: VmHWM is this process image's own peak; ru_maxrss also keeps the peak of the (forked) parent's image,
# i.e. of the pytest process that started us, which grows over a full run.
PEAK_RSS = """
import resource, sys
from wsi_mamba.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
try:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"PEAK_RSS_KB {peak}", file=sys.stderr)
sys.exit(code)
"""


def run_measured(argv: list, cwd: Path) -> tuple[int, str, str, float]:
    """Run the CLI in a fresh interpreter; (exit code, stdout, stderr without the RSS line, peak RSS in GB)."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    lines = done.stderr.splitlines()
    kb = next(int(line.split()[1]) for line in lines if line.startswith("PEAK_RSS_KB"))
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    err = "\n".join(line for line in lines if not line.startswith("PEAK_RSS_KB"))
    return done.returncode, done.stdout, err, kb * scale / 1e9


@pytest.mark.skipif(sys.platform == "win32", reason="resource module")
def test_decompression_bombs_fail_fast_in_bounded_memory(data: WorkflowData, tmp_path: Path) -> None:
    level_bomb = write_level_bomb(tmp_path / "level-bomb.tif")
    thumb_bomb = write_thumbnail_bomb(tmp_path / "thumb-bomb.svs")
    assert level_bomb.stat().st_size < 10_000 and thumb_bomb.stat().st_size < 10_000

    code, stdout, err, peak = run_measured(["info", thumb_bomb, "--json"], tmp_path)
    assert code == 0 and peak < 1.0, (peak, err)
    info = strict_json(stdout)
    assert "thumbnail" not in info["associated_images"]
    assert any("associated image 'thumbnail' is 60000 x 60000 px" in w for w in info["warnings"])

    code, stdout, err, peak = run_measured(["tiles", level_bomb, "--out", tmp_path / "preview.png"], tmp_path)
    assert code == 1 and peak < 1.0, (peak, err)
    assert_one_error(err, str(level_bomb), "over the decoding limit of 500 megapixels", "--max-pixels")
    assert not (tmp_path / "preview.png").exists()

    good = data.slide("test_001")
    argv = ["predict", level_bomb, good, "--model", data.model, "--json", "--out", tmp_path / "out", *FAST]
    code, stdout, err, peak = run_measured(argv, tmp_path)
    assert code == 1 and peak < 1.0, (peak, err)
    assert_one_error(err, str(level_bomb), "over the decoding limit")
    results = strict_json(stdout)
    assert results[0]["score"] is None and results[1]["score"] is not None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test_001.json"]


@pytest.fixture
def default_max_pixels():
    yield
    set_max_pixels(None)


def test_max_pixels_limit_and_absurd_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], default_max_pixels: None
) -> None:
    path = write_pyramid(tmp_path / "small.tif", 1024, 768)
    code, _, err = run(["tiles", path, "--mpp", "0.00001"], capsys)
    assert code == 1
    assert_one_error(err, str(path), "is over the limit of 10,000,000 tiles", "--mpp")
    code, _, err = run(["tiles", path, "--mpp", "100000", "--min-tissue", "0"], capsys)
    assert code == 1
    assert_one_error(err, str(path), "each tile read")

    code, _, err = run(["synth", tmp_path / "synth", "--size", "10000000"], capsys)
    assert code == 1
    assert_one_error(err, "--size 10000000 is larger than any real slide")
    assert not (tmp_path / "synth").exists()

    code, _, err = run(["tiles", path, "--max-pixels", "1000"], capsys)  # a low limit
    assert code == 1
    assert_one_error(err, "over the decoding limit of 1,000 px")
    code, stdout, _ = run(["tiles", path, "--min-tissue", "0"], capsys)  # the default again
    assert code == 0 and "tiles of 256 px" in stdout
    with open_slide(path) as slide:
        set_max_pixels(1000)
        with pytest.raises(SlideError, match="a region of level 0 is 100 x 100 px"):
            slide.read_region((0, 0), 0, (100, 100))
        set_max_pixels(None)
        assert slide.read_region((0, 0), 0, (100, 100)).shape == (100, 100, 3)


# ----------------------------------------------------------------------------------- 7. recipes


RECIPE_CASES = {
    "alias": (
        "vars:\n  a: &a [x, x, x]\n  b: &b [*a, *a, *a]\n  c: [*b, *b, *b]\nsteps:\n  - run: info x\n",
        "YAML aliases (*name) are not allowed",
    ),
    "recursion": ("steps:\n  - name: again\n    run: run recipe.yaml\n", "step 1: a recipe step cannot run a recipe"),
    "absolute-creates": ("steps:\n  - run: info x\n    creates: /etc/passwd\n", "creates '/etc/passwd' must be"),
    "escaping-creates": ("steps:\n  - run: info x\n    creates: ../../x\n", "creates '../../x' must be a path inside"),
}


@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_hostile_recipes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    text, message = RECIPE_CASES[case]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    before = snapshot(tmp_path)
    code, stdout, err = run(["run", recipe, "--workdir", tmp_path / "w"], capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, str(recipe), message)
    assert snapshot(tmp_path) == before and not (tmp_path / "w").exists()


def test_non_utf8_recipe_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes("steps:\n  - run: info caf\xe9.svs\n".encode("latin-1"))
    code, _, err = run(["run", recipe, "--dry-run"], capsys)
    assert code == 1
    assert_one_error(err, f"{recipe}: not UTF-8 text")


# ----------------------------------------------------------------------------------- 8. atomic writes


def fail_replace(monkeypatch: pytest.MonkeyPatch, *suffixes: str) -> list[tuple[str, str]]:
    """Make ``os.replace`` onto a name ending in one of ``suffixes`` fail as a full disk would (every other
    rename goes through); returns the (source, target) names of every rename tried."""
    real = os.replace
    tried: list[tuple[str, str]] = []

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        tried.append((os.fspath(src), os.fspath(dst)))
        if os.fspath(dst).endswith(suffixes):
            raise OSError(28, "No space left on device", os.fspath(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return tried


def assert_no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob(f"*{TEMP_MARKER}*")], sorted(folder.rglob("*"))


def assert_pid_temp_names(tried: list[tuple[str, str]]) -> None:
    """Every rename went from ``<target>.tmp-<our pid>`` to the target."""
    assert tried and all(src == f"{dst}{TEMP_MARKER}{os.getpid()}" for src, dst in tried), tried


def test_tiles_preview_is_written_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    slide = write_pyramid(tmp_path / "slide.tif", 512, 384, levels=2)
    preview = tmp_path / "preview.png"
    preview.write_bytes(b"previous preview")
    before = snapshot(tmp_path)
    argv = ["tiles", slide, "--tile", "64", "--out", preview]
    with monkeypatch.context() as patch:
        tried = fail_replace(patch, ".png")
        code, stdout, err = run(argv, capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, f"error: {preview}: No space left on device")
    assert snapshot(tmp_path) == before  # the previous preview intact, no temp file left
    assert_pid_temp_names(tried)

    code, stdout, _ = run(argv, capsys)
    assert code == 0 and preview.read_bytes().startswith(b"\x89PNG")
    assert_no_temp_files(tmp_path)
    jpeg = tmp_path / "preview.jpg"
    assert run([*argv[:-1], jpeg], capsys)[0] == 0 and jpeg.read_bytes().startswith(b"\xff\xd8")

    before = snapshot(tmp_path)
    for out, message in ((slide, "is the input slide"), (tmp_path, "is a folder")):
        code, _, err = run([*argv[:-1], out], capsys)
        assert code == 1
        assert_one_error(err, f"--out {out} {message}")
    assert snapshot(tmp_path) == before


def test_synth_csv_and_xml_are_written_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cohort"
    argv = ["synth", out, "--slides", "3", "--seed", "1", "--size", "256", "--flavour", "tiff"]
    assert run(argv, capsys)[0] == 0
    written = [out / "training" / "labels.csv", out / "testing" / "reference.csv"]
    written += sorted(out.rglob("*.xml"))
    assert len(written) > 2
    for path in written:
        path.write_text("previous\n")
    before = snapshot(tmp_path)
    with monkeypatch.context() as patch:  # slides are done: only the CSVs and XMLs are written again
        tried = fail_replace(patch, ".csv", ".xml")
        code, _, err = run(argv, capsys)
    assert code == 1
    assert_one_error(err, "No space left on device")
    assert snapshot(tmp_path) == before
    assert_pid_temp_names(tried)
    assert run(argv, capsys)[0] == 0
    assert all(path.read_text() != "previous\n" for path in written)
    assert_no_temp_files(tmp_path)


def test_geojson_and_asap_writers_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wsi_mamba.slide.annotations import Annotations, Polygon, read_annotations, write_asap_xml, write_geojson

    annotations = Annotations(lesions=[Polygon(np.array([(0.0, 0.0), (10.0, 0.0), (10.0, 10.0)]), "a")])
    for writer, name in ((write_geojson, "a.geojson"), (write_asap_xml, "a.xml")):
        path = tmp_path / name
        path.write_text("previous")
        with monkeypatch.context() as patch:
            tried = fail_replace(patch, name)
            with pytest.raises(OSError, match="No space left"):
                writer(annotations, path)
        assert path.read_text() == "previous"
        assert_pid_temp_names(tried)
        writer(annotations, path)
        assert len(read_annotations(path).lesions) == 1
    assert_no_temp_files(tmp_path)


def test_checkpoint_writer_uses_pid_temp_names_and_keeps_the_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsi_mamba.models.checkpoint import config_path, save_checkpoint
    from wsi_mamba.models.vmamba import VSSM, VMambaConfig

    model = VSSM(VMambaConfig(embed_dim=8, depths=(1, 1), num_classes=2))
    path = tmp_path / "enc.safetensors"
    with monkeypatch.context() as patch:
        tried = fail_replace(patch)  # nothing fails: record the renames
        save_checkpoint(model, path, {"name": "first"})
    assert_pid_temp_names(tried) and [dst for _, dst in tried] == [str(config_path(path)), str(path)]
    before = snapshot(tmp_path)
    for failing in (".json", ".safetensors"):
        with monkeypatch.context() as patch:
            fail_replace(patch, failing)
            with pytest.raises(OSError):
                save_checkpoint(model, path, {"name": "second"})
        if failing == ".json":  # neither file replaced
            assert snapshot(tmp_path) == before
        assert path.read_bytes() and json.loads(config_path(path).read_text())
    assert_no_temp_files(tmp_path)


def test_cohort_keeps_slides_named_like_temp_files_and_locks_its_folder(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_mamba.workflows.bundle import load_bundle

    images = tmp_path / "images"
    images.mkdir()
    name = "x.tmp-1"  # a slide whose name looks like a temporary file
    shutil.copyfile(data.slide("test_001"), images / f"{name}.tif")
    out = tmp_path / "out"
    (out / "slides").mkdir(parents=True)
    (out / "failed").mkdir()
    result = {"slide": name, "score": 0.5, "tiles": 3, "model": load_bundle(data.model).name}
    (out / "slides" / f"{name}.json").write_text(json.dumps(result))
    stale = [out / "slides" / f"{name}.json.tmp-99", out / "failed" / f"{name}.json.tmp-7", out / "cohort.csv.tmp-5"]
    foreign = [out / "slides" / "notes.tmp-3", out / "slides" / f"{name}.json.tmp-x", out / "other.csv.tmp-5"]
    for path in stale + foreign:
        path.write_text("left over")
    argv = ["cohort", images, "--out", out, "--model", data.model, "--no-progress"]

    holder = {"pid": os.getppid(), "host": socket.gethostname()}  # a live process that is not us
    lock_path(out).write_text(json.dumps(holder))
    before = snapshot(tmp_path)
    code, stdout, err = run(argv, capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, f"{out}: being written by process {os.getppid()}")
    assert snapshot(tmp_path) == before
    lock_path(out).unlink()

    for _ in range(2):  # done, and stays done: neither deleted nor redone
        code, stdout, err = run(argv, capsys)
        assert code == 0, err
        assert stdout.startswith("1 slides: 0 processed, 1 already complete, 0 failed")
        assert json.loads((out / "slides" / f"{name}.json").read_text()) == result
    assert not any(path.exists() for path in stale) and all(path.exists() for path in foreign)
    assert not lock_path(out).exists()


# ----------------------------------------------------------------------------------- 9. corrupt tiles



def corrupt_file_tiles(path: Path, page: int, which: list[int]) -> None:
    """Overwrite the data of file tiles ``which`` of ``page`` with random bytes."""
    with tifffile.TiffFile(path) as tf:
        spans = [(tf.pages[page].dataoffsets[i], tf.pages[page].databytecounts[i]) for i in which]
    rng = np.random.default_rng(0)
    with open(path, "r+b") as f:
        for offset, count in spans:
            f.seek(offset)
            f.write(rng.integers(0, 256, count, dtype=np.uint8).tobytes())


def test_corrupt_tile_is_a_warning_left_out_and_counted(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_mamba.features.store import read_attrs, store_path
    from wsi_mamba.slide.tiling import make_tile_grid
    from wsi_mamba.slide.tissue import detect_tissue

    path = copy_with_small_tiles(data.slide("test_001"), tmp_path / "damaged.tif")
    with open_slide(path) as slide:
        grid = make_tile_grid(slide, 64, 1.0, 0.25, tissue=detect_tissue(slide))
        across = -(-slide.level_dimensions[2][0] // 32)
    assert grid.level == 2 and grid.read_px >= 63 and len(grid) >= 8
    # the file tile of level 2 that lies inside grid tile 0 (and in no other tile)
    lx, ly = int(grid.x[0]) // 4, int(grid.y[0]) // 4
    tx, ty = -(-lx // 32), -(-ly // 32)
    assert (tx + 1) * 32 <= lx + grid.read_px and (ty + 1) * 32 <= ly + grid.read_px
    corrupt_file_tiles(path, 2, [ty * across + tx])

    with pytest.warns(UserWarning) as caught:
        code, stdout, err = run(["predict", path, "--model", data.model, "--json", *FAST], capsys)
    assert code == 0 and "Traceback" not in err and "error:" not in err, err
    result = strict_json(stdout)[0]
    assert result["corrupt_tiles"] == 1 and result["tiles"] == len(grid) - 1 and result["score"] is not None
    lines = [str(w.message) for w in caught if "cannot decode" in str(w.message)]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: tile 0 (level 2, level-0 x={int(grid.x[0])}, y={int(grid.y[0])}): ")
    assert lines[0].endswith("; left out as background")

    out = tmp_path / "features"
    with pytest.warns(UserWarning, match="cannot decode"):
        code, stdout, err = run(["extract", path, "--encoder", data.encoder, "--out", out, *FAST], capsys)
    assert code == 0, err
    attrs = read_attrs(store_path(out, "damaged"))
    assert attrs["corrupt_tiles"] == 1
    coords = read_store(store_path(out, "damaged")).coords.tolist()
    assert len(coords) == len(grid) - 1 and [int(grid.x[0]), int(grid.y[0])] not in coords


def test_slide_with_many_corrupt_tiles_fails_and_the_batch_goes_on(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_with_small_tiles(data.slide("test_001"), tmp_path / "ruined.tif")
    with tifffile.TiffFile(path) as tf:
        count = len(tf.pages[2].dataoffsets)
    corrupt_file_tiles(path, 2, list(range(count)))
    good = data.slide("test_002")
    code, stdout, err = run(["predict", path, good, "--model", data.model, "--json", *FAST], capsys)
    assert code == 1
    results = strict_json(stdout)
    assert results[0]["score"] is None and results[1]["score"] is not None
    assert_one_error(err, str(path), "tiles cannot be decoded (first: tile 0 (level 2")


# ----------------------------------------------------------------------------------- 10. recipe workdir, configs


def test_recipe_workdir_is_relative_to_the_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsi_mamba.workflows.recipe import load_recipe

    recipe = tmp_path / "pipelines" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text("workdir: ../data/run\nsteps:\n  - run: info x.tif\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_recipe(recipe).workdir.resolve() == tmp_path / "data" / "run"
    code, _, err = run(["run", recipe, "--dry-run"], capsys)
    assert code == 0, err
    assert (tmp_path / "data" / "run").is_dir() and not any(elsewhere.iterdir())
    code, _, err = run(["run", recipe, "--dry-run", "--workdir", "mine"], capsys)  # the command line's: cwd
    assert code == 0, err
    assert (elsewhere / "mine").is_dir()

    root = Path(__file__).resolve().parents[1]
    for shipped in sorted((root / "pipelines").glob("*.yaml")):  # same folders as before, from anywhere
        workdir = load_recipe(shipped).workdir.resolve()
        assert workdir.parent == root / "data", shipped
    pcam = load_recipe(root / "pipelines" / "pcam-camelyon.yaml")
    assert pcam.steps[0].argv[2] == "../../../shared/data/pcam/train"  # still relative to the same workdir
    expected = (root.parent / "shared" / "data" / "pcam").resolve()  # resolved too: shared/ may be a link
    assert (pcam.workdir.resolve() / "../../../shared/data/pcam").resolve() == expected


def test_official_config_including_itself_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsi_mamba.models.official import config_from_official

    (tmp_path / "self.yaml").write_text("BASE: ['self.yaml']\nMODEL:\n  NUM_CLASSES: 2\n")
    (tmp_path / "a.yaml").write_text("BASE: ['', 'b.yaml']\n")
    (tmp_path / "b.yaml").write_text("BASE: ['a.yaml']\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    cases = {
        "self.yaml": "BASE includes form a cycle (self.yaml -> self.yaml)",
        "a.yaml": "BASE includes form a cycle (a.yaml -> b.yaml -> a.yaml)",
        "list.yaml": "not an official config",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError) as caught:
            config_from_official(tmp_path / name)
        assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


# ----------------------------------------------------------------------------------- 11. long names


def test_output_stem_is_clipped_unique_and_stable() -> None:
    from wsi_mamba.outputs.names import MAX_STEM_BYTES, output_stem

    assert output_stem("slide_001") == "slide_001"
    long_a, long_b = "é" * 200 + "a", "é" * 200 + "b"
    stems = {output_stem(long_a), output_stem(long_b)}
    assert len(stems) == 2 and all(len(s.encode()) <= MAX_STEM_BYTES for s in stems)
    assert output_stem(long_a) == output_stem(long_a) and output_stem(long_a).startswith("é" * 80)


def test_predict_out_with_a_250_character_slide_name(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_mamba.outputs.names import output_stem

    name = "s" * 246
    long = tmp_path / f"{name}.tif"
    shutil.copyfile(data.slide("test_001"), long)
    good = data.slide("test_002")
    out = tmp_path / "out"
    argv = ["predict", good, long, "--model", data.model, "--out", out, "--heatmap", "--json", *FAST]
    for _ in range(2):  # a rerun replaces the same files
        code, stdout, err = run(argv, capsys)
        assert code == 0 and "error:" not in err, err
        results = strict_json(stdout)
        assert [r["slide"] for r in results] == ["test_002", name] and all(r["score"] is not None for r in results)
    stem = output_stem(name)
    assert len(stem) < len(name)
    expected = {f"{n}{suffix}" for n in ("test_002", stem) for suffix in (".json", ".heatmap.png", ".tiles.geojson")}
    assert expected <= {p.name for p in out.iterdir()}
    assert json.loads((out / f"{stem}.json").read_text())["slide"] == name
    assert_no_temp_files(out)


def test_extract_and_train_with_a_250_character_slide_name(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_mamba.features.store import list_stores, read_store
    from wsi_mamba.outputs.names import output_stem

    name = "s" * 246
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copyfile(data.slide("test_001"), slides / f"{name}.tif")
    shutil.copyfile(data.slide("test_002"), slides / "short.tif")
    features = tmp_path / "features"
    code, _, err = run(["extract", slides, "--encoder", data.encoder, "--out", features, *FAST], capsys)
    assert code == 0 and "error:" not in err, err
    stores = list_stores(features)
    assert set(stores) == {name, "short"} and stores[name].name == f"{output_stem(name)}.zarr"
    assert read_store(stores[name]).name == name
    code, out, err = run(["extract", slides, "--encoder", data.encoder, "--out", features, *FAST], capsys)
    assert code == 0 and "2 already complete" in out, out + err  # resumable: the clipped store is found again
    assert_no_temp_files(features)
