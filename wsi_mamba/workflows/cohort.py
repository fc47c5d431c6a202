"""Cohort inference on dask.distributed: one task per slide, resumable per-slide state, a cohort CSV.

Layout of an output folder::

    slides/NAME.json        the slide's result (written atomically by ``predict_slide``): "done"
    slides/NAME.heatmap.png, NAME.tiles.geojson   with ``heatmap=True``
    failed/NAME.json        the error of a slide that failed (removed when the slide later succeeds)
                            (NAME: the slide's name, clipped with a hash when too long for a file name)
    cohort.csv              slide, path, score, prediction, tiles, status, error: one row per manifest slide,
                            sorted by slide name, rewritten atomically as results arrive

One run at a time writes a folder: it holds the lock file ``OUT.lock`` beside it (a second run fails with one
line; the lock of a dead process is taken over), and removes only the temporary files of its own writers that
a killed run left (``<final name>.tmp-<pid>``), never a slide's result whose name contains ``.tmp-``.

A slide is done when ``slides/NAME.json`` is a complete result of the same model; a rerun skips those and
only those, and redoes failed and missing slides. The CSV holds no timings and no absolute paths (``path``
is the manifest's own text, or the path relative to a manifest folder), so an interrupted and resumed run
ends with the same ``cohort.csv`` as an uninterrupted one.

This module is the scheduler side (:func:`run_cohort`, which imports ``distributed`` lazily) and the cohort
API's one import path; the manifest reader lives in ``cohort_manifest`` and the task side in ``cohort_worker``
(:func:`predict_task` runs in the worker processes, which load the model once each and keep it).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..devices import DEFAULT_DEVICE, check_spec, resolve_device
from ..outputs.atomic import TEMP_MARKER, json_safe, write_csv_atomic, write_json_atomic
from ..outputs.lock import output_lock
from .batch import output_stem
from .bundle import load_bundle
from .cohort_manifest import ManifestEntry, read_manifest
from .cohort_worker import model_fingerprint, predict_task, worker_cache_info
from .extract import TileOptions

__all__ = [
    "CSV_COLUMNS",
    "CohortSummary",
    "ManifestEntry",
    "model_fingerprint",
    "predict_task",
    "read_manifest",
    "run_cohort",
    "worker_cache_info",
]

CSV_COLUMNS = ("slide", "path", "score", "prediction", "tiles", "status", "error")
DEFAULT_MAX_WORKERS = 4
CSV_INTERVAL_S = 1.0  # rewrite cohort.csv at most this often while results arrive (and always at the end)
RESULT_SUFFIXES = (".json", ".heatmap.png", ".tiles.geojson", ".regions.geojson")  # what predict_slide writes


# ---- per-slide state -------------------------------------------------------------------------------------


def _read_result(path: Path) -> dict | None:
    """A slide's result JSON, or None when it is missing or not a complete result."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not {"slide", "score", "tiles", "model"} <= data.keys():
        return None
    return data


def _is_done(result: dict | None, name: str, heatmap: bool) -> bool:
    """Whether a result counts as done for this run (a scored slide also needs its heatmap when asked)."""
    if result is None or result.get("slide") != name:
        return False
    return not (heatmap and result.get("score") is not None and "heatmap" not in result)


def _row(entry: ManifestEntry, status: str, result: dict | None = None, error: str = "") -> list[Any]:
    """A cohort.csv row (no timings, no absolute paths: equal across interrupted and whole runs)."""
    result = result or {}
    score = result.get("score")
    note = error or (result.get("reason") or "")
    return [
        entry.name,
        entry.shown,
        "" if score is None else score,
        result.get("prediction") or "",
        "" if result.get("tiles") is None else result["tiles"],
        status,
        " ".join(str(note).split()),  # one line per slide
    ]


def _remove_stale_temporaries(out: Path, names: Iterable[str]) -> None:
    """Remove the temporary files a killed run left: exactly ``<final name>.tmp-<pid>`` for a final name this
    run writes (``cohort.csv``, ``slides/NAME`` + :data:`RESULT_SUFFIXES`, ``failed/NAME.json``). Anything
    else stays, a slide result whose name merely contains ``.tmp-`` included. Call it holding the lock."""
    finals = {out / "cohort.csv"}
    for name in names:
        finals.update(out / "slides" / f"{output_stem(name)}{suffix}" for suffix in RESULT_SUFFIXES)
        finals.add(out / "failed" / f"{output_stem(name)}.json")
    for folder in {final.parent for final in finals}:
        for item in folder.iterdir() if folder.is_dir() else ():
            head, marker, pid = item.name.rpartition(TEMP_MARKER)
            if marker and pid.isascii() and pid.isdigit() and folder / head in finals and item.is_file():
                with contextlib.suppress(OSError):
                    item.unlink()


# ---- the scheduler side ----------------------------------------------------------------------------------


@dataclass
class CohortSummary:
    """What a cohort run did. ``processed`` slides ran in this call (done or failed), ``skipped`` ones were
    already complete; ``done`` counts every complete slide after the run."""

    out: Path
    csv: Path
    total: int
    processed: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    workers: int = 0
    dashboard: str | None = None
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(out=str(self.out), csv=str(self.csv))
        return data


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # a broken CUDA install means CPU workers
        return 0


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Ignore SIGINT while worker processes are spawned (they inherit it): Ctrl-C then reaches this process
    alone, which closes the cluster, instead of printing a KeyboardInterrupt traceback from every worker."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _client(
    scheduler: str | None, workers: int | None, log: Callable[[str], None], device: str = DEFAULT_DEVICE
) -> Iterator[tuple[Any, int]]:
    """A ``distributed.Client`` on an existing scheduler or on a new LocalCluster; yields it with the number
    of worker processes a LocalCluster started (0 for an existing scheduler). ``device`` sets the default
    number of local workers: one per GPU (``auto``, ``cuda``), one (``cuda:N``), CPU workers (``cpu``)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("cohort runs need dask.distributed: pip install distributed") from None
    if scheduler is not None:
        try:
            client = Client(scheduler)
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"{scheduler}: cannot reach the dask scheduler ({exc})") from None
        with client:
            yield client, 0
        return
    spec = check_spec(device)
    gpus = 0 if spec == "cpu" else 1 if spec.startswith("cuda:") else _gpu_count()
    n = workers or (gpus or min(DEFAULT_MAX_WORKERS, _cpu_count()))
    import logging

    with _workers_ignore_sigint():
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        kind = (spec if spec.startswith("cuda:") else f"{gpus} GPU(s)") if gpus else "CPU"
        log(f"LocalCluster: {n} worker process(es), 1 task thread each, {kind}")
        yield client, n


class _CohortState:
    """The rows of cohort.csv and the per-slide files of one run, updated as results arrive."""

    def __init__(self, out: Path, total: int) -> None:
        self.slides_dir, self.failed_dir = out / "slides", out / "failed"
        self.summary = CohortSummary(out=out, csv=out / "cohort.csv", total=total)
        self.rows: dict[str, list[Any]] = {}
        self.last_write = 0.0

    def write_csv(self, force: bool = True) -> None:
        """Rewrite cohort.csv (sorted by slide name) atomically; unless ``force``, at most every CSV_INTERVAL_S."""
        if force or time.monotonic() - self.last_write >= CSV_INTERVAL_S:
            rows = (self.rows[name] for name in sorted(self.rows))
            write_csv_atomic(self.summary.csv, CSV_COLUMNS, rows)
            self.last_write = time.monotonic()

    def record(self, entry: ManifestEntry, outcome: dict) -> None:
        """Record one finished task: its row, and failed/NAME.json written (failure) or removed (success)."""
        self.summary.processed += 1
        stem = output_stem(entry.name)
        failed_file = self.failed_dir / f"{stem}.json"
        result = _read_result(self.slides_dir / f"{stem}.json") if outcome["status"] == "done" else None
        if result is not None:  # read back from the file: proof that the result is there, complete
            self.rows[entry.name] = _row(entry, "done", result)
            failed_file.unlink(missing_ok=True)
            return
        error = outcome.get("error") or "the task finished but left no complete result file"
        self.rows[entry.name] = _row(entry, "failed", error=error)
        self.summary.failures[entry.name] = error
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = {"slide": entry.name, "path": entry.shown, "error": error, "when": when}
        write_json_atomic(failed_file, json_safe(record))


def run_cohort(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    heatmap: bool = False,
    progress: bool = True,
    options: TileOptions = TileOptions(),  # noqa: B008 (frozen dataclass)
    torch_threads: int | None = None,
    log: Callable[[str], None] | None = None,
    device: str = DEFAULT_DEVICE,
) -> CohortSummary:
    """Score every slide of ``manifest`` (a CSV of slide paths or a folder) into ``out``, one dask task per
    slide; resumable (complete results are skipped). See the module docstring for the output layout.

    ``scheduler``: address of a running dask scheduler (``tcp://host:8786``), or None for a LocalCluster of
    ``workers`` processes with one task thread each (default: one per GPU, else min(4, CPUs)). Worker
    processes load the model once each. ``torch_threads``: torch intra-op threads per worker (default on a
    LocalCluster: CPUs / workers; on an existing scheduler: left as the workers have it). ``device``
    (``auto``, ``cpu``, ``cuda``, ``cuda:N``) is resolved by each worker: ``auto`` and ``cuda`` put LocalCluster
    worker k on GPU k mod the GPU count. ``log`` receives
    the start-up lines (workers, dashboard link); default: stderr when ``progress``.
    A slide that fails is recorded in ``out/failed/NAME.json`` and the others go on. ``ValueError`` for a bad
    manifest or model, or when ``out`` holds results of another model."""
    if scheduler is not None and workers is not None:
        raise ValueError("give either a scheduler address or a number of workers, not both")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    device = check_spec(device)
    if scheduler is None:
        resolve_device(device)  # local workers: a device this machine lacks fails here, before any work
    if log is None:
        log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
    started = time.perf_counter()
    entries = read_manifest(manifest)
    model_name = load_bundle(model).name  # checked once, before any worker starts; each worker loads its own
    model_arg = None if model is None else str(Path(model).absolute())
    fingerprint = model_fingerprint(model)

    with output_lock(out):  # one run per output folder; a second fails with one line naming the holder
        state = _CohortState(Path(out), len(entries))
        for folder in (state.slides_dir, state.failed_dir):
            folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(Path(out), (entry.name for entry in entries))
        todo: list[ManifestEntry] = []
        for entry in entries:
            result = _read_result(state.slides_dir / f"{output_stem(entry.name)}.json")
            if result is not None and result.get("model") != model_name:
                raise ValueError(
                    f"{out}: {entry.name} was scored by model {result.get('model')!r}, not {model_name!r}; "
                    "write this model's results to another --out folder"
                )
            if _is_done(result, entry.name, heatmap):
                state.rows[entry.name] = _row(entry, "done", result)
                (state.failed_dir / f"{output_stem(entry.name)}.json").unlink(missing_ok=True)
                state.summary.skipped += 1
            else:
                state.rows[entry.name] = _row(entry, "pending")
                todo.append(entry)
        state.write_csv()

        if todo:
            with _client(scheduler, workers, log, device) as (client, started_workers):
                if started_workers and torch_threads is None:
                    torch_threads = max(1, _cpu_count() // started_workers)
                state.summary.workers = started_workers or len(client.nthreads())
                if scheduler is None and importlib.util.find_spec("bokeh") is None:
                    log("dashboard: none (pip install 'bokeh>=3.1' to get one)")
                else:  # an external scheduler serves it when bokeh is installed where it runs
                    state.summary.dashboard = client.dashboard_link
                    log(f"dashboard: {state.summary.dashboard}")
                if scheduler is not None:
                    waiting = "; the tasks wait until workers join" if not state.summary.workers else ""
                    log(f"scheduler {scheduler}: {state.summary.workers} worker(s) connected{waiting}")
                slides_dir = str(state.slides_dir.absolute())
                task = (slides_dir, model_arg, options, heatmap, torch_threads, fingerprint, device)
                _run_tasks(client, todo, task, state, progress)

    summary = state.summary
    summary.done = sum(row[5] == "done" for row in state.rows.values())
    summary.failed = sum(row[5] == "failed" for row in state.rows.values())
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


def _run_tasks(client: Any, todo: list[ManifestEntry], task: tuple, state: _CohortState, progress: bool) -> None:
    """Submit one :func:`predict_task` per slide (``task``: its arguments after the path) and record each
    result as it arrives (``as_completed``), keeping cohort.csv current."""
    from distributed import as_completed
    from tqdm import tqdm

    run = uuid.uuid4().hex[:8]
    futures = {
        client.submit(predict_task, str(entry.path), *task, key=f"predict-{entry.name}-{run}", pure=False): entry
        for entry in todo
    }
    bar = tqdm(total=len(todo), unit="slide", desc="cohort", file=sys.stderr, disable=None if progress else True)
    try:
        with bar:
            for future in as_completed(futures):
                entry = futures.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # a worker died, the task was cancelled, ...
                    outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                future.release()
                state.record(entry, outcome)
                bar.update(1)
                state.write_csv(force=False)
    finally:  # also when interrupted: the CSV shows every result recorded so far
        state.write_csv()
