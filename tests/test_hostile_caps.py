"""Hostile inputs, second round (issue 25): size caps and regular files for every metadata read, nesting,
recipe expansion, feature-store grids, store attributes, annotations. Each case: one ``error:`` line naming
the file, the right exit code, and bounded memory and time before the refusal. See docs/hostile-inputs.md."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_hostile_inputs import assert_one_error, run
from workflow_fixtures import WorkflowData, copy_tree, workflow_data

from wsi_mamba.data.patches import csv_patches, read_label_csv
from wsi_mamba.features.store import _digest, read_store
from wsi_mamba.outputs.artefact import read_json_object
from wsi_mamba.slide import AnnotationError
from wsi_mamba.slide.annotations import read_annotations
from wsi_mamba.workflows.cohort import run as cohort_module
from wsi_mamba.workflows.cohort.manifest import read_manifest
from wsi_mamba.workflows.inputs import read_labels
from wsi_mamba.workflows.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEEP = "[" * 200_000  # JSON nested 200,000 deep: Python's parser recurses (RecursionError)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the block blocks longer than ``seconds`` (e.g. opening a FIFO)."""

    def expire(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def python_peak(limit_bytes: int) -> Iterator[None]:
    """Assert that Python allocations stay under ``limit_bytes`` in the block (tracemalloc)."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit_bytes, f"peak {peak:,} bytes"


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk (a hole)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def device_link(path: Path, device: str = "/dev/null") -> Path:
    path.symlink_to(device)
    return path


# ----------------------------------------------------------------------------------- 11. capped reads


READERS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "labels CSV": ("labels.csv", read_labels),
    "manifest": ("manifest.csv", read_manifest),
    "patch list": ("patches.csv", csv_patches),
    "label list": ("labels.csv", read_label_csv),
    "recipe": ("recipe.yaml", load_recipe),
    "ASAP XML": ("a.xml", read_annotations),
    "GeoJSON": ("a.geojson", read_annotations),
    "model JSON": ("model.json", read_json_object),
}


@pytest.mark.parametrize("kind", ["FIFO", "device", "oversize"])
@pytest.mark.parametrize("reader", list(READERS))
def test_every_metadata_reader_refuses_non_regular_and_oversize_files(tmp_path: Path, reader: str, kind: str) -> None:
    name, read = READERS[reader]
    path = tmp_path / name
    if kind == "FIFO":
        fifo(path)
        expected = "it is a FIFO (named pipe), not a regular file (nothing was read)"
    elif kind == "device":
        device_link(path)  # /dev/null: a character device (/dev/zero is the subprocess test below)
        expected = "it is a device, not a regular file"
    else:
        sparse(path, 80 * 1024 * 1024)  # 80 MiB: over every cap (recipes 256 KiB, annotations 64 MiB)
        expected = "limit of this kind of file (not read)"
    with within(5), python_peak(8 * 1024 * 1024), pytest.raises(ValueError) as info:
        read(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_capped_reader_reads_up_to_its_cap_and_names_the_cap(tmp_path: Path) -> None:
    from wsi_mamba.outputs.capped import read_capped_bytes

    path = tmp_path / "x.json"
    path.write_bytes(b"0123456789")
    assert read_capped_bytes(path, limit=10) == b"0123456789"
    with pytest.raises(ValueError, match=r"x\.json: larger than the 9 bytes limit"):
        read_capped_bytes(path, limit=9)
    with pytest.raises(ValueError, match="it is a folder"):
        read_capped_bytes(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_capped_bytes(tmp_path / "missing")


def test_model_json_linked_to_dev_zero_is_refused_without_reading(tmp_path: Path) -> None:
    """The issue's 24 GB case, run in a child whose address space is capped at 1 GiB: a reader that reads
    /dev/zero dies of MemoryError there instead of taking the machine."""
    link = device_link(tmp_path / "model.json", "/dev/zero")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from wsi_mamba.outputs.artefact import read_json_object\n"
        "try:\n"
        "    read_json_object(sys.argv[1])\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, str(link)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == f"{link}: cannot be read: it is a device, not a regular file (nothing was read)"
    assert time.monotonic() - started < 30


def test_model_files_linked_to_a_device_are_one_line(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for file in ("model.json", "baseline.json", "encoder.json", "slide_model.json"):
        model = copy_tree(data.model, tmp_path / file / "model")
        (model / file).unlink()
        device_link(model / file)
        code, stdout, err = run(["predict", data.slide("test_001"), "--model", model, "--json"], capsys)
        assert code == 1 and stdout == ""
        assert_one_error(err, f"{model / file}: cannot be read: it is a device")


# ----------------------------------------------------------------------------------- 14. nesting, CSV fields


@pytest.mark.parametrize("file", ["model.json", "baseline.json", "encoder.json", "slide_model.json"])
def test_deeply_nested_model_json_is_one_line(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str], file: str
) -> None:
    model = copy_tree(data.model, tmp_path / "model")
    (model / file).write_text(DEEP)
    code, stdout, err = run(["predict", data.slide("test_001"), "--model", model, "--json"], capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, f"{model / file}: not valid JSON (nested too deeply)")


def test_a_bad_cohort_result_is_redone_with_a_warning_never_a_crash(tmp_path: Path) -> None:
    result = tmp_path / "s.json"
    for text in (DEEP, "{", "[1]"):
        result.write_text(text)
        with pytest.warns(UserWarning, match=r"s\.json: .*the slide is scored again"):
            assert cohort_module._read_result(result) is None
    result.unlink()
    fifo(result)
    with within(5), pytest.warns(UserWarning, match="not a regular file"):
        assert cohort_module._read_result(result) is None
    result.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing result is simply not done: no warning
        assert cohort_module._read_result(result) is None


def test_csv_field_over_the_field_limit_is_one_line(tmp_path: Path) -> None:
    big = "x" * 200_000
    cases = {
        "labels.csv": (f"image,label\n{big},1\n", read_labels),
        "manifest.csv": (f"slide\n{big}.tif\n", read_manifest),
        "patches.csv": (f"path,label\n{big}.png,1\n", csv_patches),
    }
    for name, (text, read) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError) as info:
            read(path)
        assert str(info.value).startswith(f"{path}: line 2: not readable as CSV (field larger than field limit")


def test_csv_field_over_the_limit_through_the_cli(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\n" + "x" * 200_000 + ",1\n")
    argv = ["evaluate", "--model", data.model, "--features", data.features, "--labels", labels]
    code, stdout, err = run([*argv, "--out", tmp_path / "eval"], capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, f"{labels}: line 2: not readable as CSV")
    assert not (tmp_path / "eval").exists()


# ----------------------------------------------------------------------------------- 12, 14, 16. recipes


def write_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_recipe_nested_50000_deep_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, "steps: " + "[" * 50_000 + "\n")
    code, _, err = run(["run", recipe, "--dry-run"], capsys)
    assert code == 1
    assert_one_error(err, f"{recipe}: nested more than 16 levels deep")


def test_doubling_recipe_variables_are_refused_early(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["vars:", "  a0: xxxxxxxxxxxxxxxx"] + [f"  a{i}: ${{a{i - 1}}}${{a{i - 1}}}" for i in range(1, 27)]
    recipe = write_recipe(tmp_path, "\n".join([*lines, "steps:", "  - run: info ${a26}", ""]))
    started = time.monotonic()
    with python_peak(64 * 1024 * 1024):  # 26 doublings of 16 bytes: 1.1 GB when expanded
        code, _, err = run(["run", recipe, "--dry-run"], capsys)
    assert code == 1 and time.monotonic() - started < 10
    assert_one_error(err, f"{recipe}: variable a16 would expand to 1,048,576 characters, over the limit of 1,000,000")


def test_recipe_command_length_is_capped_before_splitting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["vars:", "  a0: 'x x x x x x x x '"] + [f"  a{i}: ${{a{i - 1}}}${{a{i - 1}}}" for i in range(1, 14)]
    recipe = write_recipe(tmp_path, "\n".join([*lines, "steps:", "  - run: info ${a13}", ""]))  # 131,072 chars
    code, _, err = run(["run", recipe, "--dry-run"], capsys)
    assert code == 1
    assert_one_error(err, f"{recipe}: step 1: its command would expand to 131,077 characters, over the limit of 65,536")
    listed = write_recipe(tmp_path, "\n".join([*lines, "steps:", "  - run: [info, '${a13}']", ""]))
    code, _, err = run(["run", listed, "--dry-run"], capsys)
    assert code == 1
    assert_one_error(err, f"{listed}: step 1: its command would expand to")
    big = write_recipe(tmp_path, "steps:\n  - run: info " + "x " * 200_000 + "\n")  # 400 KB: over the file cap
    code, _, err = run(["run", big, "--dry-run"], capsys)
    assert code == 1
    assert_one_error(err, f"{big}: larger than the 256 KiB limit")


@pytest.mark.parametrize("creates", [".", "./", "a/..", "${here}"])
def test_recipe_creates_the_workdir_itself_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], creates: str
) -> None:
    recipe = write_recipe(tmp_path, f"vars:\n  here: .\nsteps:\n  - run: info x.tif\n    creates: '{creates}'\n")
    code, _, err = run(["run", recipe, "--dry-run"], capsys)
    assert code == 1
    assert_one_error(err, f"{recipe}: step 1: creates", "is the workdir itself")


def test_recipe_vars_that_are_not_a_mapping_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, "vars: [1, 2]\nsteps:\n  - run: info x.tif\n")
    code, _, err = run(["run", recipe, "--dry-run"], capsys)
    assert code == 1
    assert_one_error(err, f"{recipe}: 'vars' must be a mapping")


# ----------------------------------------------------------------------------------- 13, 14. feature stores


def store_of(features: Path) -> Path:
    return sorted(features.glob("*.zarr"))[0]


def set_attrs(store: Path, **values: object) -> None:
    """Hand-edit a store's attributes (zarr.json), as a user with a text editor would."""
    meta_file = store / "zarr.json"
    meta = json.loads(meta_file.read_text())
    for key, value in values.items():
        if value is ...:
            meta["attributes"].pop(key, None)
        else:
            meta["attributes"][key] = value
    meta_file.write_text(json.dumps(meta))


def evaluate_argv(data: WorkflowData, features: Path, out: Path, *extra: object) -> list:
    argv = ["evaluate", "--model", data.model, "--features", features, "--labels", data.labels, "--bootstrap", "10"]
    return [*argv, "--out", out, *extra]


STORE_ATTRS = {
    "views null": ({"views": None}, "feature store attribute views must be one of 1, 4, 8, got None"),
    "views list": ({"views": [4]}, "feature store attribute views must be one of 1, 4, 8, got [4]"),
    "grid_shape null": ({"grid_shape": None}, "feature store attribute grid_shape must be [rows, cols]"),
    "grid_shape text": ({"grid_shape": ["24", "24"]}, "feature store attribute grid_shape must be [rows, cols]"),
    "size0 zero": ({"size0": 0}, "feature store attribute size0 must be a positive number"),
    "grid 1500": ({"grid_shape": [1500, 1500]}, "a grid of 1500 x 1500 cells does not fit its slide"),
    "grid 200000": ({"grid_shape": [200_000, 200_000]}, "over the limit of 10,000,000"),
}


@pytest.mark.parametrize("case", list(STORE_ATTRS))
def test_hand_edited_store_attributes_are_one_line(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    values, message = STORE_ATTRS[case]
    features = copy_tree(data.features, tmp_path / "features")
    store = store_of(features)
    set_attrs(store, **values)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, stdout, err = run(evaluate_argv(data, features, tmp_path / "eval"), capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, str(store), message)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: under 200 MB more
    assert not (tmp_path / "eval").exists()


def test_slide_mpp_null_with_annotations_is_one_line(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    features = copy_tree(data.features, tmp_path / "features")
    store = store_of(features)
    set_attrs(store, slide_mpp=None)
    code, _, err = run(evaluate_argv(data, features, tmp_path / "eval", "--annotations", data.annotations), capsys)
    assert code == 1
    assert_one_error(err, str(store), "feature store attribute slide_mpp must be a positive number of µm/px, got None")
    set_attrs(store, slide_mpp=...)  # missing (an older store): named when it is needed
    code, _, err = run(evaluate_argv(data, features, tmp_path / "eval", "--annotations", data.annotations), capsys)
    assert code == 1
    assert_one_error(err, str(store), "records no slide_mpp: re-run extract")


def rewrite_grid(store: Path, grid: np.ndarray) -> None:
    """Replace a store's grid array and its recorded digest (a careful hand edit the digest cannot catch)."""
    group = zarr.open_group(str(store), mode="r+")
    del group["grid"]
    group.create_array("grid", data=grid.astype(np.int32))
    arrays = dict(group.attrs["arrays"])
    arrays["grid"] = _digest(grid.astype(np.int32))
    group.attrs["arrays"] = arrays


@pytest.mark.parametrize("edit", ["outside", "duplicate", "spread"])
def test_store_grid_cells_are_checked_on_read(data: WorkflowData, tmp_path: Path, edit: str) -> None:
    features = copy_tree(data.features, tmp_path / "features")
    store = store_of(features)
    grid = read_store(store).grid.copy()
    rows, cols = read_store(store).grid_shape
    if edit == "outside":
        grid[0] = (rows, 0)
        message = f"tile cells outside its {rows} x {cols} grid"
    elif edit == "duplicate":
        grid[1] = grid[0]
        message = "two tiles on one grid cell"
    else:  # the 1500 x 1500: tiles spread over a grid the slide cannot hold
        set_attrs(store, grid_shape=[1500, 1500])
        grid[-1] = (1499, 1499)
        message = "a grid of 1500 x 1500 cells does not fit its slide"
    rewrite_grid(store, grid)
    with pytest.raises(ValueError, match=message) as info:
        read_store(store)
    assert str(info.value).startswith(f"{store}: feature store of slide")


def test_store_grid_limit_matches_what_extract_may_write() -> None:
    from wsi_mamba.features.store import MAX_GRID_CELLS
    from wsi_mamba.slide.base import DEFAULT_MAX_PIXELS
    from wsi_mamba.slide.tiling import PIXELS_PER_GRID_CELL

    assert MAX_GRID_CELLS == DEFAULT_MAX_PIXELS // PIXELS_PER_GRID_CELL


# ----------------------------------------------------------------------------------- 14, 16. annotations

POLYGON = "[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]"


def asap(coordinates: str) -> str:
    return (
        '<ASAP_Annotations><Annotations><Annotation Name="lesion 1" Type="Polygon" PartOfGroup="Tumor">'
        f"<Coordinates>{coordinates}</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )


def point(order: str, x: str = "1", y: str = "2") -> str:
    return f'<Coordinate Order="{order}" X="{x}" Y="{y}"/>'


def geojson(feature: object) -> str:
    return json.dumps({"type": "FeatureCollection", "features": [feature]})


def polygon_feature(coordinates: object, name: str = "lesion 1") -> dict:
    geometry = {"type": "Polygon", "coordinates": coordinates}
    return {"type": "Feature", "geometry": geometry, "properties": {"name": name}}


ANNOTATIONS = {
    "ASAP Order abc": ("a.xml", asap(point("abc") + point("1") + point("2")), "'lesion 1' has a non-numeric"),
    "ASAP X nan": ("a.xml", asap(point("0", x="nan") + point("1") + point("2")), "non-numeric coordinate X='nan'"),
    "ASAP 1e308": ("a.xml", asap(point("0", x="1e308") + point("1") + point("2")), "'lesion 1' has a coordinate"),
    "GeoJSON x": ("a.geojson", geojson(polygon_feature([[["x", 0], [1, 0], [1, 1]]])), "'lesion 1': coordinates"),
    "GeoJSON 3 values": ("a.geojson", geojson(polygon_feature([[[0, 0], [1, 0, 5], [1, 1]]])), "'lesion 1'"),
    "GeoJSON 1e308": ("a.geojson", geojson(polygon_feature([[[1e308, 0], [1, 0], [1, 1]]])), "beyond ±1e+07"),
    "feature a number": ("a.geojson", geojson(5), "feature 0 is a int, expected a JSON object"),
    "properties text": ("a.geojson", geojson({"geometry": None, "properties": "x"}), "feature 0: properties is a str"),
    "geometry list": ("a.geojson", geojson({"geometry": [1], "properties": {}}), "feature 0: geometry is a list"),
    "classification list": (
        "a.geojson",
        geojson({"geometry": None, "properties": {"classification": [1]}}),
        "feature 0: classification is a list",
    ),
    "coordinates a dict": ("a.geojson", geojson(polygon_feature({"a": 1})), "feature 0 ('lesion 1') has malformed"),
    "GeoJSON nested": ("a.geojson", DEEP, "not a readable GeoJSON file (not valid JSON (nested too deeply))"),
}


@pytest.mark.parametrize("case", list(ANNOTATIONS))
def test_bad_annotations_name_the_file_and_the_annotation(tmp_path: Path, case: str) -> None:
    name, text, message = ANNOTATIONS[case]
    path = tmp_path / name
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw numpy overflow warning on the way
        with pytest.raises(AnnotationError) as info:
            read_annotations(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def test_annotations_within_bounds_still_read(tmp_path: Path) -> None:
    path = tmp_path / "a.geojson"
    path.write_text(geojson(polygon_feature(json.loads(f"[{POLYGON}]"))))
    assert len(read_annotations(path).lesions) == 1
    xml = tmp_path / "a.xml"
    xml.write_text(asap(point("2", "0", "10") + point("0", "0", "0") + point("1", "9999999", "0")))
    assert read_annotations(xml).lesions[0].points.tolist() == [[0, 0], [9999999, 0], [0, 10]]


def test_bad_annotation_through_the_cli_is_one_line(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    name = store_of(data.features).name.removesuffix(".zarr")
    bad = annotations / f"{name}.xml"
    bad.write_text(asap(point("abc") + point("1") + point("2")))
    code, _, err = run(evaluate_argv(data, data.features, tmp_path / "eval", "--annotations", annotations), capsys)
    assert code == 1
    assert_one_error(err, f"{bad}: annotation 'lesion 1' has a non-numeric coordinate Order='abc'")
