"""The viewer's page, a bokeh document: the slide list (links ``?slide=ID``) beside the chosen slide's pan/zoom
view (tiles from ``/api/slides/ID/tiles``), its tile-score overlay (toggle, opacity), region outlines, score and
warnings. Controls are bokeh widgets linked in the browser (``js_link``): no front-end code of our own.

Plot coordinates are level-0 pixels across and minus level-0 pixels down (the slide's top-left corner at the
origin, rows going down the screen). The tile source is bokeh's XYZ one set so that zoom ``Z`` maps one tile
pixel to one level-0 pixel and the origin to the slide's corner (``tiles.TilePyramid``'s layout).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    Div,
    FixedTicker,
    HoverTool,
    LinearColorMapper,
    Range1d,
    Slider,
    Toggle,
    WMTSTileSource,
)
from bokeh.plotting import figure

from .overlay import score_palette
from .service import ViewerData

REGION_COLOUR = "#00c8ff"  # cyan: apart from the stain's pinks and purples and from the score colours
PAGE_STYLE = "font-family: sans-serif; font-size: 13px;"
DEFAULT_OPACITY = 0.6


def _score_text(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


def slide_list_html(data: ViewerData, current: str | None) -> str:
    """The slide list as an HTML table (names escaped), the current slide in bold."""
    rows = []
    for item in data.catalog.summaries():
        name = html.escape(item["name"])
        link = f'<a href="?slide={html.escape(item["id"], quote=True)}">{name}</a>'
        if item["id"] == current:
            link = f"<b>{link}</b>"
        flag = " ⚠" if item["warnings"] or item["problems"] else ""
        rows.append(
            f"<tr><td>{link}{flag}</td><td>{_score_text(item['score'])}</td>"
            f"<td>{html.escape(str(item['prediction'] or '–'))}</td></tr>"
        )
    return (
        f'<div style="{PAGE_STYLE}"><b>Slides</b><table style="border-spacing: 8px 2px;">'
        "<tr><th align=left>slide</th><th align=left>score</th><th align=left>prediction</th></tr>"
        + "".join(rows)
        + "</table></div>"
    )


def slide_info_html(info: dict[str, Any]) -> str:
    """A slide's score, prediction, threshold, warnings and problems as HTML (text escaped)."""
    result = info.get("result") or {}
    lines = [f"<b>{html.escape(info['name'])}</b>"]
    if result:
        lines.append(
            f"metastasis probability <b>{_score_text(result.get('score'))}</b> "
            f"({html.escape(str(result.get('prediction') or '–'))}, threshold {_score_text(result.get('threshold'))}; "
            f"model {html.escape(str(result.get('model', '?')))})"
        )
        lines.append(
            f"{result.get('tiles', '?')} tiles, highest tile score {_score_text(result.get('max_tile_score'))}, "
            f"corrupt tiles {result.get('corrupt_tiles', 0)}"
        )
    else:
        lines.append("no predict result: the slide alone")
    for text in [result.get("reason"), *info.get("warnings", []), *info.get("problems", [])]:
        if text:
            lines.append(f'<span style="color: #b00020;">⚠ {html.escape(str(text))}</span>')
    if info.get("slide"):
        lines.append(f"{info['slide']['width']:,} × {info['slide']['height']:,} px")
    return f'<div style="{PAGE_STYLE} max-width: 900px;">' + "<br>".join(lines) + "</div>"


def tile_source(slide_id: str, max_zoom: int, tile_px: int) -> WMTSTileSource:
    """bokeh's XYZ tile source over ``/api/slides/ID/tiles``: zoom ``max_zoom`` is level-0 px, origin top-left."""
    return WMTSTileSource(
        url=f"api/slides/{slide_id}/tiles/{{Z}}/{{X}}_{{Y}}.jpeg",
        tile_size=tile_px,
        min_zoom=0,
        max_zoom=max_zoom,
        initial_resolution=float(2**max_zoom),
        x_origin_offset=0.0,
        y_origin_offset=float(tile_px * 2**max_zoom),
        wrap_around=False,
        snap_to_zoom=False,
        attribution="",
    )


def slide_figure(data: ViewerData, slide_id: str, info: dict[str, Any]) -> Any:
    """The pan/zoom view of a slide with its overlays and their controls (a bokeh layout)."""
    width, height = info["slide"]["width"], info["slide"]["height"]
    plot = figure(
        x_range=Range1d(0, width, bounds=(-width * 0.5, width * 1.5)),
        y_range=Range1d(-height, 0, bounds=(-height * 1.5, height * 0.5)),
        match_aspect=True,
        tools="pan,wheel_zoom,box_zoom,reset",
        active_scroll="wheel_zoom",
        sizing_mode="stretch_both",
        min_width=500,
        min_height=400,
        output_backend="canvas",
    )
    plot.axis.visible = False
    plot.grid.visible = False
    plot.toolbar.logo = None
    plot.add_tile(tile_source(slide_id, info["slide"]["max_zoom"], info["slide"]["tile_px"]))
    controls: list[Any] = []
    overlay = data.overlay(slide_id) if info.get("has_overlay") else None
    if overlay is not None:
        x, y, w, h = overlay.extent
        image = np.ascontiguousarray(overlay.rgba()[::-1]).view(np.uint32)[..., 0]  # bokeh rows go up
        heat = plot.image_rgba(image=[image], x=x, y=-(y + h), dw=w, dh=h, global_alpha=DEFAULT_OPACITY)
        toggle = Toggle(label="tile scores", active=True, width=110)
        toggle.js_link("active", heat, "visible")
        opacity = Slider(title="opacity", start=0.0, end=1.0, step=0.05, value=DEFAULT_OPACITY, width=180)
        opacity.js_link("value", heat.glyph, "global_alpha")
        controls += [toggle, opacity]
        threshold = info.get("threshold")
        ticks = sorted({0.0, 1.0, *([float(threshold)] if isinstance(threshold, (int, float)) else [])})
        plot.add_layout(
            ColorBar(
                color_mapper=LinearColorMapper(palette=score_palette(), low=0.0, high=1.0),
                ticker=FixedTicker(ticks=ticks),
                title="tile score" + (f" (threshold {threshold:g})" if len(ticks) == 3 else ""),
                width=12,
            ),
            "right",
        )
    regions = data.regions(slide_id) if info.get("has_regions") else None
    if regions:
        source = ColumnDataSource(
            {
                "xs": [r["xs"] for r in regions],
                "ys": [[-v for v in r["ys"]] for r in regions],
                "name": [r["name"] for r in regions],
                "max_score": [r["max_score"] for r in regions],
            }
        )
        called_normal = info.get("prediction") == "normal"  # regions above the tile threshold, slide not called
        outlines = plot.multi_line(
            "xs", "ys", source=source, line_color=REGION_COLOUR, line_width=2.5,
            line_dash="dashed" if called_normal else "solid",
        )  # fmt: skip
        plot.add_tools(HoverTool(renderers=[outlines], tooltips=[("region", "@name"), ("max score", "@max_score")]))
        label = "regions (slide called normal: dashed)" if called_normal else "regions"
        toggle = Toggle(label=label, active=True, width=240 if called_normal else 90)
        toggle.js_link("active", outlines, "visible")
        controls.append(toggle)
    return column(row(*controls), plot, sizing_mode="stretch_both") if controls else plot


def build_page(doc: Document, data: ViewerData) -> None:
    """Fill ``doc`` (one browser session) with the slide list and the slide named by ``?slide=ID`` (default:
    the first one)."""
    arguments = doc.session_context.request.arguments if doc.session_context else {}
    wanted = (arguments.get("slide") or [b""])[0].decode("utf-8", "replace")
    slide_id = wanted if data.entry(wanted) is not None else next(iter(data.catalog.entries))
    info = data.describe(slide_id) or {}
    sidebar = Div(text=slide_list_html(data, slide_id), width=300)
    details = Div(text=slide_info_html(info))
    if wanted and data.entry(wanted) is None:
        details.text = f'<div style="{PAGE_STYLE}">no slide {html.escape(wanted)} here</div>' + details.text
    view = slide_figure(data, slide_id, info) if "slide" in info else Div(text="")
    doc.title = f"wsi-mamba view: {info.get('name', '')}"
    doc.add_root(row(sidebar, column(details, view, sizing_mode="stretch_both"), sizing_mode="stretch_both"))
