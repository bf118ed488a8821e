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
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.signals import worker_process_init, worker_ready

from plugvisor.core.config import Settings, load_settings
from plugvisor.core.errors import ConfigError, PlugvisorError
from plugvisor.core.log import configure_logging, get_logger
from plugvisor.messaging.celery_app import AppCache, PlugvisorCelery, new_celery
from plugvisor.messaging.jobs import JOBS, enqueue, open_registry
from plugvisor.messaging.preflight import preflight
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import JobStatus
from plugvisor.workers.tasks import register_tasks

_log = get_logger(__name__)

__all__ = [
    "PlugvisorCelery",
    "default_concurrency",
    "get_app",
    "make_celery",
    "prune_delivered_messages",
    "recover_stale_jobs",
    "run_worker",
]


def make_celery(settings: Settings) -> PlugvisorCelery:
    """Build the Celery app for ``settings`` with every job task registered."""
    app = new_celery(settings)
    register_tasks(app)
    return app


#: The worker's app for ``settings`` (one per settings object per process).
get_app = AppCache(make_celery)


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
    preflight(settings)  # an unreachable registry or broker: refused, naming the setting
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
    job :func:`~plugvisor.workers.app.recover_stale_jobs` re-enqueues from its
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


def recover_stale_jobs(settings: Settings, grace_s: float = 30.0) -> list[str]:
    """Re-enqueue jobs left ``running`` longer than any task may run; their ids.

    Every step transition updates the job record, and the hard time limit kills a task
    that runs longer than ``job_time_limit_s``; a job still ``running`` past that (plus
    ``grace_s``) lost its worker without the message coming back (the embedded broker's
    one gap: a hard-killed worker main process). Its pipeline is sent again; finished
    steps are skipped, so nothing is repeated.
    """
    registry = open_registry(settings)
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.job_time_limit_s + grace_s)
    recovered = []
    for job in registry.list_jobs(status=JobStatus.running, limit=1000):
        if job.updated < cutoff and job.kind in JOBS.kinds():
            _log.warning("job.recovered", job_id=job.id, kind=job.kind, step=job.step,
                         updated=job.updated.isoformat())  # fmt: skip
            enqueue(settings, job)
            recovered.append(job.id)
    return recovered


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """On the embedded broker: re-enqueue stranded jobs, prune delivered messages."""
    app = getattr(sender, "app", None)
    settings = getattr(app, "settings", None)
    if not isinstance(settings, Settings) or not settings.embedded_broker:
        return
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
