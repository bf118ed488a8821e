"""The job model's step machinery and the Celery app's settings (no broker needed)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from plugvisor.core.config import Settings, load_settings
from plugvisor.core.errors import JobError, SignatureError
from plugvisor.messaging.broker import broker_url, result_backend
from plugvisor.messaging.jobs import JOBS, AuditJob, open_registry, start_job, task_name
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import JobStatus
from plugvisor.workers.app import make_celery, prune_delivered_messages
from plugvisor.workers.jobs import JobFailed, JobRun


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"state_dir": str(tmp_path / "state")}, env={})


def _job(settings: Settings) -> JobRun:
    record = open_registry(settings).create_job("upload", {"archive": "/nowhere"})
    return JobRun(open_registry(settings), record.id, task="test")


def test_step_records_status_timings_and_result(settings: Settings) -> None:
    job = _job(settings)
    with job.step("first") as step:
        assert not step.done and not step.retried and step.attempt == 1
        assert job.refresh().status is JobStatus.running
        assert job.record.step == "first"
        step.result = {"n": 1}
    [entry] = job.refresh().steps
    assert entry["name"] == "first" and entry["status"] == "succeeded"
    assert entry["result"] == {"n": 1}
    assert entry["duration"] >= 0 and entry["started"] <= entry["finished"]
    assert job.step_result("first") == {"n": 1}


def test_succeeded_step_is_skipped_and_returns_its_result(settings: Settings) -> None:
    job = _job(settings)
    calls: list[int] = []

    def effect(_step: object) -> int:
        calls.append(1)
        return 42

    assert job.run_step("install", effect) == 42
    again = JobRun(open_registry(settings), job.job_id)  # a redelivered task
    assert again.run_step("install", effect) == 42
    assert calls == [1]
    assert [s["attempt"] for s in again.refresh().steps] == [1]


def test_interrupted_step_is_retried_with_attempt_count(settings: Settings) -> None:
    job = _job(settings)
    open_registry(settings).update_job(
        job.job_id, steps=[{"name": "install", "status": "running", "attempt": 1}]
    )
    with JobRun(open_registry(settings), job.job_id).step("install") as step:
        assert step.retried and step.attempt == 2 and not step.done
        step.result = "ok"
    assert job.refresh().steps[0]["attempt"] == 2


def test_plugvisor_error_becomes_the_job_error(settings: Settings) -> None:
    job = _job(settings)
    with pytest.raises(JobFailed), job.step("verify"):
        raise SignatureError("untrusted", "key abc is not trusted", keyid="abc")
    record = job.refresh()
    assert record.status is JobStatus.failed
    assert record.error == {
        "code": "signature.untrusted",
        "message": "key abc is not trusted",
        "details": {"keyid": "abc"},
    }
    assert record.steps[0]["status"] == "failed"
    assert record.display_status == "failed: signature.untrusted: key abc is not trusted"


def test_unexpected_exception_becomes_job_internal(settings: Settings) -> None:
    job = _job(settings)
    with pytest.raises(JobFailed), job.step("scan"):
        raise KeyError("boom")
    record = job.refresh()
    assert record.error is not None
    assert record.error["code"] == "job.internal"
    assert "KeyError" in record.error["message"]


def test_process_stop_leaves_the_step_running_for_a_retry(settings: Settings) -> None:
    job = _job(settings)
    with pytest.raises(SystemExit), job.step("scan"):
        raise SystemExit(-15)  # how billiard stops a pool child at the hard time limit
    record = job.refresh()
    assert record.status is JobStatus.running and record.error is None
    assert record.steps[0]["status"] == "running"
    with JobRun(open_registry(settings), job.job_id).step("scan") as step:
        assert step.retried and step.attempt == 2


def test_soft_time_limit_becomes_job_time_limit(settings: Settings) -> None:
    job = _job(settings)
    with pytest.raises(JobFailed), job.step("scan"):
        raise SoftTimeLimitExceeded()
    assert job.refresh().error is not None
    assert job.record.error is not None and job.record.error["code"] == "job.time_limit"


def test_fail_marks_a_step_left_running_as_failed(settings: Settings) -> None:
    job = _job(settings)
    open_registry(settings).update_job(
        job.job_id, status=JobStatus.running,
        steps=[{"name": "a", "status": "succeeded"}, {"name": "b", "status": "running"}],
    )  # fmt: skip
    job.fail(JobError("time_limit", "killed by the hard limit"))
    record = job.refresh()
    assert record.status is JobStatus.failed
    assert [s["status"] for s in record.steps] == ["succeeded", "failed"]
    assert record.steps[1]["error"]["code"] == "job.time_limit"


def test_fail_does_not_overwrite_a_finished_job(settings: Settings) -> None:
    job = _job(settings)
    job.succeed({"ok": True})
    job.fail(JobError("internal", "late failure"))
    assert job.refresh().status is JobStatus.succeeded


def test_embedded_broker_urls_live_in_the_state_dir(settings: Settings) -> None:
    broker, backend = broker_url(settings), result_backend(settings)
    root = Path(settings.state_dir).resolve()
    assert broker == f"sqla+sqlite:///{root}/broker.sqlite"
    assert backend == f"db+sqlite:///{root}/results.sqlite"


def test_amqp_broker_keeps_sqlite_results_unless_told(settings: Settings) -> None:
    amqp = settings.with_overrides(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    broker, backend = broker_url(amqp), result_backend(amqp)
    assert broker.startswith("amqp://")
    assert backend.startswith("db+sqlite:///")
    custom = amqp.with_overrides(result_backend="rpc://")
    assert result_backend(custom) == "rpc://"


def test_celery_reliability_settings(settings: Settings) -> None:
    app = make_celery(settings.with_overrides(job_time_limit_s=100.0))
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit == 100.0
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_track_started is True and conf.result_extended is True
    assert conf.broker_connection_retry_on_startup is True
    # Only create_engine() arguments may go to the SQLAlchemy transport.
    assert "polling_interval" not in conf.broker_transport_options
    assert {task_name(t) for cls in JOBS for t in cls.tasks} <= set(app.tasks)


def test_unreachable_broker_fails_the_job_instead_of_leaving_it_queued(
    settings: Settings,
) -> None:
    down = settings.with_overrides(broker_url="amqp://guest:guest@127.0.0.1:1//")
    with pytest.raises(JobError) as info:
        start_job(down, AuditJob())
    assert info.value.code == "job.enqueue_failed"
    [job] = open_registry(settings).list_jobs()
    assert job.status is JobStatus.failed
    assert job.error is not None and job.error["code"] == "job.enqueue_failed"


def test_prune_deletes_only_long_delivered_messages(settings: Settings) -> None:
    app = make_celery(settings)
    for _ in range(3):  # real rows in kombu's table, in a queue nobody consumes
        app.send_task("plugvisor.audit", args=("no-such-job",), queue="prune-test")
    db = sqlite3.connect(StateLayout(settings.state_dir).broker_db)
    ids = [row[0] for row in db.execute("SELECT id FROM kombu_message ORDER BY id")]
    assert len(ids) == 3
    old = (datetime.now() - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S.%f")
    recent = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
    with db:
        db.execute(
            "UPDATE kombu_message SET visible = 0, timestamp = ? WHERE id = ?", (old, ids[0])
        )
        db.execute("UPDATE kombu_message SET visible = 0, timestamp = ? WHERE id = ?",
                   (recent, ids[1]))  # fmt: skip
        db.execute("UPDATE kombu_message SET timestamp = ? WHERE id = ?", (old, ids[2]))
    limited = settings.with_overrides(job_time_limit_s=60.0)
    assert prune_delivered_messages(limited, grace_s=60.0) == 1
    left = [row[0] for row in db.execute("SELECT id FROM kombu_message ORDER BY id")]
    db.close()
    assert left == ids[1:]  # in flight (recent) and still queued (visible) rows stay
