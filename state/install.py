"""Validate + install: the one step the CLI and the Celery upload task both call.

``install_archive`` verifies a signed archive against the trusted keys, extracts it
safely into ``staging/``, moves the tree into the version store and records the version
in the registry, whose monotonic rule refuses a version that is not newer; the archive's
bytes go to the shared artefact store in the same transaction (other hosts of a fleet
fetch and re-verify them, :mod:`plugvisor.state.fetch`). A refused
archive is copied to ``quarantine/`` with its reason and the error is re-raised; on any
failure nothing is left in ``staging/`` or ``versions/`` and no registry row exists.

Installs in one state directory are serialised by an ``flock`` on ``staging/``, so one install's
clean-up can never remove a tree another install is about to record.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plugvisor.core.archive import ArchiveLimits, VerifiedPackage, extract_archive
from plugvisor.core.config import Settings
from plugvisor.core.errors import (
    ArchiveError,
    ManifestError,
    PlugvisorError,
    SignatureError,
    StateError,
    VersionError,
)
from plugvisor.core.fs import remove_tree
from plugvisor.core.log import get_logger
from plugvisor.state.layout import StateLayout
from plugvisor.state.quarantine import Quarantine
from plugvisor.state.registry import Registry, VersionRecord, VersionStatus
from plugvisor.state.staging import install_lock
from plugvisor.state.store import VersionStore
from plugvisor.state.trust import TrustStore

__all__ = [
    "QUARANTINED_ERRORS",
    "install_archive",
    "store_archive",
]

_log = get_logger(__name__)

#: Refusals that are the archive's fault: the archive is kept in quarantine with the reason.
#: (A locked database or a full disk is not, and quarantining would hide the real cause.)
QUARANTINED_ERRORS: tuple[type[PlugvisorError], ...] = (
    ArchiveError,
    SignatureError,
    ManifestError,
    VersionError,
)


def store_archive(
    settings: Settings,
    archive_path: Path | str,
    *,
    lock_timeout: float = 30.0,
) -> VerifiedPackage:
    """Validate and extract ``archive_path`` into the version store; record nothing.

    For callers that register the version elsewhere (a worker asks the daemon, the
    registry's single writer). Refuses early, with ``version.not_newer``, a version the
    registry already outranks (the registry checks again when the version is added).
    The returned package's ``path`` is its tree under ``versions/``.
    """
    layout = StateLayout(settings.state_dir).ensure()
    with install_lock(layout, lock_timeout), Registry.open(settings) as registry:
        return _store(settings, layout, Path(archive_path), registry)


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
    store = VersionStore(layout)
    with install_lock(layout, lock_timeout), Registry.open(settings) as registry:
        package = _store(settings, layout, archive, registry)
        try:
            record = registry.add_version(
                package.meta, package.digest, package.keyid, status, report,
                archive=archive.read_bytes(),
            )  # fmt: skip
        except BaseException as err:
            # A tree no row references (this one, or an orphan of a crash) goes.
            if registry.find_digest(package.digest) is None:
                store.remove(package.digest)
            if isinstance(err, QUARANTINED_ERRORS):
                _quarantine(layout, archive, err)
            raise
    _log.info(
        "installed", archive=str(archive), plugin=record.plugin, version=record.version,
        digest=record.digest, status=record.status.value,
    )  # fmt: skip
    return record


def _store(
    settings: Settings, layout: StateLayout, archive: Path, registry: Registry
) -> VerifiedPackage:
    """Extract into staging, refuse a version the registry outranks, move into the store."""
    staged = layout.staging_dir / uuid.uuid4().hex
    store = VersionStore(layout)
    try:
        keys = TrustStore(layout.root).load_all()
        try:
            package = extract_archive(archive, staged, keys, ArchiveLimits.from_settings(settings))
            registry.check_newer(package.meta.name, str(package.meta.version))
        except QUARANTINED_ERRORS as err:
            _quarantine(layout, archive, err)
            raise
        path = store.add(package.path, package.digest, package.manifest, package.signature)
    finally:
        if os.path.lexists(staged):
            remove_tree(staged)
    return dataclasses.replace(package, path=path)


def _quarantine(layout: StateLayout, archive: Path, err: PlugvisorError) -> None:
    """Keep the refused archive; a failure to do so is logged, never hides ``err``."""
    try:
        where = Quarantine(layout).put(archive, err)
    except StateError as qerr:
        _log.error("quarantine_failed", archive=str(archive), code=err.code, error=str(qerr))
        return
    _log.warning("install_refused", archive=str(archive), code=err.code, quarantine=str(where))
