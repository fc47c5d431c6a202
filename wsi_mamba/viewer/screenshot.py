"""A picture of a viewer page taken by a headless Chromium (the browser check of the tests and the README's
screenshot, ``docs/figures/make_viewer_screenshot.py``).

The page draws after its websocket session opens, which Chromium's one-shot ``--screenshot`` does not wait for;
so the browser is driven over the DevTools protocol (tornado's websocket client): load the page, wait until
BokehJS has rendered the document, let the tiles arrive, capture.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ..outputs.atomic import atomic_path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1400, 860)
SETTLE_S = 4.0
RENDERED = "window.Bokeh !== undefined && Bokeh.documents.length > 0 && Bokeh.documents[0].roots().length > 0"


def find_chromium() -> str | None:
    """The first Chromium-family browser on PATH, or None."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


class _DevTools:
    """A DevTools-protocol connection to one page: :meth:`call` sends a command and returns its result."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        await self.connection.write_message(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = await self.connection.read_message()
            if message is None:
                raise RuntimeError("the browser closed the DevTools connection")
            reply = json.loads(message)
            if reply.get("id") == number:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})


async def _capture(page_ws: str, url: str, window: tuple[int, int], timeout_s: float, settle_s: float) -> bytes:
    from tornado.websocket import websocket_connect

    connection = await websocket_connect(page_ws, max_message_size=256 << 20)
    try:
        tools = _DevTools(connection)
        await tools.call("Emulation.setDeviceMetricsOverride", width=window[0], height=window[1],
                         deviceScaleFactor=1, mobile=False)
        await tools.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while True:
            done = await tools.call("Runtime.evaluate", expression=RENDERED, returnByValue=True)
            if done.get("result", {}).get("value") is True:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: the page did not render within {timeout_s:g} s")
            await asyncio.sleep(0.2)
        await asyncio.sleep(settle_s)  # the tiles and overlay images load after the first render
        shot = await tools.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])
    finally:
        connection.close()


def _devtools_port(process: subprocess.Popen, timeout_s: float) -> int:
    """The port a browser started with ``--remote-debugging-port=0`` announces on stderr."""
    deadline = time.monotonic() + timeout_s
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if found:
            return int(found.group(1))
    raise RuntimeError("the browser did not open its DevTools port")


def browser_screenshot(
    url: str,
    out: str | Path,
    window: tuple[int, int] = WINDOW,
    browser: str | None = None,
    timeout_s: float = 90.0,
    settle_s: float = SETTLE_S,
) -> Path:
    """Load ``url`` in headless Chromium, wait until the bokeh page has rendered and ``settle_s`` more, save a
    PNG of the ``window`` (w, h) at ``out``. ``FileNotFoundError`` without a browser, ``RuntimeError`` when the
    page does not render in ``timeout_s``."""
    import urllib.request

    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(BROWSERS)})")
    # Chromium's helper processes may still write to the profile for a moment after the browser exits
    with tempfile.TemporaryDirectory(prefix="wsi-mamba-chromium-", ignore_cleanup_errors=True) as profile:
        command = [
            browser, "--headless=new", "--no-sandbox",  # --no-sandbox: root in containers; the page is our own
            "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", "about:blank",
        ]  # fmt: skip
        process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        try:
            port = _devtools_port(process, timeout_s)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout_s) as reply:
                pages = [t for t in json.load(reply) if t.get("type") == "page"]
            png = asyncio.run(_capture(pages[0]["webSocketDebuggerUrl"], url, window, timeout_s, settle_s))
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(png)
    return out
