"""``GET /api/security-log``: the newest violation entries and the hash chain's status."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from plugvisor.api.app import services
from plugvisor.api.audit import read_security_log, verify_security_log
from plugvisor.api.openapi import operation
from plugvisor.api.schemas import SecurityLogQuerySchema, SecurityLogSchema
from plugvisor.state.tokens import Role

__all__ = ["bp"]

bp = Blueprint("security", __name__)


@bp.get("/api/security-log")
@operation(
    summary="Newest security-log entries (optionally of one plugin) and chain verification",
    tag="security",
    role=Role.VIEWER,
    query=SecurityLogQuerySchema,
    responses={200: ("Entries, oldest first, and the chain status", SecurityLogSchema)},
)
def security_log(query: dict[str, Any]) -> ResponseReturnValue:
    path = services(current_app).layout.security_log
    return jsonify(
        {
            "entries": read_security_log(path, plugin=query["plugin"], limit=query["limit"]),
            "chain": verify_security_log(path),
        }
    )
