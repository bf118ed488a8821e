"""Pipelines: which tasks a job kind runs, in order, as one Celery chain.

A chain hands each task the same job id (immutable signatures): no task waits on another,
and the next task starts only when the previous one returned. A task that failed records
the failure on the job and returns normally; the chain's later tasks then find the job
failed and do nothing. Task ids are ``<job id>:<task>``, so a job's messages are
recognisable in the broker and the result backend.

reload = reload_check -> snapshot -> trial -> activate; rollback = rollback_check ->
snapshot -> restore (their bodies and the design of the data restore:
:mod:`plugvisor.workers.reload`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import chain

from plugvisor.core.errors import JobError
from plugvisor.core.log import get_logger
from plugvisor.state.registry import JobRecord, JobStatus
from plugvisor.workers.app import get_app
from plugvisor.workers.jobs import open_registry
from plugvisor.workers.tasks import TASK_NAMES, review_decision

if TYPE_CHECKING:
    from plugvisor.core.config import Settings

__all__ = ["PIPELINES", "check_params", "enqueue", "recover_stale_jobs"]

_log = get_logger(__name__)

#: Job kind -> the tasks its chain runs, in order.
PIPELINES: Mapping[str, tuple[str, ...]] = {
    "upload": ("validate_install", "scan"),
    "audit": ("audit",),
    "review": ("review",),
    "reload": ("reload_check", "snapshot", "trial", "activate"),
    "rollback": ("rollback_check", "snapshot", "restore"),
}


def _check_upload(params: Mapping[str, Any]) -> None:
    archive = params.get("archive")
    if not isinstance(archive, str) or not archive:
        raise JobError("invalid_params", "upload needs archive (a path)", field="archive")
    if not Path(archive).is_file():
        raise JobError("invalid_params", f"archive {archive} is not a file", field="archive")


def _check_audit(params: Mapping[str, Any]) -> None:
    for key in ("name", "version"):
        if params.get(key) is not None and not isinstance(params[key], str):
            raise JobError("invalid_params", f"audit {key} must be a string", field=key)
    if params.get("version") and not params.get("name"):
        raise JobError("invalid_params", "audit version needs a name", field="name")


def _check_review(params: Mapping[str, Any]) -> None:
    review_decision(params)


def _check_target(params: Mapping[str, Any]) -> None:
    """reload / rollback: ``name`` (a plugin name) and an optional ``version`` string."""
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise JobError("invalid_params", "reload/rollback need name (a plugin)", field="name")
    version = params.get("version")
    if version is not None and (not isinstance(version, str) or not version):
        raise JobError("invalid_params", "version must be a non-empty string or null",
                       field="version")  # fmt: skip


_CHECKS: Mapping[str, Callable[[Mapping[str, Any]], None]] = {
    "upload": _check_upload,
    "audit": _check_audit,
    "review": _check_review,
    "reload": _check_target,
    "rollback": _check_target,
}


def check_params(kind: str, params: Mapping[str, Any]) -> None:
    """Refuse a job whose params its pipeline cannot run (``job.invalid_params``), at once."""
    if kind not in PIPELINES:
        raise JobError(
            "unknown_kind", f"no job kind {kind!r} (known: {', '.join(sorted(PIPELINES))})",
            kind=kind,
        )  # fmt: skip
    _CHECKS[kind](params)


def enqueue(settings: Settings, job: JobRecord) -> None:
    """Send the job's pipeline to the broker (after its record committed)."""
    app = get_app(settings)
    sigs = [
        app.signature(TASK_NAMES[name], args=(job.id,), immutable=True, task_id=f"{job.id}:{name}")
        for name in PIPELINES[job.kind]
    ]
    started = time.perf_counter()
    chain(*sigs).apply_async()
    _log.info("job.enqueued", job_id=job.id, kind=job.kind,
              publish_ms=round((time.perf_counter() - started) * 1000, 2))  # fmt: skip


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
        if job.updated < cutoff and job.kind in PIPELINES:
            _log.warning("job.recovered", job_id=job.id, kind=job.kind, step=job.step,
                         updated=job.updated.isoformat())  # fmt: skip
            enqueue(settings, job)
            recovered.append(job.id)
    return recovered
