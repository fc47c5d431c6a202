"""The environment of cohort's LocalCluster workers: OMP_WAIT_POLICY=PASSIVE unless the user set it, in place
before the worker imports torch (libgomp reads it once, when loaded)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("distributed")

from wsi_mamba.threads import passive_openmp_waits
from wsi_mamba.workflows.cohort.cluster import cluster_client, worker_env


def _policy_and_torch() -> tuple[str | None, int]:
    """In a worker: the variable as the worker sees it, after importing torch (which loads libgomp)."""
    import torch

    return os.environ.get("OMP_WAIT_POLICY"), torch.get_num_threads()


def _run_worker() -> str | None:
    with cluster_client(None, 1, lambda _: None, device="cpu") as (client, started):
        assert started == 1
        ((policy, _threads),) = client.run(_policy_and_torch).values()
    return policy


def test_worker_gets_passive_before_torch(monkeypatch, capfd):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_DISPLAY_ENV", "VERBOSE")  # libgomp prints its settings to stderr when loaded
    assert worker_env() == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert _run_worker() == "PASSIVE"
    err = capfd.readouterr().err
    if "GOMP_SPINCOUNT" not in err:
        pytest.skip("torch's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT in its settings)")
    assert "GOMP_SPINCOUNT = '0'" in err  # passive: libgomp read the variable when torch loaded it
    assert "OMP_WAIT_POLICY" not in os.environ  # this process is left as it was


def test_user_value_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert worker_env() == {}
    assert _run_worker() == "ACTIVE"


def test_dask_config_value_is_kept(monkeypatch):
    import dask

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with dask.config.set({"distributed.nanny.environ": {"OMP_WAIT_POLICY": "ACTIVE"}}):
        assert worker_env() == {}


@pytest.mark.parametrize(("user", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_processes_wait_passively_unless_the_user_says(user: str | None, expected: str) -> None:
    code = (
        "import os, sys; from wsi_mamba.cli import main; main(['info', 'missing.svs']); "
        "import torch; print(os.environ['OMP_WAIT_POLICY'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user is not None:
        env["OMP_WAIT_POLICY"] = user
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == expected


def test_passive_waits_are_not_set_once_torch_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401  (loaded: OpenMP has read its settings)

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert passive_openmp_waits() is False and "OMP_WAIT_POLICY" not in os.environ
