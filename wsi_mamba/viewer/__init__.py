"""``wsi-mamba view``: a local web viewer of slides and their predict results (bokeh page, tiles made on demand).

It reads results and slides through the public readers only (:mod:`wsi_mamba.slide`, the result files); bokeh
is an optional dependency (``pip install 'wsi-mamba[viewer]'``), imported when the server starts. The slide
list is :class:`.catalog.Catalog`.
"""

from .errors import ViewerError
from .server import DEFAULT_HOST, DEFAULT_PORT, ViewerServer, serve_forever, start_viewer, viewer_in_thread

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ViewerError",
    "ViewerServer",
    "serve_forever",
    "start_viewer",
    "viewer_in_thread",
]
