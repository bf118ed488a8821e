"""``/api/plugins``: list and show plugins, start upload / reload / rollback / audit / review
jobs, read the audit report, and call a plugin through the daemon.

Job-starting endpoints answer ``202 {"job_id", "status_url"}`` with a ``Location``
header. An ``Idempotency-Key`` header makes a retry safe: the same key (per token)
returns the job the first request started instead of starting another.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from plugvisor.api.app import ApiServices, services
from plugvisor.api.audit import build_audit_report
from plugvisor.api.auth import current_principal
from plugvisor.api.openapi import HeaderDoc, operation
from plugvisor.api.schemas import (
    AcceptedSchema,
    AuditQuerySchema,
    AuditReportSchema,
    AuditRequestSchema,
    CallResponseSchema,
    PluginListSchema,
    PluginSchema,
    ReloadRequestSchema,
    ReviewRequestSchema,
    RollbackRequestSchema,
    UploadFormSchema,
)
from plugvisor.core.errors import ApiError, ConflictError, PlugvisorError, error_from_dict
from plugvisor.messaging.jobs import AuditJob, Job, ReloadJob, ReviewJob, RollbackJob, UploadJob
from plugvisor.state.layout import PLUGIN_NAME_RE
from plugvisor.state.registry import PluginRecord, Registry, VersionStatus
from plugvisor.state.tokens import Role

__all__ = ["IDEMPOTENCY_HEADER", "PayloadTooLarge", "accepted", "bp", "plugin_json"]

IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")  # visible ASCII, as RFC drafts suggest
_IDEM_DOC: dict[str, HeaderDoc] = {
    IDEMPOTENCY_HEADER: (
        "Retry-safe key (visible ASCII, at most 200 characters): the same key from the "
        "same token returns the job already started instead of a new one.",
        {"type": "string", "pattern": _KEY_RE.pattern, "minLength": 1, "maxLength": 200},
    )
}
_ACCEPTED = {202: ("Job started; follow status_url", AcceptedSchema)}
_NOT_FOUND = {404: ("No such plugin or version", None)}

bp = Blueprint("plugins", __name__)


class PayloadTooLarge(ApiError):
    """An upload larger than ``max_upload_bytes``: ``request.too_large``, HTTP 413."""

    http_status = 413


def _svc() -> ApiServices:
    return services(current_app)


def _idempotency_key() -> str | None:
    """The request's key, scoped to its token so two clients' keys never collide."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _KEY_RE.match(key):
        raise ApiError(
            "invalid",
            f"header {IDEMPOTENCY_HEADER!r} must be 1-200 visible ASCII characters",
            field=IDEMPOTENCY_HEADER,
        )
    principal = current_principal()
    return f"{principal.token_id if principal else '-'}:{key}"


def _who() -> str:
    principal = current_principal()
    return principal.describe() if principal else "anonymous"


def accepted(job_id: str) -> ResponseReturnValue:
    """The 202 answer of every job-starting endpoint."""
    url = url_for("jobs.get_job", job_id=job_id)
    response = jsonify({"job_id": job_id, "status_url": url})
    response.status_code = 202
    response.headers["Location"] = url
    return response


def _start(job: type[Job], params: dict[str, Any]) -> ResponseReturnValue:
    message = job.from_dict({**params, "requested_by": _who()})
    job_id = _svc().start_job(message, _idempotency_key())
    return accepted(job_id)


def _check_target(registry: Registry, name: str, version: str | None) -> PluginRecord:
    plugin = registry.get_plugin(name)  # NotFoundError -> 404
    if version is not None:
        registry.get_version(name, version)
    return plugin


def plugin_json(registry: Registry, plugin: PluginRecord, events: int = 0) -> dict[str, Any]:
    """A plugin with its versions (and its latest ``events`` state changes)."""
    out = registry.plugin_summary(plugin, down_after_s=_svc().settings.host_down_after_s)
    if events:
        out["events"] = [
            e.to_dict() for e in registry.list_events(limit=events, plugin=plugin.name)
        ]
    return out


# ---- reads ---------------------------------------------------------------------------------
@bp.get("/api/plugins")
@operation(
    summary="List plugins with their versions",
    tag="plugins",
    role=Role.VIEWER,
    responses={200: ("Every plugin", PluginListSchema)},
)
def list_plugins() -> ResponseReturnValue:
    registry = _svc().registry
    return jsonify({"plugins": [plugin_json(registry, p) for p in registry.list_plugins()]})


@bp.get("/api/plugins/<name>")
@operation(
    summary="One plugin: active and previous version, every version, recent events",
    tag="plugins",
    role=Role.VIEWER,
    responses={200: ("The plugin", PluginSchema), **_NOT_FOUND},
)
def get_plugin(name: str) -> ResponseReturnValue:
    registry = _svc().registry
    return jsonify(plugin_json(registry, registry.get_plugin(name), events=20))


@bp.get("/api/plugins/audit")
@operation(
    summary="Security report of a plugin",
    description="Signature and integrity status, scan findings (rule, severity, file, line, "
    "CWE/OWASP), profile, runtime violations from the security log and its chain status, "
    "and per host of a fleet the version it runs.",
    tag="plugins",
    role=Role.VIEWER,
    query=AuditQuerySchema,
    responses={200: ("The report", AuditReportSchema), **_NOT_FOUND},
)
def audit_report(query: dict[str, Any]) -> ResponseReturnValue:
    svc = _svc()
    return jsonify(build_audit_report(svc.registry, svc.layout, svc.settings, query["name"]))


# ---- jobs ----------------------------------------------------------------------------------
@bp.post("/api/plugins")
@operation(
    summary="Upload a signed plugin archive (starts an upload job)",
    tag="plugins",
    role=Role.ADMIN,
    form=UploadFormSchema,
    headers=_IDEM_DOC,
    responses={**_ACCEPTED, 413: ("Archive larger than max_upload_bytes", None)},
)
def upload(form: dict[str, Any]) -> ResponseReturnValue:
    svc = _svc()
    archive: FileStorage = form["archive"]
    path = _save_upload(svc, archive)
    try:
        job = UploadJob(
            archive=str(path),
            filename=secure_filename(archive.filename or "") or path.name,
            requested_by=_who(),
        )
        job_id = svc.start_job(job, _idempotency_key())
        if svc.registry.get_job(job_id).params.get("archive") != str(path):
            path.unlink(missing_ok=True)  # a retry: the first request's file is the job's
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return accepted(job_id)


def _save_upload(svc: ApiServices, archive: FileStorage) -> Path:
    """Stream the part to ``staging/uploads/<uuid>.tar.gz`` and enforce the exact size limit."""
    uploads = svc.layout.staging_dir / "uploads"
    uploads.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = uploads / f"{uuid.uuid4().hex}.tar.gz"
    tmp = final.with_suffix(".part")
    limit = svc.settings.max_upload_bytes
    size = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := archive.stream.read(1024 * 1024):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        "too_large",
                        f"archive is larger than the limit of {limit} bytes "
                        "(setting max_upload_bytes)",
                        limit=limit,
                    )
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise ApiError("invalid", "field 'archive': the file is empty", field="archive")
        os.replace(tmp, final)  # the job never sees a half-written archive
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


@bp.post("/api/plugins/reload")
@operation(
    summary="Reload a plugin to a version (starts a reload job)",
    tag="plugins",
    role=Role.OPERATOR,
    body=ReloadRequestSchema,
    headers=_IDEM_DOC,
    responses={**_ACCEPTED, **_NOT_FOUND},
)
def reload(body: dict[str, Any]) -> ResponseReturnValue:
    _check_target(_svc().registry, body["name"], body["version"])
    return _start(ReloadJob, {"name": body["name"], "version": body["version"]})


@bp.post("/api/plugins/rollback")
@operation(
    summary="Roll a plugin back to the previous or a named version (starts a rollback job)",
    tag="plugins",
    role=Role.OPERATOR,
    body=RollbackRequestSchema,
    headers=_IDEM_DOC,
    responses={**_ACCEPTED, **_NOT_FOUND},
)
def rollback(body: dict[str, Any]) -> ResponseReturnValue:
    _check_target(_svc().registry, body["name"], body["version"])
    return _start(RollbackJob, {"name": body["name"], "version": body["version"]})


@bp.post("/api/plugins/audit")
@operation(
    summary="Re-run the security scan of a version (starts an audit job)",
    tag="plugins",
    role=Role.OPERATOR,
    body=AuditRequestSchema,
    headers=_IDEM_DOC,
    responses={**_ACCEPTED, **_NOT_FOUND},
)
def rescan(body: dict[str, Any]) -> ResponseReturnValue:
    _check_target(_svc().registry, body["name"], body["version"])
    return _start(AuditJob, {"name": body["name"], "version": body["version"]})


@bp.post("/api/plugins/<name>/review")
@operation(
    summary="Approve or reject a version held for review (starts a review job)",
    tag="plugins",
    role=Role.ADMIN,
    body=ReviewRequestSchema,
    headers=_IDEM_DOC,
    responses={**_ACCEPTED, **_NOT_FOUND, 409: ("The version is not waiting for review", None)},
)
def review(name: str, body: dict[str, Any]) -> ResponseReturnValue:
    version = _svc().registry.get_version(name, body["version"])
    # With an Idempotency-Key the check is left to the job: a retry that arrives after
    # the worker applied the decision must get the same job back, not a 409.
    if version.status is not VersionStatus.review and _idempotency_key() is None:
        raise ConflictError(
            "not_in_review",
            f"{name} {version.version} is {version.status.value}, not waiting for review",
            plugin=name, version=version.version, status=version.status.value,
        )  # fmt: skip
    return _start(
        ReviewJob,
        {
            "name": name,
            "version": body["version"],
            "decision": body["decision"],
            "reason": body["reason"],
            "by": _who(),
        },
    )


# ---- calls ---------------------------------------------------------------------------------
#: HTTP status of a call's error envelope, by code; others use their error class's status.
_CALL_STATUS = {
    "plugin.not_found": 404,
    "plugin.unavailable": 503,
    "plugin.overloaded": 429,
    "plugin.disabled": 503,
    "plugin.timeout": 504,
}


@bp.post("/api/plugins/<name>/call")
@operation(
    summary="Call a plugin through the daemon",
    description="The body is the plugin's JSON request; the answer is the daemon's envelope "
    '{"ok": true, "result": ...} or {"ok": false, "error": {"code", "message"}}.',
    tag="plugins",
    role=Role.OPERATOR,
    raw_json_body=True,
    headers={"X-Request-Id": "Request id passed to the plugin host (logs, security log)."},
    responses={
        200: ("The plugin answered", CallResponseSchema),
        404: ("No such plugin", CallResponseSchema),
        502: ("The plugin failed", CallResponseSchema),
        503: ("Daemon unreachable or plugin disabled", CallResponseSchema),
    },
)
def call(name: str) -> ResponseReturnValue:
    if not PLUGIN_NAME_RE.match(name):
        raise ApiError("invalid", f"field 'name': {name!r} is not a plugin name", field="name")
    raw = request.get_data(cache=False)
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("invalid", f"body is not valid JSON: {exc}", field="body") from None
    try:
        envelope = _svc().client.call_raw(name, raw, request_id=request.headers.get("X-Request-Id"))
    except PlugvisorError as err:
        body = {"ok": False, "error": {"code": err.code, "message": err.message}}
        return jsonify(body), _CALL_STATUS.get(err.code, err.http_status)
    return _relay(envelope)


def _relay(envelope: bytes) -> ResponseReturnValue:
    status = 200
    try:
        data = json.loads(envelope)
        if isinstance(data, dict) and not data.get("ok", False):
            raw_err = data.get("error")
            err: dict[str, Any] = raw_err if isinstance(raw_err, dict) else {}
            code = str(err.get("code", "plugin.error"))
            status = _CALL_STATUS.get(code, error_from_dict(err).http_status)
    except (ValueError, UnicodeDecodeError):
        status = 502
        envelope = json.dumps(
            {"ok": False, "error": {"code": "plugin.protocol", "message": "daemon sent non-JSON"}}
        ).encode()
    return Response(envelope, status=status, mimetype="application/json")
