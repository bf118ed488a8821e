"""Ed25519 keys and MANIFEST.sig (core/signing.py) and the trust store (state/trust.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from plugvisor.core.errors import ConflictError, NotFoundError, SignatureError
from plugvisor.core.signing import (
    PublicKey,
    generate_keypair,
    keyid,
    load_private_key,
    load_public_key,
    sign_manifest,
    verify_signature,
)
from plugvisor.state.trust import TrustStore

MANIFEST = b'{"files":[],"name":"demo","version":"1.0.0"}'


def _pub(priv: Ed25519PrivateKey) -> PublicKey:
    return PublicKey(keyid(priv.public_key()), priv.public_key())


def test_generate_keypair_files_and_modes(tmp_path: Path) -> None:
    key = generate_keypair(tmp_path / "signing.pem")
    priv_path, pub_path = tmp_path / "signing.pem", tmp_path / "signing.pem.pub"
    assert stat.S_IMODE(priv_path.stat().st_mode) == 0o600
    assert priv_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SPKI
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    priv = load_private_key(priv_path)
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key.keyid == hashlib.sha256(raw).hexdigest()
    assert load_public_key(pub_path).keyid == key.keyid
    assert load_public_key(pub_path.read_bytes()).keyid == key.keyid
    assert load_public_key(pub_path.read_text()).keyid == key.keyid


def test_generate_keypair_never_overwrites(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k")
    before = (tmp_path / "k").read_bytes()
    with pytest.raises(ConflictError):
        generate_keypair(tmp_path / "k")
    assert (tmp_path / "k").read_bytes() == before


def test_sign_and_verify() -> None:
    priv = Ed25519PrivateKey.generate()
    sig = sign_manifest(MANIFEST, priv)
    doc = json.loads(sig)
    assert set(doc) == {"keyid", "alg", "sig"}
    assert doc["alg"] == "ed25519"
    assert len(base64.b64decode(doc["sig"])) == 64
    other = _pub(Ed25519PrivateKey.generate())
    assert verify_signature(MANIFEST, sig, [other, _pub(priv)]) == _pub(priv).keyid


def _sig_error(manifest: bytes, sig: bytes | None, trusted: list[PublicKey]) -> str:
    with pytest.raises(SignatureError) as info:
        verify_signature(manifest, sig, trusted)
    return info.value.code


def test_signature_refusals() -> None:
    priv = Ed25519PrivateKey.generate()
    trusted = [_pub(priv)]
    sig = sign_manifest(MANIFEST, priv)
    doc = json.loads(sig)
    assert _sig_error(MANIFEST, None, trusted) == "signature.missing"
    assert _sig_error(MANIFEST, b"not json", trusted) == "signature.malformed"
    assert _sig_error(MANIFEST, b"[]", trusted) == "signature.malformed"
    assert _sig_error(MANIFEST, json.dumps({**doc, "alg": "rsa"}).encode(), trusted) == (
        "signature.malformed"
    )
    assert _sig_error(MANIFEST, json.dumps({**doc, "sig": "!!"}).encode(), trusted) == (
        "signature.malformed"
    )
    assert _sig_error(MANIFEST, json.dumps({**doc, "extra": 1}).encode(), trusted) == (
        "signature.malformed"
    )
    assert _sig_error(MANIFEST, sig, []) == "signature.untrusted"
    assert _sig_error(MANIFEST, sig, [_pub(Ed25519PrivateKey.generate())]) == (
        "signature.untrusted"
    )
    # One byte more in MANIFEST.json (even whitespace) breaks the signature.
    assert _sig_error(MANIFEST + b" ", sig, trusted) == "signature.invalid"
    # A signature by another key relabelled with the trusted keyid.
    forged = json.loads(sign_manifest(MANIFEST, Ed25519PrivateKey.generate()))
    forged["keyid"] = doc["keyid"]
    assert _sig_error(MANIFEST, json.dumps(forged).encode(), trusted) == "signature.invalid"


def test_non_ed25519_keys_are_refused(tmp_path: Path) -> None:
    ec = generate_private_key(SECP256R1())
    pem = ec.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(SignatureError) as info:
        load_public_key(pem)
    assert info.value.code == "signature.bad_key"
    priv_pem = ec.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "ec.pem").write_bytes(priv_pem)
    with pytest.raises(SignatureError):
        load_private_key(tmp_path / "ec.pem")
    with pytest.raises(SignatureError):
        load_public_key(b"-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")


def test_trust_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = generate_keypair(tmp_path / "k")
    store = TrustStore(state)
    assert store.list() == []
    assert store.load_all() == []
    assert store.trust(tmp_path / "k.pub") == key.keyid
    assert store.trust(tmp_path / "k.pub") == key.keyid  # idempotent
    trusted_dir = state / "keys" / "trusted"
    assert stat.S_IMODE(trusted_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "keys").stat().st_mode) == 0o700
    assert store.list() == [(key.keyid, trusted_dir / f"{key.keyid}.pub")]
    assert [k.keyid for k in store.load_all()] == [key.keyid]
    # A private key or garbage is not a public key: refused, nothing written.
    with pytest.raises(SignatureError):
        store.trust(tmp_path / "k")
    assert len(store.list()) == 1
    # A key file whose name does not match its content is not trusted.
    other = generate_keypair(tmp_path / "other")
    (trusted_dir / f"{'0' * 64}.pub").write_bytes((tmp_path / "other.pub").read_bytes())
    assert [k.keyid for k in store.load_all()] == [key.keyid]
    assert other.keyid not in {k.keyid for k in store.load_all()}
    store.remove(key.keyid)
    assert store.load_all() == []
    with pytest.raises(NotFoundError):
        store.remove(key.keyid)
