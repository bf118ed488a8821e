"""Marshmallow schemas of every API request and response.

The handlers validate with these exact classes and :mod:`plugvisor.api.openapi` builds
the OpenAPI document from them, so the document cannot drift from what is enforced.
:func:`load` turns a :class:`marshmallow.ValidationError` into the stable 400 answer
``{"error": {"code": "request.invalid", "message": "field 'name': ..."}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate
from werkzeug.datastructures import FileStorage

from plugvisor.core.errors import ApiError
from plugvisor.messaging.jobs import JOBS, REVIEW_DECISIONS
from plugvisor.state.layout import PLUGIN_NAME_RE

__all__ = [
    "AcceptedSchema",
    "AuditQuerySchema",
    "AuditReportSchema",
    "AuditRequestSchema",
    "CallResponseSchema",
    "ErrorSchema",
    "HealthSchema",
    "JobListSchema",
    "JobSchema",
    "JobsQuerySchema",
    "KeyListSchema",
    "KeySchema",
    "PluginListSchema",
    "PluginSchema",
    "ReloadRequestSchema",
    "ReviewRequestSchema",
    "ReviewResultSchema",
    "RollbackRequestSchema",
    "SecurityLogQuerySchema",
    "SecurityLogSchema",
    "TrustKeyRequestSchema",
    "UploadFormSchema",
    "load",
]

#: The SemVer 2.0 grammar (semver.org's recommended expression).
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
JOB_STATUSES = ("queued", "running", "succeeded", "failed")


def _name(**kw: Any) -> fields.String:
    meta = {"description": "Plugin name.", "example": "greeter", **kw.pop("metadata", {})}
    return fields.String(
        validate=validate.Regexp(
            PLUGIN_NAME_RE.pattern, error="must be a plugin name matching {regex}"
        ),
        metadata=meta,
        **kw,
    )


def _version(**kw: Any) -> fields.String:
    meta = {"description": "Semantic version.", "example": "1.2.0", **kw.pop("metadata", {})}
    return fields.String(
        validate=[
            validate.Length(max=256),
            validate.Regexp(SEMVER_PATTERN, error="must be a semantic version such as 1.2.0"),
        ],
        metadata=meta,
        **kw,
    )


class _Strict(Schema):
    """Request schemas refuse unknown fields, so a typo is a 400 rather than ignored."""

    class Meta:
        unknown = RAISE


# ---- requests ------------------------------------------------------------------------------
class _TargetSchema(_Strict):
    name = _name(required=True)
    version = _version(
        load_default=None,
        allow_none=True,
        metadata={"description": "Target version; omitted means the default for the operation."},
    )


class ReloadRequestSchema(_TargetSchema):
    """Reload a plugin to ``version`` (default: its newest approved version)."""


class RollbackRequestSchema(_TargetSchema):
    """Roll a plugin back to ``version`` (default: the previous version in the backups)."""


class AuditRequestSchema(_TargetSchema):
    """Re-run the scan of ``version`` (default: the active version)."""


class ReviewRequestSchema(_Strict):
    """An admin's decision on a version held for review."""

    version = _version(required=True)
    decision = fields.String(required=True, validate=validate.OneOf(REVIEW_DECISIONS))
    reason = fields.String(
        required=True,
        validate=validate.Length(min=1, max=2000),
        metadata={"description": "Why; recorded with who decided."},
    )


class AuditQuerySchema(_Strict):
    name = _name(required=True)


class JobsQuerySchema(_Strict):
    state = fields.String(
        load_default=None,
        validate=validate.OneOf(JOB_STATUSES),
        metadata={"description": "Only jobs in this state."},
    )
    kind = fields.String(
        load_default=None,
        validate=validate.OneOf(sorted(JOBS.kinds())),
        metadata={"description": "Only jobs of this kind."},
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


def _check_file(value: Any) -> None:
    if not (isinstance(value, FileStorage) and value.filename):
        raise ValidationError("must be a file part with a file name")


class UploadFormSchema(_Strict):
    """multipart/form-data with the signed plugin archive in ``archive``."""

    archive = fields.Raw(
        required=True,
        validate=_check_file,
        # minLength: an empty part is refused (400), so the document says so.
        metadata={
            "type": "string",
            "format": "binary",
            "minLength": 1,
            "description": "The .tar.gz archive (not empty).",
        },
    )


# ---- responses -----------------------------------------------------------------------------
class ErrorBodySchema(Schema):
    code = fields.String(required=True, metadata={"example": "request.invalid"})
    message = fields.String(required=True)
    details = fields.Dict(keys=fields.String())


class ErrorSchema(Schema):
    """Every error answer: a stable ``code`` (``area.rule``) and a message naming the rule."""

    error = fields.Nested(ErrorBodySchema, required=True)


class AcceptedSchema(Schema):
    """A job was started (or an earlier one found by its Idempotency-Key)."""

    job_id = fields.String(required=True)
    status_url = fields.String(required=True, metadata={"example": "/api/jobs/3f2a..."})


class JobSchema(Schema):
    """A job's record: ``status`` is queued, running (``step`` says where), succeeded or failed."""

    id = fields.String(required=True)
    kind = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(JOB_STATUSES))
    display_status = fields.String(
        metadata={"description": "queued, running: <step>, succeeded or failed: <reason>"}
    )
    step = fields.String(allow_none=True, metadata={"description": "The step running now."})
    steps = fields.List(
        fields.Dict(keys=fields.String()),
        required=True,
        metadata={"description": "Every step so far with its name and status."},
    )
    params = fields.Dict(keys=fields.String())
    result = fields.Raw(allow_none=True)
    error = fields.Nested(ErrorBodySchema, allow_none=True)
    created = fields.String(allow_none=True, metadata={"format": "date-time"})
    updated = fields.String(allow_none=True, metadata={"format": "date-time"})


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)


class VersionSchema(Schema):
    plugin = fields.String()
    version = fields.String(required=True)
    status = fields.String(
        required=True,
        metadata={"description": "quarantined, review, approved, active, retired or disabled"},
    )
    digest = fields.String(allow_none=True)
    keyid = fields.String(allow_none=True)
    profile = fields.String(allow_none=True)
    requires = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={"description": "plugin name -> version range it needs"},
    )
    created = fields.String(allow_none=True, metadata={"format": "date-time"})
    review = fields.Dict(
        keys=fields.String(), allow_none=True, metadata={"description": "{by, reason, at}"}
    )


class PluginOnHostSchema(Schema):
    """What one host of the fleet runs of a plugin (written by that host's daemon)."""

    host_id = fields.String(required=True)
    version = fields.String(allow_none=True)
    health = fields.String(metadata={"description": "serving, down, disabled or failed"})
    detail = fields.String()
    host_status = fields.String(metadata={"description": "up, or down: no recent heartbeat"})
    behind = fields.Boolean()
    changed = fields.String(metadata={"format": "date-time"})


class PluginSchema(Schema):
    """A plugin with its active version, the previous one and every known version."""

    name = fields.String(required=True)
    active_version = fields.String(allow_none=True)
    previous_version = fields.String(allow_none=True)
    highest_version = fields.String(
        metadata={"description": "Highest version ever accepted (uploads must exceed it)."}
    )
    disabled = fields.Boolean()
    disabled_reason = fields.String(allow_none=True)
    disabled_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    versions = fields.List(fields.Nested(VersionSchema))
    events = fields.List(
        fields.Dict(keys=fields.String()),
        metadata={"description": "GET /api/plugins/NAME only: the latest state changes."},
    )
    hosts = fields.List(
        fields.Nested(PluginOnHostSchema),
        metadata={"description": "Per host of the fleet: the version it runs, whether it is "
                  "behind the active (desired) version, whether the host is down."},
    )  # fmt: skip


class PluginListSchema(Schema):
    plugins = fields.List(fields.Nested(PluginSchema), required=True)


class FindingSchema(Schema):
    rule = fields.String(required=True)
    severity = fields.String(required=True)
    file = fields.String(allow_none=True)
    line = fields.Integer(allow_none=True)
    cwe = fields.String(allow_none=True, metadata={"example": "CWE-78"})
    message = fields.String(allow_none=True)
    name = fields.String(allow_none=True, metadata={"description": "The rule's readable name."})
    owasp = fields.String(allow_none=True, metadata={"description": "OWASP Top 10 category."})
    tool = fields.String(allow_none=True, metadata={"description": "bandit or compliance."})


class ViolationSchema(Schema):
    time = fields.Raw()
    plugin = fields.String()
    version = fields.String(allow_none=True)
    request_id = fields.String(allow_none=True)
    kind = fields.String()
    detail = fields.Raw()
    action = fields.String(allow_none=True)


class ChainSchema(Schema):
    ok = fields.Boolean(required=True)
    lines = fields.Integer(required=True)
    first_bad_line = fields.Integer(allow_none=True)
    reason = fields.String(allow_none=True)


class AuditReportSchema(Schema):
    """The security report of one plugin (SPEC §6 Audit)."""

    name = fields.String(required=True)
    version = fields.String(allow_none=True, metadata={"description": "The version reported."})
    status = fields.String(allow_none=True)
    signature = fields.Dict(keys=fields.String(), allow_none=True)
    integrity = fields.Dict(keys=fields.String(), allow_none=True)
    profile = fields.Raw(allow_none=True)
    findings = fields.List(fields.Nested(FindingSchema), required=True)
    violations = fields.List(fields.Nested(ViolationSchema), required=True)
    security_log = fields.Nested(ChainSchema, required=True)
    scan = fields.Dict(
        keys=fields.String(),
        allow_none=True,
        metadata={"description": "Scan metadata: files, duration, tools, counts, threshold."},
    )
    review = fields.Dict(
        keys=fields.String(), metadata={"description": "An admin's decision: {by, reason, at}."}
    )
    hosts = fields.List(
        fields.Nested(PluginOnHostSchema),
        metadata={"description": "Per host of the fleet: the version it runs, whether it is "
                  "behind the active (desired) version, whether the host is down."},
    )  # fmt: skip


class ReviewResultSchema(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    decision = fields.String(required=True)
    status = fields.String(allow_none=True)
    job_id = fields.String(allow_none=True)


class CallResponseSchema(Schema):
    """The daemon's envelope, relayed unchanged."""

    ok = fields.Boolean(required=True)
    result = fields.Raw(allow_none=True)
    error = fields.Nested(ErrorBodySchema)


class HealthSchema(Schema):
    ok = fields.Boolean(required=True)
    daemon = fields.Dict(keys=fields.String(), required=True)
    broker = fields.Dict(keys=fields.String(), required=True)
    workers = fields.Dict(keys=fields.String(), required=True)
    sandbox = fields.Dict(keys=fields.String(), required=True)


# ---- loading ---------------------------------------------------------------------------------
def load(schema: type[Schema], data: Mapping[str, Any] | Any, where: str = "body") -> Any:
    """Validate ``data`` with ``schema``; a failure is ``ApiError("invalid")`` naming the field."""
    if not isinstance(data, Mapping):
        raise ApiError(
            "invalid", f"{where} must be a JSON object, not {type(data).__name__}", field=where
        )
    try:
        return schema().load(data)
    except ValidationError as exc:
        raise _invalid(exc, where) from None


def _invalid(exc: ValidationError, where: str) -> ApiError:
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    parts = []
    first = None
    for field_name in sorted(messages):
        text = _flatten(messages[field_name])
        name = where if field_name == "_schema" else field_name
        first = first or name
        parts.append(f"field {name!r}: {text}")
    return ApiError(
        "invalid",
        f"{where} is invalid: " + "; ".join(parts),
        field=first or where,
        fields={str(k): _flatten(v) for k, v in messages.items()},
    )


def _flatten(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(_flatten(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in value.items())
    return str(value)


class SecurityLogQuerySchema(_Strict):
    plugin = _name(load_default=None, metadata={"description": "Only this plugin's entries."})
    limit = fields.Integer(load_default=200, validate=validate.Range(min=1, max=1000))


class SecurityLogSchema(Schema):
    """The newest security-log entries and the status of the whole hash chain."""

    entries = fields.List(fields.Nested(ViolationSchema), required=True)
    chain = fields.Nested(ChainSchema, required=True)


class TrustKeyRequestSchema(_Strict):
    """An Ed25519 public key (PEM) whose signatures uploads will accept."""

    public_key = fields.String(
        required=True,
        validate=validate.Length(min=1, max=10_000),
        metadata={"description": "SubjectPublicKeyInfo PEM (-----BEGIN PUBLIC KEY-----)."},
    )


class HostSchema(Schema):
    """One daemon of the fleet, from its heartbeats, with what it runs."""

    host_id = fields.String(required=True)
    status = fields.String(required=True, metadata={"description": "up, or down: no heartbeat "
                           "for host_down_after_s"})  # fmt: skip
    started_at = fields.String(metadata={"format": "date-time"})
    last_seen = fields.String(metadata={"format": "date-time"})
    seconds_since_seen = fields.Float()
    plugvisor_version = fields.String()
    pid = fields.Integer()
    layers = fields.Dict(keys=fields.String(), values=fields.Boolean(),
                         metadata={"description": "Sandbox layers this host enforces"})  # fmt: skip
    load_ = fields.Dict(keys=fields.String(), data_key="load")  # `load` is Schema's method
    plugins = fields.Dict(keys=fields.String(), values=fields.Dict(keys=fields.String()))


class HostListSchema(Schema):
    hosts = fields.List(fields.Nested(HostSchema), required=True)


class KeySchema(Schema):
    keyid = fields.String(required=True, metadata={"description": "sha256 of the raw key, hex"})


class KeyListSchema(Schema):
    keys = fields.List(fields.Nested(KeySchema), required=True)
