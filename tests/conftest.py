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
