"""Result files: atomic writers (JSON, CSV, text), tile-score heatmaps (PNG with a legend) and the scored tiles
as QuPath-importable GeoJSON.

Everything written here goes through :func:`atomic_path`, so a file under its final name is always complete.
"""

from .atomic import (
    TEMP_MARKER,
    atomic_path,
    json_safe,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from .geojson import NORMAL_COLOR, TUMOR_COLOR, tiles_geojson, write_tiles_geojson
from .grid import score_grid
from .heatmap import colormap_lut, render_heatmap, render_heatmap_png, write_heatmap_png

__all__ = [
    "NORMAL_COLOR",
    "TEMP_MARKER",
    "TUMOR_COLOR",
    "atomic_path",
    "colormap_lut",
    "json_safe",
    "render_heatmap",
    "render_heatmap_png",
    "score_grid",
    "tiles_geojson",
    "write_csv_atomic",
    "write_heatmap_png",
    "write_json_atomic",
    "write_text_atomic",
    "write_tiles_geojson",
]
