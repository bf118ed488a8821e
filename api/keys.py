"""``/api/keys``: the trusted signing keys (list: viewer; trust and remove: admin)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from plugvisor.api.app import services
from plugvisor.api.auth import current_principal
from plugvisor.api.openapi import operation
from plugvisor.api.schemas import KeyListSchema, KeySchema, TrustKeyRequestSchema
from plugvisor.core.log import get_logger
from plugvisor.core.signing import load_public_key
from plugvisor.state.tokens import Role
from plugvisor.state.trust import TrustStore

__all__ = ["bp"]

_log = get_logger(__name__)
bp = Blueprint("keys", __name__)


def _store() -> TrustStore:
    return TrustStore(services(current_app).layout.root)


@bp.get("/api/keys")
@operation(
    summary="Trusted signing keys",
    tag="keys",
    role=Role.VIEWER,
    responses={200: ("Every trusted key", KeyListSchema)},
)
def list_keys() -> ResponseReturnValue:
    return jsonify({"keys": [{"keyid": kid} for kid, _ in _store().list()]})


@bp.post("/api/keys")
@operation(
    summary="Trust a signing key (Ed25519 public key, PEM)",
    tag="keys",
    role=Role.ADMIN,
    body=TrustKeyRequestSchema,
    responses={201: ("Trusted (idempotent)", KeySchema)},
)
def trust_key(body: dict[str, Any]) -> ResponseReturnValue:
    pem = body["public_key"]
    # Bytes, never the str: load_public_key reads a str that is not PEM as a *path*, which
    # would let a caller trust any key file on this host and probe which files exist.
    # A malformed or non-Ed25519 key is signature.bad_key, before any write.
    load_public_key(pem.encode("ascii", "replace"))
    staging = services(current_app).layout.staging_dir
    fd, tmp = tempfile.mkstemp(prefix="key-", suffix=".pub", dir=staging)
    try:
        with os.fdopen(fd, "w", encoding="ascii", errors="replace") as fh:
            fh.write(pem)
        keyid = _store().trust(Path(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)
    principal = current_principal()
    _log.info("key_trusted_via_api", keyid=keyid, by=principal.describe() if principal else None)
    return jsonify({"keyid": keyid}), 201


@bp.delete("/api/keys/<keyid>")
@operation(
    summary="Stop trusting a signing key",
    tag="keys",
    role=Role.ADMIN,
    responses={200: ("Removed", KeySchema), 404: ("Not trusted", None)},
)
def remove_key(keyid: str) -> ResponseReturnValue:
    _store().remove(keyid)  # NotFoundError -> 404
    principal = current_principal()
    _log.info("key_untrusted_via_api", keyid=keyid, by=principal.describe() if principal else None)
    return jsonify({"keyid": keyid})
