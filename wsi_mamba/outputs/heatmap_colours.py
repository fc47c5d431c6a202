"""The heatmap's colours: tile scores in a perceptual colour map (viridis) blended over a greyscale copy of the
slide thumbnail, and the pixel outline of the tiles at or above the threshold.

Why greyscale and viridis: H&E tissue is pink (eosin) and purple (haematoxylin), so a warm red scale over the
colour thumbnail reads as stain (a tile at 0.87 looks like a naturally red patch, and the tissue's own pink like
a mid-scale score). Over a greyscale thumbnail every colour on the image is a score, and blending a colour with
grey keeps its hue. Viridis at the scores that matter (≥ 0.5: teal, green, yellow; hues 50°–180°) lies
opposite the stains' hues (pink and purple, about 260°–360°), it is perceptually uniform, readable with the
common colour-vision deficiencies, and, unlike cividis, saturated in the middle of the scale (cividis's
middle is grey, the tissue's colour here). :mod:`wsi_mamba.outputs.stain_contrast` measures the separation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CMAP",
    "TRANSPARENT_BELOW",
    "blend_scores",
    "cell_map",
    "colormap_lut",
    "greyscale_backdrop",
    "outline_outside",
    "overlay_opacity",
]

DEFAULT_CMAP = "viridis"
"""Heatmap colours: a perceptual map whose hues are not the stain's (dark blue, teal, green, yellow)."""
DEFAULT_ALPHA = 0.75
"""Heatmap opacity at score 1."""
TRANSPARENT_BELOW = 0.2
"""Heatmap scores up to this are transparent: the tissue shows as it is."""
BACKDROP_CONTRAST = 0.7
"""The greyscale thumbnail keeps this fraction of its contrast (pulled towards white) so the colours stand out."""


@lru_cache(maxsize=8)
def colormap_lut(cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """A (256, 3) uint8 lookup table of matplotlib colormap ``cmap`` (entry i is the colour of i / 255).

    Uses matplotlib's colormap registry only (no pyplot, no GUI backend); perceptually uniform maps
    ("viridis", "inferno", "magma", "cividis") suit probabilities.
    """
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("heatmaps need matplotlib (pip install matplotlib)") from e
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}") from None
    rgba = colormap(np.linspace(0.0, 1.0, 256))
    lut = np.round(np.asarray(rgba)[:, :3] * 255.0).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def colour_indices(scores: np.ndarray) -> np.ndarray:
    """Scores (clipped to [0, 1]; NaN treated as 0) as lookup-table indices 0..255."""
    clipped = np.clip(np.nan_to_num(scores, nan=0.0), 0.0, 1.0)
    return np.round(clipped * 255.0).astype(np.intp)


def overlay_opacity(
    scores: np.ndarray, alpha: float = DEFAULT_ALPHA, transparent_below: float = TRANSPARENT_BELOW
) -> np.ndarray:
    """Opacity of the colour drawn for each score: 0 up to ``transparent_below``, then rising linearly to
    ``alpha`` at score 1, ``alpha * clip((score - transparent_below) / (1 - transparent_below), 0, 1)``.

    NaN scores get 0. So unsuspicious tissue stays visible as it is and colour draws the eye to high scores.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= transparent_below < 1.0:
        raise ValueError(f"transparent_below must be in [0, 1), got {transparent_below}")
    clipped = np.clip(np.nan_to_num(np.asarray(scores, np.float32), nan=0.0), 0.0, 1.0)
    ramp = np.clip((clipped - transparent_below) / (1.0 - transparent_below), 0.0, 1.0)
    return (alpha * ramp).astype(np.float32)


def greyscale_backdrop(image: np.ndarray, contrast: float = BACKDROP_CONTRAST) -> np.ndarray:
    """(h, w, 3) uint8 grey copy of an RGB ``image``: its luma (ITU-R 601 weights) with ``contrast`` of its
    range kept, pulled towards white (``255 - contrast * (255 - luma)``)."""
    luma = np.asarray(image, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = np.clip(np.round(255.0 - contrast * (255.0 - luma)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def cell_index(n_px: int, start0: float, extent0: float, size0: float, n_cells: int) -> np.ndarray:
    """For each of ``n_px`` image pixels spanning level-0 ``[start0, start0 + extent0)``: the grid cell its
    centre falls in, clipped to the grid (cell k spans ``[k * size0, (k + 1) * size0)``)."""
    centres0 = start0 + (np.arange(n_px, dtype=np.float64) + 0.5) * (extent0 / n_px)
    return np.clip(np.floor(centres0 / size0).astype(np.intp), 0, n_cells - 1)


def cell_map(
    shape: tuple[int, int], box0: tuple[float, float, float, float], size0: float, grid_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(row index (h, 1), col index (1, w)) arrays mapping an image of ``shape`` (h, w) showing level-0 box
    ``(x0, y0, x1, y1)`` to grid cells, for fancy indexing a grid: ``grid[ri, ci]`` is (h, w)."""
    x0, y0, x1, y1 = box0
    ri = cell_index(shape[0], y0, y1 - y0, size0, grid_shape[0])
    ci = cell_index(shape[1], x0, x1 - x0, size0, grid_shape[1])
    return ri[:, None], ci[None, :]


def blend_scores(
    image: np.ndarray,
    grid: np.ndarray,
    box0: tuple[float, float, float, float],
    size0: float,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    transparent_below: float = TRANSPARENT_BELOW,
) -> np.ndarray:
    """``(1 - a) * image + a * colour`` per pixel of an (h, w, 3) uint8 ``image`` showing level-0 ``box0``,
    colour and ``a = overlay_opacity(score)`` from the grid cell the pixel's centre falls in (nearest);
    pixels of cells without a score, or with ``a`` 0, stay as they are."""
    cell_opacity = overlay_opacity(grid, alpha, transparent_below)  # (R, C); NaN cells get 0
    ri, ci = cell_map(image.shape[:2], box0, size0, grid.shape)
    cell_colours = colormap_lut(cmap)[colour_indices(grid)]  # colour the grid once, then expand to pixels
    opacity = cell_opacity[ri, ci]
    drawn = opacity > 0
    out = image.copy()
    a = opacity[drawn][:, None]
    colours = cell_colours[ri, ci][drawn].astype(np.float32)
    blend = (1.0 - a) * image[drawn].astype(np.float32) + a * colours
    out[drawn] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    return out


def outline_outside(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels within ``width`` (8-neighbour steps) outside the True area of a 2-D ``mask``: a frame drawn
    around regions that leaves their own pixels (and colour) visible."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if width < 1 or not mask.any():
        return np.zeros_like(mask)
    grown = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=width)
    return grown & ~mask
