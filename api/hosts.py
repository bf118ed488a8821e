"""``/api/hosts``: the daemons of the fleet, from their heartbeats (viewer)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from plugvisor.api.app import services
from plugvisor.api.openapi import operation
from plugvisor.api.schemas import HostListSchema
from plugvisor.state.tokens import Role

__all__ = ["bp"]

bp = Blueprint("hosts", __name__)


@bp.get("/api/hosts")
@operation(
    summary="Hosts of the fleet: up or down, sandbox layers, load, what each runs",
    tag="hosts",
    role=Role.VIEWER,
    responses={200: ("Every host that ever registered", HostListSchema)},
)
def list_hosts() -> ResponseReturnValue:
    svc = services(current_app)
    return jsonify(
        {"hosts": svc.registry.host_summaries(down_after_s=svc.settings.host_down_after_s)}
    )
