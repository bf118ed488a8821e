"""Quarantine: refused archives kept with the reason they were refused (SPEC §3).

Each entry is ``quarantine/<UTC timestamp>-<sha256[:12]>/`` holding a copy of the
archive and ``reason.json`` (code, message, details, the archive's SHA-256, its original
name, the time). An entry is built in a hidden temporary directory and renamed into
place, so a listed entry is always complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plugvisor.core.errors import PlugvisorError, StateError
from plugvisor.core.fs import atomic_write
from plugvisor.core.fs import fsync_dir as _fsync_dir
from plugvisor.core.fs import remove_tree as _remove_tree
from plugvisor.state.layout import StateLayout

__all__ = ["Quarantine", "QuarantineEntry"]

REASON_FILE = "reason.json"
#: An archive larger than this is not copied; reason.json still records why and its hash.
DEFAULT_MAX_COPY_BYTES = 64 * 1024**2
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined archive: its directory, the kept copy (if any) and the reason."""

    path: Path
    archive: Path | None
    reason: dict[str, Any]

    @property
    def code(self) -> str:
        return str(self.reason.get("code", ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "archive": None if self.archive is None else str(self.archive),
            **self.reason,
        }


class Quarantine:
    """The ``quarantine/`` directory of one state directory."""

    def __init__(self, layout: StateLayout, *, max_copy_bytes: int = DEFAULT_MAX_COPY_BYTES):
        self.layout = layout
        self.max_copy_bytes = max_copy_bytes

    def put(self, archive_path: Path, error: PlugvisorError) -> Path:
        """Keep a copy of ``archive_path`` with ``error`` as its reason; return the entry dir."""
        src = Path(archive_path)
        qdir = self.layout.quarantine_dir
        qdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = qdir / f".tmp-{uuid.uuid4().hex}"
        try:
            os.mkdir(tmp, 0o700)
            sha256, size, kept_name = self._copy(src, tmp)
            now = datetime.now(UTC)
            reason = {
                "code": error.code,
                "message": error.message,
                "details": _jsonable(error.details),
                "archive_sha256": sha256,
                "archive_size": size,
                "original_name": src.name,
                "archive_kept": kept_name is not None,
                "time": now.isoformat(timespec="microseconds"),
            }
            atomic_write(
                tmp / REASON_FILE,
                (json.dumps(reason, indent=2, sort_keys=True) + "\n").encode(),
                0o600,
            )
            _fsync_dir(tmp)
            stem = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{(sha256 or 'unreadable')[:12]}"
            for n in range(100):
                final = qdir / (stem if n == 0 else f"{stem}.{n}")
                try:
                    os.rename(tmp, final)  # refuses a non-empty existing target
                except OSError as exc:
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        continue  # same archive quarantined within the same microsecond
                    raise
                _fsync_dir(qdir)
                return final
            raise StateError("quarantine_failed", f"no free quarantine name for {stem}")
        except OSError as exc:
            raise StateError(
                "quarantine_failed", f"cannot quarantine {src}: {exc}", archive=str(src)
            ) from exc
        finally:
            if tmp.exists():
                _remove_tree(tmp)

    def list(self) -> list[QuarantineEntry]:
        """Every complete entry, oldest first."""
        qdir = self.layout.quarantine_dir
        if not qdir.is_dir():
            return []
        out: list[QuarantineEntry] = []
        for entry in sorted(qdir.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                reason = json.loads((entry / REASON_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                reason = {"code": "state.unreadable", "message": "reason.json is unreadable"}
            kept = [p for p in entry.iterdir() if p.name != REASON_FILE]
            out.append(QuarantineEntry(entry, kept[0] if kept else None, reason))
        return out

    def _copy(self, src: Path, tmp: Path) -> tuple[str | None, int | None, str | None]:
        """Copy the archive into ``tmp`` while hashing it: ``(sha256, size, kept name)``."""
        name = _SAFE_NAME.sub("_", src.name)[:200] or "archive"
        if name in (REASON_FILE, ".", ".."):
            name = f"archive-{name}"
        digest = hashlib.sha256()
        size = 0
        keep = True
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None, None, None  # the reason is still worth keeping
        with os.fdopen(fd, "rb") as fh:
            out_fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(out_fd, "wb") as out:
                while chunk := fh.read(1 << 16):
                    digest.update(chunk)
                    size += len(chunk)
                    if keep and size > self.max_copy_bytes:
                        keep = False  # keep hashing; drop the copy below
                    if keep:
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        if not keep:
            os.unlink(tmp / name)
        return digest.hexdigest(), size, name if keep else None


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(details, default=str)))
