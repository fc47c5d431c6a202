"""Lock files for outputs: one writer at a time per store, model folder or cohort folder.

A lock is a file ``<name>.lock`` beside the output (the output itself is replaced by a rename, so it cannot
hold its own lock) holding the writer's PID and host as JSON. A second writer fails with one line naming the
holder. Inside one process a lock is re-entrant (a workflow may lock its output and call a writer that locks
it again).

On POSIX the lock file is also held with :func:`fcntl.flock` for as long as the lock is: taking it is atomic
(of several processes that find the same stale lock, exactly one takes it over), and a lock file whose flock
nobody holds is stale when it names no live owner: a process that no longer runs on this host, or no owner
at all (a 0-byte or unreadable lock, e.g. left by a full disk). A lock naming a live process, or another
host, is respected. A lock whose owner cannot be written (a full disk) is removed again, and the error names
the lock file. Without ``fcntl`` (Windows) the lock is created with ``O_EXCL`` and a stale one is moved aside
(not atomic between takers; a 0-byte lock is stale once a minute old).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_SUFFIX", "lock_path", "output_lock", "pid_alive"]

LOCK_SUFFIX = ".lock"
MAX_LOCK_BYTES = 4096  # an owner record is ~100 bytes: a lock file read never costs more
EMPTY_LOCK_STALE_S = 60.0  # without flock: a lock with no owner this old was left by a failed write
_held: dict[Path, tuple[int, int | None]] = {}  # lock file -> (nesting depth, flocked fd), for this process


def lock_path(target: str | PathLike[str]) -> Path:
    """The lock file of output ``target`` (a sibling: ``<name>.lock``)."""
    target = Path(target)
    return target.with_name(target.name + LOCK_SUFFIX)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (True when that cannot be told: never steal a live lock)."""
    try:
        import psutil  # optional: the portable answer, Windows included

        return bool(psutil.pid_exists(pid))
    except ImportError:
        pass
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, it is someone else's
        return True
    return True


def _parse_holder(data: bytes) -> dict:
    """The owner record in a lock file's bytes; ``{}`` when there is none (empty, cut short, not JSON)."""
    try:
        holder = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested deeper than the parser recurses
        return {}
    return holder if isinstance(holder, dict) else {}


def _read_holder(lock: Path) -> dict | None:
    """The owner record of ``lock``; None when the file is gone, ``{}`` when it holds none."""
    from .capped import read_capped_bytes  # a FIFO or device at the lock's name is never read (nor opened blocking)

    try:
        return _parse_holder(read_capped_bytes(lock, MAX_LOCK_BYTES))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # not a regular file, over the cap, unreadable: it names no owner
        return {}


def _live_owner(holder: dict) -> bool:
    """Whether ``holder`` names a writer that may still run: a live process on this host other than this one
    (a lock of this process that it does not hold is a left-over of an earlier process with its PID), or any
    process on another host."""
    pid = holder.get("pid")
    if not holder or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    return pid != os.getpid() and pid_alive(pid)


def _busy(target: Path, lock: Path, holder: dict | None) -> ValueError:
    """The one-line error of a lock held by ``holder``."""
    who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
    return ValueError(
        f"{target}: being written by {who} (lock {lock}); wait for it to finish, or delete the lock if that "
        "process is gone"
    )


def _owner_record(target: Path) -> bytes:
    return (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "output": str(target)}) + "\n").encode()


def _write_owner(fd: int, lock: Path, target: Path) -> None:
    """Replace the content of the open lock ``fd`` by this process's owner record; on an ``OSError`` (a full
    disk) the lock file is removed and the error names it."""
    try:
        os.ftruncate(fd, 0)
        data = _owner_record(target)
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(28, "No space left on device (the lock's owner was cut short)")
    except OSError as exc:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)
        exc.filename, exc.filename2 = str(lock), None
        raise


def _open_flocked(target: Path, lock: Path) -> int:
    """Take ``lock`` with flock (see the module docs); returns the open, locked descriptor."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(20):
        try:
            fd = os.open(lock, flags, 0o644)
        except OSError as exc:
            raise ValueError(f"{lock}: cannot open the lock of {target} ({exc.strerror or exc})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted at the lock's name
            os.close(fd)
            raise ValueError(f"{lock}: the lock of {target} is not a regular file: remove it (nothing was changed)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            os.close(fd)
            raise _busy(target, lock, _read_holder(lock)) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
        except OSError:
            same = False
        if not same:  # its holder released (removed) it between our open and flock: take the new one
            os.close(fd)
            continue
        holder = _parse_holder(os.pread(fd, MAX_LOCK_BYTES, 0))
        if _live_owner(holder):  # written by a writer that does not flock (another host, an older version)
            os.close(fd)
            raise _busy(target, lock, holder)
        _write_owner(fd, lock, target)
        return fd
    raise ValueError(f"{target}: could not take the lock {lock} (other writers keep taking it)")


def _stale_without_flock(lock: Path, holder: dict) -> bool:
    """Without flock: a lock naming a dead process of this host, or no owner and older than a minute."""
    if holder:
        return holder.get("host") == socket.gethostname() and not _live_owner(holder)
    try:
        return time.time() - lock.stat().st_mtime > EMPTY_LOCK_STALE_S
    except OSError:
        return False


def _create_exclusive(target: Path, lock: Path) -> None:
    """Take ``lock`` by ``O_EXCL`` creation (platforms without flock); a stale lock is moved aside first."""
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_holder(lock)
            if holder is None:  # released meanwhile: try again
                continue
            if not _stale_without_flock(lock, holder):
                raise _busy(target, lock, holder) from None
            aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(lock, aside)
                aside.unlink()
            continue
        _write_owner(fd, lock, target)
        os.close(fd)
        return
    raise ValueError(f"{target}: could not take the lock {lock} (other writers keep taking it)")


def _release(lock: Path, fd: int | None) -> None:
    """Remove ``lock`` (while still holding its flock, so no taker sees it free and present) and close ``fd``."""
    with contextlib.suppress(OSError):
        lock.unlink()
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def output_lock(target: str | PathLike[str]) -> Iterator[Path]:
    """Hold the lock of output ``target`` for the block; ``ValueError`` (one line) when another live process
    holds it. The parent folder is created if missing. Yields the lock file."""
    lock = lock_path(Path(target).absolute())
    depth, fd = _held.get(lock, (0, None))
    if depth == 0:
        lock.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            fd = _open_flocked(Path(target), lock)
        else:
            _create_exclusive(Path(target), lock)
    _held[lock] = (depth + 1, fd)
    try:
        yield lock
    finally:
        depth, fd = _held[lock]
        if depth == 1:
            del _held[lock]
            _release(lock, fd)
        else:
            _held[lock] = (depth - 1, fd)
