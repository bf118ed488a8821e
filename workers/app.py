"""The Celery application factory: one broker setting, reliability settings chosen on purpose.

``settings.broker_url`` empty means the embedded broker: kombu's SQLAlchemy transport on
``<state>/broker.sqlite`` with results in ``<state>/results.sqlite`` (nothing to install;
queued jobs survive a restart because they are rows in a file). Otherwise it is the given
URL (``amqp://`` RabbitMQ in production) with ``settings.result_backend`` or the same
SQLite results file. The same tasks and pipelines run on both.

There is no module-level app: :func:`make_celery` builds one per settings object (the API
and the CLI call :func:`get_app`, which caches it), and ``celery -A
plugvisor.workers.app`` finds ``app`` through a lazy module ``__getattr__`` built from
:func:`~plugvisor.core.config.load_settings` (environment and config file).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from plugvisor.core.config import Settings, load_settings
from plugvisor.core.errors import ConfigError, PlugvisorError
from plugvisor.core.log import configure_logging, get_logger
from plugvisor.messaging.broker import broker_url, result_backend, set_sqlalchemy_polling
from plugvisor.state.layout import StateLayout

__all__ = [
    "PlugvisorCelery",
    "broker_urls",
    "default_concurrency",
    "get_app",
    "make_celery",
    "prune_delivered_messages",
    "run_worker",
    "soft_time_limit",
]


class PlugvisorCelery(Celery):  # type: ignore[misc]  # celery ships no type hints
    """A Celery app that carries the :class:`Settings` it was built from (tasks read them)."""

    settings: Settings


def broker_urls(settings: Settings) -> tuple[str, str]:
    """``(broker_url, result_backend)`` that ``settings`` select."""
    return broker_url(settings), result_backend(settings)


#: Share of ``job_time_limit_s`` after which the soft limit fires; the rest is left to
#: record the failure on the job before the hard limit kills the process.
SOFT_LIMIT_FRACTION = 0.9


def soft_time_limit(settings: Settings) -> float:
    """Seconds a task may run before SoftTimeLimitExceeded is raised inside it."""
    return float(settings.job_time_limit_s) * SOFT_LIMIT_FRACTION


def make_celery(settings: Settings) -> PlugvisorCelery:
    """Build the Celery app for ``settings`` with every job task registered."""
    broker, backend = broker_urls(settings)
    if settings.embedded_broker or backend.startswith("db+sqlite"):
        StateLayout(settings.state_dir).ensure()  # the SQLite files live in the state dir
    app = PlugvisorCelery("plugvisor", broker=broker, backend=backend, set_as_current=False)
    app.settings = settings
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
    app.conf.update(conf)
    from plugvisor.workers.tasks import register_tasks  # noqa: PLC0415 -- tasks import app

    register_tasks(app)
    return app


_apps: dict[Settings, PlugvisorCelery] = {}
_apps_lock = threading.Lock()


def get_app(settings: Settings) -> PlugvisorCelery:
    """The cached app for ``settings`` (one per settings object per process)."""
    with _apps_lock:
        app = _apps.get(settings)
        if app is None:
            app = _apps[settings] = make_celery(settings)
        return app


#: Settings of the worker this process runs (set by run_worker before pool children fork).
_worker_settings: Settings | None = None


def default_concurrency() -> int:
    """Pool size when none is given: half the cores, at least one (1 on 2 cores).

    Scans are CPU-bound and the daemon's plugin processes need the other half.
    """
    return max(1, (os.cpu_count() or 2) // 2)


def run_worker(
    settings: Settings,
    *,
    concurrency: int | None = None,
    pool: str = "prefork",
    hostname: str | None = None,
) -> int:
    """Run a Celery worker for ``settings`` in this process until it is stopped; exit code.

    ``prefork`` (default) runs tasks in child processes, which is what makes the hard
    time limit enforceable (the child is killed); ``solo`` runs them in this process
    (no hard limit; for debugging).
    """
    global _worker_settings  # noqa: PLW0603 -- read by pool children after fork
    if pool not in ("prefork", "solo"):
        raise ConfigError("invalid_value", f"pool must be prefork or solo, not {pool!r}",
                          setting="pool")  # fmt: skip
    _worker_settings = settings
    from plugvisor.scan.scanner import warm_up  # noqa: PLC0415

    warm_up()  # before the pool forks: children inherit Bandit already loaded
    app = get_app(settings)
    worker = app.Worker(
        concurrency=concurrency or default_concurrency(),
        pool_cls=pool,
        # Node names must be unique per broker: two workers named celery@HOST on one
        # RabbitMQ make the second die on its exclusive remote-control queue.
        hostname=hostname or f"worker-{os.getpid()}@{socket.gethostname()}",
        queues=[settings.job_queue],
        loglevel=settings.log_level.upper(),
        # No fanout on the embedded broker; on AMQP, the cluster-sync chatter is not
        # needed either (workers share nothing but the broker and the registry).
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=settings.embedded_broker,
        optimization="fair",
    )
    worker.start()
    return int(getattr(worker, "exitcode", 0) or 0)


def _init_worker_process(**_: Any) -> None:
    """Each pool process logs as the worker component and has Bandit warm for scans."""
    from plugvisor.scan.scanner import warm_up  # noqa: PLC0415

    settings = _worker_settings or load_settings()
    configure_logging(settings.log_level, settings.log_format, component="worker")
    warm_up()


def prune_delivered_messages(settings: Settings, grace_s: float = 60.0) -> int:
    """Delete delivered rows of the embedded broker that no consumer can still hold.

    kombu's SQLAlchemy transport never deletes a message: delivery marks the row
    invisible (stamping the time) and an ack does nothing more, so ``broker.sqlite``
    grows by one row per task forever. A row invisible for longer than the hard time
    limit plus ``grace_s`` is either acknowledged or stranded by a killed worker (whose
    job :func:`~plugvisor.workers.pipelines.recover_stale_jobs` re-enqueues from its
    record), so it can go. Returns the number of rows deleted.
    """
    db = StateLayout(settings.state_dir).broker_db
    if not settings.embedded_broker or not db.exists():
        return 0
    # kombu stamps rows with naive local time (datetime.now) as ISO text: compare alike.
    cutoff = datetime.now() - timedelta(seconds=settings.job_time_limit_s + grace_s)
    with contextlib.closing(sqlite3.connect(db, timeout=30.0)) as conn, conn:
        try:
            cur = conn.execute(
                "DELETE FROM kombu_message WHERE visible = 0 AND timestamp < ?",
                (cutoff.strftime("%Y-%m-%d %H:%M:%S.%f"),),
            )
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0  # no message was ever sent through this broker
            raise
        return int(cur.rowcount)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """On the embedded broker: re-enqueue stranded jobs, prune delivered messages."""
    app = getattr(sender, "app", None)
    settings = getattr(app, "settings", None)
    if not isinstance(settings, Settings) or not settings.embedded_broker:
        return
    from plugvisor.workers.pipelines import recover_stale_jobs  # noqa: PLC0415

    log = get_logger(__name__)
    try:
        recover_stale_jobs(settings)
    except PlugvisorError as err:
        # Recovery is best effort at start-up; the worker still serves new jobs.
        log.error("job.recovery_failed", error=str(err))
    try:
        log.info("broker.pruned", messages=prune_delivered_messages(settings))
    except sqlite3.Error as exc:
        log.error("broker.prune_failed", error=str(exc))


# Strong references: the handlers live as long as the module (Celery holds weak ones).
worker_process_init.connect(_init_worker_process, weak=False)
worker_ready.connect(_on_worker_ready, weak=False)


def __getattr__(name: str) -> Any:
    """``app``/``celery`` for ``celery -A plugvisor.workers.app``, built on first access."""
    if name in ("app", "celery"):
        return get_app(load_settings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
