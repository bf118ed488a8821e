"""Fetch a version this host lacks from the fleet's shared artefact store, trusting nothing.

A fleet records each accepted archive once (:mod:`plugvisor.state.registry.artefacts`).
A daemon asked to run a digest it has no ``versions/<digest>/`` for fetches the bytes and
runs the whole install check on them *here*: signature against this host's trusted
keys, every archive rule, every file against the manifest, and the manifest's hash
against the digest asked for. Only then does the tree enter this host's version store,
so no host trusts another host's extraction, nor the database's bytes. The archive is
data throughout: nothing in it is imported or run.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from plugvisor.core.archive import ArchiveLimits, extract_archive
from plugvisor.core.config import Settings
from plugvisor.core.errors import ArchiveError, PlugvisorError
from plugvisor.core.fs import remove_tree
from plugvisor.core.log import get_logger
from plugvisor.state.install import QUARANTINED_ERRORS
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry
from plugvisor.state.security_log import SecurityLog
from plugvisor.state.staging import install_lock
from plugvisor.state.store import VersionStore
from plugvisor.state.trust import TrustStore

__all__ = ["ensure_version"]

_log = get_logger(__name__)


def ensure_version(
    settings: Settings, registry: Registry, digest: str, *, lock_timeout: float = 30.0
) -> Path:
    """``versions/<digest>/``, fetched and verified from the artefact store when missing.

    Raises ``not_found.artefact`` when no host stored the archive, and the install
    check's own refusal (``archive.*``, ``signature.*``, ``manifest.*``) when the stored
    bytes do not pass it here; ``archive.digest_mismatch`` when they pass but are
    another version's archive. Nothing is left in ``staging/`` or ``versions/`` then.
    """
    layout = StateLayout(settings.state_dir)
    store = VersionStore(layout)
    if store.exists(digest):
        return store.path(digest)
    layout.ensure()
    with install_lock(layout, lock_timeout):
        if store.exists(digest):  # fetched by someone else while we waited
            return store.path(digest)
        data = registry.get_artefact(digest)
        tag = uuid.uuid4().hex
        archive = layout.staging_dir / f"{tag}.fetch.tar.gz"
        staged = layout.staging_dir / tag
        try:
            fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            keys = TrustStore(layout.root).load_all()
            package = extract_archive(archive, staged, keys, ArchiveLimits.from_settings(settings))
            if package.digest != digest:
                raise ArchiveError(
                    "digest_mismatch",
                    f"the stored archive for {digest[:12]} holds {package.meta.name} "
                    f"{package.meta.version} with code digest {package.digest[:12]}",
                    digest=digest, found=package.digest,
                )  # fmt: skip
            path = store.add(package.path, package.digest, package.manifest, package.signature)
        except QUARANTINED_ERRORS as exc:
            # Bytes that fail the check here were altered after another host accepted
            # them (or that host's keys differ from ours): a security event, on record.
            _refused(layout, registry, digest, exc)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                archive.unlink()
            if os.path.lexists(staged):
                remove_tree(staged)
    _log.info("artefact_fetched", digest=digest, bytes=len(data), path=str(path))
    return path


def _refused(layout: StateLayout, registry: Registry, digest: str, exc: PlugvisorError) -> None:
    record = registry.find_digest(digest)
    plugin = record.plugin if record is not None else "?"
    version = record.version if record is not None else None
    _log.warning("artefact_refused", plugin=plugin, version=version, digest=digest,
                 code=exc.code, error=exc.message)  # fmt: skip
    SecurityLog(layout.security_log).record(
        plugin, version, None, f"artefact.{exc.code}",
        f"stored archive for code digest {digest} refused: {exc.message}", "refused",
    )  # fmt: skip
