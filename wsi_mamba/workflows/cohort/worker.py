"""The worker side of cohort runs: one slide per task, the model loaded once per worker process and kept.

:func:`predict_task` is a module-level function of an importable module, so dask pickles it by reference;
the module's globals are per process (each worker has its own model cache and counters).
"""

from __future__ import annotations

import hashlib
import os
import threading

from ...devices import DEFAULT_DEVICE, check_spec, resolve_device
from ...features.modes import FeatureMode
from ...features.options import ReadOptions
from ...messages import use_one_line_warnings
from ..bundle import ModelBundle, load_bundle, model_path

__all__ = ["model_fingerprint", "predict_task", "worker_cache_info"]


def model_fingerprint(model: str | os.PathLike[str] | None) -> str:
    """A short hash of a model folder's files (names, sizes, modification times): what worker caches key on."""
    folder = model_path(model)
    if folder.is_file():
        folder = folder.parent
    digest = hashlib.sha256()
    for item in sorted(folder.iterdir()):
        if item.is_file():
            stat = item.stat()
            digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


_BUNDLES: dict[tuple[str | None, str, str], ModelBundle] = {}
_LOCK = threading.Lock()
_STATS = {"models_loaded": 0, "slides": 0, "torch_threads": None, "device": None}


def worker_cache_info() -> dict:
    """What this process has loaded and run (call it on the workers: ``client.run(worker_cache_info)``)."""
    with _LOCK:
        return {**_STATS, "models": sorted(str(key[0]) for key in _BUNDLES)}


def _worker_device(spec: str = DEFAULT_DEVICE):
    """This worker's device for ``--device`` ``spec``: ``cpu`` and ``cuda:N`` as given (``DeviceError`` when
    this machine lacks it); ``auto`` and ``cuda``: CPU without CUDA (``cuda``: ``DeviceError``), else the GPU
    of a LocalCluster worker's number (worker names 0..N-1, round robin over the visible GPUs), or the current
    GPU for a named worker (start such workers with ``CUDA_VISIBLE_DEVICES`` set, one per GPU, as
    ``dask cuda worker`` does)."""
    import torch

    spec = check_spec(spec)
    if spec not in ("auto", "cuda"):
        return resolve_device(spec)
    if resolve_device(spec).type == "cpu":
        return torch.device("cpu")
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        name = None
    if isinstance(name, int):
        return torch.device("cuda", name % torch.cuda.device_count())
    return torch.device("cuda", torch.cuda.current_device())


def _worker_bundle(
    model: str | None, fingerprint: str, torch_threads: int | None, device: str = DEFAULT_DEVICE
) -> ModelBundle:
    """The model of this worker process on its device (:func:`_worker_device`), loaded on first use and kept
    for the next slides (and runs: a worker of an external cluster outlives a run). ``fingerprint`` identifies
    the folder's content, so a model retrained into the same folder is loaded afresh (and the old one
    dropped)."""
    import torch

    with _LOCK:
        if torch_threads and _STATS["torch_threads"] != torch_threads:
            torch.set_num_threads(torch_threads)
            _STATS["torch_threads"] = torch_threads
        bundle = _BUNDLES.get((model, fingerprint, device))
        if bundle is None:
            for key in [key for key in _BUNDLES if key[0] == model]:
                del _BUNDLES[key]
            target = _worker_device(device)
            bundle = load_bundle(model, device=target)  # encoder and slide model on the worker's device
            _BUNDLES[(model, fingerprint, device)] = bundle
            _STATS["models_loaded"] += 1
            _STATS["device"] = str(target)
        return bundle


def predict_task(
    path: str,
    out_dir: str,
    model: str | None,
    read: ReadOptions = ReadOptions(),
    requested: FeatureMode | None = None,
    heatmap: bool = False,
    torch_threads: int | None = None,
    fingerprint: str = "",
    device: str = DEFAULT_DEVICE,
) -> dict:
    """One slide on a worker: ``predict_slide`` into ``out_dir`` (which writes ``NAME.json`` atomically)
    with this process's copy of ``model`` (a folder, None for the default; ``fingerprint`` from
    :func:`model_fingerprint`) on the worker's ``device`` (see :func:`_worker_device`). Never raises for a
    slide's own problem: returns ``{"status": "done", "result": ...}`` or ``{"status": "failed", "error": ...}``
    so that the scheduler side records it and the others go on. The worker's warnings (a damaged tile, a
    slide out of the model's domain) are shown as the CLI shows them, one ``warning: ...`` line each."""
    from ..predict import predict_slide

    use_one_line_warnings()  # a worker process starts with Python's format: file, line and source line
    try:
        bundle = _worker_bundle(model, fingerprint, torch_threads, device)
        result = predict_slide(path, bundle, read, requested, out_dir, heatmap)
    except Exception as exc:  # a slide's failure is data: recorded, never fatal to the cohort
        from ...slide import SlideError

        expected = isinstance(exc, (SlideError, ValueError, OSError))
        message = str(exc) if expected and str(exc) else f"{type(exc).__name__}: {exc}"
        return {"status": "failed", "error": message}
    finally:
        with _LOCK:
            _STATS["slides"] += 1
    return {"status": "done", "result": result}
