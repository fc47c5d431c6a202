"""Per-tile scores placed on the slide's tile grid: the (rows, cols) array the heatmap and the regions use."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["score_grid"]


def score_grid(
    rows: Sequence[int] | np.ndarray,
    cols: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """Per-tile ``scores`` placed on their (row, col) cells of a ``shape`` (R, C) grid.

    Returns an (R, C) float32 array, NaN where no tile lies (a cell given twice keeps the last score).
    ``rows``/``cols`` are :class:`~wsi_mamba.slide.tiling.TileGrid`'s ``rows``/``cols``, ``shape`` its ``shape``.
    """
    rows = np.asarray(rows, np.int64).reshape(-1)
    cols = np.asarray(cols, np.int64).reshape(-1)
    values = np.asarray(scores, np.float32).reshape(-1)
    if not (len(rows) == len(cols) == len(values)):
        raise ValueError(f"rows, cols and scores differ in length: {len(rows)}, {len(cols)}, {len(values)}")
    n_rows, n_cols = (int(s) for s in shape)
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows or cols.min() < 0 or cols.max() >= n_cols):
        raise ValueError(f"tile cells outside the {n_rows}x{n_cols} grid")
    grid = np.full((n_rows, n_cols), np.nan, np.float32)
    grid[rows, cols] = values
    return grid
