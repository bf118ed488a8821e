"""The hash-chained security log: one JSON line per violation, tamper-evident.

Each line is ``{time, plugin, version, request_id, kind, detail, action, prev, hash}``
where ``hash = sha256(prev + canonical JSON of the record without "hash")`` and ``prev``
is the previous line's hash (:data:`GENESIS` for the first line). Removing, reordering,
altering or inserting a line breaks the chain at that line. A removed *last* line leaves a
valid chain, so a small ``<log>.head`` file (``{"lines": N, "hash": ...}``, replaced
atomically after every append) records where the chain ended; :func:`verify_log` checks
the log against it.

Appends from several processes (the daemon, ``plugvisor dev run``, workers' trials) are
serialised with ``fcntl.flock`` on the log file itself; each line is fsync'd before the
head moves. What this does not stop: someone who can write both files can recompute the
whole chain. Ship the log off the box (or the head's hash) for that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plugvisor.core.errors import StateError
from plugvisor.core.fs import atomic_write, flock_exclusive

__all__ = [
    "FIELDS",
    "GENESIS",
    "ChainReport",
    "SecurityLog",
    "head_path",
    "verify",
    "verify_log",
]

#: ``prev`` of the first line.
GENESIS = "0" * 64
#: The fields of a line, in the order they are written (the hash covers all but ``hash``).
FIELDS = ("time", "plugin", "version", "request_id", "kind", "detail", "action", "prev", "hash")
_MAX_DETAIL = 4000
_LOCK_TIMEOUT_S = 10.0
_TAIL_CHUNK = 8192


def head_path(path: Path) -> Path:
    """Where the head (last hash and line count) of the log at ``path`` is kept."""
    return path.with_name(path.name + ".head")


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _chain_hash(prev: str, record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(prev.encode("ascii") + _canonical(body)).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    """The result of :func:`verify_log`: ``first_bad_line`` is 1-based, None when ok."""

    ok: bool
    lines: int
    first_bad_line: int | None
    reason: str


def _locked(fd: int, timeout: float) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive ``flock`` on ``fd``, waiting at most ``timeout`` seconds."""
    return flock_exclusive(
        fd, timeout, StateError("lock_timeout", f"security log still locked after {timeout}s")
    )


def _last_line(fd: int) -> bytes:
    """The last complete line of the file open at ``fd`` (b"" when empty)."""
    end = os.lseek(fd, 0, os.SEEK_END)
    buf = b""
    pos = end
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        stripped = buf.rstrip(b"\n")
        nl = stripped.rfind(b"\n")
        if nl >= 0:
            return stripped[nl + 1 :]
    return buf.rstrip(b"\n")


def _read_head(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(head_path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError("bad_head", f"{head_path(path)}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("lines"), int):
        raise StateError("bad_head", f"{head_path(path)}: not a head record")
    return data


def _write_head(path: Path, lines: int, last_hash: str) -> None:
    atomic_write(head_path(path), _canonical({"lines": lines, "hash": last_hash}) + b"\n", 0o640)


class SecurityLog:
    """Appends hash-chained violation records to ``path`` (safe across processes)."""

    def __init__(self, path: Path | str, *, lock_timeout: float = _LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout

    def record(  # noqa: PLR0917 -- the interface in docs/ARCHITECTURE.md, positional
        self,
        plugin: str,
        version: str | None,
        request_id: str | None,
        kind: str,
        detail: str,
        action: str,
    ) -> dict[str, Any]:
        """Append one violation; returns the line as written (with ``prev`` and ``hash``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            with _locked(fd, self.lock_timeout):
                last = _last_line(fd)
                prev = GENESIS
                if last:
                    try:
                        prev = str(json.loads(last)["hash"])
                    except (ValueError, KeyError, TypeError) as exc:
                        raise StateError(
                            "corrupt_log",
                            f"{self.path}: last line is not a chained record; run "
                            "`plugvisor security-log verify`",
                        ) from exc
                lines = self._count_after(prev, bool(last))
                entry: dict[str, Any] = {
                    "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "plugin": plugin,
                    "version": version,
                    "request_id": request_id,
                    "kind": kind,
                    "detail": str(detail)[:_MAX_DETAIL],
                    "action": action,
                    "prev": prev,
                }
                entry["hash"] = _chain_hash(prev, entry)
                os.write(fd, _canonical(entry) + b"\n")
                os.fsync(fd)
                _write_head(self.path, lines + 1, entry["hash"])
        finally:
            os.close(fd)
        return entry

    def _count_after(self, last_hash: str, non_empty: bool) -> int:
        """Lines in the log now: the head's count when it agrees, else a recount."""
        if not non_empty:
            return 0
        head = _read_head(self.path)
        if head is not None and head.get("hash") == last_hash:
            return int(head["lines"])
        # The head lags (a crash between append and head update) or is missing: recount.
        with self.path.open("rb") as fh:
            return sum(1 for _ in fh)

    def verify(self) -> ChainReport:
        """:func:`verify_log` of this log."""
        return verify_log(self.path)


def verify_log(path: Path | str) -> ChainReport:
    """Check the chain line by line, then the head; the first bad line and why."""
    path = Path(path)
    prev = GENESIS
    lines = 0
    hashes: list[str] = []
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        if head_path(path).exists():
            return ChainReport(False, 0, 1, "log missing but its head exists")
        return ChainReport(True, 0, None, "no log yet")
    with fh:
        for number, raw in enumerate(fh, start=1):
            lines = number
            bad = _check_line(raw, prev)
            if bad:
                return ChainReport(False, number - 1, number, bad)
            prev = json.loads(raw)["hash"]
            hashes.append(prev)
    try:
        head = _read_head(path)
    except StateError as exc:
        return ChainReport(False, lines, None, exc.message)
    if head is None:
        if lines == 0:
            return ChainReport(True, 0, None, "empty log")
        return ChainReport(False, lines, None, f"{head_path(path).name} missing")
    head_lines = int(head["lines"])
    if lines < head_lines:
        return ChainReport(
            False,
            lines,
            lines + 1,
            f"truncated: the head records {head_lines} lines, the log has {lines}",
        )
    if head_lines and hashes[head_lines - 1] != head.get("hash"):
        return ChainReport(
            False, lines, head_lines, f"line {head_lines} does not match the head's hash"
        )
    if lines > head_lines:
        # A crash between the append and the head update leaves the head behind by a line.
        if lines - head_lines > 1:
            return ChainReport(
                False,
                lines,
                head_lines + 1,
                f"{lines - head_lines} lines after the head's last line",
            )
        return ChainReport(True, lines, None, "chain intact; head one line behind")
    return ChainReport(True, lines, None, "chain intact")


#: Alias named in docs/ARCHITECTURE.md.
verify = verify_log


def _check_line(raw: bytes, prev: str) -> str:
    """Why a line is bad ("" when it chains correctly after ``prev``)."""
    if not raw.endswith(b"\n"):
        return "incomplete last line (no newline)"
    try:
        record = json.loads(raw)
    except ValueError:
        return "not JSON"
    if not isinstance(record, dict) or set(record) != set(FIELDS):
        return f"fields are not exactly {', '.join(FIELDS)}"
    if record["prev"] != prev:
        return "prev does not match the previous line's hash (line removed, inserted or reordered)"
    if _chain_hash(prev, record) != record["hash"]:
        return "hash does not match the content (line altered)"
    return ""
