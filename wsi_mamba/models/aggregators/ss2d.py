"""``ss2d``: the project's whole-slide model (:class:`~wsi_mamba.models.slide_model.SlideMamba`: masked SS2D
blocks over the tissue grid, gated-attention pooling) as a registered aggregator; same parameters and
checkpoint keys, so every slide-model checkpoint written before the registry loads as this."""

from __future__ import annotations

from ..slide_model import SlideMamba
from ..slide_model_config import SlideModelConfig
from .registry import Aggregator, register_aggregator

__all__ = ["SS2DAggregator"]


@register_aggregator(
    "ss2d", SlideModelConfig, "masked SS2D (VMamba) blocks over the whole tissue grid + gated attention (this project)"
)
class SS2DAggregator(SlideMamba, Aggregator):
    """:class:`SlideMamba` under its registry name; tile scores: the slide head on each contextualised token."""
