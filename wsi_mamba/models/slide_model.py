"""Slide model: tile features on the slide's 2-D tissue grid → masked SS2D blocks over the whole grid →
gated-attention pooling → one metastasis logit, plus per-tile logits and the attention map.

Masking: background cells (``mask == False``) neither contribute nor receive.

* The embedded token stream is zeroed at background cells after the input projection, and every residual
  branch (SS2D, MLP) writes zeros there, so the residual stream stays 0 off tissue.
* Inside SS2D the input of the depthwise 3×3 conv is zeroed (a background neighbour looks like the conv's
  zero padding) and so is its output; the scan step is Δ = softplus(dt + dt_bias) · mask, so at a
  background position exp(Δ A) = 1 and Δ B u = 0: the state passes through unchanged, and the scan output
  there is zeroed. The scan therefore sees exactly the tissue tokens in route order (the four VMamba
  routes over the whole R × C grid); tissue islands still talk to each other through the state. By
  default the identity steps are skipped altogether: each route gathers its tissue cells in route order
  and scans only those (:class:`MaskedSS2D`, ``compact``), which is the same computation.
* Pooling is a softmax over tissue cells only.

Consequences (tested): outputs at tissue cells are exactly independent of the feature values at background
cells (even inf/NaN there), gradients w.r.t. those values are exactly 0, and adding or removing a margin of
background around the tissue (``grid_tensors(..., crop=False)``) changes nothing but rounding.

Because the classifier is affine and the attention sums to 1, ``logit == Σ attention · tile_logits``.
A sample with no tissue at all gets attention 0, tile logits 0 and logit 0 (no NaN).

Max-evidence branch (``config.topk`` = K ≥ 1, off by default): attention pooling can average a lone tumour
tile away, so the slide logit becomes ``w₀ · pooled logit + w₁ · mean of the K highest tile logits`` over
tissue cells (:class:`TopKEvidence`; w learnt jointly, starting at ½, ½). With K = 0 there is no such module,
no extra checkpoint key, and the computation is the one above, bit for bit.

Beside this module: the config (``slide_model_config.py``), the grid input (``grid.py``), checkpoint I/O
(``slide_model_io.py``); the scan routes and input projections are SS2D's (``ss2d.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from wsi_mamba_scan import SCAN_BACKENDS, selective_scan

from .grid import check_grid_inputs
from .layers import LayerNorm2d, Linear2d, Mlp
from .slide_model_config import SlideModelConfig
from .ss2d import K_ROUTES, SS2D, cross_merge, cross_scan, route, unroute
from .vmamba import _init_weights


@dataclass
class SlideOutput:
    """What :meth:`SlideMamba.forward` returns.

    ``logit`` (B,); ``tile_logits`` (B, R, C), 0 at background cells; ``attention`` (B, R, C), a softmax
    over the tissue cells of each sample, 0 at background cells. An all-background sample: all zeros.
    """

    logit: torch.Tensor
    tile_logits: torch.Tensor
    attention: torch.Tensor


# --------------------------------------------------------------------------------------------- modules


class MaskedSS2D(SS2D):
    """SS2D (same parameters and init) whose background cells neither contribute nor receive.

    ``forward(x, mask)``: x (B, dim, H, W), mask (B, 1, H, W) bool → (B, dim, H, W), 0 off tissue.

    The scan runs over all H·W cells of each route with Δ = 0 off tissue, which is the identity step. So the
    same result comes from scanning only the tissue cells in each route's order (``compact = True``, the
    default: scan time and memory scale with the tissue count, not the grid area; the padding that evens
    out a batch uses Δ = 0 again). ``compact = False`` scans the whole grid literally (reference path).
    ``routes_per_call``: routes per selective-scan call (1, 2 or 4); ``None`` = 4 on CUDA (one grouped
    call, the most parallel work) and 1 elsewhere (peak memory of one route, not four).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 4,
        ssm_ratio: float = 1.0,
        scan_backend: str = "auto",
        routes_per_call: int | None = None,
        compact: bool = True,
    ) -> None:
        super().__init__(dim, d_state, ssm_ratio, scan_backend=scan_backend)
        if routes_per_call not in (None, 1, 2, 4):
            raise ValueError(f"routes_per_call must be None, 1, 2 or 4, got {routes_per_call}")
        self.routes_per_call = routes_per_call
        self.compact = compact

    def _per_call(self, h: torch.Tensor) -> int:
        return self.routes_per_call or (K_ROUTES if h.is_cuda else 1)

    def scan_routes(self, xs: torch.Tensor, valid: torch.Tensor, start: int) -> torch.Tensor:
        """Selective scan of routes ``start, start + 1, ...``: xs (B, k, Di, L) → (B, k, Di, L).

        ``valid`` (B, k, 1, L) bool: Δ = softplus(dt + dt_bias) where valid, 0 elsewhere (state kept).
        """
        batch, count, d_inner, length = xs.shape
        stop = start + count
        channels = slice(start * d_inner, stop * d_inner)
        sdtype = torch.promote_types(xs.dtype, torch.float32)  # fp32, or fp64 for a float64 model
        dts, Bs, Cs = self.project_routes(xs, start)
        delta = F.softplus(dts.to(sdtype) + self.dt_projs_bias[start:stop, :, None].to(sdtype))
        del dts
        delta = delta.masked_fill(~valid, 0.0)
        ys = selective_scan(
            xs.reshape(batch, count * d_inner, length),
            delta.reshape(batch, count * d_inner, length),
            -torch.exp(self.A_logs[channels].to(sdtype)),
            Bs.contiguous(),
            Cs.contiguous(),
            D=self.Ds[channels].to(sdtype),
            delta_softplus=False,
            backend=self.scan_backend,
        )
        return ys.reshape(batch, count, d_inner, length)

    def _scan_grid(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        height, width = h.shape[-2:]
        per = self._per_call(h)
        out = None
        for start in range(0, K_ROUTES, per):
            if per == K_ROUTES:
                xs, valid = cross_scan(h), cross_scan(mask)
            else:
                routes = range(start, start + per)
                xs = torch.stack([route(h, k) for k in routes], dim=1)
                valid = torch.stack([route(mask, k) for k in routes], dim=1)
            ys = self.scan_routes(xs, valid, start)
            del xs
            if per == K_ROUTES:
                merged = cross_merge(ys, height, width)
            else:
                merged = sum(unroute(ys[:, j], start + j, height, width) for j in range(per))
            del ys
            out = merged if out is None else out + merged
        return out.masked_fill(~mask, 0.0)

    def _scan_tissue(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, d_inner, height, width = h.shape
        length = height * width
        flat_mask = mask.reshape(batch, length)
        counts = flat_mask.sum(1)
        steps = int(counts.max())
        flat_h = h.reshape(batch, d_inner, length)
        out = torch.zeros_like(flat_h)
        if steps == 0:
            return out.reshape(h.shape)
        cells = torch.arange(length, device=h.device).reshape(1, 1, height, width)
        positions = []  # per route: (B, steps) grid cells of the tissue tokens in route order, then padding
        for k in range(K_ROUTES):
            seq = route(cells, k).reshape(length)
            background_first = (~flat_mask[:, seq]).to(torch.uint8)
            order = torch.argsort(background_first, dim=1, stable=True)[:, :steps]
            positions.append(seq[order])
        valid = (torch.arange(steps, device=h.device) < counts[:, None])[:, None, None, :]  # (B, 1, 1, S)
        per = self._per_call(h)
        for start in range(0, K_ROUTES, per):
            index = [positions[k][:, None, :].expand(batch, d_inner, steps) for k in range(start, start + per)]
            xs = torch.stack([flat_h.gather(2, i) for i in index], dim=1)  # (B, per, Di, S)
            ys = self.scan_routes(xs, valid, start).masked_fill(~valid, 0.0)  # padding adds nothing
            del xs
            for j, i in enumerate(index):
                out.scatter_add_(2, i, ys[:, j])
            del ys
        return out.reshape(h.shape).masked_fill(~mask, 0.0)

    def masked_scan(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Four-route selective scan of ``h`` (B, Di, H, W) that skips background cells; output 0 off tissue."""
        return self._scan_tissue(h, mask) if self.compact else self._scan_grid(h, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        off = ~mask
        h = self.in_proj(x).masked_fill(off, 0.0)
        h = self.act(self.conv2d(h)).masked_fill(off, 0.0)
        y = self.masked_scan(h, mask)
        y = self.out_norm(y).to(x.dtype)
        return self.out_proj(y).masked_fill(off, 0.0)


class SlideBlock(nn.Module):
    """Masked VSS block: x + Drop(SS2D(LN(x))), then x + Drop(MLP(LN(x))); both branches 0 off tissue."""

    def __init__(self, config: SlideModelConfig) -> None:
        super().__init__()
        dim = config.dim
        self.norm = LayerNorm2d(dim)
        self.op = MaskedSS2D(dim, config.d_state, config.ssm_ratio, config.scan_backend)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, max(1, int(dim * config.mlp_ratio)))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.op(self.norm(x), mask))
        return x + self.drop(self.mlp(self.norm2(x)).masked_fill(~mask, 0.0))


class GatedAttention(nn.Module):
    """Ilse et al. (2018) gated attention score per token: w · (tanh(V h) ⊙ sigmoid(U h)) → (B, 1, H, W)."""

    def __init__(self, dim: int, attn_dim: int, dropout: float) -> None:
        super().__init__()
        self.V = Linear2d(dim, attn_dim)
        self.U = Linear2d(dim, attn_dim)
        self.drop = nn.Dropout(dropout)
        self.w = Linear2d(attn_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w(self.drop(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))))


def topk_mean(tile_logits: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` highest ``tile_logits`` (B, R, C) over the cells where ``mask`` (B,); fewer tissue
    cells than ``k``: the mean of those there are; no tissue: 0. Off-tissue values (even NaN/inf) are never
    picked and get no gradient."""
    flat = tile_logits.flatten(1).masked_fill(~mask.flatten(1), float("-inf"))
    values = flat.topk(min(k, flat.shape[1]), dim=1).values
    picked = mask.flatten(1).sum(1, keepdim=True) > torch.arange(values.shape[1], device=values.device)
    total = torch.where(picked, values, torch.zeros_like(values)).sum(1)
    return total / picked.sum(1).clamp(min=1).to(total.dtype)


class TopKEvidence(nn.Module):
    """Max-evidence branch: ``w₀ · pooled + w₁ · topk_mean(tile_logits)``, w (2,) learnt, initialised ½, ½."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.full((2,), 0.5))

    def forward(self, pooled: torch.Tensor, tile_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        evidence = topk_mean(tile_logits, mask, self.k)
        weight = self.weight.to(pooled.dtype)
        return weight[0] * pooled + weight[1] * evidence.to(pooled.dtype)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores`` (B, R, C) over the cells where ``mask``; 0 elsewhere and for empty samples."""
    fill = scores.masked_fill(~mask, float("-inf"))
    peak = fill.flatten(1).amax(1).detach()
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(fill - peak[:, None, None])  # exactly 0 off tissue, gradient 0 there
    total = weights.flatten(1).sum(1)
    return weights / torch.where(total > 0, total, torch.ones_like(total))[:, None, None]


class SlideMamba(nn.Module):
    """Tile features on the tissue grid (B, in_dim, R, C) + mask (B, R, C) → :class:`SlideOutput`.

    embed (1×1 linear, GELU, dropout) → ``depth`` :class:`SlideBlock` over the whole grid → LayerNorm →
    gated-attention pooling over tissue cells → linear head (the same head gives the per-tile logits);
    with ``config.topk`` ≥ 1 the :class:`TopKEvidence` branch mixes in the top-k mean of the tile logits.
    """

    def __init__(self, config: SlideModelConfig) -> None:
        super().__init__()
        self.config = config
        self.grad_checkpointing = False
        self.embed = Linear2d(config.in_dim, config.dim)
        self.embed_act = nn.GELU()
        self.embed_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SlideBlock(config) for _ in range(config.depth))
        self.norm = LayerNorm2d(config.dim)
        self.pool = GatedAttention(config.dim, config.attn_dim, config.dropout)
        self.head = Linear2d(config.dim, 1)
        self.apply(_init_weights)
        # Created after the init above (which would not touch it anyway); absent when off: old checkpoints load.
        self.evidence = TopKEvidence(config.topk) if config.topk else None

    def set_scan_backend(self, backend: str) -> None:
        """Select the selective-scan backend of every block ("auto", "reference", "cpu", "numba", "triton")."""
        if backend not in SCAN_BACKENDS:
            raise ValueError(f"scan backend is {backend!r}, expected one of {', '.join(SCAN_BACKENDS)}")
        for module in self.modules():
            if isinstance(module, SS2D):
                module.scan_backend = backend

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (training memory ↓, time ↑)."""
        self.grad_checkpointing = enable

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Tokens after the blocks (B, dim, R, C), exactly 0 at background cells."""
        check_grid_inputs("SlideMamba", features, mask, self.config.in_dim)
        weight = self.embed.weight
        if features.dtype != weight.dtype and not torch.is_autocast_enabled():
            features = features.to(weight.dtype)
        cells = mask[:, None]
        # The 1×1 projection is per cell, so whatever sits off tissue (even inf/NaN) stays there and is
        # replaced by 0 here: nothing downstream ever sees it.
        x = self.embed_drop(self.embed_act(self.embed(features))).masked_fill(~cells, 0.0)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cells, use_reentrant=False)
            else:
                x = block(x, cells)
        return x

    def forward_head(self, tokens: torch.Tensor, mask: torch.Tensor) -> SlideOutput:
        """Attention pooling and the classifier on the tokens of :meth:`forward_features`."""
        cells = mask[:, None]
        h = self.norm(tokens).masked_fill(~cells, 0.0)
        attention = masked_softmax(self.pool(h)[:, 0], mask)
        tile_logits = self.head(h)[:, 0].masked_fill(~mask, 0.0)
        pooled = torch.einsum("bdrc,brc->bd", h, attention.to(h.dtype))
        logit = F.linear(pooled, self.head.weight.flatten(1), self.head.bias)[:, 0]
        if self.evidence is not None:
            logit = self.evidence(logit, tile_logits, mask)
        has_tissue = mask.flatten(1).any(1)
        logit = torch.where(has_tissue, logit, torch.zeros_like(logit))
        return SlideOutput(logit=logit, tile_logits=tile_logits, attention=attention)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> SlideOutput:
        """features (B, in_dim, R, C) float, mask (B, R, C) bool → :class:`SlideOutput`."""
        return self.forward_head(self.forward_features(features, mask), mask)


__all__ = [
    "GatedAttention",
    "MaskedSS2D",
    "SlideBlock",
    "SlideMamba",
    "SlideModelConfig",
    "SlideOutput",
    "TopKEvidence",
    "masked_softmax",
    "topk_mean",
]
