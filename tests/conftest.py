"""Session fixtures shared by every suite.

``rabbitmq_url``: a RabbitMQ broker on 127.0.0.1 for the tests that must run on both
brokers (daemon control plane, worker pipeline), with a vhost of its own per session. It
reuses a broker already listening on 127.0.0.1:5672, otherwise starts Debian's
``rabbitmq-server`` on loopback only (the settings of PLATFORM-NOTES); the last session
using a broker a fixture started stops it, and the epmd it started. Without
``rabbitmq-server`` installed, the tests that ask for it are skipped LOUDLY
(``scripts/test.sh`` installs it).

``postgres`` / ``postgres_url``: a PostgreSQL cluster of the session's own on 127.0.0.1
(``initdb`` into /tmp, ``pg_ctl start``, stopped and removed at the end), and an empty
database per test in it. Without Debian's ``postgresql`` installed, the tests that ask
for it are skipped LOUDLY (``scripts/test.sh`` installs it).

``_restore_logging`` (autouse): a test that runs a CLI command or an entry point calls
``configure_logging``, which sets structlog's level filter process-wide (the CLI group's
default is ``warning``); without the restore, a later test in the same session that
expects info records (``test_log_records_reach_the_parent``) lost them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog

from plugvisor.tests.support.postgres import (
    LoopbackPostgres,
    PostgresUnavailable,
    loopback_postgres,
)
from plugvisor.tests.support.rabbitmq import BrokerUnavailable, loopback_rabbitmq


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """``amqp://guest:guest@127.0.0.1:5672/<vhost>``: a broker on loopback, a vhost per session.

    Concurrent test sessions (and bench runs) share one broker: each gets its own vhost
    (so their daemons never consume each other's commands) and the last one out stops a
    broker that one of them started (``plugvisor.tests.support.rabbitmq``).
    """
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(loopback_rabbitmq())
        except BrokerUnavailable as exc:
            if "not installed" in str(exc):
                pytest.skip(f"!!! RabbitMQ tests SKIPPED: {exc} !!!")
            pytest.fail(str(exc))
        if url.endswith("/"):
            warnings.warn("rabbitmqctl could not add a vhost: using the default vhost '/'",
                          stacklevel=1)  # fmt: skip
        yield url


@pytest.fixture(scope="session")
def postgres() -> Iterator[LoopbackPostgres]:
    """A PostgreSQL cluster on 127.0.0.1 for this session (stopped and removed afterwards)."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(loopback_postgres())
        except PostgresUnavailable as exc:
            if "not installed" in str(exc):
                pytest.skip(f"!!! PostgreSQL tests SKIPPED: {exc} !!!")
            pytest.fail(str(exc))
        yield cluster


@pytest.fixture
def postgres_url(postgres: LoopbackPostgres) -> str:
    """The URL of an empty database of this test's own."""
    return postgres.new_database()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put structlog's configuration and the root logger back as they were before the test."""
    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])  # capture_logs edits the list in place
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
