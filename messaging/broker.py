"""The broker, once: its URL, a connection, and which of its errors are worth a retry.

``settings.broker_url`` empty means the embedded broker: kombu's SQLAlchemy transport on
``<state>/broker.sqlite`` with Celery results in ``<state>/results.sqlite`` (nothing to
install). Otherwise it is the given URL (``amqp://`` RabbitMQ in production) with
``settings.result_backend`` or the same SQLite results file.

kombu's SQLAlchemy transport reads its poll interval from the class attribute
``kombu.transport.sqlalchemy.Transport.polling_interval``: a ``polling_interval``
transport option would reach ``create_engine()`` and raise ``TypeError``. One process
serves one state directory, so the process-wide value is the right scope. The poll is a
trade-off (each poll runs SQLAlchemy code under the caller's GIL; a long one delays every
command and job step): ``bench/daemon_bench.py`` measures it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from plugvisor.core.config import Settings
from plugvisor.state.layout import StateLayout

__all__ = [
    "CONNECTION_ERRORS",
    "FIRST_USE_RACE_ERRORS",
    "broker_url",
    "connect",
    "redact",
    "result_backend",
    "set_sqlalchemy_polling",
]

# kombu ships no type information: its classes are used as Any, in one place.
_kombu: Any = importlib.import_module("kombu")


def broker_url(settings: Settings) -> str:
    """The broker URL: ``settings.broker_url`` or the embedded SQLite broker."""
    if settings.embedded_broker:
        return f"sqla+sqlite:///{StateLayout(Path(settings.state_dir)).broker_db}"
    return settings.broker_url


def result_backend(settings: Settings) -> str:
    """Celery's result backend: ``settings.result_backend`` or the SQLite results file."""
    layout = StateLayout(Path(settings.state_dir))
    return settings.result_backend or f"db+sqlite:///{layout.results_db}"


def set_sqlalchemy_polling(interval: float) -> None:
    """Poll interval of kombu's SQLAlchemy transport (a class attribute: process-wide)."""
    from kombu.transport import sqlalchemy as sqla_transport  # noqa: PLC0415 -- only here

    sqla_transport.Transport.polling_interval = interval


def connect(settings: Settings) -> Any:
    """A kombu connection to the configured broker (not yet connected)."""
    url = broker_url(settings)
    if url.startswith("sqla+"):
        set_sqlalchemy_polling(settings.broker_polling_interval)
    return _kombu.Connection(url, connect_timeout=5)


def redact(url: str) -> str:
    """``url`` without its password, for logs and health reports."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        cred, _, host = rest.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url


def _connection_errors() -> tuple[type[Exception], ...]:
    """OSError plus kombu's and the transports' own error classes."""
    from kombu.exceptions import KombuError, OperationalError  # noqa: PLC0415

    extra: list[type[Exception]] = [OSError, KombuError, OperationalError]
    try:
        from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

        extra.append(SQLAlchemyError)
    except ImportError:
        pass
    try:
        import amqp  # noqa: PLC0415

        extra.append(amqp.exceptions.AMQPError)
    except ImportError:
        pass
    return tuple(extra)


#: A broker that is down, restarting or unreachable: worth a retry on a fresh connection.
CONNECTION_ERRORS: tuple[type[Exception], ...] = _connection_errors()


def _race_errors() -> tuple[type[Exception], ...]:
    # Two processes creating kombu's tables or a queue row at once: "table ... already
    # exists" (OperationalError), "UNIQUE constraint failed" (IntegrityError).
    try:
        from sqlalchemy.exc import IntegrityError, OperationalError  # noqa: PLC0415
    except ImportError:
        return ()
    return (IntegrityError, OperationalError)


#: kombu's SQLite transport creates a queue's row on first use without handling a
#: concurrent creator: nothing was sent yet, so the send may be tried again.
FIRST_USE_RACE_ERRORS: tuple[type[Exception], ...] = _race_errors()
