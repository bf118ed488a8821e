"""The staging area: the install lock, what a crashed install leaves, and its removal.

Every install extracts under ``staging/`` and moves the tree into ``versions/`` while
holding :func:`install_lock`. A crash in between leaves debris there, or a stored tree no
registry row names; :func:`recover_state` (run by the daemon at start) removes both.
Kept apart from :mod:`plugvisor.state.install` so that the daemon, which never unpacks
an archive, does not load the archive code to tidy up.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from plugvisor.core.errors import StateError
from plugvisor.core.fs import flock_exclusive, remove_tree
from plugvisor.core.log import get_logger
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry
from plugvisor.state.store import VersionStore

__all__ = ["INSTALL_DEBRIS", "RecoveryReport", "install_lock", "recover_state"]

_log = get_logger(__name__)

#: Names of what an install creates in staging/: its uuid dir, extract_archive's temp
#: sibling of that dir, VersionStore.remove's trash, and a fetched archive (state/fetch.py).
INSTALL_DEBRIS = re.compile(
    r"^(?:[0-9a-f]{32}|\.[0-9a-f]{32}\..+\.part|\.trash-.+|[0-9a-f]{32}\.fetch\.tar\.gz)$"
)


@contextmanager
def install_lock(layout: StateLayout, timeout: float) -> Iterator[None]:
    """Exclusive ``flock`` on the ``staging/`` directory itself, waited for at most ``timeout``.

    Locking the directory leaves no lock file behind in it.
    """
    path = layout.staging_dir
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        busy = StateError(
            "locked", f"another install held {path} for more than {timeout:.0f}s", path=str(path)
        )
        with flock_exclusive(fd, timeout, busy):
            yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover_state` removed."""

    staging: tuple[Path, ...]
    orphans: tuple[str, ...]


def recover_state(
    layout: StateLayout,
    *,
    database_url: str = "",
    staging_grace_s: float = 300.0,
    orphan_grace_s: float = 3600.0,
    lock_timeout: float = 30.0,
) -> RecoveryReport:
    """Remove what a crash mid-install can leave: ``staging/`` leftovers and orphan trees.

    Run by the daemon at start. Under the install lock no install is running, so an
    install's ``staging/`` entry (a ``<uuid>`` dir, extraction's ``.<uuid>.*.part``, the
    store's ``.trash-*``) older than ``staging_grace_s`` is debris; anything else in
    ``staging/`` (the API's ``uploads/``) is left alone. A tree under ``versions/``
    that no registry row references is removed only when older than ``orphan_grace_s``:
    a worker may have stored it with :func:`store_archive` and be waiting for the
    daemon to record it.
    """
    layout.ensure()
    store = VersionStore(layout)
    removed: list[Path] = []
    orphans: list[str] = []
    with install_lock(layout, lock_timeout), Registry(database_url or layout) as registry:
        now = time.time()
        for entry in sorted(layout.staging_dir.iterdir()):
            # Only what installs leave: other users of staging/ (uploads/) are not ours.
            if not INSTALL_DEBRIS.match(entry.name):
                continue
            if now - os.lstat(entry).st_mtime >= staging_grace_s:
                remove_tree(entry)
                removed.append(entry)
        for digest in store.digests():
            if registry.find_digest(digest) is not None:
                continue
            if now - os.lstat(store.path(digest)).st_ctime < orphan_grace_s:
                continue
            store.remove(digest)
            orphans.append(digest)
    if removed or orphans:
        _log.warning("state_recovered", staging=[str(p) for p in removed], orphans=orphans)
    return RecoveryReport(tuple(removed), tuple(orphans))
