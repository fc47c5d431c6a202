"""Lock files for outputs: one writer at a time per store, model folder or cohort folder.

A lock is a file ``<name>.lock`` beside the output (the output itself is replaced by a rename, so it cannot
hold its own lock), created with ``O_EXCL`` and holding the writer's PID and host as JSON. A second writer
fails with one line naming the holder; a lock left by a process that no longer runs on this host is taken
over. Inside one process a lock is re-entrant (a workflow may lock its output and call a writer that locks
it again).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

__all__ = ["LOCK_SUFFIX", "lock_path", "output_lock"]

LOCK_SUFFIX = ".lock"
_held: dict[Path, int] = {}  # lock file -> nesting depth, for this process


def lock_path(target: str | PathLike[str]) -> Path:
    """The lock file of output ``target`` (a sibling: ``<name>.lock``)."""
    target = Path(target)
    return target.with_name(target.name + LOCK_SUFFIX)


def _pid_alive(pid: int) -> bool:
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
    except PermissionError:  # it exists, it is someone else's
        return True
    except OSError:
        return True
    return True


def _read_holder(lock: Path) -> dict | None:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _stale(holder: dict) -> bool:
    """A lock of a dead process on this host (a lock from another host, or unreadable, is never stale)."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    return pid != os.getpid() and not _pid_alive(pid)


def _acquire(target: Path, lock: Path) -> None:
    content = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "output": str(target)}) + "\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_holder(lock)
            if holder is None:  # released meanwhile: try again
                continue
            if not _stale(holder):
                who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
                raise ValueError(
                    f"{target}: being written by {who} (lock {lock}); wait for it to finish, or delete the lock "
                    "if that process is gone"
                ) from None
            # a dead writer's lock: move it aside (only one taker succeeds), then retry
            aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(lock, aside)
                aside.unlink()
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        return
    raise ValueError(f"{target}: could not take the lock {lock} (other writers keep taking it)")


@contextlib.contextmanager
def output_lock(target: str | PathLike[str]) -> Iterator[Path]:
    """Hold the lock of output ``target`` for the block; ``ValueError`` (one line) when another live process
    holds it. The parent folder is created if missing. Yields the lock file."""
    lock = lock_path(Path(target).absolute())
    depth = _held.get(lock, 0)
    if depth == 0:
        lock.parent.mkdir(parents=True, exist_ok=True)
        _acquire(Path(target), lock)
    _held[lock] = depth + 1
    try:
        yield lock
    finally:
        _held[lock] -= 1
        if _held[lock] == 0:
            del _held[lock]
            with contextlib.suppress(OSError):
                lock.unlink()
