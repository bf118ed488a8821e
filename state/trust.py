"""Trusted signing keys: ``<state>/keys/trusted/<keyid>.pub`` (PEM), directory mode 0700."""

from __future__ import annotations

import builtins
import os
import re
from pathlib import Path
from typing import Final

from plugvisor.core.errors import NotFoundError, PlugvisorError
from plugvisor.core.fs import atomic_write
from plugvisor.core.log import get_logger
from plugvisor.core.signing import PublicKey, load_public_key, public_pem
from plugvisor.state.layout import StateLayout

__all__ = ["TrustStore"]

_KEY_FILE: Final = re.compile(r"^([0-9a-f]{64})\.pub$")
_log = get_logger(__name__)


class TrustStore:
    """The set of Ed25519 public keys whose signatures plugvisor accepts."""

    def __init__(self, state_dir: Path | str) -> None:
        self.layout = StateLayout(Path(state_dir))
        self.dir = self.layout.trusted_keys_dir

    def _ensure(self) -> None:
        for d in (self.dir.parent, self.dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)  # mkdir's mode is masked by umask and ignored if it existed

    def trust(self, pub_path: Path | str) -> str:
        """Add the public key in ``pub_path`` (Ed25519 PEM) and return its keyid.

        Idempotent: trusting the same key again rewrites the same file.
        """
        key = load_public_key(Path(pub_path))
        self._ensure()
        # Stored re-serialised, so the file holds exactly one well-formed key.
        atomic_write(self.layout.trusted_key(key.keyid), public_pem(key.key), 0o644)
        _log.info("key_trusted", keyid=key.keyid, source=str(pub_path))
        return key.keyid

    def remove(self, keyid: str) -> None:
        """Stop trusting ``keyid``; ``NotFoundError`` if it was not trusted."""
        path = self.dir / f"{keyid}.pub"
        if not _KEY_FILE.match(path.name) or not path.is_file():
            raise NotFoundError("key", f"key {keyid} is not trusted", keyid=keyid)
        path.unlink()
        _log.info("key_untrusted", keyid=keyid)

    def list(self) -> list[tuple[str, Path]]:
        """``(keyid, path)`` of every trusted key file, sorted by keyid."""
        if not self.dir.is_dir():
            return []
        out = []
        for entry in sorted(self.dir.iterdir()):
            m = _KEY_FILE.match(entry.name)
            if m and entry.is_file() and not entry.is_symlink():
                out.append((m.group(1), entry))
        return out

    def load_all(self) -> builtins.list[PublicKey]:
        """Every trusted key that loads and matches its file name.

        A damaged key file is skipped with a warning: it can only reduce what is trusted.
        """
        keys: builtins.list[PublicKey] = []
        for kid, path in self.list():
            try:
                key = load_public_key(path)
            except PlugvisorError as err:
                _log.warning("trusted_key_unreadable", path=str(path), error=err.code)
                continue
            if key.keyid != kid:
                _log.warning("trusted_key_name_mismatch", path=str(path), keyid=key.keyid)
                continue
            keys.append(key)
        return keys
