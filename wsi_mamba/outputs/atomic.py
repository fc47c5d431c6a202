"""Atomic file writers: a result file either holds complete content or does not exist.

Every writer goes through :func:`atomic_path`: the content is written to a temporary file in a private folder
created exclusively beside the target (``<name>.tmp-<pid>-<random>/<name>``: same file system, so the final
rename never crosses one; never a guessable name that someone may have planted), flushed to disk, moved beside
the target as ``<name>.tmp-<pid>`` by a rename (which replaces a planted entry, never writes through it) and
renamed onto the target with :func:`os.replace` only when writing finished without an error. A crash leaves
at most a ``<name>.tmp-<pid>-<random>`` folder or a ``<name>.tmp-<pid>`` file (removed on exceptions, and by
:func:`remove_stale_temporaries` once its process is gone), never a truncated result under the final name,
and an existing result is replaced in one step only by a complete new one. So "the output file exists" is a
safe "already done" test for resumable batch runs. An existing target that is not a regular file (a FIFO, a
device, a socket, a folder, or a link to one) is refused before anything is written; an ``OSError`` while
writing names the target.

The parent folder must exist. Two writers of the same target inside one process at the same time are not
supported (they would share the ``<name>.tmp-<pid>`` step).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TEMP_MARKER",
    "atomic_folder",
    "atomic_path",
    "check_not_inputs",
    "check_regular_output",
    "copy_file",
    "json_safe",
    "remove_stale_temporaries",
    "replace_folder",
    "temp_owner",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

TEMP_MARKER = ".tmp-"
"""What temporary names carry between the target's name and the process id (``x.json.tmp-1234-k3j9x0aq``)."""

_TEMP_NAME = re.compile(r"(?P<final>.+)\.tmp-(?P<pid>[0-9]{1,10})(?:-[a-z0-9_]{8})?")
"""Our temporary names, exactly: ``<final>.tmp-<pid>`` (earlier versions) or ``<final>.tmp-<pid>-<8 random>``
(:func:`tempfile.mkdtemp`'s characters)."""


def _read_umask() -> int:
    """The process's umask. ``os.umask`` can only set it (returning the old one), so it is set to 0o077 for
    the instant of the read and put back: a file or folder another thread creates in that instant comes out
    more private than asked, never more open. Called once, when this module is imported (before any command
    starts its threads), on every platform."""
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK
"""Mode of every result file: what ``open()`` would give. Some writers (safetensors, ``mkstemp``) create their
files private (0600); results are then renamed into place with this mode, readable as any other output."""
DIR_MODE = 0o777 & ~_UMASK
"""Mode of every result folder (what ``mkdir`` would give): a folder built in a private temporary gets it."""


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


_WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS") if hasattr(errno, name)
)
"""Errors of writing (a full disk, a quota, a read-only file system): they concern the file being written."""


def _name_target(exc: OSError, target: Path, *others: str | PathLike[str] | None) -> None:
    """Make ``exc`` name ``target`` (what the user asked for) when it names nothing, one of ``others`` (our
    temporary, or a copy's source), or is a write error: the CLI prints ``error: <filename>: <strerror>``."""
    if exc.errno is None:  # an error with a message of its own (``OSError("text")``): it says what it means
        return
    named = {os.fspath(p) for p in others if p is not None}
    if exc.filename is None or os.fspath(exc.filename) in named or exc.errno in _WRITE_ERRNOS:
        exc.filename, exc.filename2 = os.fspath(target), None


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def check_regular_output(path: str | PathLike[str], folder: bool = False) -> None:
    """Refuse (``ValueError``, one line) an output ``path`` that exists and is not a regular file (a FIFO, a
    character or block device, a socket, a folder, or a link to one of them): writing would replace a node
    that no command of ours created. ``folder``: the output is a folder, so an existing folder is fine."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # missing, or a dangling link: the rename replaces the link itself
    except OSError as exc:
        raise ValueError(f"{path}: cannot be examined ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISREG(mode) or (folder and stat.S_ISDIR(mode)):
        return
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise ValueError(f"{path}: exists and is {kind}, not a regular file: refusing to replace it (nothing was changed)")


def _private_folder(target: Path) -> Path:
    """A new empty folder ``<target name>.tmp-<pid>-<random>`` beside ``target``, created exclusively (mode
    0700): nothing planted can be in it or be it."""
    return Path(tempfile.mkdtemp(prefix=f"{target.name}{TEMP_MARKER}{os.getpid()}-", dir=target.parent))


@contextlib.contextmanager
def atomic_path(path: str | PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; it becomes ``path`` when the block exits cleanly.

    The temporary path lies in a private folder created exclusively beside ``path`` (see the module docs). On a
    clean exit the file is fsynced, moved beside ``path`` as ``<name>.tmp-<pid>`` (a rename: whatever was
    planted under that name is replaced, never written through) and renamed onto ``path`` with
    :func:`os.replace` (atomic on POSIX and Windows, replacing an existing file). On an exception the temporary
    files are removed, ``path`` is left as it was, and the exception propagates (an ``OSError`` naming
    ``path``). An existing ``path`` that is not a regular file is refused first (:func:`check_regular_output`).

    >>> with atomic_path("scores.csv") as tmp:          # doctest: +SKIP
    ...     frame.to_csv(tmp)
    """
    target = Path(path)
    check_regular_output(target)
    box = _private_folder(target)
    tmp = box / target.name
    staged = target.with_name(f"{target.name}{TEMP_MARKER}{os.getpid()}")
    moved = False
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {target}: nothing was written to {tmp}")
        if tmp.is_symlink() or not tmp.is_file():
            raise ValueError(f"{target}: the writer left something other than a file at {tmp}")
        _fsync(tmp)
        os.chmod(tmp, FILE_MODE)
        (os.rename if os.name == "posix" else os.replace)(tmp, staged)  # POSIX rename replaces a planted entry
        moved = True
        os.replace(staged, target)
    except BaseException as exc:
        if moved:  # ours, moved there: not left behind
            with contextlib.suppress(OSError):
                os.unlink(staged)
        if isinstance(exc, OSError):
            _name_target(exc, target, tmp, staged)
        raise
    finally:
        shutil.rmtree(box, ignore_errors=True)


def copy_file(source: str | PathLike[str], target: str | PathLike[str]) -> Path:
    """Copy ``source``'s bytes to ``target`` (inside a folder being built, e.g. :func:`atomic_folder`'s); an
    ``OSError`` of writing (a full disk) names ``target``, not the source the copy reads. Returns ``target``."""
    target = Path(target)
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            _name_target(exc, target, source)
        raise
    return target


def check_not_inputs(
    outputs: Iterable[str | PathLike[str]], inputs: Iterable[str | PathLike[str] | None], option: str = "--out"
) -> None:
    """Refuse (``ValueError``, one line naming both) when a file the command will write is a file it reads:
    the same file by :func:`os.stat` identity (a link or another spelling of the path included). Call it before
    anything is written. Costs one ``stat`` per existing output, and one per input only when an output exists."""
    existing: dict[tuple[int, int], Path] = {}
    for out in outputs:
        with contextlib.suppress(OSError):
            info = os.stat(out)
            existing[(info.st_dev, info.st_ino)] = Path(out)
    if not existing:
        return
    for item in inputs:
        if item is None:
            continue
        try:
            info = os.stat(item)
        except OSError:
            continue
        out = existing.get((info.st_dev, info.st_ino))
        if out is not None and stat.S_ISREG(info.st_mode):
            raise ValueError(
                f"{out}: is an input of this command ({item}) and would be overwritten: choose another {option} "
                "(nothing was changed)"
            )


def temp_owner(name: str) -> tuple[str, int] | None:
    """``(final name, pid)`` when ``name`` is exactly one of our temporary names (``<final>.tmp-<pid>`` or
    ``<final>.tmp-<pid>-<8 random>``), None otherwise (``x.tmp-1.tif`` is not one)."""
    match = _TEMP_NAME.fullmatch(name)
    return (match["final"], int(match["pid"])) if match else None


def remove_stale_temporaries(
    folder: str | PathLike[str], finals: Callable[[str], bool] | None = None, locked: bool = False
) -> list[Path]:
    """Remove from ``folder`` (not recursively) the temporaries that our killed processes left: names exactly
    ours (:func:`temp_owner`) whose process no longer runs on this host and, with ``finals``, whose final name
    it accepts. A live process's temporaries and anything else (a user's ``notes.tmp-3.txt``) stay; ``locked``
    (the caller holds the lock of every such final name, so no live writer can own one) removes them whatever
    their PID. Links are removed, never followed. Returns what was removed."""
    from .lock import pid_alive

    removed = []
    try:
        items = list(os.scandir(folder))
    except OSError:
        return removed
    for item in items:
        owner = temp_owner(item.name)
        if owner is None or (finals is not None and not finals(owner[0])):
            continue
        if not locked and (owner[1] == os.getpid() or pid_alive(owner[1])):
            continue
        with contextlib.suppress(OSError):
            if item.is_dir(follow_symlinks=False):
                shutil.rmtree(item.path)
            else:
                os.unlink(item.path)
            removed.append(Path(item.path))
    return removed


def replace_folder(new: str | PathLike[str], target: str | PathLike[str]) -> None:
    """Put the complete folder ``new`` at ``target``, keeping a previous ``target`` until ``new`` is in place.

    The previous folder is renamed aside (into a private folder ``<name>.old.tmp-<pid>-<random>``), ``new``
    renamed onto ``target``, and only then is the previous one deleted; if the second rename fails the previous
    folder is put back. Both folders must be siblings (same file system)."""
    new, target = Path(new), Path(target)
    aside = None
    if target.exists() or target.is_symlink():
        aside = _private_folder(target.with_name(f"{target.name}.old"))
        os.rename(target, aside / target.name)
    try:
        os.rename(new, target)
    except BaseException:
        if aside is not None and not target.exists():
            os.rename(aside / target.name, target)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | PathLike[str], temp: str | PathLike[str] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block exits cleanly it replaces ``path`` by
    :func:`replace_folder` (the previous folder stays until the new one is in place). On an exception the
    temporary folder is removed and ``path`` is left as it was. By default the folder is
    ``<name>.tmp-<pid>-<random>``, created exclusively; a ``temp`` name is for writers under the output's lock
    only (whatever is there is removed first, a link without following it). Hold the output's lock
    (:func:`wsi_mamba.outputs.lock.output_lock`) around it when other processes may write the same path. An
    existing ``path`` that is neither a folder nor a regular file is refused first."""
    target = Path(path)
    check_regular_output(target, folder=True)
    if temp is None:
        tmp = _private_folder(target)
        os.chmod(tmp, DIR_MODE)
    else:
        tmp = Path(temp)
        if tmp.is_symlink() or tmp.is_file():
            tmp.unlink()
        elif tmp.exists():  # a left-over of an earlier writer under the same lock
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_folder(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None:  # the final name
            with contextlib.suppress(ValueError):
                exc.filename = os.fspath(target / Path(os.fspath(exc.filename)).relative_to(tmp))
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
