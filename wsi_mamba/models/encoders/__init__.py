"""Encoder registry in the timm style: ``create_encoder(spec, weights=…, tile_px=…, mpp=…)`` → :class:`TileEncoder`.

One module per family registers an :class:`EncoderFamily`: ``vmamba`` (our backbones: registry names and our
checkpoints) and ``timm`` (any timm architecture, ``timm:NAME``, from local weights). A spec is

* ``FAMILY:NAME`` (``timm:resnet18``): that family builds ``NAME``, with ``weights`` (a file or folder) or seeded
  random weights;
* a checkpoint of ours (``.safetensors`` + JSON): the family its JSON names (``format``) rebuilds it;
* a Hugging Face-style folder (``config.json`` + weights): the family that claims such folders (timm);
* a preset name (``uni``, ``virchow2``, …; ``wsi-mamba encoders``) with ``weights``, the published files;
* any other name: the default family's registry name (``vmamba_nano``: seeded random weights, experiments only).

Nothing is downloaded: weights come from local files only.
"""

from __future__ import annotations

from . import presets as _presets  # noqa: F401  (registers the named foundation-model presets: uni, virchow2, …)
from . import timm as _timm  # noqa: F401  (registers the timm family; timm itself is imported on first use)
from . import vmamba as _vmamba  # noqa: F401  (registers the vmamba family)
from .base import MEAN, STD, TileEncoder, weights_hash
from .registry import (
    DEFAULT_FAMILY,
    EncoderFamily,
    create_encoder,
    encoder_from_record,
    export_encoder,
    get_family,
    is_checkpoint,
    list_encoder_families,
    register_encoder_family,
    save_encoder,
)

__all__ = [
    "DEFAULT_FAMILY",
    "MEAN",
    "STD",
    "EncoderFamily",
    "TileEncoder",
    "create_encoder",
    "encoder_from_record",
    "export_encoder",
    "get_family",
    "is_checkpoint",
    "list_encoder_families",
    "register_encoder_family",
    "save_encoder",
    "weights_hash",
]
