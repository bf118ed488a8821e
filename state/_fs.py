"""Small file-system helpers shared by the state modules (private)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "remove_tree"]


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Delete a possibly read-only tree (dirs made writable first); never follows symlinks."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        os.unlink(path)
        return
    os.chmod(path, 0o700)
    for dirpath, dirnames, _files in os.walk(path, followlinks=False):
        for name in dirnames:
            sub = Path(dirpath) / name
            if not sub.is_symlink():
                os.chmod(sub, 0o700)
    for dirpath, dirnames, filenames in os.walk(path, topdown=False, followlinks=False):
        for name in filenames:
            os.unlink(Path(dirpath) / name)
        for name in dirnames:
            sub = Path(dirpath) / name
            if sub.is_symlink():
                os.unlink(sub)
            else:
                os.rmdir(sub)
    os.rmdir(path)
