"""Jobs: one frozen dataclass per job kind, and how a job is started and waited for.

A job is a registry record (``Registry.create_job``: kind, params, status, steps) plus a
Celery chain of tasks that each take only the job id. This module is the producing side,
shared by the API, the CLI and the tools: the job messages (``from_dict`` is the one
check of a job's params), the task names (the contract with the worker, which binds its
task bodies to them in ``workers/tasks.py``), the Celery configuration both sides must
agree on, and :func:`start_job` / :func:`wait_for_job`. It sends through a producer-only
Celery app that holds no task code.

A new job kind is one class here (``@JOBS.register``, with its ``tasks``), its task
bodies in ``workers/`` and its API route.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from plugvisor.core.errors import ApiError, JobError
from plugvisor.core.log import get_logger
from plugvisor.messaging.message import Message, MessageFamily, optional_str, required_str
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import JobRecord, JobStatus, Registry

if TYPE_CHECKING:
    from plugvisor.core.config import Settings

__all__ = [
    "JOBS",
    "REVIEW_DECISIONS",
    "AuditJob",
    "Job",
    "ReloadJob",
    "ReviewJob",
    "RollbackJob",
    "UploadJob",
    "enqueue",
    "open_registry",
    "start_job",
    "task_name",
    "wait_for_job",
]

_log = get_logger(__name__)


def task_name(short: str) -> str:
    """The registered Celery name of the task ``short`` (``scan`` -> ``plugvisor.scan``)."""
    return f"plugvisor.{short}"


# ---- the messages --------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Job(Message):
    """A job kind: its params (fields) and the tasks its chain runs, in order."""

    tasks: ClassVar[tuple[str, ...]] = ()
    #: Who asked (the API's token label); recorded with the job, shown in its record.
    requested_by: str | None = None

    def check_world(self) -> None:
        """Refuse at once what the first task would refuse (nothing by default)."""


#: Every job kind, by kind.
JOBS: MessageFamily[Job] = MessageFamily("job")


@JOBS.register
@dataclass(frozen=True, kw_only=True)
class UploadJob(Job):
    """Validate, store and scan an uploaded archive (``staging/uploads/<uuid>.tar.gz``)."""

    kind: ClassVar[str] = "upload"
    tasks: ClassVar[tuple[str, ...]] = ("validate_install", "scan")
    archive: str
    filename: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UploadJob:
        return cls(
            archive=required_str(data, "archive", "a path"),
            filename=optional_str(data, "filename"),
            requested_by=optional_str(data, "requested_by"),
        )

    def check_world(self) -> None:
        if not Path(self.archive).is_file():
            raise ApiError("invalid_field", f"archive {self.archive} is not a file",
                           field="archive")  # fmt: skip


@JOBS.register
@dataclass(frozen=True, kw_only=True)
class AuditJob(Job):
    """Re-scan ``name`` ``version`` (default: the active one; no name: every active one)."""

    kind: ClassVar[str] = "audit"
    tasks: ClassVar[tuple[str, ...]] = ("audit",)
    name: str | None = None
    version: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditJob:
        name, version = optional_str(data, "name"), optional_str(data, "version")
        if version and not name:
            raise ApiError("missing_field", "an audit of a version needs its plugin name",
                           field="name")  # fmt: skip
        return cls(name=name, version=version, requested_by=optional_str(data, "requested_by"))


#: An admin's review decision -> what it makes of the version.
REVIEW_DECISIONS = ("approve", "reject")


@JOBS.register
@dataclass(frozen=True, kw_only=True)
class ReviewJob(Job):
    """An admin's approve/reject of a version held for review, with who and why."""

    kind: ClassVar[str] = "review"
    tasks: ClassVar[tuple[str, ...]] = ("review",)
    name: str
    version: str
    decision: str
    by: str
    reason: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReviewJob:
        decision = required_str(data, "decision")
        if decision not in REVIEW_DECISIONS:
            raise ApiError("invalid_field", f"decision must be approve or reject, not "
                           f"{decision!r}", field="decision")  # fmt: skip
        return cls(
            name=required_str(data, "name", "a plugin"),
            version=required_str(data, "version"),
            decision=decision,
            by=required_str(data, "by", "who decided"),
            reason=required_str(data, "reason"),
            requested_by=optional_str(data, "requested_by"),
        )


@dataclass(frozen=True, kw_only=True)
class _TargetJob(Job):
    """A job on plugin ``name`` and an optional ``version`` (reload, rollback)."""

    name: str
    version: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        return cls(
            name=required_str(data, "name", "a plugin"),
            version=optional_str(data, "version"),
            requested_by=optional_str(data, "requested_by"),
        )


@JOBS.register
@dataclass(frozen=True, kw_only=True)
class ReloadJob(_TargetJob):
    """Move ``name`` to ``version`` (default: its newest approved version), tried first."""

    kind: ClassVar[str] = "reload"
    tasks: ClassVar[tuple[str, ...]] = ("reload_check", "snapshot", "trial", "activate")


@JOBS.register
@dataclass(frozen=True, kw_only=True)
class RollbackJob(_TargetJob):
    """Move ``name`` back to ``version`` (default: the previous one) with its data backup."""

    kind: ClassVar[str] = "rollback"
    tasks: ClassVar[tuple[str, ...]] = ("rollback_check", "snapshot", "restore")


# ---- starting and waiting ----------------------------------------------------------------------
_registries: dict[tuple[int, str, str], Registry] = {}


def open_registry(settings: Settings) -> Registry:
    """This process's :class:`Registry` for ``settings`` (one engine per process).

    Keyed by pid as well: an engine must not cross ``fork()`` (prefork pool children
    open their own).
    """
    layout = StateLayout(settings.state_dir)
    key = (os.getpid(), str(layout.root), settings.database_url)
    reg = _registries.get(key)
    if reg is None:
        layout.ensure()
        reg = _registries[key] = Registry.open(settings)
    return reg


def enqueue(settings: Settings, job: JobRecord) -> None:
    """Send the job's chain of tasks to the broker (after its record committed)."""
    from celery import chain  # noqa: PLC0415 -- Celery only when a job is sent

    from plugvisor.messaging.celery_app import producer  # noqa: PLC0415 -- likewise

    app = producer(settings)
    cls = JOBS.get(job.kind)
    sigs = [
        app.signature(task_name(short), args=(job.id,), immutable=True, task_id=f"{job.id}:{short}")
        for short in cls.tasks
    ]
    started = time.perf_counter()
    chain(*sigs).apply_async()
    _log.info("job.enqueued", job_id=job.id, kind=job.kind,
              publish_ms=round((time.perf_counter() - started) * 1000, 2))  # fmt: skip


def start_job(settings: Settings, job: Job, idempotency_key: str | None = None) -> str:
    """Record ``job`` and enqueue its chain after the record commits; the job's id.

    With an ``idempotency_key`` seen before, the existing job's id comes back and nothing
    is enqueued again (a client retrying its POST gets the same job).
    """
    job.check_world()
    registry = open_registry(settings)
    before = datetime.now(UTC)
    record = registry.create_job(job.kind, job.to_dict(), idempotency_key)
    # create_job returns the earlier record for a known key: enqueue only a new one.
    if record.created >= before or idempotency_key is None:
        try:
            enqueue(settings, record)
        except Exception as exc:
            # Broker unreachable after the publish retries (kombu/amqp raise a variety
            # of transport errors): the job must not sit "queued" forever with no message.
            error = JobError(
                "enqueue_failed",
                f"job {record.id} could not be sent to the broker: {type(exc).__name__}: {exc}",
                job_id=record.id,
            )
            registry.update_job(record.id, status=JobStatus.failed, error=error)
            _log.error("job.enqueue_failed", job_id=record.id, error=str(exc))
            raise error from exc
    return record.id


def wait_for_job(
    settings: Settings, job_id: str, timeout: float, interval: float = 0.02
) -> JobRecord:
    """Poll the job record until it finishes; ``JobError("timeout")`` after ``timeout`` s."""
    registry = open_registry(settings)
    deadline = time.monotonic() + timeout
    while True:
        record = registry.get_job(job_id)  # NotFoundError for an unknown id, at once
        if record.status in (JobStatus.succeeded, JobStatus.failed):
            return record
        if time.monotonic() >= deadline:
            raise JobError(
                "timeout",
                f"job {job_id} still {record.display_status} after {timeout:.1f}s",
                job_id=job_id,
            )
        time.sleep(interval)
