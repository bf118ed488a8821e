"""API bearer tokens: roles, hashed storage in ``<state>/api-tokens.json``, verification.

A token is 32 random bytes (URL-safe base64 with a ``pvt_`` prefix), shown once when
created; only its SHA-256 is stored. A salted slow hash would add nothing here: the
token has 256 bits of entropy, so the hash cannot be brute-forced, and a fast hash
keeps verification per request cheap. Comparison uses :func:`hmac.compare_digest`.

The file is rewritten atomically (temp file + ``os.replace``) under an ``fcntl`` lock
on a sibling lock file, so several processes (CLI, gunicorn workers) can create and
revoke tokens concurrently; readers cache the parsed file by its ``stat`` signature.
"""

from __future__ import annotations

import builtins
import enum
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugvisor.core.errors import NotFoundError, StateError

__all__ = ["TOKENS_FILE", "Role", "TokenInfo", "TokenStore", "hash_token"]

#: File name of the token store inside the state directory.
TOKENS_FILE = "api-tokens.json"
_PREFIX = "pvt_"
_FORMAT = 1


class Role(enum.Enum):
    """What a token may do; each role includes the ones below it."""

    #: Read-only: every GET of the API.
    VIEWER = "viewer"
    #: Day-to-day operations: reload, rollback, audit, call.
    OPERATOR = "operator"
    #: Everything: upload, review, keys.
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        """True when this role is ``needed`` or higher."""
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, value: str) -> Role:
        """The role named ``value``; ``StateError("invalid_role")`` names the choices."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(r.value for r in cls)
            raise StateError(
                "invalid_role", f"role {value!r} is not one of {choices}", role=value
            ) from None


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class TokenInfo:
    """One stored token, without the secret: ``id`` is a short prefix of its hash."""

    id: str
    role: Role
    label: str
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role.value,
            "label": self.label,
            "created": self.created,
        }


@dataclass(frozen=True)
class _Entry:
    sha256: str
    info: TokenInfo


def hash_token(token: str) -> str:
    """SHA-256 hex of a token's UTF-8 bytes (what the store keeps)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The token file of one state directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._cache: tuple[tuple[int, int, int], builtins.list[_Entry]] | None = None
        self._cache_lock = threading.Lock()

    # ---- public ------------------------------------------------------------------------
    def create(self, role: Role | str, label: str = "") -> str:
        """Store a new token with ``role``; return the token (the only time it is seen)."""
        role = role if isinstance(role, Role) else Role.parse(role)
        token = _PREFIX + secrets.token_urlsafe(32)
        digest = hash_token(token)
        info = TokenInfo(id=digest[:12], role=role, label=label, created=round(time.time(), 3))
        with self._locked():
            entries = self._read()
            entries.append(_Entry(digest, info))
            self._write(entries)
        return token

    def verify(self, token: str) -> Role | None:
        """The role of ``token``, or None when it is unknown (constant-time per entry)."""
        if not token:
            return None
        digest = hash_token(token)
        found: Role | None = None
        # Compare against every entry, not stopping at a match, so timing does not
        # tell where in the file a token sits.
        for entry in self._cached():
            if hmac.compare_digest(entry.sha256, digest):
                found = entry.info.role
        return found

    def list(self) -> builtins.list[TokenInfo]:
        """Every stored token's id, role, label and creation time."""
        return [e.info for e in self._cached()]

    def revoke(self, token_id: str) -> TokenInfo:
        """Remove the token whose id (or full hash) is ``token_id``; return what was removed."""
        with self._locked():
            entries = self._read()
            keep = [e for e in entries if token_id not in (e.info.id, e.sha256)]
            gone = [e for e in entries if e not in keep]
            if not gone:
                raise NotFoundError("token", f"no token with id {token_id!r}", id=token_id)
            self._write(keep)
        return gone[0].info

    # ---- file handling -------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(
                "unusable", f"cannot lock token store {self.path}: {exc}", path=str(self.path)
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _cached(self) -> builtins.list[_Entry]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(
                "unusable", f"cannot read token store {self.path}: {exc}", path=str(self.path)
            ) from exc
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._cache_lock:
            if self._cache is not None and self._cache[0] == sig:
                return self._cache[1]
        entries = self._read()
        with self._cache_lock:
            self._cache = (sig, entries)
        return entries

    def _read(self) -> builtins.list[_Entry]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(
                "unusable", f"cannot read token store {self.path}: {exc}", path=str(self.path)
            ) from exc
        try:
            data = json.loads(raw)
            return [
                _Entry(
                    str(item["sha256"]),
                    TokenInfo(
                        id=str(item["id"]),
                        role=Role(item["role"]),
                        label=str(item.get("label", "")),
                        created=float(item.get("created", 0.0)),
                    ),
                )
                for item in data["tokens"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(
                "corrupt_tokens", f"token store {self.path} is malformed: {exc}",
                path=str(self.path),
            ) from exc  # fmt: skip

    def _write(self, entries: builtins.list[_Entry]) -> None:
        doc = {
            "format": _FORMAT,
            "tokens": [{"sha256": e.sha256, **e.info.to_dict()} for e in entries],
        }
        data = json.dumps(doc, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        try:
            fd, tmp = tempfile.mkstemp(prefix=".api-tokens.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StateError(
                "unusable", f"cannot write token store {self.path}: {exc}", path=str(self.path)
            ) from exc
        with self._cache_lock:
            self._cache = None
