"""Durable file-system writes: atomic file replacement and directory fsync."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "exchange_paths", "flock_exclusive", "fsync_dir", "remove_tree"]


@contextlib.contextmanager
def flock_exclusive(fd: int, timeout: float, timeout_error: Exception) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``fd``; raise ``timeout_error`` after ``timeout`` s.

    Polls with a growing back-off (1 ms to 50 ms): ``flock`` has no timed wait, and
    another process holds the lock, so there is nothing to wait on but the clock.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise timeout_error from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` via a same-directory temp file, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # before any byte lands, so a private key is never world-readable
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(a: Path, b: Path) -> None:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Both must exist on the same file system. Used to put a whole directory in place of
    another one with no instant at which neither (or half of one) is visible: after the
    call ``a`` holds what ``b`` held and the reverse. OSError (``EINVAL`` on a file
    system without the flag) when the exchange did not happen.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno() or errno.EIO
        raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")
    fsync_dir(Path(a).parent)
    if Path(b).parent != Path(a).parent:
        fsync_dir(Path(b).parent)


def remove_tree(path: Path | str) -> None:
    """Remove a tree made read-only by extraction (chmod back first); absent is fine."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    for root, _dirs, _files in os.walk(path):
        os.chmod(root, 0o700)  # files need no mode change: unlinking is a directory write
    import shutil  # noqa: PLC0415 -- only needed here

    shutil.rmtree(path)
