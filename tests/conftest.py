"""Test-wide settings.

Triton kernels run on CPU tensors under Triton's interpreter, which must be switched on before any
``@triton.jit`` function is defined: set it here, before test modules import the kernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
