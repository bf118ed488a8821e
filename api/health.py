"""``GET /api/health`` (no token): daemon, broker, workers and sandbox layers at a glance.

Answers 200 when the daemon's call socket accepts a connection and the broker is
reachable, else 503; the body says which part is down and why. Each probe has a short
timeout so a hung dependency cannot hang the health check.

Workers: on RabbitMQ, Celery's remote-control ``ping`` lists the live workers. The
embedded SQLite broker has no fanout, so remote control is off there; the health check
then reports what the job records show instead (jobs picked up recently, and how long
the oldest queued job has waited).
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from plugvisor.api.app import ApiServices, services
from plugvisor.api.openapi import operation
from plugvisor.api.schemas import HealthSchema
from plugvisor.core.errors import PlugvisorError
from plugvisor.core.log import get_logger
from plugvisor.state.registry import JobStatus

__all__ = ["bp", "probe_broker", "probe_daemon", "probe_workers"]

_log = get_logger(__name__)
_PROBE_TIMEOUT_S = 2.0
_LAYERS_TTL_S = 60.0
# A job picked up (or finished) within this window counts as a sign of a live worker.
_RECENT_S = 600.0

bp = Blueprint("health", __name__)


def probe_daemon(svc: ApiServices, timeout: float = _PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Can a client connect to the daemon's call socket?"""
    path = svc.layout.daemon_socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as exc:
        return {"reachable": False, "socket": str(path), "detail": exc.strerror or str(exc)}
    finally:
        sock.close()
    return {"reachable": True, "socket": str(path), "detail": ""}


def probe_broker(svc: ApiServices, timeout: float = _PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Can a kombu connection to the configured broker be made?"""
    from kombu.connection import Connection  # noqa: PLC0415 -- kombu only for this probe

    from plugvisor.messaging.broker import broker_url, redact  # noqa: PLC0415 -- kombu only here

    url = broker_url(svc.settings)
    shown = "embedded (SQLite)" if svc.settings.embedded_broker else redact(url)
    try:
        with Connection(url, connect_timeout=timeout) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # kombu raises many transport-specific types
        return {"reachable": False, "url": shown, "detail": f"{type(exc).__name__}: {exc}"}
    return {"reachable": True, "url": shown, "detail": ""}


def probe_workers(svc: ApiServices, timeout: float = 1.0) -> dict[str, Any]:
    """Which workers answer a ping (RabbitMQ), or what the job records show (embedded)."""
    try:
        out: dict[str, Any] = _job_evidence(svc)
    except PlugvisorError as err:  # the registry is unusable: report it, never a 500
        out = {"queued_jobs": None, "oldest_queued_age_s": None, "recently_active": False,
               "registry_error": err.to_dict()}  # fmt: skip
    if svc.settings.embedded_broker:
        out.update(method="job_records", names=[], seen=out["recently_active"] or None)
        return out
    from plugvisor.messaging.celery_app import producer  # noqa: PLC0415 -- Celery only here

    try:
        replies = producer(svc.settings).control.ping(timeout=timeout) or []
    except Exception as exc:  # any broker failure means "not seen"
        out.update(method="ping", names=[], seen=False, detail=f"{type(exc).__name__}: {exc}")
        return out
    names = sorted(name for reply in replies for name in reply)
    out.update(method="ping", names=names, seen=bool(names))
    return out


def _job_evidence(svc: ApiServices) -> dict[str, Any]:
    now = datetime.now(UTC)
    registry = svc.registry
    queued = registry.list_jobs(status=JobStatus.queued, limit=500)
    recent = [
        j
        for j in registry.list_jobs(limit=20)
        if j.status is not JobStatus.queued and (now - j.updated).total_seconds() < _RECENT_S
    ]
    oldest = min((j.created for j in queued), default=None)
    return {
        "queued_jobs": len(queued),
        "oldest_queued_age_s": None if oldest is None else round((now - oldest).total_seconds(), 1),
        "recently_active": bool(recent),
    }


def _layers(svc: ApiServices) -> dict[str, Any]:
    """Sandbox layers as this host offers them (probing spawns a process: cached a minute)."""
    cached = svc.cache.get("layers")
    if cached is not None and time.monotonic() - cached[0] < _LAYERS_TTL_S:
        return dict(cached[1])
    from plugvisor.sandbox import detect_layers  # noqa: PLC0415

    try:
        layers: dict[str, Any] = detect_layers(svc.settings.sandbox_user).to_dict()
    except PlugvisorError as err:
        layers = {"error": err.to_dict()}
    svc.cache["layers"] = (time.monotonic(), layers)
    return layers


@bp.get("/api/health")
@operation(
    summary="Health of the daemon, broker, workers and sandbox layers (no token needed)",
    tag="meta",
    role=None,
    responses={
        200: ("Daemon and broker reachable", HealthSchema),
        503: ("Daemon or broker unreachable", HealthSchema),
    },
)
def health() -> ResponseReturnValue:
    svc = services(current_app)
    body = {
        "daemon": probe_daemon(svc),
        "broker": probe_broker(svc),
        "workers": probe_workers(svc),
        "sandbox": _layers(svc),
    }
    ok = body["daemon"]["reachable"] and body["broker"]["reachable"]
    return jsonify({"ok": ok, **body}), 200 if ok else 503
