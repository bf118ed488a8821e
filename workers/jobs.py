"""The job model: a registry job record driven by idempotent, step-by-step Celery tasks.

A job is the registry's :class:`~plugvisor.state.registry.JobRecord` (id, kind, status
``queued|running|succeeded|failed``, current step, steps with status and timings,
result, error ``{code, message}``). Tasks take only a job id and re-read the record
("asserting the world is the responsibility of the task"): with late acknowledgement a
task may run twice (worker killed, connection lost, a redelivered message), so every
step is keyed by job id + step name and a step that already succeeded is not run
again; its stored result is returned instead.

:func:`~plugvisor.messaging.jobs.start_job` creates the record and only then enqueues
the chain, so a worker never receives a job id whose record is not committed yet.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded

from plugvisor.core.errors import JobError, PlugvisorError
from plugvisor.core.log import get_logger
from plugvisor.state.registry import JobRecord, JobStatus, Registry

if TYPE_CHECKING:
    pass

__all__ = [
    "JobFailed",
    "JobRun",
    "Step",
    "StepStatus",
]

T = TypeVar("T")
_log = get_logger(__name__)


class StepStatus:
    """Status of one step inside a job record (plain strings: they are stored as JSON)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobFailed(Exception):
    """Raised out of a step once the job record says ``failed``; tasks stop quietly on it."""

    def __init__(self, job_id: str, error: Mapping[str, Any]) -> None:
        super().__init__(job_id, dict(error))
        self.job_id = job_id
        self.error = dict(error)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class Step:
    """One step as seen from inside the ``with`` block of :meth:`JobRun.step`.

    ``done`` is True when an earlier delivery of the task already finished this step:
    the block must then not redo its effect, and ``result`` holds what it returned.
    ``retried`` is True when an earlier delivery started the step but did not finish it
    (killed worker): the effect may be half-applied, so the block must check the world.
    """

    name: str
    done: bool = False
    retried: bool = False
    attempt: int = 1
    result: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class JobRun:
    """A task's handle on one job record: status transitions and steps with timings."""

    def __init__(self, registry: Registry, job_id: str, task: str = "") -> None:
        self.registry = registry
        self.job_id = job_id
        self.task = task
        self.log = get_logger("plugvisor.job", job_id=job_id, task=task)
        self.record = registry.get_job(job_id)
        #: ``time.monotonic()`` when this task took the job: the time limits count from it.
        self.started = time.monotonic()

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.record.params)

    @property
    def finished(self) -> bool:
        return self.record.status in (JobStatus.succeeded, JobStatus.failed)

    def refresh(self) -> JobRecord:
        self.record = self.registry.get_job(self.job_id)
        return self.record

    def step_result(self, name: str) -> Any:
        """The stored result of a succeeded step (``JobError("step_missing")`` otherwise)."""
        for entry in self.refresh().steps:
            if entry.get("name") == name and entry.get("status") == StepStatus.SUCCEEDED:
                return entry.get("result")
        raise JobError(
            "step_missing", f"job {self.job_id} has no succeeded step {name!r}", step=name
        )

    def _save_step(self, entry: dict[str, Any], **job_fields: Any) -> None:
        steps = [dict(s) for s in self.refresh().steps]
        for i, old in enumerate(steps):
            if old.get("name") == entry["name"]:
                steps[i] = entry
                break
        else:
            steps.append(entry)
        self.record = self.registry.update_job(self.job_id, steps=steps, **job_fields)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Run one step: mark it running, time it, record success or turn errors into the job's.

        A :class:`PlugvisorError` becomes the job's error as is; a soft time limit becomes
        ``job.time_limit``; anything else is logged with its traceback and becomes
        ``job.internal`` (never lost). In each case the job is marked failed and
        :class:`JobFailed` propagates so the task stops; the pipeline's later tasks see
        the failed record and do nothing.
        """
        previous = next((s for s in self.refresh().steps if s.get("name") == name), None)
        if previous is not None and previous.get("status") == StepStatus.SUCCEEDED:
            self.log.info("job.step.skip", step=name, reason="already succeeded")
            yield Step(name=name, done=True, result=previous.get("result"))
            return
        attempt = int(previous.get("attempt", 0)) + 1 if previous else 1
        step = Step(name=name, retried=previous is not None, attempt=attempt)
        started_wall, started = _now(), time.perf_counter()
        entry: dict[str, Any] = {
            "name": name,
            "status": StepStatus.RUNNING,
            "started": started_wall,
            "finished": None,
            "duration": None,
            "attempt": attempt,
        }
        self._save_step(entry, status=JobStatus.running, step=name)
        self.log.info("job.step.start", step=name, attempt=attempt)
        try:
            yield step
        except JobFailed:
            raise
        except (SystemExit, KeyboardInterrupt, GeneratorExit):
            # The process is being stopped (hard time limit, shutdown), not the step
            # failing: leave the step "running" for the parent to settle (time limit ->
            # JobTask.on_failure) or for the requeued message to retry (lost worker).
            self.log.warning("job.step.interrupted", step=name)
            raise
        except Exception as exc:
            error = _error_of(exc, self.log, name)
            entry.update(
                status=StepStatus.FAILED,
                finished=_now(),
                duration=round(time.perf_counter() - started, 6),
                error=error,
            )
            self._save_step(entry, status=JobStatus.failed, step=name, error=error)
            self.log.warning("job.failed", step=name, code=error["code"], message=error["message"])
            raise JobFailed(self.job_id, error) from exc
        entry.update(
            status=StepStatus.SUCCEEDED,
            finished=_now(),
            duration=round(time.perf_counter() - started, 6),
            result=step.result,
            **step.extra,
        )
        self._save_step(entry)
        self.log.info("job.step.done", step=name, duration_ms=round(entry["duration"] * 1000, 2))

    def run_step(self, name: str, fn: Callable[[Step], T]) -> T:
        """``fn(step)`` inside :meth:`step` unless the step already succeeded; its result.

        ``fn`` must return something JSON-compatible: it is stored as the step's result.
        """
        with self.step(name) as step:
            if not step.done:
                step.result = fn(step)
        return step.result  # type: ignore[no-any-return]

    def succeed(self, result: Any) -> None:
        """Mark the job succeeded with ``result`` (the last task of a pipeline calls it)."""
        self.record = self.registry.update_job(
            self.job_id, status=JobStatus.succeeded, step=None, result=result, error=None
        )
        self.log.info("job.succeeded")

    def fail(self, error: PlugvisorError | Mapping[str, Any]) -> None:
        """Mark the job failed with ``error`` unless it already finished."""
        if self.refresh().status in (JobStatus.succeeded, JobStatus.failed):
            return
        data = error.to_dict() if isinstance(error, PlugvisorError) else dict(error)
        # A step left "running" (its process was killed) failed with the job.
        steps = [
            dict(s, status=StepStatus.FAILED, finished=_now(), error=data)
            if s.get("status") == StepStatus.RUNNING
            else dict(s)
            for s in self.record.steps
        ]
        self.record = self.registry.update_job(
            self.job_id, status=JobStatus.failed, error=data, steps=steps
        )
        self.log.warning("job.failed", code=data.get("code"), message=data.get("message"))


def _error_of(exc: Exception, log: Any, step: str) -> dict[str, Any]:
    if isinstance(exc, PlugvisorError):
        return exc.to_dict()
    if isinstance(exc, SoftTimeLimitExceeded):
        return JobError("time_limit", f"step {step} ran past the job time limit").to_dict()
    # Not one of ours: keep the traceback in the log, give the caller a stable code.
    log.error("job.internal", step=step, exc_type=type(exc).__name__,
              traceback=traceback.format_exc())  # fmt: skip
    return JobError(
        "internal", f"step {step} failed unexpectedly: {type(exc).__name__}: {exc}", step=step
    ).to_dict()
