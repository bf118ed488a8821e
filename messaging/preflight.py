"""What every long-running process checks before it starts: can it reach its dependencies?

The registry (``database_url``, or the state dir's SQLite file) and the broker
(``broker_url``, or the embedded SQLite broker) are both needed by the daemon, the
workers and the API. An unreachable one at start is refused with an error naming the
setting -- under systemd the unit fails visibly and is restarted -- instead of a
traceback, or a process that looks up but cannot do its work. Once running, a lost
broker or database is retried (each process's own loop), not fatal.
"""

from __future__ import annotations

from plugvisor.core.config import Settings
from plugvisor.core.errors import ConfigError
from plugvisor.messaging.broker import CONNECTION_ERRORS, broker_url, connect, redact
from plugvisor.state.registry import Registry

__all__ = ["check_broker", "preflight"]


def check_broker(settings: Settings, timeout: float = 5.0) -> None:
    """Connect to the configured broker once; ``config.broker_unreachable`` if it fails."""
    if settings.embedded_broker:
        return  # a file in the state dir: there is nothing to reach
    try:
        with connect(settings) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except CONNECTION_ERRORS as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            "broker_unreachable",
            f"broker_url ({redact(broker_url(settings))}) is not reachable: {first} (is the "
            "broker running, and are its host, port, vhost and credentials right?)",
            setting="broker_url",
        ) from None


def preflight(settings: Settings, timeout: float = 5.0) -> None:
    """Open the registry (``state.database`` naming ``database_url``), reach the broker."""
    Registry.open(settings).close()
    check_broker(settings, timeout)
