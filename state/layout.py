"""The one definition of the state directory's tree, and the modes it is created with.

Every other module asks a :class:`StateLayout` for a path instead of joining strings, so
the tree below is written down exactly once::

    <state>/registry.sqlite              registry DB (SQLite WAL)
    <state>/versions/<digest>/           content-addressed extracted versions (read-only)
    <state>/data/<plugin>/files/         the plugin's data_dir
    <state>/data/<plugin>/db.sqlite      the plugin's ctx.db (host side only)
    <state>/backups/<plugin>/<version>/  snapshots
    <state>/quarantine/<ts>-<sha>/       refused archive + reason.json
    <state>/keys/trusted/<keyid>.pub     trusted signing keys
    <state>/logs/security.log            hash-chained violation log
    <state>/run/daemon.sock, daemon.pid, control.sock
    <state>/staging/                     temp extraction (same filesystem as versions/)
    <state>/broker.sqlite, results.sqlite  embedded Celery broker + result backend

Modes: the path from the root to ``versions/`` is world-traversable (0o755) because the
unprivileged sandbox user must read plugin code; keys, quarantine, backups and staging
are private to the owner (0o700); ``run/`` and ``logs/`` are 0o750 so a service group
can reach the sockets and logs.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from plugvisor.core.errors import StateError

__all__ = ["DIGEST_RE", "PLUGIN_NAME_RE", "StateLayout"]

#: A version's digest: the SHA-256 hex of its MANIFEST.json bytes.
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
#: A plugin name (SPEC §3); checked again here because names become path components.
PLUGIN_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# A version string as a path component: SemVer characters only, never "/" or "..".
_VERSION_COMPONENT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,127}$")

_ROOT_MODE = 0o755
_PUBLIC_DIR = 0o755
_PRIVATE_DIR = 0o700
_GROUP_DIR = 0o750


@dataclass(frozen=True)
class StateLayout:
    """Every path of the state directory rooted at ``root``; :meth:`ensure` creates the tree."""

    root: Path

    def __post_init__(self) -> None:
        # Absolute, so paths handed to other processes (sandbox, workers) stay valid.
        object.__setattr__(self, "root", Path(os.path.abspath(self.root)))

    # ---- files at the root ---------------------------------------------------------
    @property
    def registry_db(self) -> Path:
        return self.root / "registry.sqlite"

    @property
    def broker_db(self) -> Path:
        return self.root / "broker.sqlite"

    @property
    def results_db(self) -> Path:
        return self.root / "results.sqlite"

    # ---- directories -----------------------------------------------------------------
    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def backups_dir(self) -> Path:
        return self.root / "backups"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def trusted_keys_dir(self) -> Path:
        return self.keys_dir / "trusted"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def security_log(self) -> Path:
        return self.logs_dir / "security.log"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def daemon_socket(self) -> Path:
        return self.run_dir / "daemon.sock"

    @property
    def daemon_pid(self) -> Path:
        return self.run_dir / "daemon.pid"

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "control.sock"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    # ---- per-item paths ----------------------------------------------------------------
    def version_dir(self, digest: str) -> Path:
        """``versions/<digest>/``: the extracted, read-only tree of one version."""
        if not DIGEST_RE.match(digest):
            raise StateError(
                "invalid_digest", f"digest {digest!r} is not 64 lower-case hex", digest=digest
            )
        return self.versions_dir / digest

    def plugin_data_root(self, plugin: str) -> Path:
        """``data/<plugin>/``: holds the plugin's files dir and its ctx.db."""
        return self.data_dir / _checked_name(plugin)

    def plugin_files_dir(self, plugin: str) -> Path:
        """``data/<plugin>/files/``: the plugin's ``ctx.data_dir``."""
        return self.plugin_data_root(plugin) / "files"

    def plugin_db(self, plugin: str) -> Path:
        """``data/<plugin>/db.sqlite``: the plugin's ``ctx.db``, opened only by the host."""
        return self.plugin_data_root(plugin) / "db.sqlite"

    def plugin_backups_dir(self, plugin: str) -> Path:
        """``backups/<plugin>/``: every snapshot of one plugin."""
        return self.backups_dir / _checked_name(plugin)

    def backup_dir(self, plugin: str, version: str) -> Path:
        """``backups/<plugin>/<version>/``: one snapshot (code digest, data copy, manifest)."""
        if not _VERSION_COMPONENT.match(version) or ".." in version:
            raise StateError(
                "invalid_version", f"version {version!r} is not a safe path component",
                version=version,
            )  # fmt: skip
        return self.plugin_backups_dir(plugin) / version

    def trusted_key(self, keyid: str) -> Path:
        """``keys/trusted/<keyid>.pub``."""
        if not DIGEST_RE.match(keyid):
            raise StateError(
                "invalid_keyid", f"keyid {keyid!r} is not 64 lower-case hex", keyid=keyid
            )
        return self.trusted_keys_dir / f"{keyid}.pub"

    # ---- creation ----------------------------------------------------------------------
    def dir_modes(self) -> dict[Path, int]:
        """Every directory :meth:`ensure` creates, with its mode (parents first)."""
        return {
            self.root: _ROOT_MODE,
            self.versions_dir: _PUBLIC_DIR,
            self.data_dir: _PUBLIC_DIR,
            self.backups_dir: _PRIVATE_DIR,
            self.quarantine_dir: _PRIVATE_DIR,
            self.keys_dir: _PRIVATE_DIR,
            self.trusted_keys_dir: _PRIVATE_DIR,
            self.logs_dir: _GROUP_DIR,
            self.run_dir: _GROUP_DIR,
            self.staging_dir: _PRIVATE_DIR,
        }

    def ensure(self) -> StateLayout:
        """Create the tree (idempotent) and return ``self``.

        Sub-directories always get their mode (so a loosened ``keys/`` is tightened
        again); the root's mode is set only when this call creates it, since an
        operator may have chosen it.
        """
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            for path, mode in self.dir_modes().items():
                created = _mkdir(path, mode)
                # Explicit: mkdir's mode is masked by umask. Only when it differs, so a
                # process that does not own the tree (the API's user) can still ensure().
                if (created or path != self.root) and stat.S_IMODE(path.stat().st_mode) != mode:
                    os.chmod(path, mode)
        except OSError as exc:
            raise StateError(
                "unusable", f"cannot create state directory {self.root}: {exc}",
                path=str(self.root),
            ) from exc  # fmt: skip
        return self

    def ensure_plugin_data(self, plugin: str) -> Path:
        """Create ``data/<plugin>/`` (0o711) and its ``files/`` (0o700); return the root.

        ``files/`` is private until the daemon hands it to the sandbox user (chown) for
        a profile that allows writes; the traverse-only parent lets that user reach it
        without listing the host-side ``db.sqlite``.
        """
        root = self.plugin_data_root(plugin)
        files = self.plugin_files_dir(plugin)
        try:
            if _mkdir(root, 0o711):
                os.chmod(root, 0o711)  # noqa: S103 -- traverse-only on purpose
            if _mkdir(files, _PRIVATE_DIR):
                os.chmod(files, _PRIVATE_DIR)
        except OSError as exc:
            raise StateError(
                "unusable", f"cannot create data directory for {plugin}: {exc}", plugin=plugin
            ) from exc
        return root


def _checked_name(plugin: str) -> str:
    if not PLUGIN_NAME_RE.match(plugin):
        raise StateError(
            "invalid_name", f"plugin name {plugin!r} does not match {PLUGIN_NAME_RE.pattern}",
            plugin=plugin,
        )  # fmt: skip
    return plugin


def _mkdir(path: Path, mode: int) -> bool:
    """Create one directory; True when this call created it."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not path.is_dir() or path.is_symlink():
            raise StateError(
                "unusable", f"{path} exists and is not a directory", path=str(path)
            ) from None
        return False
    return True
