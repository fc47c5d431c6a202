"""Test-wide settings.

Triton kernels run on CPU tensors under Triton's interpreter, which must be switched on before any
``@triton.jit`` function is defined: set it here, before test modules import the kernels.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small shapes on a shared 2-core machine: one torch thread avoids OpenMP hand-off costs (up to 30x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def fp32_for_auto_precision():
    """``--precision auto`` (the default) means fp32 in tests whatever the CPU: the references they compare with
    are fp32, and a CI machine with or without bf16 hardware must see the same results. Session-wide, so fixtures
    of any scope see it. Tests of bf16 ask for it by name (or patch ``cpu_bf16_native`` themselves)."""
    import wsi_mamba.devices

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wsi_mamba.devices, "cpu_bf16_native", lambda: False)
        yield
