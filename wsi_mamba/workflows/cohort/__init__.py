"""Cohort inference on dask.distributed (``wsi-mamba cohort``), the cohort API's one import path: the scheduler
side (``run``), its dask client (``cluster``), the manifest reader (``manifest``) and the task each worker process
runs (``worker``)."""

from .manifest import ManifestEntry, read_manifest
from .run import CSV_COLUMNS, CohortSummary, run_cohort
from .worker import model_fingerprint, predict_task, worker_cache_info

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
