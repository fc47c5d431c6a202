"""The optimisation step every training loop takes (tile encoder on slides or patches, slide model)."""

from __future__ import annotations

import torch
from torch import nn


def optimiser_step(
    loss: torch.Tensor,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    clip_norm: float,
) -> None:
    """Back-propagate ``loss``, clip the gradient norm of ``model`` to ``clip_norm``, step the optimiser and the
    learning-rate schedule."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimiser.step()
    schedule.step()
