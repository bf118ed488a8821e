"""``/api/jobs``: a job's record (status, step, steps, result, error) and recent jobs."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from plugvisor.api.app import services
from plugvisor.api.openapi import operation
from plugvisor.api.schemas import JobListSchema, JobSchema, JobsQuerySchema
from plugvisor.state.registry import JobRecord
from plugvisor.state.tokens import Role

__all__ = ["bp", "job_json"]

bp = Blueprint("jobs", __name__)


def job_json(job: JobRecord) -> dict[str, Any]:
    """The API shape of a job: ``id, kind, status, display_status, step, steps, result, error``."""
    out = job.to_dict()
    out.pop("idempotency_key", None)  # scoped to a token: not for other readers
    return out


@bp.get("/api/jobs/<job_id>")
@operation(
    summary="One job: status, current step, every step, result or error",
    tag="jobs",
    role=Role.VIEWER,
    responses={200: ("The job", JobSchema), 404: ("No such job", None)},
)
def get_job(job_id: str) -> ResponseReturnValue:
    return jsonify(job_json(services(current_app).registry.get_job(job_id)))


@bp.get("/api/jobs")
@operation(
    summary="Recent jobs, newest first",
    tag="jobs",
    role=Role.VIEWER,
    query=JobsQuerySchema,
    responses={200: ("Jobs", JobListSchema)},
)
def list_jobs(query: dict[str, Any]) -> ResponseReturnValue:
    jobs = services(current_app).registry.list_jobs(
        status=query["state"], limit=query["limit"], kind=query["kind"]
    )
    return jsonify({"jobs": [job_json(j) for j in jobs]})
