"""Atomic file writers: a result file either holds complete content or does not exist.

Every writer goes through :func:`atomic_path`: the content is written to a temporary file beside the target
(``<name>.tmp-<pid>``, same folder so the final rename never crosses file systems), flushed to disk, and
renamed onto the target with :func:`os.replace` only when writing finished without an error. A crash or an
exception leaves at most a ``*.tmp-<pid>`` file (removed on exceptions), never a truncated result under the
final name, and an existing result is replaced in one step only by a complete new one. So "the output file
exists" is a safe "already done" test for resumable batch runs.

The parent folder must exist. Two writers of the same target inside one process at the same time are not
supported (they would share the temporary name).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TEMP_MARKER",
    "atomic_folder",
    "atomic_path",
    "json_safe",
    "replace_folder",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

TEMP_MARKER = ".tmp-"
"""What temporary names carry between the target's name and the process id (``x.json.tmp-1234``)."""


def _process_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` both sets and returns, racing threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


FILE_MODE = 0o666 & ~_process_umask()
"""Mode of every result file: what ``open()`` would give. Some writers (safetensors, ``mkstemp``) create their
files private (0600); results are then renamed into place with this mode, readable as any other output."""


def _fsync(path: Path) -> None:
    """Best effort: push ``path``'s content to disk (not possible on every platform and file system)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | PathLike[str], fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it becomes ``path`` when the block exits cleanly.

    On a clean exit the temporary file is (optionally) fsynced and renamed onto ``path`` with
    :func:`os.replace` (atomic on POSIX and Windows, replacing an existing file). On an exception the
    temporary file is removed, ``path`` is left as it was, and the exception propagates.

    >>> with atomic_path("scores.csv") as tmp:          # doctest: +SKIP
    ...     frame.to_csv(tmp)
    """
    target = Path(path)
    tmp = target.with_name(f"{target.name}{TEMP_MARKER}{os.getpid()}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {target}: nothing was written to {tmp}")
        if fsync:
            _fsync(tmp)
        if tmp.is_file():
            os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def replace_folder(new: str | PathLike[str], target: str | PathLike[str]) -> None:
    """Put the complete folder ``new`` at ``target``, keeping a previous ``target`` until ``new`` is in place.

    The previous folder is renamed aside (``<name>.old.tmp-<pid>``), ``new`` renamed onto ``target``, and only
    then is the previous one deleted; if the second rename fails the previous folder is put back. Both folders
    must be siblings (same file system)."""
    new, target = Path(new), Path(target)
    old = target.with_name(f"{target.name}.old{TEMP_MARKER}{os.getpid()}")
    moved = False
    if target.exists() or target.is_symlink():
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
        moved = True
    try:
        os.rename(new, target)
    except BaseException:
        if moved and not target.exists():
            os.rename(old, target)
        raise
    if moved:
        if old.is_symlink() or not old.is_dir():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | PathLike[str], temp: str | PathLike[str] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` (``temp``, by default ``<name>.tmp-<pid>``); when the
    block exits cleanly it replaces ``path`` by :func:`replace_folder` (the previous folder stays until the new
    one is in place). On an exception the temporary folder is removed and ``path`` is left as it was. A
    ``temp`` without the pid is for writers under the output's lock only. Hold the output's lock
    (:func:`wsi_mamba.outputs.lock.output_lock`) around it when other processes may write the same path."""
    target = Path(path)
    tmp = Path(temp) if temp is not None else target.with_name(f"{target.name}{TEMP_MARKER}{os.getpid()}")
    if tmp.exists():  # a left-over of an earlier process with our PID
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        # newline="" writes the text's own line endings on every platform.
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)


def _json_default(obj: Any) -> Any:
    """Encode numpy scalars and arrays and paths, which :mod:`json` does not know."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` with every non-finite float (NaN, ±inf) replaced by ``None`` (JSON ``null``).

    Walks dicts, lists, tuples and numpy arrays / scalars; other values are returned unchanged.
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON (indent 2, trailing newline) to ``path`` atomically.

    Strict JSON: NaN and infinities raise ``ValueError`` (``allow_nan=False``) instead of writing tokens
    other readers reject; pass the data through :func:`json_safe` first to write them as ``null``. Numpy
    scalars and arrays and :class:`os.PathLike` values are converted.
    """
    text = json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n"
    write_text_atomic(path, text)


def write_csv_atomic(path: str | PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV file (``header`` then ``rows``, ``\\n`` line endings) to ``path`` atomically.

    ``rows`` may be any iterable (a generator is consumed once); values are written with :mod:`csv`'s
    ``str()`` conversion, so a NaN float appears as ``nan``.
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            if len(row) != len(header):
                raise ValueError(f"CSV row has {len(row)} values, the header {len(header)}: {row!r}")
            writer.writerow(row)
