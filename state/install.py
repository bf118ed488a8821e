"""Validate + install: the one step the CLI and the Celery upload task both call.

``install_archive`` verifies a signed archive against the trusted keys, extracts it
safely into ``staging/``, moves the tree into the version store and records the version
in the registry, whose monotonic rule refuses a version that is not newer. A refused
archive is copied to ``quarantine/`` with its reason and the error is re-raised; on any
failure nothing is left in ``staging/`` or ``versions/`` and no registry row exists.

Installs in one state directory are serialised by an ``flock`` on ``staging/``, so one install's
clean-up can never remove a tree another install is about to record.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plugvisor.core.archive import ArchiveLimits, extract_archive, remove_tree
from plugvisor.core.config import Settings
from plugvisor.core.errors import (
    ArchiveError,
    ManifestError,
    PlugvisorError,
    SignatureError,
    StateError,
    VersionError,
)
from plugvisor.core.log import get_logger
from plugvisor.state.layout import StateLayout
from plugvisor.state.quarantine import Quarantine
from plugvisor.state.registry import Registry, VersionRecord, VersionStatus
from plugvisor.state.store import VersionStore
from plugvisor.state.trust import TrustStore

__all__ = ["QUARANTINED_ERRORS", "install_archive"]

#: Refusals that are the archive's fault: the archive is kept in quarantine with the reason.
#: (A locked database or a full disk is not, and quarantining would hide the real cause.)
QUARANTINED_ERRORS: tuple[type[PlugvisorError], ...] = (
    ArchiveError,
    SignatureError,
    ManifestError,
    VersionError,
)

_log = get_logger(__name__)


def install_archive(
    settings: Settings,
    archive_path: Path | str,
    status: VersionStatus = VersionStatus.approved,
    *,
    report: Mapping[str, Any] | None = None,
    lock_timeout: float = 30.0,
) -> VersionRecord:
    """Validate, extract, store and record ``archive_path``; return the new version record.

    Raises the validation error (``archive.*``, ``signature.*``, ``manifest.*``,
    ``version.not_newer``) after quarantining the archive, or ``state.*`` when the state
    directory itself fails (nothing quarantined then).
    """
    archive = Path(archive_path)
    layout = StateLayout(settings.state_dir).ensure()
    quarantine = Quarantine(layout)
    store = VersionStore(layout)
    staged = layout.staging_dir / uuid.uuid4().hex
    log = _log.bind(archive=str(archive))
    with _install_lock(layout, lock_timeout):
        try:
            keys = TrustStore(layout.root).load_all()
            try:
                package = extract_archive(
                    archive, staged, keys, ArchiveLimits.from_settings(settings)
                )
            except QUARANTINED_ERRORS as err:
                where = quarantine.put(archive, err)
                log.warning("install_refused", code=err.code, quarantine=str(where))
                raise
            name, version = package.meta.name, str(package.meta.version)
            store.add(package.path, package.digest, package.manifest)
            with Registry(layout) as registry:
                try:
                    record = registry.add_version(
                        package.meta, package.digest, package.keyid, status, report
                    )
                except BaseException as err:
                    # A tree no row references (this one, or an orphan of a crash) goes.
                    if registry.find_digest(package.digest) is None:
                        store.remove(package.digest)
                    if isinstance(err, QUARANTINED_ERRORS):
                        where = quarantine.put(archive, err)
                        log.warning("install_refused", code=err.code, quarantine=str(where))
                    raise
        finally:
            if os.path.lexists(staged):
                remove_tree(staged)
    log.info("installed", plugin=name, version=version, digest=package.digest, status=record.status)
    return record


@contextmanager
def _install_lock(layout: StateLayout, timeout: float) -> Iterator[None]:
    """Exclusive ``flock`` on the ``staging/`` directory itself, waited for at most ``timeout``.

    Locking the directory leaves no lock file behind in it.
    """
    path = layout.staging_dir
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StateError(
                        "locked",
                        f"another install held {path} for more than {timeout:.0f}s",
                        path=str(path),
                    ) from None
                time.sleep(0.02)  # polling a lock another process holds; bounded above
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
