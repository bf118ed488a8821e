"""The job tasks: validate + install, scan, audit, review (reload/rollback: workers/reload.py).

Each takes a job id and nothing else.

A task re-reads its job record, runs its steps through :class:`~plugvisor.workers.jobs.JobRun`
(a step that already succeeded is skipped, so a redelivered message does not repeat its
effect) and never waits on another task: pipelines are Celery chains (each job class's
``tasks`` in :mod:`plugvisor.messaging.jobs`), and a task that finds its job already
failed or finished does nothing.

Tasks are registered on an app by :func:`register_tasks` (called by
:func:`~plugvisor.workers.app.make_celery`); there is no module-level app to bind to.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import TimeLimitExceeded

from plugvisor.core.errors import (
    ConflictError,
    JobError,
    NotFoundError,
    PlugvisorError,
    ProfileError,
)
from plugvisor.core.log import get_logger
from plugvisor.core.profile import load_profile
from plugvisor.messaging.celery_app import soft_time_limit
from plugvisor.messaging.jobs import JOBS, ReviewJob, open_registry, task_name
from plugvisor.scan.scanner import ScanReport, Severity, scan_tree
from plugvisor.state.install import install_archive
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import JobStatus, Registry, VersionRecord, VersionStatus
from plugvisor.workers.hooks import on_step
from plugvisor.workers.jobs import JobFailed, JobRun, Step
from plugvisor.workers.reload import BODIES as RELOAD_BODIES

if TYPE_CHECKING:
    from celery import Celery

    from plugvisor.core.config import Settings

__all__ = [
    "JobTask",
    "register_tasks",
    "scan_version",
]

_log = get_logger(__name__)

#: Who the automatic scan verdict is recorded as (a human reviewer's name otherwise).
SCANNER_ACTOR = "plugvisor-scan"


class JobTask(Task):  # type: ignore[misc]  # celery is untyped
    """Base of the job tasks: a failure the task could not record itself fails the job.

    Steps record their own errors; this catches what happens outside them: a hard time
    limit (the pool child is killed, Celery calls ``on_failure`` in the parent) or an
    error while opening the registry.
    """

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        job_id = (list(args or ()) or [None])[0] or (kwargs or {}).get("job_id")
        if not isinstance(job_id, str):
            return
        error: PlugvisorError
        if isinstance(exc, TimeLimitExceeded):
            error = JobError("time_limit", f"task {self.name} exceeded the hard time limit")
        elif isinstance(exc, PlugvisorError):
            error = exc
        else:
            error = JobError("internal", f"task {self.name} failed: {type(exc).__name__}: {exc}")
        try:
            JobRun(open_registry(self.app.settings), job_id, task=self.name).fail(error)
        except PlugvisorError as err:
            _log.error("job.fail_not_recorded", job_id=job_id, task=self.name, error=str(err))


def _job_body(
    body: Callable[[JobRun, Settings], None],
) -> Callable[[JobTask, str], dict[str, Any]]:
    """Wrap a task body: load the job, skip finished ones, stop quietly on JobFailed."""

    def run(self: JobTask, job_id: str) -> dict[str, Any]:
        settings: Settings = self.app.settings
        try:
            job = JobRun(open_registry(settings), job_id, task=self.name)
        except NotFoundError:
            # A message for a job whose record does not exist cannot be acted on; it is
            # acknowledged (not retried forever) and logged.
            _log.error("job.unknown", job_id=job_id, task=self.name)
            return {"job_id": job_id, "status": "unknown"}
        if job.finished:
            job.log.info("job.skip", status=job.record.status.value, reason="job finished")
            return {"job_id": job_id, "status": job.record.status.value}
        # JobFailed: the step recorded the failure on the job; the chain's next tasks skip.
        with contextlib.suppress(JobFailed):
            body(job, settings)
        if job.refresh().status in (JobStatus.succeeded, JobStatus.failed):
            _discard_upload(settings, job)
        return {"job_id": job_id, "status": job.record.status.value}

    run.__name__ = body.__name__
    run.__doc__ = body.__doc__
    return run


# ---------------------------------------------------------------------------------------
# upload: validate + install, then scan
# ---------------------------------------------------------------------------------------


def _validate_install(job: JobRun, settings: Settings) -> None:
    """Verify the signature, extract safely, store and record the version (status review)."""
    archive = Path(str(job.params.get("archive", "")))

    def install(step: Step) -> dict[str, Any]:
        if step.retried:
            # An earlier delivery may have recorded the version before it died; running
            # the install again would refuse it as "not newer" and quarantine it.
            done = _installed_before(settings, archive)
            if done is not None:
                job.log.info("job.step.recovered", step=step.name, version=done.version)
                return _version_ref(done)
        if not archive.is_file():
            raise JobError("archive_missing", f"uploaded archive {archive} does not exist",
                           archive=str(archive))  # fmt: skip
        # Recorded as `review` until the scan passes: a crash between the two steps
        # leaves a version that cannot be activated, never an unscanned approved one.
        record = install_archive(settings, archive, VersionStatus.review)
        return _version_ref(record)

    job.run_step("validate_install", install)


def _installed_before(settings: Settings, archive: Path) -> VersionRecord | None:
    """The version recorded from ``archive`` (matched by MANIFEST.json digest), if any."""
    digest = _manifest_digest(archive)
    if digest is None:
        return None
    return open_registry(settings).find_digest(digest)


_MAX_MANIFEST_BYTES = 1024**2


def _manifest_digest(archive: Path) -> str | None:
    """SHA-256 of the archive's MANIFEST.json member, read without extracting anything."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.getmember("MANIFEST.json")
            if not member.isfile() or member.size > _MAX_MANIFEST_BYTES:
                return None
            fh = tar.extractfile(member)
            if fh is None:
                return None
            return hashlib.sha256(fh.read(_MAX_MANIFEST_BYTES)).hexdigest()
    except (OSError, tarfile.TarError, KeyError, EOFError):
        return None


def _discard_upload(settings: Settings, job: JobRun) -> None:
    """Remove a finished upload's spooled archive (the API's ``staging/uploads/`` file).

    The version store holds the extracted tree and the quarantine its own copy of a
    refused archive, so the spool file has no further use. Only files under
    ``staging/uploads/`` are ours to remove: an archive given by path (CLI, tests) stays.
    """
    if job.record.kind != "upload":
        return
    archive = Path(str(job.params.get("archive", "")))
    spool = StateLayout(settings.state_dir).staging_dir / "uploads"
    try:
        if archive.resolve().parent == spool.resolve() and archive.is_file():
            archive.unlink()
            job.log.info("job.upload_discarded", archive=str(archive))
    except OSError as exc:
        job.log.warning("job.upload_not_discarded", archive=str(archive), error=str(exc))


def _version_ref(record: VersionRecord) -> dict[str, Any]:
    return {
        "name": record.plugin,
        "version": record.version,
        "digest": record.digest,
        "profile": record.profile,
    }


def scan_version(
    settings: Settings, record: VersionRecord, task_started: float | None = None
) -> ScanReport:
    """Scan the stored tree of one version against its own profile.

    ``task_started`` (``time.monotonic()`` at task start): Bandit catches every
    exception per file, the soft time limit's included, and reports the file as
    skipped, so a scan can "finish" after the limit fired. A scan that ends past the
    soft limit is therefore refused here as ``job.time_limit``, never reported as done.
    """
    profile = load_profile(record.profile or settings.default_profile, settings)
    tree = StateLayout(settings.state_dir).version_dir(record.digest)
    on_step("scan", tree)
    report = scan_tree(tree, profile)
    limit = soft_time_limit(settings)
    if task_started is not None and time.monotonic() - task_started >= limit:
        raise JobError(
            "time_limit",
            f"scan of {record.plugin} {record.version} ran past the soft time limit of "
            f"{limit:.1f}s (setting job_time_limit_s)",
            plugin=record.plugin, version=record.version,
        )  # fmt: skip
    return report


def _scan(job: JobRun, settings: Settings) -> None:
    """Scan the uploaded version; approve it, or send it to review when findings block."""
    target = job.step_result("validate_install")
    name, version = str(target["name"]), str(target["version"])
    registry = open_registry(settings)
    threshold = Severity.parse(settings.scan_review_severity)

    def scan(step: Step) -> dict[str, Any]:
        record = registry.get_version(name, version)
        try:
            report = scan_version(settings, record, job.started)
        except ProfileError as err:
            # A version whose profile does not exist (or does not parse) can be neither
            # checked nor sandboxed: refused for good, like an invalid archive.
            if record.status is VersionStatus.review:
                registry.set_status(name, version, VersionStatus.quarantined,
                                    by=SCANNER_ACTOR, reason=str(err))  # fmt: skip
            raise
        blocking = report.at_or_above(threshold)
        data = report.to_dict()
        data["threshold"] = str(threshold)
        if record.status is VersionStatus.review and not blocking:
            record = registry.set_status(
                name, version, VersionStatus.approved, by=SCANNER_ACTOR,
                reason=f"no scan finding at or above {threshold}", report=data,
            )  # fmt: skip
        elif record.status is VersionStatus.review:
            # Stays in review, now with the report an admin decides on.
            record = registry.set_report(name, version, data)
        else:
            # Someone decided already (an admin, a redelivered step): keep the decision.
            record = registry.set_report(name, version, data)
        job.log.info("job.scan", plugin=name, version=version, status=record.status.value,
                     findings=len(report.findings), blocking=len(blocking))  # fmt: skip
        return {
            "name": name,
            "version": version,
            "status": record.status.value,
            "findings": len(report.findings),
            "blocking": len(blocking),
            "max_severity": str(report.max_severity) if report.max_severity else None,
        }

    result = job.run_step("scan", scan)
    job.succeed(result)


# ---------------------------------------------------------------------------------------
# audit: re-scan stored versions and refresh their reports
# ---------------------------------------------------------------------------------------


def _audit_targets(registry: Registry, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    name, version = params.get("name"), params.get("version")
    if name and version:
        return [(str(name), str(version))]
    plugins = [registry.get_plugin(str(name))] if name else registry.list_plugins()
    out = []
    for plugin in plugins:
        chosen = plugin.active_version or plugin.highest_version
        if chosen:
            out.append((plugin.name, chosen))
    return out


def _audit(job: JobRun, settings: Settings) -> None:
    """Re-scan a version (or each plugin's active version) and store the fresh report."""
    registry = open_registry(settings)
    targets = job.run_step(
        "select",
        lambda _s: [list(t) for t in _audit_targets(registry, job.params)],
    )
    threshold = Severity.parse(settings.scan_review_severity)
    audited = []
    for name, version in targets:

        def rescan(_step: Step, name: str = name, version: str = version) -> dict[str, Any]:
            record = registry.get_version(name, version)
            report = scan_version(settings, record, job.started)
            data = report.to_dict()
            data["threshold"] = str(threshold)
            registry.set_report(name, version, data)
            return {
                "name": name,
                "version": version,
                "status": record.status.value,
                "findings": len(report.findings),
                "blocking": len(report.at_or_above(threshold)),
                "max_severity": str(report.max_severity) if report.max_severity else None,
            }

        audited.append(job.run_step(f"scan:{name}@{version}", rescan))
    job.succeed({"audited": audited})


# ---------------------------------------------------------------------------------------
# review: an admin's decision on a version in review
# ---------------------------------------------------------------------------------------

_DECISIONS: Mapping[str, VersionStatus] = {
    "approve": VersionStatus.approved,
    "reject": VersionStatus.quarantined,
}


def _review(job: JobRun, settings: Settings) -> None:
    """Apply an admin's approve/reject to a version in review, recording who and why."""
    registry = open_registry(settings)

    def decide(_step: Step) -> dict[str, Any]:
        msg = ReviewJob.from_dict(job.params)
        name, version, by, reason = msg.name, msg.version, msg.by, msg.reason
        status = _DECISIONS[msg.decision]
        record = registry.get_version(name, version)
        if record.status is not VersionStatus.review:
            if record.status is status and record.review_by == by:
                return _review_result(record)  # this very decision, already applied
            raise ConflictError(
                "not_in_review",
                f"{name} {version} is {record.status.value}, not in review",
                plugin=name, version=version, status=record.status.value,
            )  # fmt: skip
        record = registry.set_status(name, version, status, by=by, reason=reason)
        job.log.info("job.review", plugin=name, version=version, status=status.value, by=by)
        return _review_result(record)

    job.succeed(job.run_step("review", decide))


def _review_result(record: VersionRecord) -> dict[str, Any]:
    return {
        "name": record.plugin,
        "version": record.version,
        "status": record.status.value,
        "by": record.review_by,
        "reason": record.review_reason,
    }


_BODIES: Mapping[str, Callable[[JobRun, Settings], None]] = {
    "validate_install": _validate_install,
    "scan": _scan,
    "audit": _audit,
    "review": _review,
    **RELOAD_BODIES,
}


#: The task callables, built once: every app registers the same functions.
_RUNNERS = {short: _job_body(body) for short, body in _BODIES.items()}


def register_tasks(app: Celery) -> None:
    """Register the body of every task a job kind runs, under its wire name.

    A task named by a job class (``messaging/jobs.py``) without a body here is a bug:
    refused at once, before any job could be sent to it.

    ``shared=False``: Celery would otherwise add each task to every app created later in
    the process (the API may hold apps for several settings), which is not what a
    factory wants.
    """
    missing = sorted({t for cls in JOBS for t in cls.tasks} - set(_RUNNERS))
    if missing:
        raise ValueError(f"job tasks without a body in workers/: {missing}")
    for short, run in _RUNNERS.items():
        app.task(name=task_name(short), bind=True, base=JobTask, shared=False)(run)
