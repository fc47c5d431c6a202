"""``abmil``: gated attention-based MIL (Ilse, Tomczak & Welling, ICML 2018): each tile embedded on its own
(linear + ReLU), a gated attention score per tile, softmax over the tissue tiles, the attention-weighted mean
embedding classified by a linear head. Tile scores: the same head on each tile's embedding (so
``logit == Σ attention · tile_logits``); ``attention`` is the MIL attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Linear2d
from ..slide_model import GatedAttention, SlideOutput, masked_softmax
from .registry import (
    Aggregator,
    AggregatorConfig,
    check_grid_inputs,
    empty_logit,
    init_linear,
    register_aggregator,
    tissue_features,
)

__all__ = ["ABMIL", "ABMILConfig"]


@dataclass(frozen=True)
class ABMILConfig(AggregatorConfig):
    """Width of the tile embedding, of the attention's hidden layer, and the dropout."""

    dim: int = 64
    attn_dim: int = 64
    dropout: float = 0.1
    BOUNDS: ClassVar[dict[str, tuple[float, float]]] = {"dim": (1, 4096), "attn_dim": (1, 4096), "dropout": (0.0, 1.0)}


@register_aggregator("abmil", ABMILConfig, "gated attention MIL (Ilse et al. 2018)")
class ABMIL(Aggregator):
    """Tile features on the grid (B, in_dim, R, C) + mask (B, R, C) → :class:`SlideOutput`; per-tile work only
    (1×1 layers on the grid), so background cells are simply left out of the softmax."""

    def __init__(self, config: ABMILConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = Linear2d(config.in_dim, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.attention = GatedAttention(config.dim, config.attn_dim, config.dropout)
        self.head = Linear2d(config.dim, 1)
        self.apply(init_linear)

    def embed_tiles(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Tile embeddings (B, dim, R, C), exactly 0 at background cells."""
        check_grid_inputs(type(self).__name__, features, mask, self.config.in_dim)
        h = self.drop(F.relu(self.embed(tissue_features(self, features, mask))))
        return h.masked_fill(~mask[:, None], 0.0)

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> SlideOutput:
        """Gated-attention pooling of the embeddings and the linear head (slide and tiles)."""
        attention = masked_softmax(self.attention(h)[:, 0].float(), mask)
        tile_logits = self.head(h)[:, 0].masked_fill(~mask, 0.0)
        pooled = torch.einsum("bdrc,brc->bd", h, attention.to(h.dtype))
        logit = F.linear(pooled, self.head.weight.flatten(1), self.head.bias)[:, 0]
        return SlideOutput(logit=empty_logit(logit, mask), tile_logits=tile_logits, attention=attention)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> SlideOutput:
        return self.pool(self.embed_tiles(features, mask), mask)
