"""Cohort inference on dask.distributed: one task per slide, resumable per-slide state, a cohort CSV.

Layout of an output folder::

    slides/NAME.json        the slide's result (written atomically by ``predict_slide``): "done"
    slides/NAME.heatmap.png, NAME.tiles.geojson   with ``heatmap=True``
    failed/NAME.json        the error of a slide that failed (removed when the slide later succeeds)
                            (NAME: the slide's name, clipped with a hash when too long for a file name)
    cohort.csv              slide, path, score, prediction, tiles, status, error, model_sha256,
                            slide_head_sha256: one row per manifest slide, sorted by slide name, rewritten
                            atomically as results arrive (text cells that a spreadsheet would run as a
                            formula, starting with = + - @ tab or CR, get a leading ')

One run at a time writes a folder: it holds the lock file ``OUT.lock`` beside it (a second run fails with one
line; the lock of a dead process is taken over), and removes only the temporary files of its own writers that
a killed run left (``<final name>.tmp-<pid>``), never a slide's result whose name contains ``.tmp-``.

A slide is done when ``slides/NAME.json`` is a complete result of the same model: its name, and the
provenance every result records (``model_sha256`` of the model's weights and configs, ``slide_file``: the
slide's resolved path, size, mtime and a hash of its first 64 KiB; :mod:`..provenance`) match this run's. A
rerun skips those and only those, and redoes failed and missing slides and those of other weights or another
file, saying so (``2 redone: model changed (a, b)``; their stale result files are removed first). The CSV
holds no timings and no absolute paths (``path`` is the manifest's own text, or the path relative to a manifest
folder), so an interrupted and resumed run ends with the same ``cohort.csv`` as an uninterrupted one.

This module is the scheduler side (:func:`run_cohort`; its dask client, imported lazily, comes from
``cluster``); the manifest reader lives in ``manifest`` and the task side in ``worker`` (:func:`predict_task` runs
in the worker processes, which load the model once each and keep it). The package ``wsi_mamba.workflows.cohort``
is the cohort API's one import path.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...devices import DEFAULT_DEVICE, check_spec, resolve_device
from ...features.modes import FeatureMode
from ...features.options import ReadOptions
from ...outputs.artefact import read_json_object
from ...outputs.atomic import check_not_inputs, json_safe, remove_stale_temporaries, write_csv_atomic, write_json_atomic
from ...outputs.lock import output_lock
from ...outputs.names import RESULT_SUFFIXES, output_stem
from ..bundle import load_bundle, model_files, model_path
from ..provenance import bundle_sha256, provenance_change, slide_identity
from .cluster import cluster_client, cpu_count, scheduler_client
from .manifest import ManifestEntry, read_manifest
from .worker import model_fingerprint, predict_task

CSV_COLUMNS = ("slide", "path", "score", "prediction", "tiles", "status", "error", "model_sha256", "slide_head_sha256")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs such a cell as a formula (OWASP)
CSV_INTERVAL_S = 1.0  # rewrite cohort.csv at most this often while results arrive (and always at the end)


# ---- per-slide state -------------------------------------------------------------------------------------


def _read_result(path: Path) -> dict | None:
    """A slide's result JSON, or None when it is missing or not a complete result. A file that cannot be read
    as one (over the size cap, not a regular file, nested too deeply, not JSON) is also None, with a warning:
    the slide is scored again, a damaged result never blocks a rerun."""
    try:
        data = read_json_object(path)
    except ValueError as exc:
        if os.path.lexists(path):
            warnings.warn(f"{exc}: not a readable result, the slide is scored again", stacklevel=2)
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
    slide_file = result.get("slide_file") if isinstance(result.get("slide_file"), dict) else {}
    return [
        _text_cell(entry.name),
        _text_cell(entry.shown),
        "" if score is None else score,
        _text_cell(result.get("prediction") or ""),
        "" if result.get("tiles") is None else result["tiles"],
        status,
        _text_cell(" ".join(str(note).split())),  # one line per slide
        _text_cell(result.get("model_sha256") or ""),
        _text_cell(slide_file.get("head_sha256") or ""),
    ]


def _text_cell(value: object) -> str:
    """A text cell of cohort.csv that no spreadsheet runs as a formula: a leading ``'`` when it starts with
    one of :data:`FORMULA_STARTS` (the OWASP guidance on CSV injection); numbers are written as numbers."""
    text = str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def _output_files(out: Path, names: Iterable[str]) -> set[Path]:
    """The files a run writes for slides ``names``: ``cohort.csv``, ``slides/NAME`` + :data:`RESULT_SUFFIXES`,
    ``failed/NAME.json``."""
    finals = {out / "cohort.csv"}
    for name in names:
        finals.update(out / "slides" / f"{output_stem(name)}{suffix}" for suffix in RESULT_SUFFIXES)
        finals.add(out / "failed" / f"{output_stem(name)}.json")
    return finals


def _remove_stale_temporaries(out: Path, names: Iterable[str]) -> None:
    """Remove the temporaries a killed run left (:func:`remove_stale_temporaries`: exactly our temporary names,
    whatever their PID: the run holds the folder's lock) for a final name this run writes (``cohort.csv``,
    ``slides/NAME`` + :data:`RESULT_SUFFIXES`, ``failed/NAME.json``). Anything else stays, a slide result whose
    name merely contains ``.tmp-`` included. Call it holding the lock."""
    finals = _output_files(out, names)
    for folder in {final.parent for final in finals}:
        remove_stale_temporaries(folder, lambda final, folder=folder: folder / final in finals, locked=True)


# ---- the scheduler side ----------------------------------------------------------------------------------


@dataclass
class CohortSummary:
    """What a cohort run did. ``processed`` slides ran in this call (done or failed), ``skipped`` ones were
    already complete; ``done`` counts every complete slide after the run; ``redone``: the slides whose stored
    result was of another model or slide file, with the reason (``model changed``, ``slide file changed``)."""

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
    redone: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(out=str(self.out), csv=str(self.csv))
        return data


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
    read: ReadOptions = ReadOptions(),
    requested: FeatureMode | None = None,
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
    bundle = load_bundle(model)  # checked once, before any worker starts; each worker loads its own
    model_name, model_hash = bundle.name, bundle_sha256(bundle)
    model_arg = None if model is None else str(model_path(model).absolute())  # a shipped model's name, too
    fingerprint = model_fingerprint(model)
    check_not_inputs(  # a manifest kept as OUT/cohort.csv (or any input) is never written over
        _output_files(Path(out), (entry.name for entry in entries)),
        [manifest, *(entry.path for entry in entries), *model_files(model)],
    )

    # an unreachable scheduler fails before any output; one run per output folder (a second fails in one line)
    with scheduler_client(scheduler) as external, output_lock(out):
        state = _CohortState(Path(out), len(entries))
        for folder in (state.slides_dir, state.failed_dir):
            folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(Path(out), (entry.name for entry in entries))
        todo: list[ManifestEntry] = []
        unverified: list[str] = []  # kept results without a model or slide fingerprint
        for entry in entries:
            result = _read_result(state.slides_dir / f"{output_stem(entry.name)}.json")
            if result is not None and result.get("model") != model_name:
                raise ValueError(
                    f"{out}: {entry.name} was scored by model {result.get('model')!r}, not {model_name!r}; "
                    "write this model's results to another --out folder"
                )
            change = None if result is None else provenance_change(result, model_hash, slide_identity(entry.path))
            if change is None and _is_done(result, entry.name, heatmap):
                if not {"model_sha256", "slide_file"} <= result.keys():
                    unverified.append(entry.name)
                state.rows[entry.name] = _row(entry, "done", result)
                (state.failed_dir / f"{output_stem(entry.name)}.json").unlink(missing_ok=True)
                state.summary.skipped += 1
            else:
                if change is not None:  # a result of other weights or another file: gone before it is redone
                    state.summary.redone[entry.name] = change
                    for suffix in RESULT_SUFFIXES:
                        (state.slides_dir / f"{output_stem(entry.name)}{suffix}").unlink(missing_ok=True)
                state.rows[entry.name] = _row(entry, "pending")
                todo.append(entry)
        _log_redone(state.summary.redone, log)
        _warn_unverified(unverified, Path(out))
        state.write_csv()

        if todo:
            with cluster_client(external, workers, log, device) as (client, started_workers):
                if started_workers and torch_threads is None:
                    torch_threads = max(1, cpu_count() // started_workers)
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
                task = (slides_dir, model_arg, read, requested, heatmap, torch_threads, fingerprint, device)
                _run_tasks(client, todo, task, state, progress)

    summary = state.summary
    summary.done = sum(row[5] == "done" for row in state.rows.values())
    summary.failed = sum(row[5] == "failed" for row in state.rows.values())
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


def _warn_unverified(names: list[str], out: Path) -> None:
    """One warning for results kept without proof of what produced them: written before results recorded their
    model and slide fingerprints, so a change of weights or file cannot be seen (delete them to rescore)."""
    if names:
        shown = ", ".join(sorted(names)[:5]) + (f", and {len(names) - 5} more" if len(names) > 5 else "")
        warnings.warn(
            f"{out}: {len(names)} result(s) record no model or slide fingerprint (written by an older wsi-mamba) "
            f"and are kept as done without that check ({shown}); delete {out / 'slides'}/NAME.json to rescore",
            stacklevel=3,
        )


def _log_redone(redone: dict[str, str], log: Callable[[str], None]) -> None:
    """One line per reason: ``2 redone: model changed (a, b)`` (the first names, then how many more)."""
    for reason in sorted(set(redone.values())):
        names = sorted(name for name, why in redone.items() if why == reason)
        shown = ", ".join(names[:5]) + (f", and {len(names) - 5} more" if len(names) > 5 else "")
        log(f"{len(names)} redone: {reason} ({shown})")


def _run_tasks(client: Any, todo: list[ManifestEntry], task: tuple, state: _CohortState, progress: bool) -> None:
    """Submit one :func:`predict_task` per slide (``task``: its arguments after the path) and record each
    result as it arrives (``as_completed``), keeping cohort.csv current."""
    from distributed import as_completed

    from ...progress import Progress

    run = uuid.uuid4().hex[:8]
    futures = {
        client.submit(predict_task, str(entry.path), *task, key=f"predict-{entry.name}-{run}", pure=False): entry
        for entry in todo
    }
    bar = Progress("cohort", "slide", total=len(todo), enabled=progress)  # a bar, or timed lines in a log
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
