"""The Celery app of plugvisor: the configuration producers and workers share, once.

Producers (the API, the CLI, the tools) send through :func:`producer`, an app that holds
no task code; a worker builds its app with :func:`new_celery` and registers its task
bodies on it (``workers/app.py``). Both read :func:`celery_config`, so a setting that
the two sides must agree on (serializers, queue, routing, delivery mode) cannot drift.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from celery import Celery

from plugvisor.core.config import Settings
from plugvisor.messaging.broker import broker_url, result_backend, set_sqlalchemy_polling
from plugvisor.state.layout import StateLayout

__all__ = [
    "SOFT_LIMIT_FRACTION",
    "AppCache",
    "PlugvisorCelery",
    "celery_config",
    "new_celery",
    "producer",
    "soft_time_limit",
]


#: Share of ``job_time_limit_s`` after which the soft limit fires; the rest is left to
#: record the failure on the job before the hard limit kills the process.
SOFT_LIMIT_FRACTION = 0.9


def soft_time_limit(settings: Settings) -> float:
    """Seconds a task may run before SoftTimeLimitExceeded is raised inside it."""
    return float(settings.job_time_limit_s) * SOFT_LIMIT_FRACTION


class PlugvisorCelery(Celery):  # type: ignore[misc]  # celery ships no type hints
    """A Celery app that carries the :class:`Settings` it was built from (tasks read them)."""

    settings: Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings the producers and the workers share (one place for all)."""
    hard = float(settings.job_time_limit_s)
    conf: dict[str, Any] = {
        # JSON only: a pickle payload from the broker would be code execution in the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Acknowledge after the task ran, not when it was received: a worker killed
        # mid-task leaves the message to be delivered again. This is why every task is
        # idempotent (jobs.py: steps keyed by job id + step name, skipped when done).
        "task_acks_late": True,
        # A pool child killed by a signal or the OOM killer counts as "not done": the
        # message is requeued instead of acknowledged as failed.
        "task_reject_on_worker_lost": True,
        # How long the parent waits for a dead child's result before declaring it lost
        # (default 10 s). A task redelivered because of a too-short wait is harmless:
        # its finished steps are skipped. So recovery is quick rather than cautious.
        "worker_lost_wait": 2.0,
        # Reserve one message per pool process: with late acks a prefetched message
        # is invisible to other workers while this one is busy with a long scan.
        "worker_prefetch_multiplier": 1,
        # Hard limit kills the pool child; the soft limit before it raises inside the
        # task so the step records job.time_limit instead of leaving the job "running".
        "task_time_limit": hard,
        "task_soft_time_limit": soft_time_limit(settings),
        # A worker started before the broker (systemd ordering, RabbitMQ restarting)
        # waits for it instead of exiting.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        # Publishing from the API/CLI must not hang: bounded retries, then an error.
        "task_publish_retry": True,
        "task_publish_retry_policy": {  # ~2.5 s in all before start_job gives up
            "max_retries": 5,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 1.0,
        },
        # With late acks, a task still running when the broker connection is lost will
        # be redelivered; cancelling it avoids two copies running side by side.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # STARTED state and task name/args in the result backend, for operators; the
        # job record stays the source of truth that the API reports.
        "task_track_started": True,
        "result_extended": True,
        "result_expires": 7 * 24 * 3600,
        "task_default_queue": settings.job_queue,
        "task_default_exchange": settings.job_queue,
        "task_default_routing_key": settings.job_queue,
        # Messages are written to disk by RabbitMQ (persistent delivery mode).
        "task_default_delivery_mode": "persistent",
        # Our structured logging owns the root logger (configure_logging per process).
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_send_task_events": False,
        "enable_utc": True,
        "timezone": "UTC",
    }
    if settings.embedded_broker:
        # Visibility: the SQLAlchemy transport has no visibility timeout (unlike Redis or
        # SQS, where an unacked message reappears after visibility_timeout and a long task
        # runs twice: the Redis "visibility trap"). It marks a delivered row invisible and
        # requeues unacked messages when the worker shuts down or a pool child is lost.
        # Only a hard kill of the worker's *main* process strands its one in-flight
        # message (prefetch 1); recover_stale_jobs() at worker start re-enqueues such
        # jobs from their records. AMQP has no visibility timeout either: RabbitMQ
        # redelivers on channel close, and its consumer_timeout (30 min default) is far
        # above task_time_limit.
        conf["broker_transport_options"] = {
            # kombu hands every transport option to create_engine(); only engine
            # arguments belong here (polling_interval would raise TypeError, see below).
            "connect_args": {"timeout": 30.0},
        }
        # No fanout on this transport: remote control, mingle and gossip need it.
        conf["worker_enable_remote_control"] = False
        set_sqlalchemy_polling(settings.broker_polling_interval)
    return conf


def new_celery(settings: Settings) -> PlugvisorCelery:
    """A Celery app for ``settings`` with no task registered (a producer, or a worker's base)."""
    broker, backend = broker_url(settings), result_backend(settings)
    if settings.embedded_broker or backend.startswith("db+sqlite"):
        StateLayout(settings.state_dir).ensure()  # the SQLite files live in the state dir
    app = PlugvisorCelery("plugvisor", broker=broker, backend=backend, set_as_current=False)
    app.settings = settings
    app.conf.update(celery_config(settings))
    return app


class AppCache:
    """One app per settings object in this process, built by ``factory`` on first use."""

    def __init__(self, factory: Callable[[Settings], PlugvisorCelery]) -> None:
        self._factory = factory
        self._apps: dict[Settings, PlugvisorCelery] = {}
        self._lock = threading.Lock()

    def __call__(self, settings: Settings) -> PlugvisorCelery:
        with self._lock:
            app = self._apps.get(settings)
            if app is None:
                app = self._apps[settings] = self._factory(settings)
            return app


#: This process's producer app for ``settings`` (no task code: it only sends).
producer = AppCache(new_celery)
