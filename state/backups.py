"""Snapshots of a plugin's active version (code reference + data) and their restore.

A snapshot is ``backups/NAME/VERSION/``::

    manifest.json        {format, plugin, version, code: {digest, keyid, status, meta},
                          job_id, created, files: [{path, sha256, size}]}
    data/files/...       a copy of the plugin's data_dir (owners and modes kept)
    data/db.sqlite       the plugin's ctx.db, copied with SQLite's online backup API

The code itself is not copied: versions are content-addressed and immutable, so the
digest (re-verified against the stored tree and its signature at rollback) is the
reference. The DB goes through ``sqlite3.Connection.backup`` because the daemon's hosts
may be writing it (WAL): a file copy could catch a torn page or miss the WAL.

Atomicity: the snapshot is built in ``backups/NAME/.tmp-<job>-<rand>/`` (dot names are
never a backup), every file and directory fsynced, then put in place with one
``rename`` -- or, when a backup of that version already exists, one
``renameat2(RENAME_EXCHANGE)`` followed by removing the old tree. A killed snapshot
leaves only a dot directory, removed by the next snapshot of the plugin. Re-running for
the same job finds ``manifest.json`` naming its job id and does nothing.

Restore (rollback): :func:`stage_restore` builds ``data/.restore-NAME-<job>/`` (same
file system as ``data/NAME/``) holding ``files/``, ``db.sqlite`` and a ``RESTORE_ID``
written last; the daemon's ``rollback`` command with ``restore_from`` exchanges it with
``data/NAME/`` while no host of the plugin runs (see :mod:`plugvisor.daemon.swap`).

This module is the one owner of ``backups/``: workers write snapshots and stage restores
through it, the daemon reads :data:`RESTORE_ID` from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugvisor.core.errors import NotFoundError, StateError
from plugvisor.core.fs import exchange_paths, fsync_dir, remove_tree
from plugvisor.core.log import get_logger
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry

if TYPE_CHECKING:
    from plugvisor.core.config import Settings

__all__ = [
    "MANIFEST",
    "RESTORE_ID",
    "Backup",
    "apply_retention",
    "copy_sqlite",
    "copy_tree",
    "list_backups",
    "read_backup",
    "read_restore_id",
    "restore_stage_path",
    "snapshot_active",
    "stage_restore",
    "verify_backup",
]

_log = get_logger(__name__)

MANIFEST = "manifest.json"
#: Written last into a staged restore; the daemon compares it to tell "already applied".
RESTORE_ID = "RESTORE_ID"
_FORMAT = 1
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Backup:
    """One complete snapshot on disk, as its manifest describes it."""

    plugin: str
    version: str
    path: Path
    digest: str
    keyid: str
    job_id: str
    created: str
    files: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "version": self.version,
            "path": str(self.path),
            "digest": self.digest,
            "keyid": self.keyid,
            "job_id": self.job_id,
            "created": self.created,
            "files": len(self.files),
        }


# ---- copying ---------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_sqlite(src: Path, dst: Path, timeout: float = 30.0) -> None:
    """Copy a live SQLite DB with the online backup API into a new single-file ``dst``.

    A consistent image of the last committed transaction even while another process
    writes (WAL or not); ``dst`` ends in rollback-journal mode, one self-contained file.
    """
    # mode=ro: never create the source, never write to it.
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=timeout)
    try:
        target = sqlite3.connect(dst, timeout=timeout)
        try:
            source.backup(target, pages=1024)
            target.execute("PRAGMA journal_mode=DELETE")
            target.commit()
        finally:
            target.close()
    finally:
        source.close()
    _fsync_file(dst)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a data directory: regular files and directories only, owners and modes kept.

    Symlinks and special files are skipped: the sandbox cannot create them in data_dir,
    and following one would copy something outside the plugin's data.
    """
    st = src.lstat()
    dst.mkdir(mode=0o700)
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            copy_tree(path, dst / entry.name)
        elif entry.is_file(follow_symlinks=False):
            target = dst / entry.name
            shutil.copyfile(path, target, follow_symlinks=False)
            fst = entry.stat(follow_symlinks=False)
            os.chown(target, fst.st_uid, fst.st_gid)
            os.chmod(target, fst.st_mode & 0o7777)
            _fsync_file(target)
        else:
            _log.warning("snapshot.skipped_entry", path=str(path), reason="not a regular file")
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, st.st_mode & 0o7777)
    fsync_dir(dst)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, _files in os.walk(root):
        fsync_dir(Path(dirpath))


def _manifest_files(root: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        out.append({"path": rel, "sha256": _sha256(path), "size": path.stat().st_size})
    return out


# ---- snapshots -------------------------------------------------------------------------------


def _clean_debris(plugin_dir: Path, job_id: str, max_age_s: float) -> None:
    """Remove temp trees of earlier (killed) attempts: this job's, and anyone's stale ones."""
    if not plugin_dir.is_dir():
        return
    now = time.time()
    for entry in plugin_dir.iterdir():
        if not entry.name.startswith((".tmp-", ".old-")):
            continue
        ours = entry.name.startswith((f".tmp-{job_id}-", f".old-{job_id}-"))
        try:
            stale = now - entry.lstat().st_mtime > max_age_s
        except FileNotFoundError:
            continue
        if ours or stale:
            remove_tree(entry)


def read_backup(path: Path) -> Backup:
    """The backup at ``path`` from its manifest; ``NotFoundError("backup")`` if incomplete."""
    try:
        data = json.loads((path / MANIFEST).read_bytes())
    except (OSError, ValueError) as exc:
        raise NotFoundError(
            "backup", f"no complete backup at {path} ({MANIFEST}: {exc})", path=str(path)
        ) from exc
    code = data.get("code") or {}
    return Backup(
        plugin=str(data.get("plugin")),
        version=str(data.get("version")),
        path=path,
        digest=str(code.get("digest")),
        keyid=str(code.get("keyid")),
        job_id=str(data.get("job_id")),
        created=str(data.get("created")),
        files=tuple(data.get("files") or ()),
    )


def verify_backup(path: Path) -> list[str]:
    """Every difference between the backup's files and its manifest; ``[]`` = intact."""
    try:
        backup = read_backup(path)
    except NotFoundError as exc:
        return [exc.message]
    problems = []
    listed = set()
    for entry in backup.files:
        rel = str(entry.get("path"))
        listed.add(rel)
        file = path / rel
        if not file.is_file():
            problems.append(f"{rel}: missing")
        elif _sha256(file) != entry.get("sha256"):
            problems.append(f"{rel}: sha256 differs from the manifest")
    for extra in _manifest_files(path):
        if extra["path"] not in listed:
            problems.append(f"{extra['path']}: not in the manifest")
    return problems


def list_backups(layout: StateLayout, name: str) -> list[Backup]:
    """Complete backups of ``name``, oldest first (by creation time in the manifest)."""
    root = layout.plugin_backups_dir(name)
    if not root.is_dir():
        return []
    out = []
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        with contextlib.suppress(NotFoundError):
            out.append(read_backup(entry))
    return sorted(out, key=lambda b: b.created)


def apply_retention(
    layout: StateLayout, name: str, keep: int, protect: Iterable[str] = ()
) -> list[str]:
    """Remove the oldest backups of ``name`` beyond ``keep``; the versions removed.

    Versions in ``protect`` (the one just written, the active one, a rollback's target)
    are never removed, even if that leaves more than ``keep``.
    """
    protected = set(protect)
    backups = list_backups(layout, name)
    excess = len(backups) - max(keep, 1)
    removed = []
    for backup in backups:
        if excess <= 0:
            break
        if backup.version in protected:
            continue
        # Renamed out of sight first: a crash mid-removal leaves debris, not a half backup.
        hidden = backup.path.with_name(f".old-gc-{secrets.token_hex(4)}")
        os.rename(backup.path, hidden)
        fsync_dir(backup.path.parent)
        remove_tree(hidden)
        removed.append(backup.version)
        excess -= 1
    if removed:
        _log.info("snapshot.retention", plugin=name, removed=removed, keep=keep)
    return removed


def snapshot_active(
    settings: Settings,
    registry: Registry,
    name: str,
    job_id: str,
    *,
    protect: Iterable[str] = (),
    on_copied: Callable[[Path], None] | None = None,
) -> dict[str, Any] | None:
    """Back up ``name``'s active version to ``backups/NAME/VERSION/``; its description.

    ``None`` when the plugin has no active version (nothing to back up). Idempotent per
    ``job_id``: a complete backup written by the same job is returned as is.
    ``on_copied(tmp)`` is called once the data is copied into the temporary directory
    and before its manifest is written (the worker passes its step hook).
    """
    layout = StateLayout(settings.state_dir)
    plugin = registry.get_plugin(name)
    if plugin.active_version is None:
        return None
    version = plugin.active_version
    record = registry.get_version(name, version)
    plugin_dir = layout.plugin_backups_dir(name)
    final = layout.backup_dir(name, version)
    with contextlib.suppress(NotFoundError):
        existing = read_backup(final)
        if existing.job_id == job_id:
            return existing.to_dict()
    layout.ensure()
    plugin_dir.mkdir(mode=0o700, exist_ok=True)
    _clean_debris(plugin_dir, job_id, max_age_s=2 * settings.job_time_limit_s)
    tmp = plugin_dir / f".tmp-{job_id}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o700)
    try:
        data = tmp / "data"
        data.mkdir(mode=0o700)
        files = layout.plugin_files_dir(name)
        if files.is_dir():
            copy_tree(files, data / "files")
        db = layout.plugin_db(name)
        if db.is_file():
            copy_sqlite(db, data / "db.sqlite")
        if on_copied is not None:
            on_copied(tmp)
        manifest = {
            "format": _FORMAT,
            "plugin": name,
            "version": version,
            "code": {
                "digest": record.digest,
                "keyid": record.keyid,
                "status": record.status.value,
                "meta": record.meta,
            },
            "job_id": job_id,
            "created": datetime.now(UTC).isoformat(timespec="microseconds"),
            "files": _manifest_files(tmp),
        }
        (tmp / MANIFEST).write_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode())
        _fsync_file(tmp / MANIFEST)
        _fsync_tree(tmp)
        if final.exists():
            # An older backup of the same version: swapped out in one step, then removed.
            exchange_paths(tmp, final)
            remove_tree(tmp)
        else:
            os.rename(tmp, final)
            fsync_dir(plugin_dir)
    except BaseException:
        if tmp.exists():
            remove_tree(tmp)
        raise
    removed = apply_retention(
        layout, name, settings.backup_retention, protect={version, *protect}
    )  # fmt: skip
    out = read_backup(final).to_dict()
    out["retention_removed"] = removed
    _log.info("snapshot.written", plugin=name, version=version, files=out["files"], job_id=job_id)
    return out


# ---- restore ---------------------------------------------------------------------------------


def restore_stage_path(layout: StateLayout, name: str, job_id: str) -> Path:
    """``data/.restore-NAME-<job>``: where a rollback stages the data it restores."""
    layout.plugin_data_root(name)  # checks the name
    return layout.data_dir / f".restore-{name}-{job_id.replace(':', '_')}"


def read_restore_id(path: Path) -> str | None:
    """The job id in ``path/RESTORE_ID`` (a staged restore, or the live data it became)."""
    try:
        return (path / RESTORE_ID).read_text().strip()
    except OSError:
        return None


def stage_restore(settings: Settings, name: str, version: str, job_id: str) -> dict[str, Any]:
    """Stage the data of backup ``NAME/VERSION`` beside ``data/NAME/`` for the daemon's swap.

    Idempotent: when ``data/NAME/`` already carries this job's ``RESTORE_ID`` the swap
    happened (nothing to stage); a complete staged tree is reused; a partial one (no
    ``RESTORE_ID``: a killed attempt) is rebuilt.
    """
    layout = StateLayout(settings.state_dir)
    live = layout.plugin_data_root(name)
    stage = restore_stage_path(layout, name, job_id)
    if read_restore_id(live) == job_id:
        return {"stage": str(stage), "applied": True}
    if read_restore_id(stage) == job_id:
        return {"stage": str(stage), "applied": False}
    if stage.exists():
        remove_tree(stage)
    backup_path = layout.backup_dir(name, version)
    problems = verify_backup(backup_path)
    if problems:
        raise StateError(
            "backup_corrupt", f"backup {name} {version} differs from its manifest: "
            + "; ".join(problems[:5]), plugin=name, version=version, problems=problems[:20],
        )  # fmt: skip
    layout.ensure_plugin_data(name)
    stage.mkdir(mode=0o711)
    try:
        src = backup_path / "data"
        live_files = layout.plugin_files_dir(name)
        if (src / "files").is_dir():
            copy_tree(src / "files", stage / "files")
        else:
            (stage / "files").mkdir(mode=0o700)
        # files/ belongs to whoever owns the live one (the sandbox user for a writable
        # profile; the template chowns it again at spawn anyway).
        lst = live_files.stat()
        os.chown(stage / "files", lst.st_uid, lst.st_gid)
        os.chmod(stage / "files", lst.st_mode & 0o7777)
        if (src / "db.sqlite").is_file():
            copy_sqlite(src / "db.sqlite", stage / "db.sqlite")
            os.chmod(stage / "db.sqlite", 0o600)
        (stage / RESTORE_ID).write_text(job_id)
        _fsync_file(stage / RESTORE_ID)
        _fsync_tree(stage)
        fsync_dir(layout.data_dir)
    except BaseException:
        remove_tree(stage)
        raise
    return {"stage": str(stage), "applied": False}
