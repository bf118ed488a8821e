"""``GET /metrics``: the API's own counters plus the daemon's, in Prometheus text format.

The API keeps a private :class:`~prometheus_client.CollectorRegistry` per app (so apps
built by tests stay apart). The daemon serves its own metrics on
``settings.metrics_addr:metrics_port`` (``daemon/metrics.py``); this endpoint appends
that exposition, fetched with a short timeout, so one scrape sees both. When the daemon
is down its part is left out and ``plugvisor_api_daemon_metrics_up`` is 0.

Under gunicorn with several worker processes each process counts its own requests;
point Prometheus at the daemon's endpoint and at each API process, or run one worker.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from flask import Blueprint, Flask, Response, current_app, g, request
from flask.typing import ResponseReturnValue
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from plugvisor.api.openapi import operation
from plugvisor.core.config import Settings
from plugvisor.core.log import get_logger
from plugvisor.state.tokens import Role

__all__ = ["ApiMetrics", "bp", "fetch_daemon_metrics", "install_request_metrics"]

_log = get_logger(__name__)
_DAEMON_TIMEOUT_S = 1.0


class ApiMetrics:
    """Request, error and job counters of one API app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "plugvisor_api_requests", "API requests by endpoint, method and status.",
            ["endpoint", "method", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "plugvisor_api_request_seconds", "API request latency by endpoint.", ["endpoint"],
            registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "plugvisor_api_errors", "API error answers by error code.", ["code"], registry=r
        )
        self.jobs_started = Counter(
            "plugvisor_api_jobs_started", "Jobs started through the API, by kind.", ["kind"],
            registry=r,
        )  # fmt: skip
        self.daemon_up = Gauge(
            "plugvisor_api_daemon_metrics_up",
            "1 when the daemon's metrics endpoint answered the last scrape.",
            registry=r,
        )


def install_request_metrics(app: Flask, metrics: ApiMetrics) -> None:
    """Count every request and its latency by endpoint (the route, never the raw path)."""

    @app.before_request
    def _start() -> None:
        g.metrics_start = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.endpoint or "unmatched"
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        start = g.get("metrics_start")
        if start is not None:
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response


def fetch_daemon_metrics(settings: Settings, timeout: float = _DAEMON_TIMEOUT_S) -> bytes | None:
    """The daemon's exposition text, or None when it is off or unreachable."""
    if settings.metrics_port <= 0:
        return None
    url = f"http://{settings.metrics_addr}:{settings.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        _log.debug("daemon_metrics_unreachable", url=url, error=str(exc))
        return None


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@operation(
    summary="Prometheus metrics of the API and the daemon",
    tag="meta",
    role=Role.VIEWER,
    responses={200: ("Prometheus text exposition format", None)},
)
def metrics_endpoint() -> ResponseReturnValue:
    services = current_app.extensions["plugvisor"]
    daemon = fetch_daemon_metrics(services.settings)
    services.metrics.daemon_up.set(1 if daemon is not None else 0)
    body = generate_latest(services.metrics.registry)
    if daemon:
        body += daemon if daemon.endswith(b"\n") else daemon + b"\n"
    return Response(body, mimetype=None, headers={"Content-Type": CONTENT_TYPE_LATEST})
