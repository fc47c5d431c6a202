"""Hostile inputs, second round (issue 25): outputs, temporaries and locks. No output is written over a file the
command reads; temporaries are created exclusively (a planted name is never written through); existing outputs
that are not regular files are refused; a lock without an owner is stale and its takeover is atomic; a full
disk names the file being written; temporaries of our dead processes are cleaned. See docs/hostile-inputs.md."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_error, dead_pid, run, snapshot
from PIL import Image
from slide_fixtures import write_pyramid
from workflow_fixtures import WorkflowData, workflow_data

from wsi_mamba.outputs.atomic import (
    TEMP_MARKER,
    atomic_folder,
    remove_stale_temporaries,
    temp_owner,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from wsi_mamba.outputs.lock import lock_path, output_lock

pytestmark = pytest.mark.usefixtures("one_torch_thread")
POSIX = pytest.mark.skipif(os.name != "posix", reason="POSIX file types, flock and fork")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)






def write_patches(root: Path, n: int = 4, px: int = 32) -> list[Path]:
    """``n`` tiny labelled PNG patches per class in ``root/0`` and ``root/1``."""
    rng = np.random.default_rng(0)
    paths = []
    for label in (0, 1):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = root / str(label) / f"p{i}.png"
            Image.fromarray(rng.integers(0, 255, (px, px, 3), dtype=np.uint8)).save(path)
            paths.append(path)
    return paths


def write_list(path: Path, patches: list[Path], extra: str = "") -> Path:
    """A ``path,label`` CSV of ``patches`` (label: the folder name), with an extra column when asked."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", *([extra] if extra else [])])
        for p in patches:
            writer.writerow([p.relative_to(path.parent), p.parent.name, *(["note"] if extra else [])])
    return path


# ------------------------------------------------------------------------- 7. no output over an input


def test_split_patches_refuses_to_replace_its_input_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pat = tmp_path / "pat"
    listed = write_list(pat / "train.csv", write_patches(pat))
    before = snapshot(tmp_path)
    code, stdout, err = run(["split-patches", listed, "--out", pat], capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, "train.csv", "is an input of this command", "nothing was changed")
    assert snapshot(tmp_path) == before


def test_score_patches_refuses_out_equal_to_its_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pat = tmp_path / "pat"
    listed = write_list(pat / "list.csv", write_patches(pat))
    before = snapshot(tmp_path)
    code, _, err = run(["score-patches", listed, "--out", listed], capsys)
    assert code == 1
    assert_one_error(err, "list.csv", "is an input of this command")
    assert snapshot(tmp_path) == before
    labels = write_list(tmp_path / "labels.csv", [])  # a labels file as the metrics' name: also refused
    code, _, err = run(["score-patches", pat, "--labels", labels, "--out", tmp_path / "labels.csv"], capsys)
    assert code == 1
    assert_one_error(err, "labels.csv", "is an input of this command")


def test_cohort_refuses_a_manifest_stored_as_its_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "C"
    out.mkdir()
    slide = write_pyramid(tmp_path / "a.tif", 256, 256, levels=1)
    manifest = out / "cohort.csv"
    manifest.write_text(f"slide,patient_id,notes\n{slide},P1,keep me\n")
    before = snapshot(tmp_path)
    code, _, err = run(["cohort", manifest, "--out", out, "--no-progress"], capsys)
    assert code == 1
    assert_one_error(err, "cohort.csv", "is an input of this command")
    assert snapshot(tmp_path) == before and not lock_path(out).exists()


def test_evaluate_and_train_encoder_refuse_outputs_over_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "per_slide.csv"
    labels.write_text("image,label\na,0\n")
    start = tmp_path / "enc.safetensors"
    start.write_bytes(b"weights")
    before = snapshot(tmp_path)
    code, _, err = run(["evaluate", "--features", tmp_path, "--labels", labels, "--out", tmp_path], capsys)
    assert code == 1
    assert_one_error(err, "per_slide.csv", "is an input of this command")
    argv = ["train-encoder", "--patches", tmp_path, "--model", start, "--out", start, "--epochs", "1"]
    code, _, err = run(argv, capsys)
    assert code == 1
    assert_one_error(err, "enc.safetensors", "is an input of this command")
    assert snapshot(tmp_path) == before


def test_predict_refuses_a_result_over_its_model(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "M"
    shutil.copytree(data.model, model)
    slide = shutil.copyfile(data.slide("test_001"), tmp_path / "model.tif")  # its result: M/model.json
    before = snapshot(tmp_path)
    code, _, err = run(["predict", slide, "--model", model, "--out", model], capsys)
    assert code == 1
    assert_one_error(err, str(model / "model.json"), "is an input of this command")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------- 8. exclusive temporaries, non-regular outputs


def plant_links(target: Path, victim: Path) -> list[Path]:
    """Symlinks at the temporary names earlier versions would have used (``NAME.tmp-<pid>``, this process and
    the next ones), pointing at ``victim``."""
    links = []
    for pid in range(os.getpid(), os.getpid() + 4):
        link = target.with_name(f"{target.name}{TEMP_MARKER}{pid}")
        link.symlink_to(victim)
        links.append(link)
    return links


@POSIX
def test_writers_never_write_through_planted_temporary_names(tmp_path: Path) -> None:
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for name, write in (
        ("r.json", lambda p: write_json_atomic(p, {"a": 1})),
        ("r.csv", lambda p: write_csv_atomic(p, ["a"], [[1]])),
        ("r.txt", lambda p: write_text_atomic(p, "x")),
    ):
        links = plant_links(out / name, victim)
        write(out / name)
        assert not (out / name).is_symlink() and (out / name).is_file()
        assert all(link.is_symlink() for link in links[1:])  # ours (this PID's) was replaced by a rename
    assert victim.read_text() == "precious"
    folder_victim = tmp_path / "elsewhere" / "folder"
    folder_victim.mkdir()
    (folder_victim / "keep").write_text("mine")
    plant_links(out / "model", folder_victim)
    with atomic_folder(out / "model") as partial:
        (partial / "model.json").write_text("{}")
    assert (out / "model" / "model.json").is_file() and not (out / "model").is_symlink()
    assert [p.name for p in folder_victim.iterdir()] == ["keep"]


@POSIX
def test_predict_never_writes_through_a_planted_temporary(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    plant_links(out / "test_001.json", victim)
    code, _, err = run(["predict", data.slide("test_001"), "--model", data.model, "--out", out], capsys)
    assert code == 0, err
    assert victim.read_text() == "precious"
    result = out / "test_001.json"
    assert not result.is_symlink() and json.loads(result.read_text())["slide"] == "test_001"


@POSIX
@pytest.mark.parametrize("kind", ["fifo", "link to a device", "link to a fifo"])
def test_tiles_refuses_an_output_that_is_not_a_regular_file(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slide = write_pyramid(tmp_path / "s.tif", 256, 256, levels=1)
    out = tmp_path / "preview.png"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    if kind == "fifo":
        out = fifo
    else:
        out.symlink_to("/dev/null" if kind == "link to a device" else fifo)
    code, _, err = run(["tiles", slide, "--tile", "64", "--out", out], capsys)
    assert code == 1
    assert_one_error(err, str(out), "not a regular file", "nothing was changed")
    assert fifo.is_fifo() and (kind == "fifo" or out.is_symlink())
    with pytest.raises(ValueError, match="not a regular file"):  # every atomic writer refuses them too
        write_text_atomic(out, "x")
    assert fifo.is_fifo()


# ------------------------------------------------------------------ 9, 10. locks: stale, full disk, race


def test_a_lock_without_an_owner_is_stale(tmp_path: Path) -> None:
    target = tmp_path / "c"
    for content in (b"", b'{"pid": 1'):  # 0-byte (a full disk while writing it), cut short
        lock_path(target).write_bytes(content)
        with output_lock(target) as lock:
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not lock_path(target).exists()


FULL_DISK = """
import resource, signal, sys
from wsi_mamba.outputs.atomic import write_json_atomic
from wsi_mamba.outputs.lock import output_lock
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))  # no file may grow: a full disk
for action in (lambda: output_lock(sys.argv[1]).__enter__(), lambda: write_json_atomic(sys.argv[2], {"a": 1})):
    try:
        action()
    except OSError as exc:
        print(exc.filename)
"""


@POSIX
def test_a_full_disk_leaves_no_lock_and_names_the_file(tmp_path: Path) -> None:
    target, result = tmp_path / "c", tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(target), str(result)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    named = done.stdout.split()
    assert [Path(p).name for p in named] == ["c.lock", "r.json"], done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock left, no temporary, no result
    with output_lock(target):  # and the next run takes the lock
        pass


CONTENDER = """
import importlib.util, sys, time, types
from pathlib import Path
root = Path(importlib.util.find_spec("wsi_mamba").origin).parent
for name, folder in (("wsi_mamba", root), ("wsi_mamba.outputs", root / "outputs")):
    sys.modules[name] = types.ModuleType(name)  # the packages without their __init__: a quick start
    sys.modules[name].__path__ = [str(folder)]
from wsi_mamba.outputs import lock
target, sync = sys.argv[1], Path(sys.argv[2])
(sync / f"ready-{sys.argv[3]}").touch()
while not (sync / "go").exists():
    time.sleep(0.001)
try:
    with lock.output_lock(target):
        print("won", flush=True)
        while not (sync / "release").exists():
            time.sleep(0.005)
except ValueError:
    print("lost", flush=True)
"""


def race_for_lock(target: Path, sync: Path, n: int) -> list[str]:
    """``n`` fresh processes (as ``wsi-mamba`` runs are) try to take ``target``'s lock at once; a winner holds
    it until all have answered. Returns their answers."""
    sync.mkdir()
    argv = [sys.executable, "-c", CONTENDER, str(target), str(sync)]
    contenders = [subprocess.Popen([*argv, str(i)], stdout=subprocess.PIPE, text=True) for i in range(n)]
    try:
        while len(list(sync.glob("ready-*"))) < n and all(c.poll() is None for c in contenders):
            time.sleep(0.005)
        (sync / "go").touch()
        answers = [c.stdout.readline().strip() for c in contenders]
        (sync / "release").touch()
        for contender in contenders:
            contender.wait(timeout=60)
    finally:
        for contender in contenders:
            contender.stdout.close()
            if contender.poll() is None:
                contender.kill()
    return answers


@POSIX
def test_stale_lock_takeover_has_exactly_one_winner(tmp_path: Path) -> None:
    stale = {"pid": dead_pid(), "host": socket.gethostname()}
    for trial in range(3):
        target = tmp_path / f"out{trial}"
        lock_path(target).write_text(json.dumps(stale))
        answers = race_for_lock(target, tmp_path / f"sync{trial}", 4)
        assert sorted(answers) == ["lost", "lost", "lost", "won"], (trial, answers)
        assert not lock_path(target).exists()


# ---------------------------------------------------------------- 16. full disk in train, stale temporaries


def test_train_full_disk_names_the_copy_not_the_encoder(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def copyfile(src: str, dst: str, **kwargs: object) -> str:  # what sendfile reports: the source named
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    out = tmp_path / "model"
    argv = ["train", "--features", data.features, "--labels", data.labels, "--out", out, "--epochs", "1"]
    code, _, err = run(argv, capsys)
    assert code == 1
    line = assert_one_error(err, str(out / "encoder.safetensors"), "No space left on device")
    assert str(data.encoder) not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial model, no lock


def test_temporary_names_are_recognised_exactly() -> None:
    assert temp_owner("x.json.tmp-12") == ("x.json", 12)
    assert temp_owner("x.json.tmp-12-ab_3k9zq") == ("x.json", 12)
    for name in ("x.tmp-1.tif", "x.tmp-1.json", "notes.tmp-x", "x.json.tmp-12-toolongname", ".tmp-3"):
        assert temp_owner(name) is None, name


def plant_stale(folder: Path, final: str, live: bool = False) -> Path:
    """A temporary of a dead process (or of a live one) for ``final`` in ``folder``: a folder, as writers make."""
    pid = os.getppid() if live else dead_pid()
    path = folder / f"{final}{TEMP_MARKER}{pid}-abcd1234"
    path.mkdir(parents=True)
    (path / final).write_text("half")
    return path


def test_predict_removes_the_temporaries_of_dead_runs_only(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = [plant_stale(out, "test_001.json"), out / f"test_001.heatmap.png{TEMP_MARKER}{dead_pid()}"]
    stale[1].write_bytes(b"half")
    kept = [plant_stale(out, "test_002.json", live=True), out / f"notes.txt{TEMP_MARKER}{dead_pid()}"]
    kept[1].write_text("a user's file")
    kept.append(out / "x.tmp-1.json")
    kept[2].write_text("{}")
    code, _, err = run(["predict", data.slide("test_001"), "--model", data.model, "--out", out], capsys)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_train_and_extract_remove_the_temporaries_of_dead_runs(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = [plant_stale(tmp_path, "model"), plant_stale(tmp_path, "model.old")]
    kept = plant_stale(tmp_path, "other")
    argv = ["train", "--features", data.features, "--labels", data.labels, "--out", tmp_path / "model"]
    code, _, err = run([*argv, "--epochs", "1"], capsys)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and kept.exists()
    features = tmp_path / "features"
    stale = [plant_stale(features, "test_001.zarr"), plant_stale(features, "test_001.zarr.old")]
    code, _, err = run(["extract", data.slide("test_001"), "--encoder", data.encoder, "--out", features], capsys)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and (features / "test_001.zarr").is_dir()


def test_remove_stale_temporaries_never_follows_links(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / f"x.json{TEMP_MARKER}{dead_pid()}").symlink_to(elsewhere)
    assert len(remove_stale_temporaries(out)) == 1
    assert list(out.iterdir()) == [] and (elsewhere / "keep").read_text() == "mine"
