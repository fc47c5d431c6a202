"""``clam-sb``: CLAM, single attention branch (Lu et al., Nature Biomedical Engineering 2021): gated-attention
MIL (as :mod:`.abmil`) plus one instance classifier per class, trained by the instance-level clustering loss:
for a slide of class y, the k most attended tiles are positives and the k least attended negatives for class
y's instance classifier (binary, not subtyping: the other class's classifier is left alone, as in CLAM's code).

Tile scores: the tumour class's instance classifier on each tile's embedding; ``attention`` is the MIL
attention (CLAM draws its heatmaps from it). Differences from the paper, for a CPU-sized model: widths
``dim``/``attn_dim`` default to 64 (paper 512/256), one logit with BCE instead of two-class softmax, instance
classifiers with one logit and BCE instead of the smooth top-1 SVM, and ``k = min(k_sample, tiles // 2)``
on slides with fewer than 2·k_sample tiles. The training loss is bag BCE + ``instance_weight`` × instance
loss (the paper weighs them 0.7 / 0.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Linear2d
from ..slide_model import SlideOutput
from .abmil import ABMIL, ABMILConfig
from .registry import init_linear, register_aggregator

__all__ = ["CLAMSB", "CLAMConfig", "CLAMOutput"]


@dataclass(frozen=True)
class CLAMConfig(ABMILConfig):
    """ABMIL's fields plus the instance loss's k and weight."""

    k_sample: int = 8
    instance_weight: float = 0.3
    BOUNDS: ClassVar[dict[str, tuple[float, float]]] = {
        **ABMILConfig.BOUNDS,
        "k_sample": (1, 4096),
        "instance_weight": (0.0, 100.0),
    }


@dataclass
class CLAMOutput(SlideOutput):
    """:class:`SlideOutput` plus what the instance loss needs: embeddings (B, dim, R, C) and the mask."""

    embeddings: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@register_aggregator(
    "clam-sb", CLAMConfig, "gated attention + instance clustering on top/bottom-k tiles (Lu et al. 2021)"
)
class CLAMSB(ABMIL):
    """ABMIL + per-class instance classifiers; :meth:`aux_loss` is the instance-clustering loss."""

    def __init__(self, config: CLAMConfig) -> None:
        super().__init__(config)
        self.instance_classifiers = nn.ModuleList(Linear2d(config.dim, 1) for _ in range(2))
        self.instance_classifiers.apply(init_linear)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> CLAMOutput:
        h = self.embed_tiles(features, mask)
        out = self.pool(h, mask)
        tile_logits = self.instance_classifiers[1](h)[:, 0].masked_fill(~mask, 0.0)
        return CLAMOutput(out.logit, tile_logits, out.attention, embeddings=h, mask=mask)

    def aux_loss(self, out: CLAMOutput, label: torch.Tensor) -> torch.Tensor:
        """``instance_weight`` × the mean over the batch of the instance BCE on the top-k (target 1) and
        bottom-k (target 0) attended tiles, scored by the classifier of the slide's class."""
        if out.embeddings is None or out.mask is None:
            return out.logit.new_zeros(())
        losses = []
        for b in range(out.logit.shape[0]):
            cells = out.mask[b]
            k = min(self.config.k_sample, int(cells.sum()) // 2)
            if k == 0:
                continue
            attention = out.attention[b][cells].float()
            h = out.embeddings[b][:, cells].T  # (n, dim)
            picked = torch.cat([attention.topk(k).indices, (-attention).topk(k).indices])
            target = torch.cat([attention.new_ones(k), attention.new_zeros(k)])
            classifier = self.instance_classifiers[int(label[b].item() >= 0.5)]
            logits = F.linear(h[picked], classifier.weight, classifier.bias)[:, 0].float()
            losses.append(F.binary_cross_entropy_with_logits(logits, target))
        if not losses:
            return out.logit.new_zeros(())
        return self.config.instance_weight * torch.stack(losses).mean()
