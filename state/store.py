"""The content-addressed version store: ``versions/<digest>/``, read-only extracted trees.

A version's directory is named after the SHA-256 of its MANIFEST.json, so the same code is
stored once and a name can never point at different bytes. The tree keeps its
MANIFEST.json, which makes it self-describing: the registry holds the digest, the digest
pins MANIFEST.json, and MANIFEST.json pins every file. It keeps MANIFEST.sig too, so a
rollback re-verifies the signature against the keys trusted at that time
(:meth:`VersionStore.signature`). Trees arrive from ``staging/`` (same filesystem) by one
``rename``: a reader sees either no directory or a complete one. Files are 0o444 and
directories 0o555; :meth:`VersionStore.verify` re-hashes a tree against its manifest right
before the daemon spawns it, so a file changed on disk after installation is caught rather
than run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from plugvisor.core.errors import PlugvisorError, SignatureError, StateError
from plugvisor.core.fs import atomic_write
from plugvisor.core.fs import fsync_dir as _fsync_dir
from plugvisor.core.fs import remove_tree as _remove_tree
from plugvisor.core.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, parse_manifest
from plugvisor.state.layout import StateLayout

if TYPE_CHECKING:
    from plugvisor.core.signing import PublicKey

__all__ = ["CONTROL_FILES", "VersionStore"]

#: Files of a stored tree that MANIFEST.json does not list (it cannot list itself).
CONTROL_FILES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

_FILE_MODE = 0o444
_DIR_MODE = 0o555
_CHUNK = 1 << 16
_MAX_MANIFEST_BYTES = 1024 * 1024


class VersionStore:
    """Adds, finds, verifies and removes the extracted trees under ``versions/``."""

    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout

    def path(self, digest: str) -> Path:
        """Where the tree of ``digest`` lives (whether or not it exists)."""
        return self.layout.version_dir(digest)

    def exists(self, digest: str) -> bool:
        """Whether the tree of ``digest`` is stored."""
        return self.path(digest).is_dir()

    def digests(self) -> list[str]:
        """Every stored digest (for garbage collection against the registry)."""
        if not self.layout.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.layout.versions_dir.iterdir() if p.is_dir())

    def add(
        self,
        staged_dir: Path,
        digest: str,
        manifest: Manifest | None = None,
        signature: bytes | None = None,
    ) -> Path:
        """Move ``staged_dir`` to ``versions/<digest>/`` read-only, atomically; return the path.

        ``manifest`` (whose canonical bytes must hash to ``digest``) is written into the
        tree as MANIFEST.json unless the staged tree already has it; ``signature`` (the
        verified MANIFEST.sig bytes) likewise as MANIFEST.sig. Idempotent: when
        ``digest`` is already stored the existing tree is kept (it has the same manifest
        hash) and ``staged_dir`` is removed.
        """
        dest = self.path(digest)
        staged = Path(staged_dir)
        if not staged.is_dir() or staged.is_symlink():
            raise StateError(
                "not_staged", f"{staged} is not a directory to store", path=str(staged)
            )
        if dest.is_dir():
            _remove_tree(staged)
            return dest
        try:
            # Writable top while it moves: a new file may go in, and renaming a directory
            # to a new parent rewrites its "..". Everything below is read-only already.
            os.chmod(staged, 0o700)
            if manifest is not None and not os.path.lexists(staged / MANIFEST_NAME):
                _write_manifest(staged / MANIFEST_NAME, manifest, digest)
            if signature is not None and not os.path.lexists(staged / SIGNATURE_NAME):
                atomic_write(staged / SIGNATURE_NAME, signature, _FILE_MODE)
            _make_read_only(staged)
            os.rename(staged, dest)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and dest.is_dir():
                _remove_tree(staged)  # a concurrent add of the same digest won
                return dest
            raise StateError(
                "store_failed", f"cannot store {staged} as {dest}: {exc}", digest=digest
            ) from exc
        os.chmod(dest, _DIR_MODE)  # read-only; the sandbox user reads plugin code
        _fsync_dir(self.layout.versions_dir)
        return dest

    def manifest(self, digest: str) -> Manifest:
        """The stored MANIFEST.json of ``digest``, checked to hash to ``digest``."""
        data = self.manifest_bytes(digest)
        try:
            return parse_manifest(data)
        except PlugvisorError as err:
            path = self.path(digest) / MANIFEST_NAME
            raise StateError("tampered", f"{path} does not parse: {err}", digest=digest) from err

    def manifest_bytes(self, digest: str) -> bytes:
        """The stored MANIFEST.json bytes of ``digest`` (what MANIFEST.sig signs), hash-checked."""
        path = self.path(digest) / MANIFEST_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(_MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise StateError(
                "manifest_missing", f"version {digest} has no readable {MANIFEST_NAME}: {exc}",
                digest=digest,
            ) from exc  # fmt: skip
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise StateError(
                "tampered", f"{path} hashes to {actual}, not to its digest", digest=digest
            )
        return data

    def verify_signature(
        self, digest: str, trusted: Sequence[PublicKey], expected_keyid: str | None = None
    ) -> str:
        """Re-verify the stored MANIFEST.sig over the stored MANIFEST.json with ``trusted``.

        Returns the signer's keyid. Raises ``SignatureError``: ``missing`` (tree stored
        without its signature), ``untrusted``/``invalid``/``malformed`` from
        ``core.signing.verify_signature``, or ``invalid`` when a trusted key other than
        ``expected_keyid`` (the one recorded at install) signed it. ``StateError`` when the
        stored manifest does not hash to ``digest``.
        """
        sig = self.signature(digest)
        if sig is None:
            raise SignatureError(
                "missing", f"version {digest[:12]} was stored without its {SIGNATURE_NAME}, "
                "so its signature cannot be re-verified", digest=digest,
            )  # fmt: skip
        # Imported here: the daemon re-hashes trees before every spawn but never checks a
        # signature, and cryptography (with its own OpenSSL) would weigh on its RSS.
        from plugvisor.core.signing import verify_signature  # noqa: PLC0415

        signer = verify_signature(self.manifest_bytes(digest), sig, trusted)
        if expected_keyid is not None and signer != expected_keyid:
            raise SignatureError(
                "invalid", f"its {SIGNATURE_NAME} is by key {signer[:16]}, but the version "
                f"was installed signed by {expected_keyid[:16]}", digest=digest, keyid=signer,
            )  # fmt: skip
        return signer

    def signature(self, digest: str) -> bytes | None:
        """The stored MANIFEST.sig bytes of ``digest``, or None when the tree has none.

        Trees stored before the signature was kept have none. The caller verifies the
        bytes with ``core.signing.verify_signature`` against the keys trusted now.
        """
        path = self.path(digest) / SIGNATURE_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(
                "signature_unreadable", f"version {digest} has an unreadable {SIGNATURE_NAME}: "
                f"{exc}", digest=digest,
            ) from exc  # fmt: skip
        with os.fdopen(fd, "rb") as fh:
            # Capped: verify_signature refuses anything this large as malformed anyway.
            return fh.read(_MAX_MANIFEST_BYTES + 1)

    def verify(self, digest: str, manifest: Manifest | None = None) -> list[str]:
        """Every way the stored tree differs from its manifest; ``[]`` when intact.

        Without ``manifest`` the tree's own MANIFEST.json is used (after checking that it
        hashes to ``digest``). Checks: every listed file present as a regular file with
        its size and SHA-256, no unlisted file, no writable file. The daemon calls this
        right before every spawn. Symlinks are never followed.
        """
        root = self.path(digest)
        if not root.is_dir():
            return [f"version {digest} is not in the store ({root})"]
        problems: list[str] = []
        manifest_file = root / MANIFEST_NAME
        if manifest_file.is_file() and not manifest_file.is_symlink():
            actual = _sha256(manifest_file)
            if actual != digest:
                problems.append(f"{MANIFEST_NAME}: sha256 {actual} is not the digest {digest}")
        if manifest is None:
            try:
                manifest = self.manifest(digest)
            except StateError as err:
                return problems or [err.message]
        listed = {entry.path: entry for entry in manifest.files}
        for rel, entry in sorted(listed.items()):
            problems.extend(_check_file(root, rel, entry.size, entry.sha256))
        for rel in _walk_files(root):
            if rel not in listed and rel not in CONTROL_FILES:
                problems.append(f"{rel}: not in the manifest")
        return problems

    def remove(self, digest: str) -> bool:
        """Delete the tree of ``digest``; False when it was not stored.

        The tree is first renamed into ``staging/`` so a crash mid-delete never leaves a
        half-empty directory under its digest.
        """
        src = self.path(digest)
        if not src.is_dir():
            return False
        trash = self.layout.staging_dir / f".trash-{digest[:12]}-{uuid.uuid4().hex}"
        try:
            os.chmod(src, 0o700)  # a directory's ".." changes when it moves
            os.rename(src, trash)
        except OSError as exc:
            raise StateError("store_failed", f"cannot remove {src}: {exc}", digest=digest) from exc
        _fsync_dir(self.layout.versions_dir)
        _remove_tree(trash)
        return True


def _check_file(root: Path, rel: str, size: int, sha256: str) -> list[str]:
    path = root / rel
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return [f"{rel}: missing"]
    if not stat.S_ISREG(st.st_mode):
        return [f"{rel}: not a regular file"]
    problems: list[str] = []
    if st.st_mode & 0o222:
        problems.append(f"{rel}: writable (mode {stat.S_IMODE(st.st_mode):o})")
    if st.st_size != size:
        problems.append(f"{rel}: size {st.st_size} instead of {size}")
        return problems
    actual = _sha256(path)
    if actual != sha256:
        problems.append(f"{rel}: sha256 {actual} instead of {sha256}")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    # O_NOFOLLOW: a file swapped for a symlink since lstat is refused, not followed.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk_files(root: Path) -> list[str]:
    """Every non-directory entry below ``root`` (symlinks included), as POSIX relative paths."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        # A symlink to a directory shows up in dirnames; report it as an entry, don't descend.
        for name in [*filenames, *(d for d in dirnames if (base / d).is_symlink())]:
            out.append((base / name).relative_to(root).as_posix())
    return sorted(out)


def _write_manifest(path: Path, manifest: Manifest, digest: str) -> None:
    data = manifest.to_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise StateError(
            "digest_mismatch", f"the manifest hashes to {actual}, not to digest {digest}",
            digest=digest,
        )  # fmt: skip
    atomic_write(path, data, 0o444)


def _make_read_only(top: Path) -> None:
    """Files 0o444, directories below ``top`` 0o555; refuses symlinks and special files."""
    for dirpath, dirnames, filenames in os.walk(top, topdown=False, followlinks=False):
        base = Path(dirpath)
        for name in filenames:
            path = base / name
            mode = os.lstat(path).st_mode
            if not stat.S_ISREG(mode):
                raise StateError(
                    "not_regular", f"{path} is not a regular file; refusing to store it",
                    path=str(path),
                )  # fmt: skip
            os.chmod(path, _FILE_MODE)
        for name in dirnames:
            path = base / name
            if path.is_symlink():
                raise StateError(
                    "not_regular", f"{path} is a symlink; refusing to store it", path=str(path)
                )
            os.chmod(path, _DIR_MODE)  # read-only, for the sandbox user
