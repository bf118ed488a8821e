"""Plugin archives: reproducible signed packing, and safe streaming extraction (SPEC §3).

An archive is a gzip'd tar of the plugin directory's files plus ``MANIFEST.json`` and
``MANIFEST.sig`` at its root. :func:`extract_archive` trusts nothing in it: the archive
is read once, as a stream, through a gzip decoder that counts the compressed bytes
taken from the file and the bytes it produces, so the size and ratio limits hold
whatever the tar headers claim. Each member is checked (path, type, duplicates,
count) before a byte of it is written, hashed while it is written into a temporary
directory beside ``dest``, and only when the signature, the manifest, every hash and
plugin.yaml agree is that directory renamed to ``dest``. Any failure removes it.

:func:`check_archive` runs the same scan without writing and collects every failure it
can instead of stopping at the first, for ``plugvisor verify``.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from plugvisor.core.config import Settings
from plugvisor.core.errors import (
    ArchiveError,
    ConflictError,
    ManifestError,
    NotFoundError,
    PlugvisorError,
    SignatureError,
    StateError,
)
from plugvisor.core.fs import fsync_dir, remove_tree
from plugvisor.core.log import get_logger
from plugvisor.core.manifest import (
    MANIFEST_NAME,
    MAX_PLUGIN_YAML_BYTES,
    PLUGIN_YAML,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
    PluginMeta,
    check_member_path,
    parse_manifest,
    parse_plugin_yaml,
)
from plugvisor.core.signing import (
    PublicKey,
    keyid,
    load_private_key,
    sign_manifest,
    verify_signature,
)

__all__ = [
    "ArchiveLimits",
    "Check",
    "VerifiedPackage",
    "archive_name",
    "check_archive",
    "extract_archive",
    "pack",
]

_log = get_logger(__name__)

_GZIP_MAGIC: Final = b"\x1f\x8b"
_RAW_CHUNK: Final = 8 * 1024  # compressed bytes per read: keeps the ratio measurement fine-grained
_OUT_CHUNK: Final = 64 * 1024  # most bytes produced per decompress call / copied per write
_TAIL_WINDOW: Final = 64 * 1024  # decompressed bytes kept to check the end-of-archive blocks
#: Tar headers, padding and end blocks on top of the file bytes; bounds what the decoder
#: may produce in all, so even a header-only bomb (a huge pax record) stops early.
_STREAM_OVERHEAD: Final = 1024 * 1024
_MAX_MANIFEST_BYTES: Final = 1024 * 1024
_MAX_SIG_BYTES: Final = 4096
_EXCLUDED_DIRS: Final = frozenset({"__pycache__"})


@dataclass(frozen=True)
class ArchiveLimits:
    """The extraction limits of SPEC §3 (defaults as specified; set through Settings)."""

    max_files: int = 50
    max_unpacked_bytes: int = 10 * 1024 * 1024
    max_ratio: float = 100.0
    ratio_threshold_bytes: int = 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(
            max_files=settings.max_archive_files,
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_ratio=settings.max_compression_ratio,
            ratio_threshold_bytes=settings.ratio_threshold_bytes,
        )

    @property
    def max_members(self) -> int:
        """Most tar members of any kind: the files, as many directories, and MANIFEST.*."""
        return 2 * self.max_files + 2


@dataclass(frozen=True)
class VerifiedPackage:
    """An extracted archive whose signature, manifest and files all agree."""

    meta: PluginMeta
    manifest: Manifest
    digest: str  # sha256 hex of the MANIFEST.json bytes: the version store's key
    keyid: str
    path: Path
    signature: bytes  # the MANIFEST.sig bytes, kept in the store so rollback can re-verify


@dataclass(frozen=True)
class Check:
    """One line of ``plugvisor verify``: a named check, whether it passed, and why."""

    name: str
    ok: bool
    detail: str
    codes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "codes": list(self.codes)}


def archive_name(meta: PluginMeta) -> str:
    """``NAME-VERSION.tar.gz``."""
    return f"{meta.name}-{meta.version}.tar.gz"


def _shown(name: str) -> str:
    """A member name fit for a JSON reason file, even when it is not valid UTF-8."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# ---- the counting gzip decoder -----------------------------------------------------


class _GunzipStream:
    """A gzip decoder over a raw file that enforces the size and ratio limits as it goes.

    ``consumed`` counts compressed bytes read from the file and ``produced`` counts
    decompressed bytes handed out; the ratio is checked on every chunk once more than
    ``ratio_threshold_bytes`` have been produced.
    """

    def __init__(self, raw: BinaryIO, limits: ArchiveLimits) -> None:
        self._raw = raw
        self._limits = limits
        self._cap = limits.max_unpacked_bytes + _STREAM_OVERHEAD
        self.consumed = 0
        self.produced = 0
        self._input = self._read_raw()
        if self._input[:2] != _GZIP_MAGIC:
            raise ArchiveError("not_gzip", "the archive is not gzip-compressed (bad magic)")
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._done = False
        self.tail = bytearray()
        self.tail_start = 0
        self.max_ratio_seen = 0.0

    def _read_raw(self) -> bytes:
        data = self._raw.read(_RAW_CHUNK)
        self.consumed += len(data)
        if self.consumed > self._cap:
            # More compressed bytes than a valid archive could unpack to: padding or junk.
            raise ArchiveError(
                "too_large",
                f"the archive file is larger than {self._cap} bytes",
                limit=self._limits.max_unpacked_bytes,
            )
        return data

    def _account(self, chunk: bytes) -> None:
        self.produced += len(chunk)
        self.tail += chunk
        if len(self.tail) > _TAIL_WINDOW:
            cut = len(self.tail) - _TAIL_WINDOW
            del self.tail[:cut]
            self.tail_start += cut
        if self.produced > self._cap:
            raise ArchiveError(
                "too_large",
                f"the archive unpacks to more than {self._cap} bytes of tar stream",
                limit=self._limits.max_unpacked_bytes,
            )
        if self.produced > self._limits.ratio_threshold_bytes:
            ratio = self.produced / max(self.consumed, 1)
            self.max_ratio_seen = max(self.max_ratio_seen, ratio)
            if ratio > self._limits.max_ratio:
                raise ArchiveError(
                    "compression_ratio",
                    f"compression ratio {ratio:.1f} exceeds {self._limits.max_ratio:g} after "
                    f"{self.produced} bytes unpacked from {self.consumed} compressed bytes",
                    ratio=round(ratio, 1),
                    limit=self._limits.max_ratio,
                    unpacked=self.produced,
                    compressed=self.consumed,
                )

    def _next_member(self) -> bool:
        """After one gzip member ended: start the next one, or finish. True if started."""
        rest = self._d.unused_data or self._read_raw()
        while True:
            rest = rest.lstrip(b"\x00")  # zero padding after a member is tolerated, as gzip does
            if rest:
                break
            rest = self._read_raw()
            if not rest:
                self._done = True
                return False
        while len(rest) < 2:
            more = self._read_raw()
            if not more:
                break
            rest += more
        if rest[:2] != _GZIP_MAGIC:
            raise ArchiveError("corrupt", "trailing data after the gzip stream")
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._input = rest
        return True

    def read(self, size: int = -1) -> bytes:
        want = size if size is not None and size >= 0 else _OUT_CHUNK
        out: list[bytes] = []
        while want > 0 and not self._done:
            if self._d.eof:
                if not self._next_member():
                    break
                continue
            if not self._input:
                self._input = self._d.unconsumed_tail or self._read_raw()
                if not self._input:
                    raise ArchiveError(
                        "corrupt", "the archive is truncated (gzip stream ends early)"
                    )
            try:
                chunk = self._d.decompress(self._input, min(want, _OUT_CHUNK))
            except zlib.error as exc:
                raise ArchiveError("corrupt", f"the gzip data is corrupt: {exc}") from exc
            self._input = self._d.unconsumed_tail
            if chunk:
                self._account(chunk)
                out.append(chunk)
                want -= len(chunk)
        return b"".join(out)

    def drain(self) -> bool:
        """Read to the end of the gzip stream (checks its CRC); True if all of it was zeros."""
        zeros = True
        while chunk := self.read(_OUT_CHUNK):
            zeros = zeros and not chunk.strip(b"\x00")
        return zeros

    def close(self) -> None:
        """tarfile closes its file object; the raw file is closed by its owner."""


# ---- the scan shared by extract_archive and check_archive ----------------------------


class _Abort(Exception):
    """Collect mode: the stream cannot be read further."""


@dataclass
class _FileRecord:
    sha256: str
    size: int


@dataclass
class _Scan:
    """One pass over an archive.

    ``strict`` raises the first failure (extraction); otherwise failures are collected
    under the name of the check they belong to and the scan goes on where it safely can.
    """

    limits: ArchiveLimits
    trusted: Sequence[PublicKey]
    strict: bool
    dest: Path | None = None  # where regular files are written (strict extraction only)
    failures: list[tuple[str, PlugvisorError]] = field(default_factory=list)
    files: dict[str, _FileRecord] = field(default_factory=dict)
    file_dirs: set[str] = field(default_factory=set)  # every ancestor of a file
    explicit_dirs: set[str] = field(default_factory=set)
    made_dirs: set[str] = field(default_factory=set)
    bad_members: set[str] = field(default_factory=set)
    members: int = 0
    unpacked: int = 0
    manifest_bytes: bytes | None = None
    sig_bytes: bytes | None = None
    plugin_yaml: bytes | None = None
    manifest: Manifest | None = None
    manifest_files: dict[str, FileEntry] | None = None
    keyid: str | None = None
    meta: PluginMeta | None = None
    stream_complete: bool = False
    compressed_bytes: int = 0
    ratio_seen: float = 0.0

    # -- failure handling

    def fail(self, check: str, err: PlugvisorError, *, fatal: bool = False) -> None:
        if self.strict:
            raise err
        self.failures.append((check, err))
        if fatal:
            raise _Abort

    # -- the stream

    def run(self, archive: Path) -> None:
        try:
            fh = archive.open("rb")
        except OSError as exc:
            raise NotFoundError(
                "archive", f"cannot read {archive}: {exc.strerror}", path=str(archive)
            ) from exc
        with fh:
            try:
                self._stream(fh)
                self.stream_complete = True
            except _Abort:
                return
        self._finish()

    def _stream(self, fh: BinaryIO) -> None:
        stream: _GunzipStream | None = None
        try:
            stream = _GunzipStream(fh, self.limits)
            with tarfile.open(
                fileobj=cast("IO[bytes]", stream),  # read() is all tarfile needs
                mode="r|",
                encoding="utf-8",
                errors="surrogateescape",
            ) as tar:
                for member in tar:
                    self._member(tar, member)
                self._check_end(tar, stream)
        except ArchiveError as err:
            if self.strict:
                raise
            rule_check = {
                "not_gzip": "gzip",
                "corrupt": "gzip",
                "too_large": "unpacked size",
                "compression_ratio": "compression ratio",
            }
            self.fail(rule_check.get(err.rule, "gzip"), err, fatal=True)
        except (tarfile.TarError, EOFError, zlib.error, ValueError, OverflowError) as exc:
            # Whatever the parser trips over in a hostile header is corruption, not a crash.
            self.fail(
                "gzip", ArchiveError("corrupt", f"the tar stream is corrupt: {exc}"), fatal=True
            )
        finally:
            if stream is not None:
                self.compressed_bytes = stream.consumed
                self.ratio_seen = max(
                    stream.max_ratio_seen, stream.produced / max(stream.consumed, 1)
                )

    def _check_end(self, tar: tarfile.TarFile, stream: _GunzipStream) -> None:
        """tarfile stops quietly at a bad header; insist the archive ends with zero blocks."""
        end = tar.offset
        if end < stream.tail_start:
            raise ArchiveError("corrupt", "cannot locate the end-of-archive blocks")
        after_end = bytes(stream.tail[end - stream.tail_start :])
        if after_end.strip(b"\x00") or not stream.drain():
            raise ArchiveError(
                "corrupt",
                f"data after the end of the tar archive at offset {end} (bad header or "
                "hidden members)",
            )

    def _member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            self.fail(
                "file count",
                ArchiveError(
                    "too_many_files",
                    f"more than {self.limits.max_members} tar members",
                    limit=self.limits.max_members,
                ),
                fatal=True,
            )
        name = self._member_name(m)
        if name is None:
            return
        if not self._member_type(m, name):
            return
        if not self._unique(m, name):
            return
        if m.isdir():
            self.explicit_dirs.add(name)
            self._mkdirs(name)
            return
        if name in (MANIFEST_NAME, SIGNATURE_NAME):
            self._read_manifest_member(tar, m, name)
            return
        self._read_file(tar, m, name)

    def _member_name(self, m: tarfile.TarInfo) -> str | None:
        raw = m.name
        shown = _shown(raw)
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(
                "member paths",
                ArchiveError("non_utf8_name", f"member name {shown!r} is not UTF-8", member=shown),
            )
            return None
        name = raw
        while name.startswith("./"):
            name = name[2:]
        if raw.startswith("/") or name.startswith("/"):
            self.fail(
                "member paths",
                ArchiveError(
                    "absolute_path", f"member {shown!r} has an absolute path", member=shown
                ),
            )
            return None
        if m.isdir():
            name = name.rstrip("/")
            if name in ("", "."):
                return None  # the root directory entry of 'tar -C dir .'
        why = check_member_path(name)
        if why is not None:
            self.fail(
                "member paths",
                ArchiveError(
                    "path_traversal" if ".." in why else "invalid_path",
                    f"member {shown!r} is not a relative path inside the archive root ({why})",
                    member=shown,
                ),
            )
            return None
        return name

    def _member_type(self, m: tarfile.TarInfo, name: str) -> bool:
        if m.issym():
            rule, what = "symlink", f"a symbolic link to {_shown(m.linkname)!r}"
        elif m.islnk():
            rule, what = "hardlink", f"a hard link to {_shown(m.linkname)!r}"
        elif (m.isreg() and m.sparse is None) or m.isdir():
            return True
        else:
            rule, what = "special_file", "a device, FIFO or other special file"
        self.fail("member types", ArchiveError(rule, f"member {name!r} is {what}", member=name))
        self.bad_members.add(name)
        return False

    def _unique(self, m: tarfile.TarInfo, name: str) -> bool:
        clash = None
        seen_manifest = (name == MANIFEST_NAME and self.manifest_bytes is not None) or (
            name == SIGNATURE_NAME and self.sig_bytes is not None
        )
        if (
            seen_manifest
            or name in self.files
            or name in self.explicit_dirs
            or name in self.bad_members
        ):
            clash = "appears twice"
        elif not m.isdir() and name in self.file_dirs:
            clash = "is both a file and a directory"
        elif any(a in self.files for a in _ancestors(name)):
            clash = "is inside a path that is a file"
        if clash:
            self.bad_members.add(name)
            self.fail(
                "member paths",
                ArchiveError("duplicate_member", f"member {name!r} {clash}", member=name),
            )
            return False
        return True

    def _mkdirs(self, name: str) -> None:
        if self.dest is None:
            return
        for d in [*_ancestors(name), name]:
            if d not in self.made_dirs:
                # The tree is ours and fresh: no member can have planted a link in it.
                (self.dest / d).mkdir(mode=0o700)
                self.made_dirs.add(d)

    def _read_limited(self, tar: tarfile.TarFile, m: tarfile.TarInfo, cap: int) -> bytes:
        f = tar.extractfile(m)
        assert f is not None  # a regular file
        data = bytearray()
        while chunk := f.read(_OUT_CHUNK):
            self._count(len(chunk))
            data += chunk
            if len(data) > cap:
                self.fail(
                    "unpacked size",
                    ArchiveError(
                        "too_large",
                        f"{m.name} is larger than {cap} bytes",
                        member=m.name,
                        limit=cap,
                    ),
                    fatal=True,
                )
        return bytes(data)

    def _count(self, n: int) -> None:
        self.unpacked += n
        if self.unpacked > self.limits.max_unpacked_bytes:
            self.fail(
                "unpacked size",
                ArchiveError(
                    "too_large",
                    f"the archive unpacks to more than {self.limits.max_unpacked_bytes} bytes",
                    limit=self.limits.max_unpacked_bytes,
                ),
                fatal=True,
            )

    def _read_manifest_member(self, tar: tarfile.TarFile, m: tarfile.TarInfo, name: str) -> None:
        cap = _MAX_MANIFEST_BYTES if name == MANIFEST_NAME else _MAX_SIG_BYTES
        data = self._read_limited(tar, m, cap)
        if name == MANIFEST_NAME:
            self.manifest_bytes = data
        else:
            self.sig_bytes = data
        if self.strict and self.manifest_bytes is not None and self.sig_bytes is not None:
            # Both known early: refuse an untrusted archive before unpacking the rest.
            self._verify_manifest()

    def _read_file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, name: str) -> None:
        if len(self.files) + 1 > self.limits.max_files:
            self.fail(
                "file count",
                ArchiveError(
                    "too_many_files",
                    f"more than {self.limits.max_files} files besides "
                    "MANIFEST.json and MANIFEST.sig",
                    limit=self.limits.max_files,
                ),
                fatal=True,
            )
        expected = None
        if self.manifest_files is not None:
            entry = self.manifest_files.get(name)
            if entry is None:
                self.fail("files match manifest", _not_in_manifest(name))
            else:
                expected = entry.size
        ancestors = _ancestors(name)
        self._mkdirs_for_file(ancestors)
        f = tar.extractfile(m)
        assert f is not None
        out = self._open_out(name)
        h = hashlib.sha256()
        size = 0
        keep = bytearray() if name == PLUGIN_YAML else None
        try:
            while chunk := f.read(_OUT_CHUNK):
                size += len(chunk)
                self._count(len(chunk))
                if expected is not None and size > expected:
                    self.fail("files match manifest", _size_mismatch(name, expected, size))
                    expected = None
                h.update(chunk)
                if out is not None:
                    out.write(chunk)
                if keep is not None and len(keep) <= MAX_PLUGIN_YAML_BYTES:
                    keep += chunk[: MAX_PLUGIN_YAML_BYTES + 1 - len(keep)]
            if out is not None:
                out.flush()
                os.fsync(out.fileno())
        finally:
            if out is not None:
                out.close()
        self.files[name] = _FileRecord(h.hexdigest(), size)
        self.file_dirs.update(ancestors)
        if keep is not None:
            self.plugin_yaml = bytes(keep)

    def _mkdirs_for_file(self, ancestors: list[str]) -> None:
        if ancestors:
            self._mkdirs(ancestors[-1])

    def _open_out(self, name: str) -> IO[bytes] | None:
        if self.dest is None:
            return None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.fdopen(os.open(self.dest / name, flags, 0o600), "wb")

    # -- after the stream

    def _verify_manifest(self) -> None:
        """Signature, then MANIFEST.json schema; sets keyid, manifest and manifest_files."""
        if self.manifest_files is not None:
            return
        if self.manifest_bytes is None:
            self.fail(
                "manifest",
                ArchiveError(
                    "missing_member", "the archive has no MANIFEST.json", member=MANIFEST_NAME
                ),
            )
            return
        try:
            self.keyid = verify_signature(self.manifest_bytes, self.sig_bytes, self.trusted)
        except SignatureError as err:
            self.fail("signature", err)
        try:
            self.manifest = parse_manifest(self.manifest_bytes)
        except ManifestError as err:
            self.fail("manifest", err)
            return
        self.manifest_files = self.manifest.by_path()
        if self.strict:
            for name in self.files:
                if name not in self.manifest_files:
                    self.fail("files match manifest", _not_in_manifest(name))

    def _finish(self) -> None:
        self._verify_manifest()
        if self.manifest_files is not None:
            self._compare_files(self.manifest_files)
        self._check_plugin_yaml()

    def _compare_files(self, listed: dict[str, FileEntry]) -> None:
        for name in sorted(set(listed) | set(self.files)):
            entry, got = listed.get(name), self.files.get(name)
            if entry is None:
                self.fail("files match manifest", _not_in_manifest(name))
            elif got is None:
                if name not in self.bad_members:  # already refused for its own reason
                    self.fail(
                        "files match manifest",
                        ArchiveError(
                            "missing_member",
                            f"{name!r} is listed in MANIFEST.json but not in the archive",
                            member=name,
                        ),
                    )
            elif got.size != entry.size:
                self.fail("files match manifest", _size_mismatch(name, entry.size, got.size))
            elif got.sha256 != entry.sha256:
                self.fail(
                    "files match manifest",
                    ArchiveError(
                        "hash_mismatch",
                        f"{name!r} has sha256 {got.sha256}, MANIFEST.json says {entry.sha256}",
                        member=name,
                        expected=entry.sha256,
                        actual=got.sha256,
                    ),
                )

    def _check_plugin_yaml(self) -> None:
        if self.plugin_yaml is None:
            listed = self.manifest_files is not None and PLUGIN_YAML in self.manifest_files
            if not listed:  # when listed, the missing member was reported above
                self.fail(
                    "plugin.yaml",
                    ArchiveError(
                        "missing_member", "the archive has no plugin.yaml", member=PLUGIN_YAML
                    ),
                )
            return
        try:
            meta = parse_plugin_yaml(self.plugin_yaml)
        except ManifestError as err:
            self.fail("plugin.yaml", err)
            return
        self.meta = meta
        if self.manifest is not None:
            if meta.name != self.manifest.name:
                self.fail(
                    "plugin.yaml",
                    ArchiveError(
                        "name_mismatch",
                        f"plugin.yaml name {meta.name!r} differs from MANIFEST.json "
                        f"name {self.manifest.name!r}",
                        plugin_yaml=meta.name,
                        manifest=self.manifest.name,
                    ),
                )
            if str(meta.version) != str(self.manifest.version):
                self.fail(
                    "plugin.yaml",
                    ArchiveError(
                        "version_mismatch",
                        f"plugin.yaml version {meta.version} differs from "
                        f"MANIFEST.json version {self.manifest.version}",
                        plugin_yaml=str(meta.version),
                        manifest=str(self.manifest.version),
                    ),
                )
        entry_err = _entrypoint_error(meta, set(self.files))
        if entry_err is not None:
            self.fail("plugin.yaml", entry_err)


def _ancestors(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _not_in_manifest(name: str) -> ArchiveError:
    return ArchiveError(
        "not_in_manifest", f"member {name!r} is not listed in MANIFEST.json", member=name
    )


def _size_mismatch(name: str, expected: int, actual: int) -> ArchiveError:
    return ArchiveError(
        "size_mismatch",
        f"{name!r} is {actual}{'+' if actual > expected else ''} bytes, MANIFEST.json says "
        f"{expected}",
        member=name,
        expected=expected,
        actual=actual,
    )


def _entrypoint_error(meta: PluginMeta, files: set[str]) -> ManifestError | None:
    base = meta.entry_module.replace(".", "/")
    if f"{base}.py" in files or f"{base}/__init__.py" in files:
        return None
    return ManifestError(
        "invalid_field",
        f"entrypoint {meta.entrypoint!r}: neither {base}.py nor {base}/__init__.py is in "
        "the package",
        field="entrypoint",
    )


# ---- public operations -----------------------------------------------------------------


def _seal(root: Path) -> None:
    """Make an extracted tree read-only: files 0444, directories 0555."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o444)
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o555)  # noqa: S103 -- read-only, on purpose
    os.chmod(root, 0o555)  # noqa: S103 -- the sandbox user must read the plugin code


def extract_archive(
    archive: Path | str,
    dest: Path | str,
    trusted_keys: Sequence[PublicKey],
    limits: ArchiveLimits | None = None,
) -> VerifiedPackage:
    """Verify and unpack ``archive`` to ``dest`` (which must not exist), or leave nothing.

    Raises ``ArchiveError`` / ``SignatureError`` / ``ManifestError`` naming the rule
    broken; ``err.to_dict()`` is what a quarantine reason file needs.
    """
    archive, dest = Path(archive), Path(dest)
    limits = limits or ArchiveLimits()
    if dest.exists() or dest.is_symlink():
        raise ConflictError("exists", f"{dest} already exists", path=str(dest))
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    except OSError as exc:
        raise StateError(
            "io",
            f"cannot create a directory beside {dest}: {exc.strerror or exc}",
            path=str(dest),
        ) from exc
    try:
        scan = _Scan(limits, trusted_keys, strict=True, dest=tmp)
        scan.run(archive)
        assert scan.meta and scan.manifest and scan.keyid and scan.manifest_bytes
        assert scan.sig_bytes is not None  # the signature verified, so it was read
        _seal(tmp)
        try:
            os.replace(tmp, dest)  # a rename: dest appears whole or not at all
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise ConflictError("exists", f"{dest} already exists", path=str(dest)) from exc
            raise
    except OSError as exc:
        remove_tree(tmp)
        raise StateError(
            "io", f"cannot extract to {dest}: {exc.strerror or exc}", path=str(dest)
        ) from exc
    except BaseException:
        remove_tree(tmp)
        raise
    fsync_dir(dest.parent)
    digest = hashlib.sha256(scan.manifest_bytes).hexdigest()
    _log.info(
        "archive_extracted",
        plugin=scan.meta.name,
        version=str(scan.meta.version),
        digest=digest,
        keyid=scan.keyid,
        files=len(scan.files),
        unpacked=scan.unpacked,
    )
    return VerifiedPackage(scan.meta, scan.manifest, digest, scan.keyid, dest, scan.sig_bytes)


def _collect_scan(archive: Path, trusted_keys: Sequence[PublicKey], limits: ArchiveLimits) -> _Scan:
    scan = _Scan(limits, trusted_keys, strict=False)
    scan.run(archive)
    return scan


_CHECK_ORDER: Final = (
    "gzip",
    "member paths",
    "member types",
    "file count",
    "unpacked size",
    "compression ratio",
    "signature",
    "manifest",
    "files match manifest",
    "plugin.yaml",
)
_STREAM_CHECKS: Final = frozenset(_CHECK_ORDER[:6])


def check_archive(
    archive: Path | str,
    trusted_keys: Sequence[PublicKey],
    limits: ArchiveLimits | None = None,
) -> list[Check]:
    """Every check of :func:`extract_archive`, without writing anything, for ``verify``."""
    limits = limits or ArchiveLimits()
    scan = _collect_scan(Path(archive), trusted_keys, limits)
    by_check: dict[str, list[PlugvisorError]] = {}
    for name, err in scan.failures:
        by_check.setdefault(name, []).append(err)
    ok_detail = {
        "gzip": f"{scan.compressed_bytes} compressed bytes read",
        "member paths": f"{scan.members} members, all relative paths inside the root",
        "member types": "only regular files and directories",
        "file count": f"{len(scan.files)} files (limit {limits.max_files})",
        "unpacked size": f"{scan.unpacked} bytes (limit {limits.max_unpacked_bytes})",
        "compression ratio": f"at most {scan.ratio_seen:.1f} (limit {limits.max_ratio:g} "
        f"once {limits.ratio_threshold_bytes} bytes are unpacked)",
        "signature": f"signed by trusted key {scan.keyid}",
        "manifest": f"{len(scan.manifest_files or {})} files listed",
        "files match manifest": "every member listed, every size and sha256 equal",
        "plugin.yaml": f"{scan.meta.name} {scan.meta.version}" if scan.meta else "",
    }
    checks = []
    for name in _CHECK_ORDER:
        errs = by_check.get(name, [])
        if errs:
            detail = "; ".join(str(e) for e in errs)
            checks.append(Check(name, False, detail, tuple(e.code for e in errs)))
        elif not scan.stream_complete and name not in _STREAM_CHECKS:
            checks.append(Check(name, False, "not checked: the archive could not be read"))
        else:
            checks.append(Check(name, True, ok_detail[name]))
    return checks


def _collect_dir(src: Path, limits: ArchiveLimits) -> list[tuple[str, bytes, bool]]:
    """``(path, content, executable)`` of every file to pack, sorted; refuses what extract would."""
    out: list[tuple[str, bytes, bool]] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel_dir = Path(dirpath).relative_to(src).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in sorted(dirnames):
            if d.startswith(".") or d in _EXCLUDED_DIRS or (not rel_dir and d == "tests"):
                continue
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if os.path.islink(os.path.join(dirpath, d)):
                raise ArchiveError("symlink", f"{rel!r} is a symbolic link", member=rel)
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if f.startswith(".") or f.endswith(".pyc"):
                continue
            rel = f"{rel_dir}/{f}" if rel_dir else f
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise ArchiveError(
                    "non_utf8_name", f"file name {_shown(rel)!r} is not UTF-8", member=_shown(rel)
                ) from None
            full = os.path.join(dirpath, f)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise ArchiveError("symlink", f"{rel!r} is a symbolic link", member=rel)
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError("special_file", f"{rel!r} is not a regular file", member=rel)
            if rel in (MANIFEST_NAME, SIGNATURE_NAME):
                raise ArchiveError(
                    "duplicate_member",
                    f"{rel} is generated by pack; remove it from the directory",
                    member=rel,
                )
            if len(out) + 1 > limits.max_files:
                raise ArchiveError(
                    "too_many_files",
                    f"{src} has more than {limits.max_files} files to pack",
                    limit=limits.max_files,
                )
            total += st.st_size
            if total > limits.max_unpacked_bytes:
                raise ArchiveError(
                    "too_large",
                    f"{src} holds more than {limits.max_unpacked_bytes} bytes to pack",
                    limit=limits.max_unpacked_bytes,
                )
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(limits.max_unpacked_bytes + 1)
            out.append((rel, data, bool(st.st_mode & 0o111)))
    out.sort(key=lambda item: item[0])
    return out


def _write_tar(fh: BinaryIO, members: list[tuple[str, bytes, int]]) -> None:
    # filename="" and mtime=0 keep the gzip header free of the temp name and the clock.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar,
    ):
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def pack(
    src_dir: Path | str,
    private_key: Path | str | Ed25519PrivateKey,
    out_dir: Path | str = ".",
    limits: ArchiveLimits | None = None,
) -> Path:
    """Pack and sign a plugin directory into ``out_dir/NAME-VERSION.tar.gz`` (reproducible).

    The result is checked with :func:`check_archive` against the signing key before it
    is renamed into place, so whatever ``pack`` writes, extraction accepts.
    """
    src, out_dir = Path(src_dir), Path(out_dir)
    limits = limits or ArchiveLimits()
    if not src.is_dir():
        raise NotFoundError("directory", f"{src} is not a directory", path=str(src))
    key = (
        private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key)
    )
    files = _collect_dir(src, limits)
    contents = {name: data for name, data, _ in files}
    if PLUGIN_YAML not in contents:
        raise ArchiveError("missing_member", f"{src} has no plugin.yaml", member=PLUGIN_YAML)
    meta = parse_plugin_yaml(contents[PLUGIN_YAML])
    entry_err = _entrypoint_error(meta, set(contents))
    if entry_err is not None:
        raise entry_err
    manifest = Manifest(
        meta.name,
        meta.version,
        tuple(FileEntry(n, hashlib.sha256(d).hexdigest(), len(d)) for n, d, _ in files),
    )
    manifest_bytes = manifest.to_bytes()
    members = [
        (MANIFEST_NAME, manifest_bytes, 0o644),
        (SIGNATURE_NAME, sign_manifest(manifest_bytes, key), 0o644),
        *((n, d, 0o755 if x else 0o644) for n, d, x in files),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / archive_name(meta)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_tar(fh, members)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        pub = key.public_key()
        scan = _collect_scan(tmp, [PublicKey(keyid(pub), pub)], limits)
        if scan.failures:
            raise scan.failures[0][1]
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out_dir)
    _log.info("archive_packed", plugin=meta.name, version=str(meta.version), path=str(out))
    return out
