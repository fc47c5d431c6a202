"""Cohort inference on dask.distributed: per-slide state, resume, the cohort CSV, an external scheduler.

Uses the shared workflow data (tests/workflow_fixtures.py): 8 small synthetic slides and a trained model.
The cohorts run on 2 worker processes (a separately started scheduler, or a local cluster).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from workflow_fixtures import workflow_data, write_garbage_slide

from wsi_mamba.cli import main
from wsi_mamba.workflows.cohort import CSV_COLUMNS, read_manifest, run_cohort, worker_cache_info


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return workflow_data(tmp_path_factory)


def make_cohort(data, folder: Path) -> Path:
    """A private copy of the 8 slides under folder/images and folder/manifest.csv with relative paths."""
    images = folder / "images"
    images.mkdir(parents=True)
    for path in data.slides("training") + data.slides("testing"):
        shutil.copyfile(path, images / path.name)
    names = sorted(p.name for p in images.iterdir())
    assert len(names) == 8
    (folder / "manifest.csv").write_text("slide,label\n" + "".join(f"images/{n},x\n" for n in names))
    return folder / "manifest.csv"


def read_rows(out: Path) -> list[dict]:
    with open(out / "cohort.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def cli_json(args: list[str], capsys) -> tuple[int, dict]:
    code = main(args)
    return code, json.loads(capsys.readouterr().out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(processes: list[subprocess.Popen]) -> None:
    """Terminate each process group (SIGKILL after 10 s)."""
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A dask scheduler and two single-threaded workers started separately, as `dask scheduler` and
    `dask worker` would be on a cluster (in another folder than the tests), each in its own process group;
    torn down after the module."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "dask"]
    elsewhere = tmp_path_factory.mktemp("workers-cwd")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True, "cwd": elsewhere}
    processes = [
        # the HTTP server on a free port: 8787, the default, stays free for the local clusters
        subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"], **quiet
        )
    ]
    try:
        for _ in range(2):
            worker = [*dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--dashboard-address", ":0"]
            processes.append(subprocess.Popen(worker, **quiet))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        _stop(processes)


@pytest.fixture(scope="module")
def reference(data, scheduler, tmp_path_factory):
    """An uninterrupted run of the good cohort on the separately started scheduler, and what each worker
    loaded and ran for it."""
    from distributed import Client

    manifest = make_cohort(data, tmp_path_factory.mktemp("reference"))
    out = manifest.parent / "out"
    summary = run_cohort(manifest, out, model=data.model, scheduler=scheduler, progress=False, torch_threads=1)
    with Client(scheduler) as client:
        workers = client.run(worker_cache_info)
    return summary, out, workers


def test_existing_scheduler(reference):
    """Every slide done on the external workers; both workers took slides and loaded the model once each."""
    summary, out, workers = reference
    assert (summary.total, summary.processed, summary.done, summary.failed, summary.workers) == (8, 8, 8, 0, 2)
    assert summary.ok and summary.dashboard.startswith("http://127.0.0.1:")
    assert len(list((out / "slides").glob("*.json"))) == 8
    assert not list((out / "failed").iterdir())
    rows = read_rows(out)
    assert [r["slide"] for r in rows] == sorted(r["slide"] for r in rows) and len(rows) == 8
    assert {r["status"] for r in rows} == {"done"}
    for row in rows:
        result = json.loads((out / "slides" / f"{row['slide']}.json").read_text())
        assert float(row["score"]) == result["score"] and int(row["tiles"]) == result["tiles"] > 0
        assert row["prediction"] in ("tumor", "normal") and row["path"] == f"images/{row['slide']}.tif"
    assert len(workers) == 2 and sum(w["slides"] for w in workers.values()) == 8
    assert all(w["slides"] >= 1 and w["models_loaded"] == 1 for w in workers.values()), workers


def test_corrupt_slide_recorded_then_only_it_redone(data, tmp_path, scheduler, reference, capsys, monkeypatch):
    """The acceptance: 8 slides, one corrupt -> 7 results, 1 recorded failure, exit 1; after the file is
    replaced by a good slide, a rerun processes only that slide and ends with the reference CSV.
    (On the separately started workers, which are already warm; test_killed_run covers the local cluster.
    Manifest and --out are given relative to this test's folder, which is not the workers'.)"""
    from distributed import Client

    manifest = make_cohort(data, tmp_path / "cohort")
    images = manifest.parent / "images"
    victim = sorted(images.iterdir())[3]
    good = tmp_path / "good.tif"
    shutil.copyfile(victim, good)
    write_garbage_slide(victim)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    args = [
        "cohort",
        "cohort/manifest.csv",
        "--out",
        "out",
        "--model",
        str(data.model),
        "--scheduler",
        scheduler,
        "--torch-threads",
        "1",
        "--json",
        "--no-progress",
    ]

    code, summary = cli_json(args, capsys)
    assert code == 1
    assert (summary["total"], summary["processed"], summary["skipped"]) == (8, 8, 0)
    assert (summary["done"], summary["failed"]) == (7, 1)
    assert list(summary["failures"]) == [victim.stem]
    results = sorted(p.name for p in (out / "slides").glob("*.json"))
    assert len(results) == 7 and f"{victim.stem}.json" not in results
    record = json.loads((out / "failed" / f"{victim.stem}.json").read_text())
    assert record["slide"] == victim.stem and record["path"] == f"images/{victim.name}"
    assert victim.name in record["error"]
    rows = read_rows(out)
    assert [r["slide"] for r in rows] == sorted(p.stem for p in images.iterdir())
    assert {r["slide"]: r["status"] for r in rows if r["status"] != "done"} == {victim.stem: "failed"}
    bad = next(r for r in rows if r["slide"] == victim.stem)
    assert bad["error"] == " ".join(record["error"].split()) and bad["score"] == bad["tiles"] == ""
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "slides").glob("*.json")}

    shutil.copyfile(good, victim)
    code, summary = cli_json(args, capsys)
    assert code == 0
    assert (summary["processed"], summary["skipped"], summary["done"], summary["failed"]) == (1, 7, 8, 0)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "slides").glob("*.json") if p.name in mtimes} == mtimes
    assert (out / "slides" / f"{victim.stem}.json").exists()
    assert not list((out / "failed").iterdir()), "the failure record goes when the slide succeeds"
    assert (out / "cohort.csv").read_bytes() == (reference[1] / "cohort.csv").read_bytes()
    with Client(scheduler) as client:
        assert all(w["models_loaded"] == 1 for w in client.run(worker_cache_info).values()), "model loaded once"

    code, summary = cli_json(args, capsys)  # nothing left to do: no task is submitted
    assert code == 0 and (summary["processed"], summary["skipped"]) == (0, 8)


def test_killed_run_resumes_to_the_same_csv(data, tmp_path, reference, capsys):
    """`wsi-mamba cohort` on a local cluster, killed (SIGKILL, whole process group) after its first result,
    then rerun to completion on 2 worker processes: the rerun skips what was done and the final cohort.csv
    is byte for byte that of an uninterrupted run."""
    manifest = make_cohort(data, tmp_path / "cohort")
    out = tmp_path / "out"
    args = ["cohort", str(manifest), "--model", str(data.model), "--out", str(out), "--torch-threads", "1"]
    # one worker for the run that is killed (a worker start costs seconds on a busy machine), two for the rerun
    command = [sys.executable, "-m", "wsi_mamba", *args, "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "slides").glob("*.json")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no result after 240 s"
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "slides").glob("*.json")}
    assert 1 <= len(done_before) < 8, f"the run finished {len(done_before)} slides before the kill"
    statuses = [r["status"] for r in read_rows(out)]  # consistent whenever the run stops
    assert len(statuses) == 8 and "pending" in statuses
    pending = next(r["slide"] for r in read_rows(out) if r["status"] == "pending")
    (out / "slides" / f"{pending}.json.tmp-99999").write_text("{")  # what a kill can leave behind

    code, summary = cli_json([*args, "--workers", "2", "--json", "--no-progress"], capsys)
    assert code == 0
    assert summary["skipped"] == len(done_before) and summary["processed"] == 8 - len(done_before)
    assert summary["workers"] == 2 and summary["done"] == 8
    assert {p.name: p.stat().st_mtime_ns for p in (out / "slides").glob("*.json") if p.name in done_before} == (
        done_before
    )
    assert (out / "cohort.csv").read_bytes() == (reference[1] / "cohort.csv").read_bytes()
    assert not list((out / "slides").glob("*.tmp-*")), "temporaries of the killed run are cleaned up"


def test_manifests(data, tmp_path, capsys):
    """Relative paths resolve against the CSV's folder; a folder is searched; clear errors otherwise."""
    manifest = make_cohort(data, tmp_path / "cohort")
    entries = read_manifest(manifest)
    assert [e.shown for e in entries] == [f"images/{e.name}.tif" for e in entries]
    assert all(e.path.is_absolute() and e.path.exists() for e in entries)
    from_folder = read_manifest(manifest.parent / "images")
    assert [(e.name, e.path) for e in from_folder] == [(e.name, e.path) for e in entries]
    assert [e.shown for e in from_folder] == [f"{e.name}.tif" for e in entries]

    paths_csv = tmp_path / "paths.csv"
    paths_csv.write_text("name,path\nx,cohort/images/" + entries[0].path.name + "\n")
    assert read_manifest(paths_csv)[0].path == entries[0].path  # 'path' wins over other columns

    def error(argv: list[str]) -> str:
        assert main(["cohort", *argv, "--out", str(tmp_path / "o"), "--model", str(data.model)]) == 1
        return capsys.readouterr().err

    no_column = tmp_path / "labels.csv"
    no_column.write_text("name,label\na,1\n")
    message = error([str(no_column)])
    assert "'slide'" in message and "'name'" in message and str(no_column) in message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no slide files" in error([str(empty)])
    header_only = tmp_path / "header.csv"
    header_only.write_text("slide\n")
    assert "no slides" in error([str(header_only)])
    twice = tmp_path / "twice.csv"
    twice.write_text(f"slide\n{entries[0].path}\ncohort/images/{entries[0].path.name}\n")
    assert "share a name" in error([str(twice)])
    assert "no such manifest" in error([str(tmp_path / "missing.csv")])
    assert not (tmp_path / "o").exists(), "errors are found before anything is written"
    assert main(["cohort", str(manifest), "--out", "o", "--workers", "2", "--scheduler", "tcp://x:1"]) == 2


def test_worker_model_cache(data, tmp_path):
    """A worker process loads a model once and keeps it; a model rewritten in the same folder (another
    fingerprint) replaces it. Run in this process, as a worker would run the task."""
    from wsi_mamba.workflows import cohort

    model = shutil.copytree(data.model, tmp_path / "model")
    slide = str(data.slides("testing")[0])
    before = worker_cache_info()["models_loaded"]
    fingerprint = cohort.model_fingerprint(model)
    for out in ("a", "b"):
        outcome = cohort.predict_task(slide, str(tmp_path / out), str(model), fingerprint=fingerprint)
        assert outcome["status"] == "done" and (tmp_path / out / f"{Path(slide).stem}.json").exists()
    assert worker_cache_info()["models_loaded"] == before + 1

    meta = model / "model.json"
    os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 10**9))
    assert cohort.model_fingerprint(model) != fingerprint
    cohort.predict_task(slide, str(tmp_path / "c"), str(model), fingerprint=cohort.model_fingerprint(model))
    assert worker_cache_info()["models_loaded"] == before + 2
    assert worker_cache_info()["models"].count(str(model)) == 1, "the outdated copy is dropped"

    failed = cohort.predict_task(str(tmp_path / "missing.tif"), str(tmp_path / "d"), str(model), fingerprint="x")
    assert failed["status"] == "failed" and "missing.tif" in failed["error"]


def test_shipped_model_by_name(tmp_path, monkeypatch):
    """``model`` may name a shipped model (as ``--model synthetic-camelyon`` does): the workers get its folder,
    not a path of that name under the current directory."""
    from wsi_mamba.synth import make_spec, write_slide

    (tmp_path / "slides").mkdir()
    spec = make_spec(seed=5001, index=0, width=1024, height=768, tumor=False)
    write_slide(spec, tmp_path / "slides" / "s.tif", flavour="tiff")
    monkeypatch.chdir(tmp_path)  # no folder named synthetic-camelyon here
    summary = run_cohort(tmp_path / "slides", tmp_path / "out", model="synthetic-camelyon", workers=1, progress=False)
    assert summary.failed == 0, summary.failures
    assert json.loads((tmp_path / "out" / "slides" / "s.json").read_text())["model"] == "synthetic-camelyon"
