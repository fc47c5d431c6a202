"""The text around a heatmap: its title (the slide's score and call), its caveats (out-of-domain warnings, no
tissue, corrupt tiles, regions on a slide called normal) and its legend (a colour bar of tumour probability with
the transparent range and the slide threshold marked, and the rule that called the outlined regions)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .heatmap_colours import colormap_lut, colour_indices, overlay_opacity

if TYPE_CHECKING:
    from .region_calling import RegionCalling

__all__ = ["CAVEAT_COLOR", "heatmap_caveats", "heatmap_title", "legend_lines", "regions_rule", "tick_label"]

CAVEAT_COLOR = (170, 0, 0)
"""Colour of the caveat lines above the heatmap."""
TEXT_PX = 12
PAD = 6
BAR_PX = 12
TICK_PX = 3
MARKER_PX = 8


def font(size: int = TEXT_PX) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at ``size`` px where this Pillow can scale it, its bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def text_size(text: str, text_font: Any) -> tuple[int, int]:
    """Width and height of ``text`` drawn from (0, 0) (height from the top of the line box)."""
    _, _, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=text_font)
    return math.ceil(right), math.ceil(bottom)


def wrap_text(text: str, text_font: Any, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` px (a single longer word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_size(f"{lines[-1]} {word}", text_font)[0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def tick_label(value: float) -> str:
    """A score as a short tick label: 0, 0.2, 0.35, 1."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def heatmap_title(result: Mapping[str, Any]) -> str:
    """``NAME: metastasis probability 0.995, called tumor (threshold 0.5)`` from a predict result (its
    ``slide``, ``score``, ``prediction`` and ``threshold``); ``NAME: no score`` without a score."""
    name = result.get("slide", "slide")
    if result.get("score") is None:
        return f"{name}: no score"
    threshold = result.get("threshold")
    call = f", called {result['prediction']}" if result.get("prediction") else ""
    at = f" (threshold {tick_label(float(threshold))})" if threshold is not None else ""
    return f"{name}: metastasis probability {float(result['score']):.3f}{call}{at}"


def heatmap_caveats(result: Mapping[str, Any], regions: int | None = None) -> list[str]:
    """What a reader of the heatmap must know about a predict result, one sentence each: why there is no
    score (``reason``, e.g. no tissue found), each out-of-domain warning (``warnings``), tiles that could not
    be decoded (``corrupt_tiles``), and, given the number of outlined ``regions``, regions on a slide called
    normal. Empty when there is nothing to say."""
    lines = []
    if result.get("reason"):
        lines.append(f"No score: {result['reason']}.")
    model = result.get("model")
    for warning in result.get("warnings") or ():
        lines.append(
            f"Out of domain{f' for model {model}' if model else ''}: {warning}; the score is less trustworthy."
        )
    corrupt = int(result.get("corrupt_tiles") or 0)
    if corrupt:
        lines.append(
            f"{corrupt} tile{'s' if corrupt != 1 else ''} could not be decoded (corrupt): not scored, not drawn."
        )
    if regions and result.get("prediction") == "normal":
        lines.append(
            f"The slide is called normal, yet {regions} region{'s' if regions != 1 else ''} of tile evidence "
            f"{'are' if regions != 1 else 'is'} outlined: tile scores, not the slide's call."
        )
    return lines


def regions_rule(calling: RegionCalling | None) -> str:
    """How ``calling`` called its regions, with its own thresholds (not the slide's): ``smoothed evidence >=
    0.31 over >= 4 tiles, or strong single-tile evidence >= 0.95``; empty without a calling."""
    if calling is None:
        return ""
    rule = calling.called_by_evidence()
    return rule if calling.strong_score is None else f"{rule}, or {calling.called_by_strong()}"


def threshold_label(threshold: float, regions: str | None) -> str:
    """The label above the threshold's marker: the slide's threshold when called regions are outlined."""
    return f"{'slide ' if regions is not None else ''}threshold {tick_label(threshold)}"


def legend_lines(transparent_below: float, threshold: float | None, regions: str | None = None) -> list[str]:
    """The legend's caption under the colour bar. ``regions`` None: the tiles at or above ``threshold`` are
    outlined; else called regions are, and ``regions`` is the rule that called them (:func:`regions_rule`;
    empty: not known), stated apart from the slide's ``threshold``, which only decides the slide's call."""
    lines = [f"tumor probability of each tile (transparent below {tick_label(transparent_below)})"]
    if regions is None:
        if threshold is not None:
            lines.append(f"{threshold_label(threshold, None)} (triangle): tiles at or above it outlined in black")
        return lines
    if threshold is not None:
        lines.append(f"{threshold_label(threshold, regions)} (triangle): the slide is called tumor at or above it")
    lines.append("outlined in black: the called regions (regions GeoJSON)")
    if regions:
        lines.append(f"regions called at {regions}")
    return lines


def legend_bar(
    width: int, height: int, alpha: float, cmap: str, transparent_below: float, check: int = 4
) -> np.ndarray:
    """(height, width, 3) colour bar for scores 0 … 1, blended with :func:`overlay_opacity` over a grey and
    white checkerboard (the usual sign of transparency), exactly as the heatmap blends over tissue."""
    scores = np.linspace(0.0, 1.0, width, dtype=np.float32)
    colours = colormap_lut(cmap)[colour_indices(scores)].astype(np.float32)  # (width, 3)
    opacity = overlay_opacity(scores, alpha, transparent_below)[:, None]
    yy, xx = np.mgrid[0:height, 0:width]
    backdrop = np.where(((yy // check + xx // check) % 2 == 0)[..., None], 255.0, 204.0)
    bar = (1.0 - opacity[None]) * backdrop + opacity[None] * colours[None]
    return np.clip(np.round(bar), 0, 255).astype(np.uint8)


def legend_height(n_lines: int, threshold: float | None) -> int:
    """Height (px) of the legend :func:`draw_legend` draws with ``n_lines`` caption lines."""
    line_h = text_size("Ag", font())[1] + 2
    marker = line_h + MARKER_PX if threshold is not None else 0
    return PAD + marker + BAR_PX + TICK_PX + line_h * (1 + n_lines) + PAD


def draw_legend(
    canvas: Image.Image,
    top: int,
    alpha: float,
    cmap: str,
    transparent_below: float,
    threshold: float | None,
    regions: str | None = None,
) -> None:
    """Draw the legend across ``canvas`` from row ``top``: the threshold's marker and label above the colour bar,
    the bar, ticks at 0, ``transparent_below`` and 1, and the caption (:func:`legend_lines`, ``regions`` as
    there)."""
    draw = ImageDraw.Draw(canvas)
    text_font = font()
    black = (0, 0, 0)
    line_h = text_size("Ag", text_font)[1] + 2
    x0, x1 = PAD, canvas.width - PAD
    y0 = top + PAD + (line_h + MARKER_PX if threshold is not None else 0)

    def x_of(value: float) -> int:
        return x0 + round(min(max(value, 0.0), 1.0) * (x1 - x0 - 1))

    def centred(label: str, x: int) -> int:
        return min(max(x - text_size(label, text_font)[0] // 2, x0), x1 - text_size(label, text_font)[0])

    canvas.paste(Image.fromarray(legend_bar(x1 - x0, BAR_PX, alpha, cmap, transparent_below)), (x0, y0))
    draw.rectangle((x0 - 1, y0 - 1, x1, y0 + BAR_PX), outline=black)
    ty = y0 + BAR_PX + TICK_PX
    for value in sorted({0.0, transparent_below, 1.0}):
        x = x_of(value)
        draw.line((x, y0 + BAR_PX, x, ty), fill=black)
        draw.text((centred(tick_label(value), x), ty), tick_label(value), fill=black, font=text_font)
    if threshold is not None:
        x = x_of(threshold)
        draw.line((x, y0 - 1, x, y0 + BAR_PX), fill=black, width=2)
        draw.polygon([(x - 5, y0 - MARKER_PX), (x + 5, y0 - MARKER_PX), (x, y0 - 2)], fill=black)
        label = threshold_label(threshold, regions)
        draw.text((centred(label, x), y0 - MARKER_PX - line_h), label, fill=black, font=text_font)
    for i, line in enumerate(legend_lines(transparent_below, threshold, regions)):
        draw.text((centred(line, (x0 + x1) // 2), ty + line_h * (1 + i)), line, fill=black, font=text_font)


def draw_lines(canvas: Image.Image, lines: Sequence[str], top: int, colour: tuple[int, int, int]) -> None:
    """Draw ``lines`` (already wrapped) centred across ``canvas`` from row ``top``."""
    draw = ImageDraw.Draw(canvas)
    text_font = font()
    line_h = text_size("Ag", text_font)[1] + 2
    for i, line in enumerate(lines):
        w = text_size(line, text_font)[0]
        draw.text(((canvas.width - w) // 2, top + i * line_h), line, fill=colour, font=text_font)
