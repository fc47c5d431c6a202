"""Tile-score heatmaps: the scores in a perceptual colour map over a greyscale slide thumbnail
(:mod:`.heatmap_colours` says why), the regions at or above the threshold outlined, and, as a PNG, a title with
the slide's call, the result's caveats, zoomed panels around small top regions and a legend with the threshold.

Scores are tumour probabilities in [0, 1]; cell (r, c) of a score grid covers level-0 pixels
``[c * size0, (c + 1) * size0) x [r * size0, (r + 1) * size0)``. Nothing here reads the slide at full
resolution: the thumbnail is given, and zoom panels read bounded bands (:mod:`.heatmap_zoom`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike

import numpy as np
from PIL import Image, ImageDraw

from .atomic import atomic_path
from .grid import score_grid
from .heatmap_colours import (
    DEFAULT_ALPHA,
    DEFAULT_CMAP,
    TRANSPARENT_BELOW,
    blend_scores,
    cell_map,
    colormap_lut,
    greyscale_backdrop,
    outline_outside,
    overlay_opacity,
)
from .heatmap_legend import (
    CAVEAT_COLOR,
    PAD,
    draw_legend,
    draw_lines,
    font,
    legend_height,
    legend_lines,
    regions_rule,
    text_size,
    wrap_text,
)
from .heatmap_zoom import ZOOM_PANEL_PX, RegionReader, Zoom, zoom_boxes, zoom_panel
from .region_calling import RegionCalling, outline_mask
from .regions import TumorRegion, tumor_regions

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CMAP",
    "OUTLINE_COLOR",
    "TRANSPARENT_BELOW",
    "colormap_lut",
    "overlay_opacity",
    "render_heatmap",
    "render_heatmap_png",
    "score_grid",
    "write_heatmap_png",
]

OUTLINE_COLOR = (0, 0, 0)
"""Colour of the outline around tiles at or above the threshold, and of the zoom boxes."""


def _check(image: np.ndarray, grid: np.ndarray, size0: float) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"thumbnail must be (h, w, 3) uint8, got {image.shape} {image.dtype}")
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"grid_scores must be a non-empty (rows, cols) array, got shape {grid.shape}")
    if not (size0 > 0 and math.isfinite(size0)):
        raise ValueError(f"size0 must be a positive number, got {size0}")


def render_heatmap(
    thumbnail: np.ndarray | Image.Image,
    grid_scores: np.ndarray,
    slide_dimensions: tuple[int, int],
    size0: float,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    transparent_below: float = TRANSPARENT_BELOW,
    threshold: float | None = None,
    greyscale: bool = True,
    outline: np.ndarray | None = None,
) -> np.ndarray:
    """Blend the tile-score map over a slide thumbnail, more opaque the higher the score.

    Args:
        thumbnail: (h, w, 3) uint8 RGB image of the whole slide (e.g. ``Slide.get_thumbnail``).
        grid_scores: (R, C) scores in [0, 1] from :func:`score_grid`, NaN where there is no tile.
        slide_dimensions: the slide's level-0 (width, height): what the thumbnail shows.
        size0: level-0 side of one grid cell (``TileGrid.size0``). The grid may cover a little more than the
            slide (C * size0 ≥ width); each thumbnail pixel takes the cell its centre falls in (nearest).
        alpha: opacity of the colour at score 1 (0 = thumbnail only, 1 = colour only).
        cmap: a matplotlib colormap name.
        transparent_below: scores up to this are not drawn; above it the opacity ramps up to ``alpha``
            (:func:`overlay_opacity`).
        threshold: when given, the tiles scored at or above it are outlined (2 px of :data:`OUTLINE_COLOR`
            just outside them).
        greyscale: draw over :func:`~.heatmap_colours.greyscale_backdrop` of the thumbnail (the default: no
            colour on the image is the stain's) rather than the thumbnail itself.
        outline: an (R, C) bool grid of the cells to outline instead of those at or above ``threshold`` (the
            called regions, :func:`~.region_calling.outline_mask`).

    Returns:
        (h, w, 3) uint8: ``(1 - a) * backdrop + a * colour`` with ``a = overlay_opacity(score)`` on pixels whose
        cell has a score, the backdrop's pixels elsewhere (and wherever ``a`` is 0), outlines on top.
    """
    image = np.asarray(thumbnail)
    grid = np.asarray(grid_scores, np.float32)
    _check(image, grid, size0)
    backdrop = greyscale_backdrop(image) if greyscale else image
    box0 = (0.0, 0.0, float(slide_dimensions[0]), float(slide_dimensions[1]))
    out = blend_scores(backdrop, grid, box0, float(size0), alpha, cmap, transparent_below)
    if threshold is not None or outline is not None:
        ri, ci = cell_map(image.shape[:2], box0, float(size0), grid.shape)
        with np.errstate(invalid="ignore"):
            marked = grid[ri, ci] >= threshold if outline is None else np.asarray(outline, bool)[ri, ci]
        out[outline_outside(marked, 2)] = OUTLINE_COLOR
    return out


def _mark_zooms(image: Image.Image, zooms: Sequence[Zoom], scale: float) -> None:
    """Outline each zoom's box on the heatmap, numbered with its region's rank."""
    draw = ImageDraw.Draw(image)
    text_font = font()
    for zoom in zooms:
        x0, y0, x1, y1 = (round(v * scale) for v in zoom.box0)
        draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=(255, 255, 255), width=1)
        draw.rectangle((x0, y0, x1, y1), outline=OUTLINE_COLOR, width=2)
        label = str(zoom.rank)
        w, h = text_size(label, text_font)
        lx, ly = min(x1 + 3, image.width - w - 2), max(y0 - h - 2, 0)
        draw.rectangle((lx - 1, ly, lx + w + 1, ly + h + 1), fill=(255, 255, 255))
        draw.text((lx, ly), label, fill=OUTLINE_COLOR, font=text_font)


def _zoom_caption(zoom: Zoom, thumbnail_scale: float) -> str:
    region = zoom.region
    factor = ZOOM_PANEL_PX / max((zoom.box0[2] - zoom.box0[0]) * thumbnail_scale, 1e-9)
    tiles = f"{region.tiles} tile{'s' if region.tiles != 1 else ''}"
    return f"{zoom.rank}: region_{zoom.rank}, max {region.max_score:.2f}, {tiles} (x{factor:.0f})"


def render_heatmap_png(
    thumbnail: np.ndarray | Image.Image,
    grid_scores: np.ndarray,
    slide_dimensions: tuple[int, int],
    size0: float,
    title: str | None = None,
    legend: bool = True,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    transparent_below: float = TRANSPARENT_BELOW,
    threshold: float | None = None,
    caveats: Sequence[str] = (),
    slide: RegionReader | None = None,
    regions: Sequence[TumorRegion] | None = None,
    calling: RegionCalling | None = None,
) -> Image.Image:
    """The heatmap of :func:`render_heatmap` as a PIL image: from the top, an optional ``title``, the
    ``caveats`` (dark red, wrapped), the heatmap, zoom panels and a legend.

    Zoom panels: with a ``slide`` to read from and a ``threshold``, each of the top 3 regions at or above the
    threshold (:func:`~.regions.tumor_regions`, ranked as the regions GeoJSON) that is under 48 px in the
    thumbnail is shown again read from the slide (:mod:`.heatmap_zoom`), its box outlined and numbered on the
    heatmap. ``regions`` (ranked, e.g. :func:`~.region_calling.call_regions`'s) replace those regions, for the
    zooms and the outlines alike; ``calling`` (the :class:`~.region_calling.RegionCalling` that called them) puts
    its thresholds in the legend, apart from the slide's ``threshold``. Legend: a colour bar of tumor probability
    0 … 1 drawn with the heatmap's opacity over a checkerboard, ticks at 0, ``transparent_below`` and 1, the
    threshold marked above it, and a caption (:func:`~.heatmap_legend.legend_lines`). Narrow images are padded
    (white) to fit the text.
    """
    grid = np.asarray(grid_scores, np.float32)
    outline = None if regions is None else outline_mask(regions, grid.shape)
    rule = None if regions is None else regions_rule(calling)  # the legend: how the outlined regions were called
    heat = render_heatmap(
        thumbnail, grid, slide_dimensions, size0, alpha, cmap, transparent_below, threshold=threshold, outline=outline
    )
    h, w = heat.shape[:2]
    scale = w / float(slide_dimensions[0])
    zooms: list[Zoom] = []
    if slide is not None and (regions is not None or threshold is not None):
        ranked = regions if regions is not None else tumor_regions(grid, float(threshold or 0.0))
        zooms = zoom_boxes(ranked, float(size0), slide_dimensions, scale)
    if not (title or legend or caveats or zooms):
        return Image.fromarray(heat)
    text_font = font()
    line_h = text_size("Ag", text_font)[1] + 2
    captions = [_zoom_caption(zoom, scale) for zoom in zooms]
    text_widths = [text_size(line, text_font)[0] for line in [*([title] if title else []), *captions]]
    if legend:
        text_widths += [text_size(line, text_font)[0] for line in legend_lines(transparent_below, threshold, rule)]
    zoom_row_w = len(zooms) * (ZOOM_PANEL_PX + PAD) + PAD
    width = max(w, max(text_widths, default=0) + 2 * PAD, zoom_row_w if zooms else 0, 160 if caveats else 0)
    caveat_lines = [line for caveat in caveats for line in wrap_text(caveat, text_font, width - 2 * PAD)]
    title_h = line_h + PAD if title else 0
    caveat_h = line_h * len(caveat_lines) + PAD if caveat_lines else 0
    top = (PAD if title or caveat_lines else 0) + title_h + caveat_h
    zoom_h = ZOOM_PANEL_PX + line_h + 2 * PAD if zooms else 0
    legend_h = legend_height(len(legend_lines(transparent_below, threshold, rule)), threshold) if legend else 0
    canvas = Image.new("RGB", (width, top + h + zoom_h + legend_h), (255, 255, 255))
    heat_image = Image.fromarray(heat)
    _mark_zooms(heat_image, zooms, scale)
    canvas.paste(heat_image, ((width - w) // 2, top))
    if title:
        draw_lines(canvas, [title], PAD, (0, 0, 0))
    if caveat_lines:
        draw_lines(canvas, caveat_lines, PAD + title_h, CAVEAT_COLOR)
    draw = ImageDraw.Draw(canvas)
    x = (width - (zoom_row_w - 2 * PAD)) // 2
    for zoom, caption in zip(zooms, captions, strict=True):
        panel = zoom_panel(slide, zoom, grid, float(size0), threshold, alpha, cmap, transparent_below, outline=outline)
        y = top + h + PAD
        canvas.paste(Image.fromarray(panel), (x, y))
        draw.rectangle((x - 1, y - 1, x + ZOOM_PANEL_PX, y + ZOOM_PANEL_PX), outline=OUTLINE_COLOR)
        cw = text_size(caption, text_font)[0]
        draw.text((x + (ZOOM_PANEL_PX - cw) // 2, y + ZOOM_PANEL_PX + 2), caption, fill=(0, 0, 0), font=text_font)
        x += ZOOM_PANEL_PX + PAD
    if legend:
        draw_legend(canvas, top + h + zoom_h, alpha, cmap, transparent_below, threshold, rule)
    return canvas


def write_heatmap_png(
    path: str | PathLike[str],
    thumbnail: np.ndarray | Image.Image,
    grid_scores: np.ndarray,
    slide_dimensions: tuple[int, int],
    size0: float,
    title: str | None = None,
    legend: bool = True,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    transparent_below: float = TRANSPARENT_BELOW,
    threshold: float | None = None,
    caveats: Sequence[str] = (),
    slide: RegionReader | None = None,
    regions: Sequence[TumorRegion] | None = None,
    calling: RegionCalling | None = None,
) -> None:
    """Write :func:`render_heatmap_png`'s image to ``path`` as a PNG, atomically."""
    image = render_heatmap_png(
        thumbnail,
        grid_scores,
        slide_dimensions,
        size0,
        title=title,
        legend=legend,
        alpha=alpha,
        cmap=cmap,
        transparent_below=transparent_below,
        threshold=threshold,
        caveats=caveats,
        slide=slide,
        regions=regions,
        calling=calling,
    )
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
