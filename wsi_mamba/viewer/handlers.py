"""The viewer's HTTP endpoints (tornado handlers, served beside the bokeh page on the same server)::

    GET /api/slides                               the slide list (JSON: id, name, score, prediction, warnings, …)
    GET /api/slides/ID                            one slide: its result, tile layout and overlay extent (JSON)
    GET /api/slides/ID/tiles/Z/X_Y.jpeg           a slide tile (256 px; zoom Z, column X, row Y)
    GET /api/slides/ID/overlay.png                the tile scores, a pixel per tile (RGBA)
    GET /api/slides/ID/regions.geojson            the predicted regions

Slides are named by id, never by path; anything else is a 404. Tiles are made in worker threads, so a slow read
never holds up the server.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tornado.ioloop import IOLoop
from tornado.web import HTTPError, RequestHandler

from ..outputs.capped import InputFileError
from ..slide import SlideError
from .service import ViewerData

SLIDE_ID = r"([A-Za-z0-9_.-]+)"
TILE_THREADS = 4


class _ViewerHandler(RequestHandler):
    def initialize(self, data: ViewerData, executor: ThreadPoolExecutor) -> None:
        self.data = data
        self.executor = executor

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """One plain-text line: the status, or the problem with the file (never a traceback)."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        problem = error.log_message % error.args if isinstance(error, HTTPError) and error.log_message else None
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {problem or self._reason}\n")

    async def off_loop(self, function: Any, *args: Any) -> Any:
        """``function(*args)`` in a worker thread; a slide or file problem becomes a one-line 500."""
        try:
            return await IOLoop.current().run_in_executor(self.executor, function, *args)
        except (SlideError, InputFileError) as exc:
            raise HTTPError(500, "%s", " ".join(str(exc).split())) from None

    def send_json(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value, allow_nan=False, default=str))


class SlideListHandler(_ViewerHandler):
    def get(self) -> None:
        self.send_json(self.data.catalog.summaries())


class SlideInfoHandler(_ViewerHandler):
    async def get(self, slide_id: str) -> None:
        info = await self.off_loop(self.data.describe, slide_id)
        if info is None:
            raise HTTPError(404)
        self.send_json(info)


class TileHandler(_ViewerHandler):
    async def get(self, slide_id: str, zoom: str, col: str, row: str) -> None:
        entry = self.data.entry(slide_id)
        if entry is None or entry.slide is None:
            raise HTTPError(404)
        tile = await self.off_loop(self.data.tiles.tile, slide_id, int(zoom), int(col), int(row))
        if tile is None:
            raise HTTPError(404)
        self.set_header("Content-Type", "image/jpeg")
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(tile)


class OverlayHandler(_ViewerHandler):
    async def get(self, slide_id: str) -> None:
        overlay = await self.off_loop(self.data.overlay, slide_id)
        if overlay is None:
            raise HTTPError(404)
        self.set_header("Content-Type", "image/png")
        self.finish(overlay.png())


class RegionsHandler(_ViewerHandler):
    async def get(self, slide_id: str) -> None:
        regions = await self.off_loop(self.data.regions_geojson, slide_id)
        if regions is None:
            raise HTTPError(404)
        self.send_json(regions)


def api_routes(data: ViewerData, executor: ThreadPoolExecutor) -> list[tuple[str, type, dict[str, Any]]]:
    """The tornado routes of the endpoints above (for bokeh's ``extra_patterns``)."""
    args = {"data": data, "executor": executor}
    return [
        (r"/api/slides/?", SlideListHandler, args),
        (rf"/api/slides/{SLIDE_ID}/?", SlideInfoHandler, args),
        (rf"/api/slides/{SLIDE_ID}/tiles/(\d{{1,2}})/(\d{{1,9}})_(\d{{1,9}})\.jpeg", TileHandler, args),
        (rf"/api/slides/{SLIDE_ID}/overlay\.png", OverlayHandler, args),
        (rf"/api/slides/{SLIDE_ID}/regions\.geojson", RegionsHandler, args),
    ]
