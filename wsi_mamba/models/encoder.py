"""The tile encoder: a VMamba backbone that turns RGB tiles into one feature vector each.

Features are the classifier's pre-logits (last-stage LayerNorm + global average pool). An encoder is
identified by its name and a hash of its weights, which every feature store records, so features of
different encoders are never mixed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..devices import autocast
from .checkpoint import load_checkpoint, read_checkpoint_metadata
from .registry import create_model
from .vmamba import VSSM

# ImageNet statistics, as the published VMamba models were trained with.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def weights_hash(model: torch.nn.Module) -> str:
    """A short SHA-256 of the model's tensors (names, dtypes, shapes and bytes), order-independent."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


@dataclass
class TileEncoder:
    """A VMamba backbone in eval mode with its identity and the tile geometry it expects."""

    model: VSSM
    name: str
    tile_px: int = 128
    mpp: float = 1.0
    source: str | None = None  # checkpoint path, or None for a registry model with seeded random weights

    def __post_init__(self) -> None:
        self.model.eval()
        self.hash = weights_hash(self.model)

    @property
    def dim(self) -> int:
        return self.model.num_features

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TileEncoder:
        self.model.to(device)
        return self

    def preprocess(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(n, h, w, 3) uint8 RGB → (n, 3, h, w) float32 normalised, on the encoder's device."""
        x = torch.as_tensor(tiles, device=self.device)
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"tiles must be (n, h, w, 3) uint8, got {tuple(x.shape)} {x.dtype}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features of preprocessed tiles (differentiable; used by encoder training)."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    @torch.inference_mode()
    def encode(self, tiles: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 tiles → (n, dim) float32 features (bf16 autocast on CUDA)."""
        if len(tiles) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = self.preprocess(tiles)
        with autocast(x.device):
            out = self.features(x)
        return out.float().cpu().numpy()

    def identity(self) -> dict:
        """What a feature store records about the encoder."""
        return {"encoder": self.name, "encoder_hash": self.hash, "tile_px": self.tile_px, "mpp": self.mpp}


def load_encoder(spec: str | Path, seed: int = 0, **overrides) -> TileEncoder:
    """An encoder from a checkpoint (``.safetensors`` + JSON, ours) or a registry name (seeded random
    weights: for experiments only). Tile geometry comes from the checkpoint's metadata when present."""
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists():
        if not path.exists():
            raise ValueError(f"{path}: encoder checkpoint not found")
        meta = read_checkpoint_metadata(path)
        model = load_checkpoint(path, **overrides)
        extra = meta.get("metadata", {})
        return TileEncoder(
            model,
            name=str(extra.get("name", path.stem)),
            tile_px=int(extra.get("tile_px", 128)),
            mpp=float(extra.get("mpp", 1.0)),
            source=str(path),
        )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = create_model(str(spec), **{"num_classes": 1, **overrides})
    finally:
        torch.random.set_rng_state(generator_state)
    return TileEncoder(model, name=f"{spec}-random{seed}")
