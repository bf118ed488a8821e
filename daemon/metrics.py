"""The daemon's Prometheus metrics, served on its own small HTTP endpoint.

Choice: the daemon is one process, so a plain (non-multiprocess) registry served by
``prometheus_client.start_http_server`` on ``settings.metrics_addr:metrics_port``
(127.0.0.1 by default) is exact and cheap; ``metrics_port = 0`` turns the endpoint
off. The API's ``GET /metrics`` and Prometheus scrape this endpoint for daemon
figures. A private :class:`CollectorRegistry` (not the global one) keeps several
daemons in one test process apart.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from plugvisor.core.errors import ConfigError

__all__ = ["DaemonMetrics"]

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class DaemonMetrics:
    """Counters and histograms of calls, swaps, rollbacks, restarts and violations."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "plugvisor_calls", "Plugin calls by plugin and result code.", ["plugin", "code"],
            registry=r,
        )  # fmt: skip
        self.call_seconds = Histogram(
            "plugvisor_call_seconds", "Call latency inside the daemon, by plugin.", ["plugin"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.swaps = Counter(
            "plugvisor_swaps", "Version swaps by plugin and outcome.", ["plugin", "outcome"],
            registry=r,
        )  # fmt: skip
        self.swap_seconds = Histogram(
            "plugvisor_swap_seconds", "Swap duration (spawn, health, commit, flip).",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rollbacks = Counter(
            "plugvisor_rollbacks", "Automatic and requested rollbacks.", ["plugin", "reason"],
            registry=r,
        )  # fmt: skip
        self.restarts = Counter(
            "plugvisor_restarts", "Plugin host restarts after a crash.", ["plugin"], registry=r
        )
        self.violations = Counter(
            "plugvisor_violations", "Sandbox violations by plugin and kind.", ["plugin", "kind"],
            registry=r,
        )  # fmt: skip
        self.hosts = Gauge("plugvisor_hosts", "Live plugin host processes.", ["plugin"], registry=r)
        self._server: Any = None

    def serve(self, addr: str, port: int) -> int | None:
        """Start the HTTP endpoint; return the bound port (``None`` when ``port`` is 0)."""
        if port <= 0:
            return None
        try:
            started = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                "port_in_use", f"cannot serve metrics on {addr}:{port}: {exc.strerror}; set "
                "metrics_port (PLUGVISOR_METRICS_PORT) to a free port, or 0 to turn it off",
                setting="metrics_port", port=port,
            ) from exc  # fmt: skip
        self._server = started[0] if isinstance(started, tuple) else None
        return port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
