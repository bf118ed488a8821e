"""Ed25519 signing of MANIFEST.json (SPEC §3).

``MANIFEST.sig`` is the JSON object ``{"keyid": ..., "alg": "ed25519", "sig": base64}``
where ``sig`` signs the exact bytes of MANIFEST.json and ``keyid`` is the SHA-256 (hex)
of the raw 32-byte public key. Private keys are PKCS#8 PEM files (unencrypted, mode
0600); public keys are SubjectPublicKeyInfo PEM files named ``<private>.pub``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from plugvisor.core.errors import ConflictError, SignatureError
from plugvisor.core.fs import atomic_write
from plugvisor.core.manifest import canonical_json

__all__ = [
    "ALG",
    "PublicKey",
    "generate_keypair",
    "keyid",
    "load_private_key",
    "load_public_key",
    "public_pem",
    "sign_manifest",
    "verify_signature",
]

ALG: Final = "ed25519"
_KEYID = re.compile(r"^[0-9a-f]{64}$")
_MAX_SIG_BYTES: Final = 4096
_MAX_KEY_BYTES: Final = 16 * 1024


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key and its keyid."""

    keyid: str
    key: Ed25519PublicKey


def keyid(public_key: Ed25519PublicKey) -> str:
    """SHA-256 hex of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of ``public_key``."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_keypair(path: Path | str) -> PublicKey:
    """Write a new private key to ``path`` (0600) and its public key to ``path.pub``.

    Refuses to overwrite an existing key: losing a signing key is not undoable.
    """
    path = Path(path)
    pub_path = Path(f"{path}.pub")
    for p in (path, pub_path):
        if p.exists():
            raise ConflictError("exists", f"{p} already exists; choose another path", path=str(p))
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, 0o600)
    public = private.public_key()
    atomic_write(pub_path, public_pem(public), 0o644)
    return PublicKey(keyid(public), public)


def _read_key_file(path: Path, kind: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise SignatureError(
            "bad_key", f"cannot read {kind} key {path}: {exc.strerror}", path=str(path)
        ) from exc
    if len(data) > _MAX_KEY_BYTES:
        raise SignatureError("bad_key", f"{path} is too large to be a key file", path=str(path))
    return data


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Load an unencrypted PKCS#8 PEM Ed25519 private key."""
    path = Path(path)
    data = _read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(
            "bad_key", f"{path} is not an unencrypted PEM private key: {exc}", path=str(path)
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("bad_key", f"{path} is not an Ed25519 private key", path=str(path))
    return key


def load_public_key(path_or_pem: Path | str | bytes) -> PublicKey:
    """Load an Ed25519 SubjectPublicKeyInfo PEM from a file or from PEM bytes/text."""
    if isinstance(path_or_pem, bytes):
        data, where = path_or_pem, "<pem>"
    elif isinstance(path_or_pem, str) and path_or_pem.lstrip().startswith("-----BEGIN"):
        data, where = path_or_pem.encode("ascii", "replace"), "<pem>"
    else:
        where = str(path_or_pem)
        data = _read_key_file(Path(path_or_pem), "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(
            "bad_key", f"{where} is not a PEM public key: {exc}", path=where
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("bad_key", f"{where} is not an Ed25519 public key", path=where)
    return PublicKey(keyid(key), key)


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The MANIFEST.sig bytes for ``manifest_bytes``."""
    sig = private_key.sign(manifest_bytes)
    return canonical_json(
        {
            "keyid": keyid(private_key.public_key()),
            "alg": ALG,
            "sig": base64.b64encode(sig).decode("ascii"),
        }
    )


def verify_signature(
    manifest_bytes: bytes, sig_bytes: bytes | None, trusted: Sequence[PublicKey]
) -> str:
    """Verify MANIFEST.sig against the trusted keys; return the signing keyid.

    Raises ``SignatureError`` with rule ``missing`` (no MANIFEST.sig), ``malformed`` (not
    the documented JSON), ``untrusted`` (keyid not among ``trusted``) or ``invalid``
    (the signature does not verify over these exact bytes).
    """
    if sig_bytes is None:
        raise SignatureError(
            "missing",
            "the archive has no MANIFEST.sig; sign it with 'plugvisor pack DIR --key KEY'",
        )
    if len(sig_bytes) > _MAX_SIG_BYTES:
        raise SignatureError("malformed", "MANIFEST.sig is too large")
    try:
        doc = json.loads(sig_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError("malformed", f"MANIFEST.sig is not UTF-8 JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {"keyid", "alg", "sig"}:
        raise SignatureError(
            "malformed", "MANIFEST.sig must be an object with exactly keyid, alg and sig"
        )
    kid, alg, sig_b64 = doc["keyid"], doc["alg"], doc["sig"]
    if alg != ALG:
        raise SignatureError("malformed", f"MANIFEST.sig alg must be {ALG!r}, not {alg!r}")
    if not isinstance(kid, str) or not _KEYID.match(kid):
        raise SignatureError("malformed", "MANIFEST.sig keyid must be 64 lower-case hex digits")
    try:
        sig = base64.b64decode(sig_b64, validate=True) if isinstance(sig_b64, str) else b""
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("malformed", f"MANIFEST.sig sig is not base64: {exc}") from exc
    if len(sig) != 64:
        raise SignatureError("malformed", "MANIFEST.sig sig must be a 64-byte Ed25519 signature")
    key = next((k for k in trusted if k.keyid == kid), None)
    if key is None:
        raise SignatureError(
            "untrusted",
            f"signed by key {kid}, which is not trusted; trust it with "
            "'plugvisor keys trust FILE.pub'",
            keyid=kid,
        )
    try:
        key.key.verify(sig, manifest_bytes)
    except InvalidSignature as exc:
        raise SignatureError(
            "invalid", f"the signature by key {kid} does not verify over MANIFEST.json", keyid=kid
        ) from exc
    return kid
