"""Capped reading of metadata files: labels and manifests (CSV), model and store JSON, recipes, annotations.

Every such read goes through :func:`read_capped_bytes`, which opens the file once, refuses what is not a regular
file (a FIFO, ``/dev/zero``, a folder: checked on the open descriptor, so a symlink to a device is refused too,
and nothing is read from it) and anything over its size cap (16 MiB unless the caller says otherwise), before
reading at most ``cap + 1`` bytes. Problems are :class:`InputFileError` (a ``ValueError``: one line naming the
file); a missing file stays :class:`FileNotFoundError`, so callers keep their own wording for it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_METADATA_BYTES",
    "InputFileError",
    "load_json",
    "read_capped_bytes",
    "read_capped_text",
    "read_csv_records",
    "read_csv_rows",
]

MAX_METADATA_BYTES = 16 * 1024 * 1024
"""The default cap of a metadata file (16 MiB: far above any real labels CSV, manifest or model JSON)."""


class InputFileError(ValueError):
    """A metadata file cannot be read as such; the message names the file and the problem."""

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def _size_text(limit: int) -> str:
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit:,} bytes"


def read_capped_bytes(path: str | PathLike[str], limit: int = MAX_METADATA_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; :class:`InputFileError` for a file
    that is not regular (never read), larger than ``limit``, or unreadable; ``FileNotFoundError`` when missing."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InputFileError(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _kind(info.st_mode)
            raise InputFileError(path, f"cannot be read: it is {kind}, not a regular file (nothing was read)")
        if info.st_size > limit:
            raise _too_big(path, limit)
        chunks, size = [], 0
        while size <= limit:  # a file growing while read still stops one byte past the cap
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InputFileError(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(fd)
    if size > limit:
        raise _too_big(path, limit)
    return b"".join(chunks)


def _too_big(path: str | PathLike[str], limit: int) -> InputFileError:
    return InputFileError(path, f"larger than the {_size_text(limit)} limit of this kind of file (not read)")


def read_capped_text(
    path: str | PathLike[str], limit: int = MAX_METADATA_BYTES, encoding: str = "utf-8", errors: str = "strict"
) -> str:
    """:func:`read_capped_bytes` decoded; ``UnicodeDecodeError`` (a ``ValueError``) propagates for callers'
    own wording."""
    return read_capped_bytes(path, limit).decode(encoding, errors)


def load_json(text: str | bytes, path: str | PathLike[str]) -> Any:
    """``json.loads(text)``; :class:`InputFileError` naming ``path`` for invalid or too deeply nested JSON
    (Python's parser recurses: ``[[[…`` 200,000 deep is a ``RecursionError``, caught here)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InputFileError(path, "not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError of bytes
        raise InputFileError(path, f"not valid JSON ({exc})") from None


def _csv_error(path: str | PathLike[str], reader: Any, exc: csv.Error) -> InputFileError:
    return InputFileError(path, f"line {reader.line_num}: not readable as CSV ({exc})")


def _csv_stream(path: str | PathLike[str], limit: int, encoding: str, errors: str) -> io.StringIO:
    return io.StringIO(read_capped_text(path, limit, encoding, errors), newline="")


def read_csv_rows(
    path: str | PathLike[str], limit: int = MAX_METADATA_BYTES, encoding: str = "utf-8-sig", errors: str = "strict"
) -> list[tuple[int, list[str]]]:
    """The rows of a CSV file, each with the line it ends on; capped as :func:`read_capped_bytes`, and a
    malformed row (a field over ``csv.field_size_limit()``, 128 KiB) is :class:`InputFileError` naming the line."""
    reader = csv.reader(_csv_stream(path, limit, encoding, errors))
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise _csv_error(path, reader, exc) from None


def read_csv_records(
    path: str | PathLike[str], limit: int = MAX_METADATA_BYTES, encoding: str = "utf-8-sig", errors: str = "strict"
) -> tuple[list[str], list[tuple[int, dict[str | None, Any]]]]:
    """A CSV file with a header as ``csv.DictReader`` reads it: (field names, [(line, row dict)]); capped and
    checked as :func:`read_csv_rows`."""
    reader = csv.DictReader(_csv_stream(path, limit, encoding, errors))
    try:
        fields = list(reader.fieldnames or [])
        return fields, [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise _csv_error(path, reader.reader, exc) from None


def is_regular_file(path: str | PathLike[str]) -> bool:
    """True when ``path`` exists and is (or links to) a regular file."""
    try:
        return stat.S_ISREG(Path(path).stat().st_mode)
    except OSError:
        return False
