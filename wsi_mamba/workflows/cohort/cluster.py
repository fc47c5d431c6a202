"""The dask client of a cohort run: a client of a running scheduler (probed before any output is made), or of a
LocalCluster of worker processes sized to the machine (one per GPU, or CPU workers)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ...devices import DEFAULT_DEVICE, check_spec
from ...threads import OPENMP_ENV

DEFAULT_MAX_WORKERS = 4
SCHEDULER_PROBE_S = 5.0  # a TCP scheduler that does not accept a connection in this time is unreachable
WORKER_ENV = OPENMP_ENV
"""Set in LocalCluster workers unless the user set them (:data:`~wsi_mamba.threads.OPENMP_ENV`; docs/cohort.md)."""


def cpu_count() -> int:
    """The CPU cores this process may run on."""
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


def worker_env() -> dict[str, str]:
    """The :data:`WORKER_ENV` variables that neither this process's environment nor dask's
    ``distributed.nanny.environ`` / ``pre-spawn-environ`` config sets; a worker process applies them before
    it builds its Worker, so before it imports torch (whose OpenMP reads them once, when loaded)."""
    import dask

    configured = {**dask.config.get("distributed.nanny.pre-spawn-environ", {})}
    configured.update(dask.config.get("distributed.nanny.environ", {}))
    return {k: v for k, v in WORKER_ENV.items() if k not in os.environ and configured.get(k) is None}


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
def scheduler_client(scheduler: str | None) -> Iterator[Any]:
    """A ``distributed.Client`` connected to the running scheduler ``scheduler`` (None: yields None), opened
    before the run creates any output, so an unreachable address fails in one line leaving nothing behind; a
    TCP address is probed first (a refused connection fails at once, not after the 30 s connect timeout)."""
    if scheduler is None:
        yield None
        return
    try:
        from distributed import Client
        from distributed.comm import parse_address
        from distributed.comm.addressing import parse_host_port
    except ImportError:
        raise ValueError("cohort runs need dask.distributed: pip install distributed") from None
    try:
        protocol, location = parse_address(scheduler)
        if protocol == "tcp":
            socket.create_connection(parse_host_port(location), timeout=SCHEDULER_PROBE_S).close()
        client = Client(scheduler)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ValueError(f"{scheduler}: cannot reach the dask scheduler ({exc})") from None
    with client:
        yield client


@contextlib.contextmanager
def cluster_client(
    external: Any, workers: int | None, log: Callable[[str], None], device: str = DEFAULT_DEVICE
) -> Iterator[tuple[Any, int]]:
    """``external`` (a client of a running scheduler, from :func:`scheduler_client`) or a client of a new
    LocalCluster; yields it with the number of worker processes a LocalCluster started (0 for an existing
    scheduler). ``device`` sets the default number of local workers: one per GPU (``auto``, ``cuda``), one
    (``cuda:N``), CPU workers (``cpu``)."""
    if external is not None:
        yield external, 0
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("cohort runs need dask.distributed: pip install distributed") from None
    spec = check_spec(device)
    gpus = 0 if spec == "cpu" else 1 if spec.startswith("cuda:") else _gpu_count()
    n = workers or (gpus or min(DEFAULT_MAX_WORKERS, cpu_count()))
    import logging

    with _workers_ignore_sigint():
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, silence_logs=logging.ERROR, env=worker_env()
        )
    with cluster, Client(cluster) as client:
        kind = (spec if spec.startswith("cuda:") else f"{gpus} GPU(s)") if gpus else "CPU"
        log(f"LocalCluster: {n} worker process(es), 1 task thread each, {kind}")
        yield client, n
