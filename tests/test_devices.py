"""``--device``: the spellings, ``auto``, the one-line exit-2 error for a device this machine lacks (before any
work), the autocast that goes with a device, and one command run end to end on ``--device cpu``.

CUDA is never needed: "no GPU" and "two GPUs" are simulated by patching the device count.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_patches import write_folder
from workflow_fixtures import TILE_MPP, TILE_PX, workflow_data, write_encoder

from wsi_mamba import devices
from wsi_mamba.cli import build_parser, main
from wsi_mamba.devices import DEFAULT_DEVICE, DeviceError, autocast, check_spec, resolve_device
from wsi_mamba.workflows.inputs import read_labels
from wsi_mamba.workflows.training.configs import EncoderTrainingConfig
from wsi_mamba.workflows.training.encoder_training import train_encoder

CPU = torch.device("cpu")

# Every command that runs a model, with inputs that do not exist: any work before the device check would fail
# with exit code 1 (input not found), so exit code 2 shows the check came first.
MODEL_COMMANDS = {
    "extract": ["extract", "missing.tif", "--out", "features"],
    "train-encoder": ["train-encoder", "--patches", "missing_x.h5", "--out", "encoder.safetensors"],
    "train-encoder (slides)": [
        "train-encoder", "missing.tif", "--labels", "l.csv", "--annotations", "a", "--out", "e.safetensors"
    ],
    "train": ["train", "--features", "missing", "--labels", "missing.csv", "--out", "model"],
    "evaluate": ["evaluate", "--model", "missing", "--features", "missing", "--labels", "missing.csv", "--out", "e"],
    "predict": ["predict", "missing.tif"],
    "score-patches": ["score-patches", "missing"],
    "cohort": ["cohort", "missing.csv", "--out", "results"],
}


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("auto", "auto"), ("cpu", "cpu"), (" CUDA ", "cuda"), ("cuda:0", "cuda:0"), ("cuda:12", "cuda:12")],
)
def test_spellings(spec: str, expected: str) -> None:
    assert check_spec(spec) == expected


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "cuda:x", "mps", "", "cpu:0"])
def test_bad_spellings(spec: str) -> None:
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        check_spec(spec)


def test_resolution_without_gpu(no_gpu: None) -> None:
    assert DEFAULT_DEVICE == "auto"
    assert resolve_device("auto") == CPU and resolve_device(None) == CPU and resolve_device() == CPU
    assert resolve_device("cpu") == CPU and resolve_device(CPU) == CPU
    for spec in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(DeviceError, match="CUDA is not available") as caught:
            resolve_device(spec)
        assert "\n" not in str(caught.value) and f"--device {spec}:" in str(caught.value)


def _cuda_works() -> bool:
    """Whether a CUDA tensor can really be made and computed on here (not what the resolver asks torch)."""
    try:
        return float((torch.ones(2, device="cuda") * 2).sum().cpu()) == 4.0
    except Exception:  # no CUDA build, no driver, no device
        return False


def test_auto_follows_what_this_machine_can_run() -> None:
    """``auto`` is CUDA exactly where a computation on CUDA succeeds, checked by running one."""
    assert resolve_device("auto").type == ("cuda" if _cuda_works() else "cpu")


def test_auto_is_cpu_with_the_gpus_hidden() -> None:
    """With every GPU hidden from the process (CUDA_VISIBLE_DEVICES empty), ``auto`` is the CPU on any machine."""
    code = "from wsi_mamba.devices import resolve_device; print(resolve_device('auto'))"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cpu"


def test_resolution_with_two_gpus(two_gpus: None) -> None:
    """The resolver picks CUDA when it is there (nothing is run on it)."""
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == CPU
    with pytest.raises(DeviceError, match=r"2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_autocast_is_bf16_on_cuda_only() -> None:
    assert isinstance(autocast("cpu"), contextlib.nullcontext)
    with autocast(CPU):
        assert not torch.is_autocast_enabled()
    with warnings.catch_warnings():  # torch warns that CUDA is missing when there is none; not entered here
        warnings.simplefilter("ignore")
        context = autocast(torch.device("cuda", 0))
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_every_model_command_has_device(command: str) -> None:
    args = build_parser().parse_args(MODEL_COMMANDS[command])
    assert args.device == DEFAULT_DEVICE
    args = build_parser().parse_args([*MODEL_COMMANDS[command], "--device", "cuda:1"])
    assert args.device == "cuda:1"


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_missing_cuda_is_one_line_exit_2(
    command: str, no_gpu: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main([*MODEL_COMMANDS[command], "--device", "cuda"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.splitlines() == [err.strip()] and err.startswith("error: --device cuda: CUDA is not available")
    assert out == "" and list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("command", ["predict", "cohort"])
def test_gpu_index_beyond_count_is_one_line_exit_2(
    command: str, two_gpus: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main([*MODEL_COMMANDS[command], "--device", "cuda:2"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "error: --device cuda:2: this machine has 2 CUDA device(s) (cuda:0 to cuda:1)"


def test_bad_spelling_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "x.tif", "--device", "gpu"]) == 2
    assert "device must be auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err


def test_score_patches_on_cpu(tmp_path: Path, one_torch_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    """``--device cpu`` end to end: a tiny encoder scores a folder of patches."""
    root = write_folder(tmp_path / "patches", 2)
    encoder = write_encoder(tmp_path / "enc.safetensors", 0, "tiny")
    code = main(["score-patches", str(root), "--model", str(encoder), "--device", "cpu", "--json", "--batch-size", "3"])
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert code == 0, err
    assert len(rows) == 4 and all(0 <= row["score"] <= 1 for row in rows)


def test_train_encoder_on_slides_on_cpu(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None
) -> None:
    """The slide-tile encoder training runs with ``device="cpu"`` (moves model and batches, scores on the CPU)."""
    data = workflow_data(tmp_path_factory)
    cfg = EncoderTrainingConfig(
        model="vmamba_pico", tile_px=TILE_PX, mpp=TILE_MPP, max_tiles_per_class=6, epochs=1, batch_size=4
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = read_labels(data.labels)
        out = train_encoder(data.slides(), labels, data.annotations, tmp_path / "e", cfg, device="cpu")
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_cohort_worker_device(two_gpus: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """cohort's workers: ``cpu`` and ``cuda:N`` as given; ``auto``/``cuda`` outside a LocalCluster worker: the
    current GPU (a LocalCluster worker k gets GPU k mod the count)."""
    from wsi_mamba.workflows.cohort.worker import _worker_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert _worker_device("cpu") == CPU
    assert _worker_device("cuda:0") == torch.device("cuda", 0)
    assert _worker_device("auto") == _worker_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(DeviceError):
        _worker_device("cuda:2")


def test_cohort_worker_device_without_gpu(no_gpu: None) -> None:
    from wsi_mamba.workflows.cohort.worker import _worker_device

    assert _worker_device("auto") == CPU and _worker_device("cpu") == CPU
    with pytest.raises(DeviceError, match="CUDA is not available"):
        _worker_device("cuda")
