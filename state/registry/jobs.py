"""Jobs: queued work, its steps and its outcome, with idempotency keys."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugvisor.core.errors import (
    ConflictError,
    NotFoundError,
    PlugvisorError,
)
from plugvisor.state.registry.codec import UNSET, dumps, utc_now
from plugvisor.state.registry.db import Database, insert_first
from plugvisor.state.registry.records import JobRecord, JobStatus, job_record
from plugvisor.state.registry.schema import (
    Q,
    jobs_t,
)


class Jobs(Database):
    """Creating, updating and listing job records."""

    # ---- jobs -----------------------------------------------------------------------------
    def create_job(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JobRecord:
        """Record a queued job; a repeated ``idempotency_key`` returns the existing job.

        Reusing a key for a different kind of job is refused (``conflict.idempotency_key``).
        """
        params_json = dumps(dict(params or {}))

        def existing(conn: Connection) -> JobRecord | None:
            if idempotency_key is None:
                return None
            row = conn.execute(
                sa.select(jobs_t).where(jobs_t.c.idempotency_key == idempotency_key)
            ).first()
            if row is None:
                return None
            if row.kind != kind:
                raise ConflictError(
                    "idempotency_key",
                    f"idempotency key {idempotency_key!r} was used for a {row.kind} job, "
                    f"not {kind}",
                    key=idempotency_key, job_id=row.id,
                )  # fmt: skip
            return job_record(row)

        def run(conn: Connection) -> JobRecord:
            found = existing(conn)
            if found is not None:
                return found
            now = utc_now()
            job_id = str(uuid.uuid4())
            insert_first(
                conn,
                sa.insert(jobs_t).values(
                    id=job_id, kind=kind, status=JobStatus.queued.value, step=None,
                    steps="[]", params=params_json, result=None, error=None,
                    idempotency_key=idempotency_key, created=now, updated=now,
                ),
            )  # fmt: skip
            return self._job_in(conn, job_id)

        return self._write(run)

    def update_job(
        self,
        job_id: str,
        *,
        status: JobStatus | str = UNSET,
        step: str | None = UNSET,
        steps: Sequence[Mapping[str, Any]] = UNSET,
        result: Any = UNSET,
        error: Mapping[str, Any] | PlugvisorError | None = UNSET,
    ) -> JobRecord:
        """Change the given fields of a job (others stay as they are); return the new record."""
        values: dict[str, Any] = {}
        if status is not UNSET:
            values["status"] = JobStatus(status).value
        if step is not UNSET:
            values["step"] = step
        if steps is not UNSET:
            values["steps"] = dumps([dict(s) for s in steps])
        if result is not UNSET:
            values["result"] = None if result is None else dumps(result)
        if error is not UNSET:
            if isinstance(error, PlugvisorError):
                error = error.to_dict()
            values["error"] = None if error is None else dumps(dict(error))

        def run(conn: Connection) -> JobRecord:
            self._job_in(conn, job_id)
            values["updated"] = utc_now()
            conn.execute(sa.update(jobs_t).where(jobs_t.c.id == job_id).values(**values))
            return self._job_in(conn, job_id)

        return self._write(run)

    def get_job(self, job_id: str) -> JobRecord:
        """One job; ``NotFoundError("job")`` when absent."""
        with self._read() as conn:
            return self._job_in(conn, job_id)

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 100, kind: str | None = None
    ) -> list[JobRecord]:
        """Jobs, newest first, optionally of one status and/or kind."""
        query = sa.select(jobs_t).order_by(jobs_t.c.created.desc(), jobs_t.c.id).limit(limit)
        if status is not None:
            query = query.where(jobs_t.c.status == JobStatus(status).value)
        if kind is not None:
            query = query.where(jobs_t.c.kind == kind)
        with self._read() as conn:
            return [job_record(r) for r in conn.execute(query).all()]

    def _job_in(self, conn: Connection, job_id: str) -> JobRecord:
        row = conn.execute(Q.job, {"b_id": job_id}).first()
        if row is None:
            raise NotFoundError("job", f"no job with id {job_id!r}", job_id=job_id)
        return job_record(row)
