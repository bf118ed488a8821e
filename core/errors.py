"""The one error hierarchy of plugvisor, with stable codes that the CLI and the API render alike.

Every refusal names the rule that was broken: an error's ``code`` is ``"<area>.<rule>"``
(``archive.path_traversal``, ``signature.untrusted``, ``budget.time``), stable across
releases because scripts and dashboards match on it. The area comes from the class, the
rule from the raising site. ``details`` carries machine-readable context (field names,
paths, limits) and must stay JSON-compatible and picklable (Celery ships errors across
processes).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

__all__ = [
    "ApiError",
    "ArchiveError",
    "AuthError",
    "BudgetExceeded",
    "ConfigError",
    "ConflictError",
    "DependencyError",
    "JobError",
    "ManifestError",
    "NotFoundError",
    "PluginRuntimeError",
    "PlugvisorError",
    "PolicyViolation",
    "ProfileError",
    "SandboxError",
    "SignatureError",
    "StateError",
    "VersionError",
    "error_from_dict",
]

_RULE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


class PlugvisorError(Exception):
    """Base of every error plugvisor raises on purpose; ``code`` is ``area.rule``."""

    area: ClassVar[str] = "plugvisor"
    #: HTTP status the API answers with for this class of error.
    http_status: ClassVar[int] = 400
    #: Process exit code the CLI uses for this class of error.
    exit_code: ClassVar[int] = 1

    def __init__(self, rule: str, message: str, **details: Any) -> None:
        if not _RULE.match(rule):
            raise ValueError(f"error rule {rule!r} must be dotted lower_snake_case")
        super().__init__(rule, message, details)
        self.rule = rule
        self.message = message
        self.details = details

    @property
    def code(self) -> str:
        return f"{self.area}.{self.rule}"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps keyword details across pickling (Celery results, multiprocessing).
        return (_rebuild, (type(self), self.rule, self.message, self.details))

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape shared by the API, the CLI and the call protocol."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


def _rebuild(
    cls: type[PlugvisorError], rule: str, message: str, details: dict[str, Any]
) -> PlugvisorError:
    return cls(rule, message, **details)


class ConfigError(PlugvisorError):
    """A setting is missing, malformed or out of range."""

    area = "config"
    exit_code = 78  # EX_CONFIG


class ManifestError(PlugvisorError):
    """plugin.yaml or MANIFEST.json does not match its schema."""

    area = "manifest"


class ProfileError(PlugvisorError):
    """A security profile YAML file does not match its schema."""

    area = "profile"


class SignatureError(PlugvisorError):
    """MANIFEST.sig is missing, malformed, untrusted or does not verify."""

    area = "signature"


class ArchiveError(PlugvisorError):
    """A plugin archive breaks a packaging or safe-extraction rule."""

    area = "archive"


class VersionError(PlugvisorError):
    """A version or range is malformed, or breaks the monotonic-version rule."""

    area = "version"
    http_status = 409


class DependencyError(PlugvisorError):
    """A ``requires`` range is unmet or an active dependent would break."""

    area = "dependency"
    http_status = 409


class StateError(PlugvisorError):
    """The state directory or registry is unusable or inconsistent."""

    area = "state"
    http_status = 500
    exit_code = 74  # EX_IOERR


class NotFoundError(PlugvisorError):
    """A named plugin, version, job, key or token does not exist."""

    area = "not_found"
    http_status = 404


class ConflictError(PlugvisorError):
    """The request conflicts with the current state (e.g. already active, job running)."""

    area = "conflict"
    http_status = 409


class AuthError(PlugvisorError):
    """Missing or invalid credentials (``auth.missing``) or a role too low (``auth.forbidden``)."""

    area = "auth"
    http_status = 401


class ApiError(PlugvisorError):
    """A request body or parameter is malformed."""

    area = "request"


class JobError(PlugvisorError):
    """A queued job failed or cannot be started."""

    area = "job"
    http_status = 409


class SandboxError(PlugvisorError):
    """The sandbox could not be set up (host start, lock-down, protocol)."""

    area = "sandbox"
    http_status = 503


class PluginRuntimeError(PlugvisorError):
    """A plugin call failed: ``plugin.error``, ``plugin.crashed``, ``plugin.disabled``, ...

    Runtime codes are part of the call contract (SPEC §4), so this class and the two
    below carry their full area in ``area`` and a rule such as ``crashed``.
    """

    area = "plugin"
    http_status = 502


class BudgetExceeded(PluginRuntimeError):
    """A per-request budget was exceeded: ``budget.time|memory|files|db_queries``."""

    area = "budget"
    http_status = 422


class PolicyViolation(PluginRuntimeError):
    """The plugin attempted an operation its profile forbids: ``policy.forbidden``."""

    area = "policy"
    http_status = 403


_BY_AREA: dict[str, type[PlugvisorError]] = {}


def _index(cls: type[PlugvisorError]) -> None:
    _BY_AREA.setdefault(cls.area, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(PlugvisorError)
# ``response.too_large`` / ``response.not_json`` are plugin runtime failures too.
_BY_AREA.setdefault("response", PluginRuntimeError)


def error_from_dict(data: dict[str, Any]) -> PlugvisorError:
    """Rebuild a typed error from its ``to_dict()`` form (used across process boundaries)."""
    code = str(data.get("code", "plugvisor.unknown"))
    area, _, rule = code.partition(".")
    cls = _BY_AREA.get(area, PlugvisorError)
    err = cls(rule or "unknown", str(data.get("message", "")), **dict(data.get("details") or {}))
    if cls.area != area:
        # Keep the exact wire code even for areas without a dedicated class.
        err.area = area  # type: ignore[misc]
    return err
