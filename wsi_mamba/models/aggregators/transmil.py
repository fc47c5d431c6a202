"""``transmil``: TransMIL (Shao et al., NeurIPS 2021), CPU-sized: each tissue tile embedded (linear + ReLU), the
tile sequence (raster order) padded to a square by repeating its first tiles, a class token prepended, then
a transformer layer, the PPEG positional module (depthwise 7×7, 5×5, 3×3 convolutions + identity on the
square, class token passed through), ``depth - 1`` more layers, LayerNorm, and a linear head on the class
token. Differences from the paper: exact multi-head attention (``nn.MultiheadAttention``) instead of the
Nyström approximation (which it approximates; exact attention is affordable at our tile counts, quadratic
in them), widths 64 instead of 512.

Tile scores: the head on each tile's output token; ``attention``: the class token's attention over the tiles
in the last layer (mean over heads; a padded copy's share goes to its tile), normalised over the tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..slide_model import SlideOutput
from .registry import Aggregator, AggregatorConfig, check_grid_inputs, init_linear, register_aggregator

__all__ = ["PPEG", "TransMIL", "TransMILConfig"]


@dataclass(frozen=True)
class TransMILConfig(AggregatorConfig):
    """Token width, transformer layers (≥ 1; PPEG after the first), heads, dropout."""

    dim: int = 64
    depth: int = 2
    heads: int = 4
    dropout: float = 0.1
    BOUNDS: ClassVar[dict[str, tuple[float, float]]] = {
        "dim": (1, 4096),
        "depth": (1, 64),
        "heads": (1, 64),
        "dropout": (0.0, 1.0),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim % self.heads:
            raise ValueError(f"TransMILConfig: dim ({self.dim}) must be divisible by heads ({self.heads})")


class TransLayer(nn.Module):
    """x + MultiheadAttention(LayerNorm(x)); returns the output and the attention (mean over heads)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(x)
        y, weights = self.attn(h, h, h, need_weights=True, average_attn_weights=True)
        return x + y, weights


class PPEG(nn.Module):
    """Pyramid position encoding generator: tokens (B, 1 + S², dim) → same, the S × S part plus its depthwise
    7×7, 5×5 and 3×3 convolutions; the class token unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        cls, tokens = x[:, :1], x[:, 1:]
        grid = tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        grid = grid + self.proj(grid) + self.proj1(grid) + self.proj2(grid)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


@register_aggregator("transmil", TransMILConfig, "transformer MIL with PPEG, exact attention (Shao et al. 2021)")
class TransMIL(Aggregator):
    """Tile features on the grid (B, in_dim, R, C) + mask → :class:`SlideOutput`; only the tissue tiles are
    gathered into the sequence, one sample at a time."""

    def __init__(self, config: TransMILConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Sequential(nn.Linear(config.in_dim, config.dim), nn.ReLU(), nn.Dropout(config.dropout))
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.dim))
        self.layers = nn.ModuleList(TransLayer(config.dim, config.heads, config.dropout) for _ in range(config.depth))
        self.ppeg = PPEG(config.dim)
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, 1)
        self.embed.apply(init_linear)
        self.head.apply(init_linear)

    def _sample(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tiles (n, in_dim), n ≥ 1 → slide logit (), tile logits (n,), attention (n,)."""
        n = tiles.shape[0]
        h = self.embed(tiles)
        side = math.ceil(math.sqrt(n))
        copies = torch.arange(side * side - n, device=h.device) % n  # padding: the first tiles again
        x = torch.cat([self.cls_token.to(h.dtype), torch.cat([h, h[copies]])[None]], dim=1)
        x, weights = self.layers[0](x)
        x = self.ppeg(x, side)
        for layer in self.layers[1:]:
            x, weights = layer(x)
        x = self.norm(x)
        logits = self.head(x)[0, :, 0]
        to_tiles = weights[0, 0, 1:].float()
        attention = to_tiles[:n].index_add(0, copies, to_tiles[n:])
        attention = attention / attention.sum().clamp(min=torch.finfo(attention.dtype).tiny)
        return logits[0], logits[1 : n + 1], attention

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> SlideOutput:
        check_grid_inputs(type(self).__name__, features, mask, self.config.in_dim)
        weight = self.embed[0].weight
        if features.dtype != weight.dtype and not torch.is_autocast_enabled():
            features = features.to(weight.dtype)
        batch = features.shape[0]
        logit = features.new_zeros(batch, dtype=torch.float32)
        tile_logits = features.new_zeros(mask.shape, dtype=torch.float32)
        attention = features.new_zeros(mask.shape, dtype=torch.float32)
        slide_logits, tiles, maps = [], [], []
        for b in range(batch):
            cells = mask[b]
            if not cells.any():
                slide_logits.append(logit[b])
                tiles.append(tile_logits[b])
                maps.append(attention[b])
                continue
            one, per_tile, attn = self._sample(features[b][:, cells].T)
            slide_logits.append(one.float())
            tiles.append(tile_logits[b].masked_scatter(cells, per_tile.float()))
            maps.append(attention[b].masked_scatter(cells, attn))
        return SlideOutput(logit=torch.stack(slide_logits), tile_logits=torch.stack(tiles), attention=torch.stack(maps))
