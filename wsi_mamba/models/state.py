"""State-dict comparison with readable errors (shared by our checkpoints and the official converter)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

MAX_LISTED = 8


def _listed(keys: list[str]) -> str:
    more = f" … (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming every missing, unexpected and wrongly shaped key of ``state``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{label} ({len(keys)}): {_listed(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if keys
    ]
    if problems:
        raise ValueError("checkpoint does not match the model configuration: " + "; ".join(problems))


def load_into_new_model(build, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """``build()`` on the meta device (no init cost), check ``state`` against it, then adopt its tensors
    with ``load_state_dict(strict=True, assign=True)``; parameters keep the checkpoint's dtype."""
    with torch.device("meta"):
        model = build()
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True, assign=True)
    return model
