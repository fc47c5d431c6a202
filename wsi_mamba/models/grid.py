"""Tile vectors placed on the slide's 2-D tissue grid: the input of the slide model."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["grid_tensors"]


def _as_index(name: str, values, count: int) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 1 or array.shape[0] != count:
        raise ValueError(f"grid_tensors: {name} must have shape ({count},), got {array.shape}")
    if count and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"grid_tensors: {name} must hold integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if count and array.min() < 0:
        raise ValueError(f"grid_tensors: {name} has negative entries (min {array.min()})")
    return array


def grid_tensors(
    features,
    rows,
    cols,
    shape: tuple[int, int] | None = None,
    crop: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Place tile vectors on their (row, col) grid cells.

    ``features`` (n, D) numpy or torch (any real dtype, converted to float32; torch stays on its device);
    ``rows``, ``cols`` (n,) integer grid indices, each cell at most once; ``shape`` (R, C) of the full grid,
    or ``None`` for (max + 1). ``crop`` cuts to the bounding box of the tiles. Returns features
    (1, D, R', C') float32 (0 off tissue), mask (1, R', C') bool and the crop offset (row0, col0).
    The result does not depend on the order of the tiles.
    """
    if isinstance(features, torch.Tensor):
        feats = features.detach()
    else:
        array = np.asarray(features)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"grid_tensors: features must be numeric, got dtype {array.dtype}")
        feats = torch.from_numpy(array)
    if feats.dim() != 2 or feats.is_complex() or feats.dtype == torch.bool:
        raise ValueError(f"grid_tensors: features must be a real (n, D) array, got {tuple(feats.shape)} {feats.dtype}")
    count, depth = feats.shape
    r = _as_index("rows", rows, count)
    c = _as_index("cols", cols, count)
    if shape is not None:
        if len(shape) != 2 or min(int(s) for s in shape) < 1:
            raise ValueError(f"grid_tensors: shape must be (rows, cols) >= 1, got {shape}")
        full = (int(shape[0]), int(shape[1]))
        if count and (r.max() >= full[0] or c.max() >= full[1]):
            raise ValueError(f"grid_tensors: a tile at ({r.max()}, {c.max()}) (max) lies outside the grid {full}")
    elif count:
        full = (int(r.max()) + 1, int(c.max()) + 1)
    else:
        raise ValueError("grid_tensors: no tiles and no grid shape")
    if crop and not count:
        raise ValueError("grid_tensors: no tiles to crop to (pass crop=False for an empty grid of the given shape)")
    if crop:
        row0, col0 = int(r.min()), int(c.min())
        size = (int(r.max()) - row0 + 1, int(c.max()) - col0 + 1)
    else:
        row0, col0, size = 0, 0, full
    flat = (r - row0) * size[1] + (c - col0)
    unique, counts = np.unique(flat, return_counts=True)
    if unique.shape[0] != count:
        first = int(unique[counts > 1][0])
        where = (first // size[1] + row0, first % size[1] + col0)
        raise ValueError(f"grid_tensors: more than one tile at grid cell (row, col) = {where}")
    index = torch.from_numpy(flat).to(feats.device)
    grid = torch.zeros(depth, size[0] * size[1], dtype=torch.float32, device=feats.device)
    step = 1 << 16  # convert in slices: never a full float32 copy of a float16 feature matrix
    for start in range(0, count, step):
        grid[:, index[start : start + step]] = feats[start : start + step].to(torch.float32).T
    mask = torch.zeros(size[0] * size[1], dtype=torch.bool, device=feats.device)
    mask[index] = True
    return grid.reshape(1, depth, *size), mask.reshape(1, *size), (row0, col0)


def check_grid_inputs(owner: str, features: torch.Tensor, mask: torch.Tensor, in_dim: int) -> None:
    """``ValueError`` unless features are (B, in_dim, R, C) floating and mask (B, R, C) bool, non-empty."""
    if not isinstance(features, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise ValueError(f"{owner} expects torch tensors for features and mask")
    if features.dim() != 4 or features.shape[1] != in_dim or not features.is_floating_point():
        raise ValueError(
            f"{owner} expects features of shape (batch, {in_dim}, rows, cols) and a floating dtype, "
            f"got {tuple(features.shape)} {features.dtype}"
        )
    batch, _, rows, cols = features.shape
    if mask.dtype != torch.bool or tuple(mask.shape) != (batch, rows, cols):
        raise ValueError(
            f"{owner} expects a bool mask of shape {(batch, rows, cols)} (batch, rows, cols), "
            f"got {tuple(mask.shape)} {mask.dtype}"
        )
    if batch < 1 or rows < 1 or cols < 1:
        raise ValueError(f"{owner} expects a non-empty batch and grid, got features {tuple(features.shape)}")
