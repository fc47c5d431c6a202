"""Progress that a person and a log can read, for ``predict``, ``extract`` and ``cohort``.

On a terminal: a tqdm bar redrawn in place at most :data:`BAR_REFRESH_S` apart. On anything else (a log file,
``nohup``, a cluster job, CI): one plain line at most every ``interval`` seconds (default
:data:`DEFAULT_INTERVAL_S`, or :data:`INTERVAL_ENV` in the environment) with the units done / total, the rate
and the estimated time left, and always a final line with the total and the elapsed time::

    predict: 1200/4800 tiles (25%), 40.1 tiles/s, 30.0s elapsed, ETA 1m30s [slide 1/2 tumor_001]
    predict: 4800/4800 tiles in 2m00s (40.0 tiles/s)

The total may grow while the work runs (each slide's tiles are known once its grid is cut): the estimate is
for the units known so far.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

INTERVAL_ENV = "WSI_MAMBA_PROGRESS_INTERVAL"
"""Seconds between progress lines on a non-terminal stderr (a positive number; tests set it small)."""
DEFAULT_INTERVAL_S = 30.0
BAR_REFRESH_S = 0.1  # a terminal bar is redrawn at most 10 times a second


def progress_interval(interval: float | None = None) -> float:
    """``interval`` if given, else :data:`INTERVAL_ENV` when it holds a positive number, else the default."""
    if interval is not None:
        return interval
    try:
        value = float(os.environ.get(INTERVAL_ENV, ""))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    """``4.2s``, ``3m05s`` or ``2h07m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def format_rate(done: float, seconds: float, unit: str) -> str:
    """``40.1 tiles/s``, or ``12.5 s/slide`` when under one unit a second."""
    rate = done / seconds if seconds > 0 else 0.0
    if rate >= 1 or rate == 0:
        return f"{rate:.1f} {unit}s/s"
    return f"{1 / rate:.1f} s/{unit}"


class Progress:
    """Counts units (tiles, slides) towards a total; see the module docstring for what it shows.

    ``update(n)`` after each batch, ``add_total(n)`` when more work becomes known, ``note`` names the current
    item; use as a context manager (the final line is written on exit). ``enabled=False`` shows nothing."""

    def __init__(
        self,
        desc: str,
        unit: str = "tile",
        total: int = 0,
        stream: TextIO | None = None,
        interval: float | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.unit, self.total, self.done, self.note = desc, unit, total, 0, ""
        self.stream = stream if stream is not None else sys.stderr
        self.interval = progress_interval(interval)
        self.enabled = enabled
        self.clock = clock
        self.started = self.last_line = clock()
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, desc=desc, unit=unit, file=self.stream, mininterval=BAR_REFRESH_S)

    def add_total(self, n: int) -> None:
        """``n`` more units to do."""
        self.total += n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def set_note(self, note: str) -> None:
        """Name the item being worked on (a slide) in the bar or the next line."""
        self.note = note
        if self.bar is not None:
            self.bar.set_postfix_str(note)

    def update(self, n: int = 1) -> None:
        """``n`` more units done; a plain line when ``interval`` has passed since the last one."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.clock() - self.last_line >= self.interval:
            self.last_line = self.clock()
            self._write(self.line())

    def clear(self) -> None:
        """Take the terminal bar off the screen before other output (a line of results); no-op in a log."""
        if self.bar is not None:
            self.bar.clear()

    def line(self) -> str:
        """The progress line: done / total, percentage, rate, elapsed, estimated time left, the note."""
        elapsed = self.clock() - self.started
        counted = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.desc}: {counted} {self.unit}s{percent}", format_rate(self.done, elapsed, self.unit)]
        parts.append(f"{format_duration(elapsed)} elapsed")
        if self.total and self.done:
            parts.append(f"ETA {format_duration(max(self.total - self.done, 0) * elapsed / self.done)}")
        return ", ".join(parts) + (f" [{self.note}]" if self.note else "")

    def close(self) -> None:
        """The final line (plain mode, when anything was counted) or the bar left at its final state."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and (self.done or self.total):
            elapsed = self.clock() - self.started
            counted = f"{self.done}/{self.total}" if self.total else f"{self.done}"
            rate = format_rate(self.done, elapsed, self.unit)
            self._write(f"{self.desc}: {counted} {self.unit}s in {format_duration(elapsed)} ({rate})")
        self.enabled = False

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (a closed or odd stream counts as not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
