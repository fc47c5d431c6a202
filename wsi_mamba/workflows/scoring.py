"""Scoring tile features with a model folder's slide model (used by predict, evaluate and cohort)."""

from __future__ import annotations

import numpy as np
import torch

from ..devices import autocast, module_device
from ..models.grid import grid_tensors
from .bundle import ModelBundle


def score_tiles(
    bundle: ModelBundle, features: np.ndarray, rows: np.ndarray, cols: np.ndarray, grid_shape: tuple[int, int]
) -> tuple[float, np.ndarray]:
    """Slide probability and per-tile probabilities (in the order of ``features``) of at least one tile.
    Features are rounded to float16 first, as a feature store keeps them, so predict and extract + evaluate
    agree (a no-op for features read from a store). Runs where the slide model is (bf16 autocast on CUDA)."""
    features = features.astype(np.float16).astype(np.float32)
    grid_features, mask, (r0, c0) = grid_tensors(features, rows, cols, grid_shape)
    device = module_device(bundle.slide_model)
    with torch.inference_mode(), autocast(device):
        out = bundle.slide_model(grid_features.to(device), mask.to(device))
    tiles = torch.sigmoid(out.tile_logits[0, rows - r0, cols - c0].float()).cpu().numpy().astype(np.float32)
    return float(torch.sigmoid(out.logit[0].float())), tiles
