"""One writer per output: an exclusive lock on a sidecar file `<out>.lock`, taken before anything of the
output (its .partial, its resumable state, its preview) is opened, created or truncated.

The lock is `fcntl.flock` on `<out>.lock` (opened with O_CREAT, never truncating anything else), so it
is released by the kernel when the process dies, however it dies. The holder writes its pid into the
lock file; a second writer is refused at once with one line naming it. Within one process the lock is
re-entrant (an import takes it for the whole job and its StoreWriter takes it again).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError
from .paths import lock_path

_HELD: dict[str, list[int]] = {}  # lock path -> [fd, depth]
_TRIES, _PAUSE = 5, 0.05  # a reader's brief probe (see holder) must not refuse a writer


def _key(path: Path) -> str:
    return str(path.parent.resolve() / path.name)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def busy_message(out: str | Path, pid: int | None) -> str:
    who = f" (pid {pid})" if pid else ""
    return f"{out} is being written by another synthkit process{who}: wait for it, or stop it"


def acquire(out: str | Path) -> None:
    """Take the writer lock of `out`, or raise UserError naming the process that holds it."""
    out = Path(out)
    path = lock_path(out)
    key = _key(path)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err} ({path})") from None
    os.close(fd)
    for _attempt in range(1000):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        for _ in range(_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                time.sleep(_PAUSE)
        else:
            pid = _read_pid(fd)
            os.close(fd)
            raise UserError(busy_message(out, pid))
        # the holder before us may have removed the file after we opened it: then our lock is on an
        # orphan inode and a third process could lock the new file; start again on the file that is there
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[key] = [fd, 1]


def release(out: str | Path) -> None:
    """Give back one level of the lock of `out`; the last one removes the lock file."""
    path = lock_path(out)
    key = _key(path)
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[key]
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # while still locked: see the inode check in acquire
    os.close(entry[0])


@contextlib.contextmanager
def writer_lock(out: str | Path) -> Iterator[None]:
    """`with writer_lock(out):` the block runs as the only synthkit writer of `out`."""
    acquire(out)
    try:
        yield
    finally:
        release(out)


def holder(out: str | Path) -> int | None:
    """The pid writing `out` now (0 when the pid is unknown), or None when no synthkit process writes it.

    Probes with a shared lock, released at once: a writer starting in that instant retries (see acquire)."""
    path = lock_path(out)
    if _key(path) in _HELD:
        return os.getpid()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
