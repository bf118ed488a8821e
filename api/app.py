"""The Flask application factory; no module-level app exists.

``create_app(settings=None, test_config=None)`` builds the app with one blueprint per
resource, the per-app services (settings, state layout, registry, token store, daemon
client, metrics) in ``app.extensions["plugvisor"]``, and ONE error handler that turns
every exception into the JSON error shape ``{"error": {"code", "message"}}``: plugvisor
errors with their class's ``http_status``, HTTP errors (404 route, 405, 413) with stable
codes, and anything else, a real bug, as a logged 500 ``internal``.

Production: ``gunicorn "plugvisor.api:create_app()"`` (settings from the environment).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from plugvisor.api.auth import Forbidden
from plugvisor.api.metrics import ApiMetrics, install_request_metrics
from plugvisor.client import Client
from plugvisor.core.config import Settings, load_settings
from plugvisor.core.errors import AuthError, PlugvisorError, StateError
from plugvisor.core.log import configure_logging, get_logger
from plugvisor.messaging.jobs import Job, start_job
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry
from plugvisor.state.tokens import TOKENS_FILE, TokenStore

__all__ = ["ApiServices", "create_app", "services"]

_log = get_logger(__name__)
# Multipart framing around the archive; the archive itself is checked exactly after saving.
_MULTIPART_SLACK = 64 * 1024

#: Modules with one blueprint ``bp`` each, one per resource.
_BLUEPRINTS = (
    "plugins", "jobs", "keys", "hosts", "health", "metrics", "openapi", "security", "admin",
)  # fmt: skip

_HTTP_CODES = {
    400: "request.invalid",
    404: "not_found.route",
    405: "request.method_not_allowed",
    413: "request.too_large",
    415: "request.unsupported_media_type",
}


@dataclass
class ApiServices:
    """Everything the handlers of one app share; opened lazily, closed with the app."""

    settings: Settings
    layout: StateLayout
    tokens: TokenStore
    metrics: ApiMetrics
    cache: dict[str, Any] = field(default_factory=dict)
    _registry: Registry | None = None
    _client: Client | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def registry(self) -> Registry:
        with self._lock:
            if self._registry is None:
                self._registry = Registry.open(self.settings)
            return self._registry

    @property
    def client(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = Client(
                    self.layout.daemon_socket, timeout=self.settings.call_timeout_s
                )
            return self._client

    def start_job(self, job: Job, idempotency_key: str | None = None) -> str:
        """Record and enqueue ``job`` (messaging/jobs.py); a repeated key gives the same job."""
        job_id = start_job(self.settings, job, idempotency_key=idempotency_key)
        self.metrics.jobs_started.labels(job.kind).inc()
        return job_id

    def close(self) -> None:
        """Close the registry and daemon connections (tests build many apps)."""
        with self._lock:
            if self._registry is not None:
                self._registry.close()
                self._registry = None
            if self._client is not None:
                self._client.close()
                self._client = None


def services(app: Flask) -> ApiServices:
    """The :class:`ApiServices` of ``app``."""
    svc = app.extensions["plugvisor"]
    assert isinstance(svc, ApiServices)
    return svc


def create_app(
    settings: Settings | None = None, test_config: Mapping[str, Any] | None = None
) -> Flask:
    """Build the API app; ``settings`` default to :func:`load_settings` (file + env)."""
    settings = settings or load_settings()
    app = Flask(__name__, static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_upload_bytes + _MULTIPART_SLACK)
    if test_config:
        app.config.update(test_config)
    if not app.testing:
        configure_logging(settings.log_level, settings.log_format, component="api")
    layout = StateLayout(settings.state_dir)
    try:
        layout.ensure()
    except StateError as err:
        # Under systemd the tree is made by tmpfiles/the daemon with owners this
        # unprivileged service cannot chmod; what the API writes (uploads, tokens) it
        # creates itself, so a partial tree is a warning, not a failed start.
        _log.warning("state_dir_not_ensured", path=str(layout.root), error=err.message)
    metrics = ApiMetrics()
    app.extensions["plugvisor"] = ApiServices(
        settings=settings,
        layout=layout,
        tokens=TokenStore(layout.root / TOKENS_FILE),
        metrics=metrics,
    )
    _register(app)
    install_request_metrics(app, metrics)
    app.register_error_handler(Exception, _handle_error)
    return app


def _register(app: Flask) -> None:
    # Imported here so that importing plugvisor.api (for gunicorn's "create_app()"
    # lookup) stays cheap and free of import cycles.
    for name in _BLUEPRINTS:
        app.register_blueprint(importlib.import_module(f"plugvisor.api.{name}").bp)


def _error_response(status: int, body: dict[str, Any]) -> Response:
    response = jsonify({"error": body})
    response.status_code = status
    return response


def _handle_error(exc: Exception) -> Response:
    """The one place exceptions become HTTP answers."""
    svc = services(current_app)
    if isinstance(exc, PlugvisorError):
        status = exc.http_status
        response = _error_response(status, exc.to_dict())
        if isinstance(exc, AuthError) and not isinstance(exc, Forbidden):
            response.headers["WWW-Authenticate"] = 'Bearer realm="plugvisor"'
        if status >= 500:
            _log.error("request_failed", path=request.path, code=exc.code, message=exc.message)
        code = exc.code
    elif isinstance(exc, HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, f"http.{status}")
        message = exc.description or exc.name
        if status == 413:
            message = (
                f"request body is larger than the limit of {svc.settings.max_upload_bytes} bytes "
                "(setting max_upload_bytes)"
            )
        elif status == 404:
            message = f"no endpoint {request.path}"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        response = _error_response(status, {"code": code, "message": message})
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    else:
        _log.exception("request_bug", path=request.path, method=request.method)
        status, code = 500, "internal"
        response = _error_response(
            500, {"code": code, "message": "internal error; the API log has the details"}
        )
    svc.metrics.errors.labels(code).inc()
    return response
