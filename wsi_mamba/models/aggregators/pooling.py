"""``mean`` and ``max``: the MIL pooling baselines (as compared against in Ilse et al. 2018 and Shao et al.
2021): each tile embedded on its own (linear + ReLU), the embeddings pooled over the tissue tiles by their
mean or their element-wise max, a linear head. Neither has tile scores of its own: the tile scores are the
head applied to each tile's embedding (for ``mean`` the slide logit is their mean). ``attention``: uniform over
the tissue tiles (``mean``); each tile's share of the embedding channels where it is the maximum (``max``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Linear2d
from ..slide_model import SlideOutput
from .registry import (
    Aggregator,
    AggregatorConfig,
    check_grid_inputs,
    empty_logit,
    init_linear,
    register_aggregator,
    tissue_features,
    uniform_attention,
)

__all__ = ["MaxPooling", "MeanPooling", "PoolingConfig"]


@dataclass(frozen=True)
class PoolingConfig(AggregatorConfig):
    """Width of the tile embedding and the dropout after it."""

    dim: int = 64
    dropout: float = 0.1
    BOUNDS: ClassVar[dict[str, tuple[float, float]]] = {"dim": (1, 4096), "dropout": (0.0, 1.0)}


class _Pooling(Aggregator):
    def __init__(self, config: PoolingConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = Linear2d(config.in_dim, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.head = Linear2d(config.dim, 1)
        self.apply(init_linear)

    def pooled(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled embedding (B, dim), attention (B, R, C))."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> SlideOutput:
        check_grid_inputs(type(self).__name__, features, mask, self.config.in_dim)
        h = self.drop(F.relu(self.embed(tissue_features(self, features, mask)))).masked_fill(~mask[:, None], 0.0)
        pooled, attention = self.pooled(h, mask)
        logit = F.linear(pooled, self.head.weight.flatten(1), self.head.bias)[:, 0]
        tile_logits = self.head(h)[:, 0].masked_fill(~mask, 0.0)
        return SlideOutput(logit=empty_logit(logit, mask), tile_logits=tile_logits, attention=attention)


@register_aggregator("mean", PoolingConfig, "mean of the tile embeddings (MIL baseline)")
class MeanPooling(_Pooling):
    """Mean of the tissue tiles' embeddings → linear head."""

    def pooled(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = mask.flatten(1).sum(1).clamp(min=1)
        return h.flatten(2).sum(2) / counts[:, None].to(h.dtype), uniform_attention(mask)


@register_aggregator("max", PoolingConfig, "element-wise max of the tile embeddings (MIL baseline)")
class MaxPooling(_Pooling):
    """Element-wise max over the tissue tiles' embeddings → linear head."""

    def pooled(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, dim = h.shape[:2]
        flat = h.masked_fill(~mask[:, None], float("-inf")).flatten(2)  # (B, dim, L)
        peak, where = flat.max(2)
        has_tissue = mask.flatten(1).any(1)
        pooled = torch.where(has_tissue[:, None], peak, torch.zeros_like(peak))
        share = torch.zeros(batch, flat.shape[2], device=h.device).scatter_add_(
            1, where, torch.full(where.shape, 1.0 / dim, device=h.device)
        )
        attention = share.reshape(mask.shape).masked_fill(~mask, 0.0)
        return pooled, attention
