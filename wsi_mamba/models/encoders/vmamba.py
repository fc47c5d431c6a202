"""The ``vmamba`` encoder family: our VMamba backbones, by registry name (seeded random weights) or from our
checkpoints (``wsi-mamba/vmamba`` format). Tile geometry comes from the checkpoint's metadata when present."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import FORMAT, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from ..registry import create_model
from .base import TileEncoder
from .registry import EncoderFamily, register_encoder_family

DEFAULT_TILE_PX = 128
DEFAULT_MPP = 1.0


def create(
    name: str | None, weights: str | Path | None, tile_px: int | None, mpp: float | None, seed: int, **overrides
) -> TileEncoder:
    """A registry model (``vmamba_nano``, …) with weights seeded by ``seed`` (experiments only), or with
    ``weights``, one of our VMamba checkpoints."""
    if weights is not None:
        return load(Path(weights), read_checkpoint_metadata(weights), tile_px, mpp, **overrides)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = create_model(str(name), **{"num_classes": 1, **overrides})
    finally:
        torch.random.set_rng_state(generator_state)
    return TileEncoder(
        model, name=f"{name}-random{seed}", tile_px=tile_px or DEFAULT_TILE_PX, mpp=mpp or DEFAULT_MPP
    )


def load(path: Path, meta: dict, tile_px: int | None, mpp: float | None, **overrides) -> TileEncoder:
    """Our VMamba checkpoint ``path`` (``meta``: its JSON, re-checked here)."""
    extra = read_checkpoint_metadata(path).get("metadata", {})
    return TileEncoder(
        load_checkpoint(path, **overrides),
        name=str(extra.get("name", path.stem)),
        tile_px=int(tile_px or extra.get("tile_px", DEFAULT_TILE_PX)),
        mpp=float(mpp or extra.get("mpp", DEFAULT_MPP)),
        source=str(path),
    )


def save(encoder: TileEncoder, path: str | Path, metadata: dict | None = None) -> Path:
    """Our VMamba checkpoint of ``encoder`` (tile geometry and name in its metadata unless ``metadata`` sets
    them)."""
    base = {"name": encoder.name, "tile_px": encoder.tile_px, "mpp": encoder.mpp}
    return save_checkpoint(encoder.model, path, metadata={**base, **(metadata or {})})


register_encoder_family(EncoderFamily("vmamba", FORMAT.name, create, load, save))
