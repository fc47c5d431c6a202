"""The viewer's server: bokeh's (tornado) serving the page at ``/``, BokehJS from its own package (never a CDN)
and the endpoints of :mod:`.handlers` beside them, on ``127.0.0.1`` unless a host is given."""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ViewerError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5006
INSTALL_HINT = "pip install 'wsi-mamba[viewer]'"


def require_bokeh() -> None:
    """``ViewerError`` (one line, naming the extra to install) when bokeh is not installed."""
    if importlib.util.find_spec("bokeh") is None:
        raise ViewerError(f"view needs bokeh, which is not installed: {INSTALL_HINT}")


def _free_port(host: str) -> int:
    """A port the OS reports free on ``host`` (for ``port=0``: bokeh must know it to allow its websocket)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _origins(host: str, port: int) -> list[str]:
    """The page addresses whose websocket the server accepts: the loopback names, and the given host's."""
    names = {"127.0.0.1", "localhost", host}
    if host in ("0.0.0.0", "::"):  # every interface: the machine's names and addresses
        names |= {socket.gethostname(), socket.getfqdn()}
        try:
            names |= set(socket.gethostbyname_ex(socket.gethostname())[2])
        except OSError:
            pass
    return sorted(f"{name}:{port}" for name in names)


class ViewerServer:
    """A running viewer: ``url``, ``port``; :meth:`stop` closes it. Build with :func:`start_viewer`."""

    def __init__(self, server: Any, data: Any, executor: ThreadPoolExecutor, host: str) -> None:
        self.server = server
        self.data = data
        self.executor = executor
        self.port: int = server.port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"

    def stop(self) -> None:
        """Stop serving and close the slides."""
        self.server.stop()
        self.server.unlisten()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.data.close()


def start_viewer(
    paths: Iterable[str | Path], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, io_loop: Any = None
) -> ViewerServer:
    """Serve the slides and results of ``paths`` on ``host``:``port`` (0: a free port) from ``io_loop`` (default:
    the current one); returns once listening. ``ViewerError`` for nothing to show, bokeh missing or a port in
    use; the server runs while the loop does."""
    require_bokeh()
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server
    from bokeh.settings import settings

    from .catalog import Catalog
    from .handlers import TILE_THREADS, api_routes
    from .page import build_page
    from .service import ViewerData

    catalog = Catalog(paths)
    settings.resources.set_value("server")  # BokehJS from this server's /static, whatever BOKEH_RESOURCES says
    try:
        port = port or _free_port(host)
    except OSError as exc:
        raise ViewerError(f"{host}: cannot listen there ({exc.strerror or exc})") from None
    data = ViewerData(catalog)
    executor = ThreadPoolExecutor(TILE_THREADS, thread_name_prefix="wsi-mamba-view")
    application = Application(FunctionHandler(lambda doc: build_page(doc, data)))
    try:
        server = Server(
            {"/": application},
            address=host,
            port=port,
            io_loop=io_loop,
            allow_websocket_origin=_origins(host, port),
            extra_patterns=api_routes(data, executor),
        )
    except OSError as exc:
        executor.shutdown(wait=False)
        data.close()
        raise ViewerError(f"{host}:{port}: cannot listen there ({exc.strerror or exc}); pick another --port") from None
    server.start()
    return ViewerServer(server, data, executor, host)


def serve_forever(paths: Iterable[str | Path], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """:func:`start_viewer`, print its address, serve until Ctrl-C (which stops it cleanly, returning normally)."""
    import logging

    from tornado.ioloop import IOLoop

    logging.getLogger("tornado.access").setLevel(logging.ERROR)  # not a line per tile the browser asks past an edge
    loop = IOLoop.current()
    viewer = start_viewer(paths, host, port, io_loop=loop)
    count = len(viewer.data.catalog.entries)
    print(f"wsi-mamba view: {count} slide{'s' if count != 1 else ''} at {viewer.url} (Ctrl-C to stop)", flush=True)
    try:
        loop.start()
    except KeyboardInterrupt:  # Ctrl-C is how the viewer is stopped: not an error
        print("wsi-mamba view: stopped", flush=True)
    finally:
        viewer.stop()


@contextmanager
def viewer_in_thread(
    paths: Iterable[str | Path], host: str = DEFAULT_HOST, port: int = 0, timeout_s: float = 60.0
) -> Iterator[ViewerServer]:
    """:func:`start_viewer` on an event loop of its own in a background thread (tests, scripts, notebooks); the
    server is stopped and the thread joined on leaving the ``with`` block. Errors of starting are raised here."""
    import asyncio

    from tornado.ioloop import IOLoop

    started = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        loop = IOLoop.current()
        try:
            state["viewer"] = start_viewer(paths, host, port, io_loop=loop)
        except BaseException as exc:  # handed to the caller's thread
            state["error"] = exc
            return
        finally:
            state["loop"] = loop
            started.set()
        loop.start()
        loop.close(all_fds=False)

    thread = threading.Thread(target=run, name="wsi-mamba-view", daemon=True)
    thread.start()
    if not started.wait(timeout_s):
        raise ViewerError(f"the viewer did not start within {timeout_s:g} s")
    if "error" in state:
        thread.join(timeout_s)
        raise state["error"]
    viewer, loop = state["viewer"], state["loop"]
    try:
        yield viewer
    finally:

        def shut_down() -> None:
            viewer.stop()
            loop.stop()

        loop.add_callback(shut_down)
        thread.join(timeout_s)
