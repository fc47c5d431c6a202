"""The tile encoder (kept import path): ``load_encoder`` asks the encoder registry (:mod:`wsi_mamba.models.encoders`).

Features are the backbone's pooled pre-logits. An encoder is identified by its name and a hash of its weights,
which every feature store records, so features of different encoders are never mixed.
"""

from __future__ import annotations

from pathlib import Path

from .encoders import MEAN, STD, TileEncoder, create_encoder, weights_hash

__all__ = ["MEAN", "STD", "TileEncoder", "load_encoder", "weights_hash"]


def load_encoder(
    spec: str | Path,
    seed: int = 0,
    weights: str | Path | None = None,
    tile_px: int | None = None,
    mpp: float | None = None,
    **overrides,
) -> TileEncoder:
    """An encoder from our checkpoint (``.safetensors`` + JSON), ``timm:NAME`` with local ``weights`` (a
    safetensors file, a weights-only ``.pth``/``.bin`` or a Hugging Face-style folder), such a folder itself, or a
    registry name (seeded random weights: experiments only). Tile geometry comes from the checkpoint or the
    model's own config unless ``tile_px``/``mpp`` are given. See :func:`~wsi_mamba.models.encoders.create_encoder`."""
    return create_encoder(spec, weights=weights, tile_px=tile_px, mpp=mpp, seed=seed, **overrides)
