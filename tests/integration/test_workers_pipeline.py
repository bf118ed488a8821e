"""Upload, audit and review jobs through a real ``plugvisor worker`` on a real broker.

The worker is a subprocess (``plugvisor --state-dir D worker``, prefork pool) consuming
from the embedded SQLite broker, and from RabbitMQ when the ``rabbitmq_url`` fixture can
start one. Plugins are built and signed on the fly; nothing is mocked. Jobs are awaited
by polling their registry record with a deadline.
"""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import tarfile
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from celery.exceptions import TimeoutError as CeleryTimeout
from kombu.connection import Connection as KombuConnection
from kombu.exceptions import KombuError

from plugvisor.core.archive import pack
from plugvisor.core.config import Settings, load_settings
from plugvisor.core.errors import ApiError, JobError
from plugvisor.core.signing import generate_keypair
from plugvisor.messaging.celery_app import producer
from plugvisor.messaging.jobs import (
    JOBS,
    AuditJob,
    ReviewJob,
    UploadJob,
    start_job,
    task_name,
    wait_for_job,
)
from plugvisor.state.install import install_archive
from plugvisor.state.layout import StateLayout
from plugvisor.state.quarantine import Quarantine
from plugvisor.state.registry import JobStatus, Registry, VersionStatus
from plugvisor.state.trust import TrustStore
from plugvisor.tests.support.paused_worker import PauseGate, worker_command
from plugvisor.workers.app import recover_stale_jobs

JOB_TIMEOUT = 60.0

CLEAN_SOURCE = '''
"""A clean plugin: pure computation."""
import json


class Plugin:
    def handle(self, request):
        return {"echo": json.loads(json.dumps(request)), "n": len(str(request))}
'''

RISKY_SOURCE = '''
"""A plugin that shells out and evaluates input."""
import subprocess


class Plugin:
    def handle(self, request):
        out = subprocess.check_output(request["cmd"], shell=True)
        return {"out": out.decode(), "value": eval(request["expr"])}
'''


@dataclasses.dataclass
class WorkerKit:
    """A state directory with a trusted signing key and a worker process serving it."""

    root: Path
    settings: Settings
    key: Path
    untrusted_key: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    env_extra: dict[str, str]
    _counter: int = 0

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.root)

    def registry(self) -> Registry:
        return Registry(self.layout)

    def build(
        self,
        source: str,
        *,
        name: str | None = None,
        version: str = "1.0.0",
        key: Path | None = None,
        profile: str = "default",
    ) -> Path:
        """Write a plugin directory, pack and sign it; the archive path."""
        self._counter += 1
        name = name or f"plug{self._counter}"
        src = self.root.parent / f"src-{name}-{version}"
        (src / name).mkdir(parents=True)
        (src / "plugin.yaml").write_text(
            f"name: {name}\nversion: {version}\napi: 1\nentrypoint: {name}:Plugin\n"
            f"profile: {profile}\ndescription: test plugin\n"
        )
        (src / name / "__init__.py").write_text(textwrap.dedent(source).lstrip())
        out = self.root.parent / "archives"
        out.mkdir(exist_ok=True)
        return pack(src, key or self.key, out)

    def upload(self, archive: Path, key: str | None = None) -> Any:
        return self.wait(start_job(self.settings, UploadJob(archive=str(archive)), key))

    def wait(self, job_id: str) -> Any:
        """The finished job record; fails at once (with the worker's log) if the worker died."""
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            try:
                return wait_for_job(self.settings, job_id, timeout=0.5)
            except JobError as err:
                if err.code != "job.timeout":
                    raise
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.worker_log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} not finished after {JOB_TIMEOUT} s\n{self.worker_log()}")

    def crash_worker(self) -> None:
        """SIGKILL the worker's whole process group, as a crash or the OOM killer would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def start_worker(self) -> None:
        self.proc, self.log_path = _start_worker(self.root, self.env_extra)

    @property
    def gate(self) -> PauseGate:
        """Holds the worker's steps (see plugvisor.tests.support.paused_worker)."""
        return PauseGate(self.root.parent / "gate")

    def worker_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _start_worker(root: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
    env.update(env_extra)
    log_path = root.parent / "worker.log"
    with log_path.open("ab") as log:  # appended: a restarted worker keeps the history
        proc = subprocess.Popen(
            # The plain worker plus the pause-file step hook (nothing paused unless armed).
            worker_command(
                root.parent / "gate",
                root,
                "--concurrency",
                "1",
                "--hostname",
                f"test-{uuid.uuid4().hex[:12]}@%h",
            ),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: crash_worker() kills it whole
        )
    return proc, log_path


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # warm shutdown: finish the current task, requeue nothing acked
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module", params=["sqlite", "rabbitmq"])
def kit(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerKit]:
    """One worker per broker for the module (start-up ~1 s; the tests share it)."""
    url = ""
    if request.param == "rabbitmq":
        url = request.getfixturevalue("rabbitmq_url")
    yield from _kit(tmp_path_factory.mktemp(f"workers-{request.param}"), url, {})


def _kit(base: Path, broker_url: str, settings_env: dict[str, str]) -> Iterator[WorkerKit]:
    """A state dir, keys and a running worker; ``settings_env``: more PLUGVISOR_* for it."""
    # Own queue and node name: other suites (or engineers) may share the RabbitMQ broker.
    queue = f"plugvisor.jobs.test-{uuid.uuid4().hex[:12]}"
    env_extra = {
        "PLUGVISOR_BROKER_POLLING_INTERVAL": "0.01",
        "PLUGVISOR_LOG_FORMAT": "console",
        "PLUGVISOR_JOB_QUEUE": queue,
        "PLUGVISOR_BROKER_URL": broker_url,
        **settings_env,
    }
    root = base / "state"
    (base / "gate").mkdir()
    overrides: dict[str, Any] = {
        key[len("PLUGVISOR_") :].lower(): value for key, value in env_extra.items()
    }
    overrides["state_dir"] = str(root)
    settings = load_settings(overrides, env={})
    StateLayout(root).ensure()
    generate_keypair(base / "signer")
    generate_keypair(base / "stranger")
    TrustStore(root).trust(base / "signer.pub")
    proc, log_path = _start_worker(root, env_extra)
    kit = WorkerKit(root, settings, base / "signer", base / "stranger", proc, log_path, env_extra)
    try:
        yield kit
    finally:
        _stop_worker(kit.proc)
        if settings.broker_url:
            _delete_queue(settings.broker_url, queue)


def _delete_queue(url: str, queue: str) -> None:
    """Remove this module's durable queue and exchange from a (possibly shared) RabbitMQ."""
    try:
        with KombuConnection(url, connect_timeout=5) as conn:
            channel = conn.channel()
            channel.queue_delete(queue)
            channel.exchange_delete(queue)
    except (OSError, KombuError) as exc:
        # A broker shared with another test session may be gone already (its owner
        # stopped it); the queue went with it.
        warnings.warn(f"could not delete RabbitMQ queue {queue}: {exc}", stacklevel=1)


def _assert_succeeded(kit: WorkerKit, job: Any) -> None:
    assert job.status is JobStatus.succeeded, (job.to_dict(), kit.worker_log())


def test_clean_signed_plugin_is_approved(kit: WorkerKit) -> None:
    archive = kit.build(CLEAN_SOURCE)
    job = kit.upload(archive)
    _assert_succeeded(kit, job)
    name = job.result["name"]
    assert job.result == {
        "name": name,
        "version": "1.0.0",
        "status": "approved",
        "findings": 0,
        "blocking": 0,
        "max_severity": None,
    }
    steps = {s["name"]: s for s in job.steps}
    assert list(steps) == ["validate_install", "scan"]
    for step in steps.values():
        assert step["status"] == "succeeded"
        assert step["duration"] >= 0
        assert step["started"] <= step["finished"]
    with kit.registry() as reg:
        record = reg.get_version(name, "1.0.0")
    assert record.status is VersionStatus.approved
    assert record.review_by == "plugvisor-scan"
    assert record.report is not None
    assert record.report["findings"] == []
    assert record.report["profile"] == "default"
    assert f"{name}/__init__.py" in record.report["files"]


def test_plugin_with_findings_goes_to_review(kit: WorkerKit) -> None:
    archive = kit.build(RISKY_SOURCE)
    job = kit.upload(archive)
    _assert_succeeded(kit, job)
    name = job.result["name"]
    assert job.result["status"] == "review"
    assert job.result["findings"] >= 4
    with kit.registry() as reg:
        record = reg.get_version(name, "1.0.0")
    assert record.status is VersionStatus.review
    assert record.report is not None
    findings = record.report["findings"]
    by_rule = {(f["rule"], f["line"]): f for f in findings}
    # Line numbers of RISKY_SOURCE: 2 import subprocess, 7 check_output, 8 eval.
    assert by_rule[("PV103", 2)]["severity"] == "high"
    assert by_rule[("PV103", 2)]["cwe"] == 78
    assert by_rule[("B602", 7)]["cwe"] == 78
    assert by_rule[("B602", 7)]["owasp"] == "A03:2021-Injection"
    assert by_rule[("B307", 8)]["severity"] == "medium"
    assert by_rule[("PV103", 8)]["message"].startswith("call of eval()")
    for f in findings:
        assert f["file"] == f"{name}/__init__.py"
        assert f["rule"] and f["severity"] in ("low", "medium", "high") and f["line"] >= 1


def test_unsigned_archive_fails_and_is_quarantined(kit: WorkerKit) -> None:
    archive = kit.build(CLEAN_SOURCE, key=kit.untrusted_key)
    before = len(Quarantine(kit.layout).list())
    job = kit.upload(archive)
    assert job.status is JobStatus.failed, job.to_dict()
    assert job.error["code"] == "signature.untrusted"
    assert job.steps[0]["status"] == "failed"
    assert job.display_status.startswith("failed: signature.untrusted")
    entries = Quarantine(kit.layout).list()
    assert len(entries) == before + 1
    assert entries[-1].code == "signature.untrusted"
    assert entries[-1].archive is not None and entries[-1].archive.is_file()


def _tamper(archive: Path, out: Path) -> Path:
    """Rewrite one package member after signing (same name, different bytes)."""
    with tarfile.open(archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name.endswith("__init__.py") and data is not None:
                data = data.replace(b"json.dumps", b"json.loads")
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def test_tampered_archive_fails_with_archive_error(kit: WorkerKit) -> None:
    archive = kit.build(CLEAN_SOURCE)
    bad = _tamper(archive, archive.with_name("tampered.tar.gz"))
    job = kit.upload(bad)
    assert job.status is JobStatus.failed, job.to_dict()
    assert job.error["code"] in ("archive.hash_mismatch", "archive.size_mismatch"), job.error
    assert Quarantine(kit.layout).list()[-1].code == job.error["code"]


def test_version_with_unknown_profile_is_quarantined(kit: WorkerKit) -> None:
    job = kit.upload(kit.build(CLEAN_SOURCE, profile="nosuchprofile"))
    assert job.status is JobStatus.failed, job.to_dict()
    assert job.error["code"] == "profile.not_found"
    assert [s["status"] for s in job.steps] == ["succeeded", "failed"]
    with kit.registry() as reg:
        record = reg.get_version(job.steps[0]["result"]["name"], "1.0.0")
    assert record.status is VersionStatus.quarantined
    assert record.review_by == "plugvisor-scan"


def _send(kit: WorkerKit, task: str, job_id: str) -> dict[str, Any]:
    """Deliver one task message for ``job_id`` again, as a redelivery would; its return."""
    app = producer(kit.settings)
    result = app.send_task(task_name(task), args=(job_id,))
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        try:
            value: dict[str, Any] = result.get(timeout=0.5, interval=0.01)
            return value
        except CeleryTimeout:
            if kit.proc.poll() is not None:
                pytest.fail(f"worker exited with {kit.proc.returncode}:\n{kit.worker_log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{task} for {job_id} got no result in {JOB_TIMEOUT} s")


def test_redelivered_tasks_do_not_repeat_their_effect(kit: WorkerKit) -> None:
    archive = kit.build(CLEAN_SOURCE)
    with kit.registry() as reg:
        job = reg.create_job("upload", {"archive": str(archive)})
    quarantined = len(Quarantine(kit.layout).list())
    # First delivery of the first task only: the version is installed, the job waits.
    assert _send(kit, "validate_install", job.id)["status"] == "running"
    # The same message again (late ack + worker lost): the install is not repeated,
    # which would have refused the version as not newer and quarantined the archive.
    assert _send(kit, "validate_install", job.id)["status"] == "running"
    with kit.registry() as reg:
        mid = reg.get_job(job.id)
        step = mid.steps[0]
        assert (step["name"], step["status"], step["attempt"]) == (
            "validate_install", "succeeded", 1,
        )  # fmt: skip
        name = step["result"]["name"]
        assert [v.version for v in reg.list_versions(name)] == ["1.0.0"]
    assert len(Quarantine(kit.layout).list()) == quarantined
    assert _send(kit, "scan", job.id)["status"] == "succeeded"
    with kit.registry() as reg:
        done = reg.get_job(job.id)
        report = reg.get_version(name, "1.0.0").report
    # A redelivered scan after the job finished changes nothing at all.
    assert _send(kit, "scan", job.id)["status"] == "succeeded"
    with kit.registry() as reg:
        assert reg.get_job(job.id).updated == done.updated
        assert reg.get_version(name, "1.0.0").report == report
    assert done.result["status"] == "approved"


def test_step_interrupted_after_its_effect_is_recovered(kit: WorkerKit) -> None:
    """A worker died after recording the version but before marking the step done."""
    archive = kit.build(CLEAN_SOURCE)
    with kit.registry() as reg:
        job = reg.create_job("upload", {"archive": str(archive)})
        # The effect of the first attempt, then the record a killed worker leaves behind.
        record = install_archive(kit.settings, archive, VersionStatus.review)
        reg.update_job(
            job.id,
            status=JobStatus.running,
            step="validate_install",
            steps=[{"name": "validate_install", "status": "running", "attempt": 1}],
        )
    quarantined = len(Quarantine(kit.layout).list())
    assert _send(kit, "validate_install", job.id)["status"] == "running"
    assert _send(kit, "scan", job.id)["status"] == "succeeded"
    with kit.registry() as reg:
        done = reg.get_job(job.id)
        assert done.steps[0]["attempt"] == 2
        assert done.steps[0]["result"]["digest"] == record.digest
        assert done.result["status"] == "approved"
    assert len(Quarantine(kit.layout).list()) == quarantined


def test_idempotency_key_returns_the_same_job(kit: WorkerKit) -> None:
    archive = kit.build(CLEAN_SOURCE)
    first = start_job(kit.settings, UploadJob(archive=str(archive)), "upload-key-1")
    second = start_job(kit.settings, UploadJob(archive=str(archive)), "upload-key-1")
    assert first == second
    job = kit.wait(first)
    _assert_succeeded(kit, job)
    assert [s["attempt"] for s in job.steps] == [1, 1]


def test_review_decision_is_recorded(kit: WorkerKit) -> None:
    upload = kit.upload(kit.build(RISKY_SOURCE))
    name = upload.result["name"]
    params = {"name": name, "version": "1.0.0", "decision": "approve", "by": "alice",
              "reason": "shelling out is this plugin's documented purpose"}  # fmt: skip
    job = kit.wait(start_job(kit.settings, ReviewJob.from_dict(params)))
    _assert_succeeded(kit, job)
    assert job.result["status"] == "approved"
    with kit.registry() as reg:
        record = reg.get_version(name, "1.0.0")
    assert (record.status, record.review_by) == (VersionStatus.approved, "alice")
    assert record.review_reason == params["reason"]
    # A second decision on a version no longer in review is refused, naming the rule.
    again = dict(params, decision="reject", by="bob")
    job2 = kit.wait(start_job(kit.settings, ReviewJob.from_dict(again)))
    assert job2.status is JobStatus.failed
    assert job2.error is not None
    assert job2.error["code"] == "conflict.not_in_review"


def test_audit_rescans_and_refreshes_the_report(kit: WorkerKit) -> None:
    upload = kit.upload(kit.build(RISKY_SOURCE))
    name = upload.result["name"]
    with kit.registry() as reg:
        reg.set_report(name, "1.0.0", {"findings": [], "stale": True})
    job = kit.wait(start_job(kit.settings, AuditJob(name=name)))
    _assert_succeeded(kit, job)
    [audited] = job.result["audited"]
    assert audited["name"] == name and audited["findings"] == upload.result["findings"]
    with kit.registry() as reg:
        record = reg.get_version(name, "1.0.0")
    assert record.report is not None and "stale" not in record.report
    assert len(record.report["findings"]) == upload.result["findings"]
    assert record.status is VersionStatus.review  # an audit reports; it does not decide


def test_bad_params_are_refused_before_anything_is_queued(kit: WorkerKit) -> None:
    with kit.registry() as reg:
        before = len(reg.list_jobs(limit=1000))
    with pytest.raises(ApiError) as info:
        start_job(kit.settings, UploadJob(archive=str(kit.root / "missing.tar.gz")))
    assert info.value.code == "request.invalid_field" and info.value.details["field"] == "archive"
    with pytest.raises(ApiError) as info:
        JOBS.parse("review", {"name": "x", "version": "1.0.0", "decision": "maybe", "by": "a",
                              "reason": "b"})  # fmt: skip
    assert info.value.code == "request.invalid_field" and info.value.details["field"] == "decision"
    with pytest.raises(ApiError) as info:
        JOBS.parse("nope", {})
    assert info.value.code == "request.invalid_field" and info.value.details["field"] == "kind"
    with kit.registry() as reg:
        assert len(reg.list_jobs(limit=1000)) == before  # nothing recorded, nothing queued


def test_job_stranded_by_a_killed_worker_is_recovered(kit: WorkerKit) -> None:
    """The record says running, the message is gone: recovery re-enqueues the pipeline."""
    archive = kit.build(CLEAN_SOURCE)
    with kit.registry() as reg:
        job = reg.create_job("upload", {"archive": str(archive)})
        reg.update_job(
            job.id,
            status=JobStatus.running,
            step="validate_install",
            steps=[{"name": "validate_install", "status": "running", "attempt": 1}],
        )
    # Every running job counts as stale with a zero time limit and grace (no waiting).
    stale = kit.settings.with_overrides(job_time_limit_s=0.0)
    assert job.id in recover_stale_jobs(stale, grace_s=0.0)
    done = kit.wait(job.id)
    _assert_succeeded(kit, done)
    assert done.result["status"] == "approved"
    assert done.steps[0]["attempt"] == 2


def test_spooled_upload_is_removed_once_the_job_finished(kit: WorkerKit) -> None:
    spool = kit.layout.staging_dir / "uploads"
    spool.mkdir(mode=0o700, exist_ok=True)
    good = spool / "good.tar.gz"
    good.write_bytes(kit.build(CLEAN_SOURCE).read_bytes())
    bad = spool / "bad.tar.gz"
    bad.write_bytes(kit.build(CLEAN_SOURCE, key=kit.untrusted_key).read_bytes())
    outside = kit.build(CLEAN_SOURCE)
    _assert_succeeded(kit, kit.upload(good))
    assert kit.upload(bad).status is JobStatus.failed
    _assert_succeeded(kit, kit.upload(outside))
    assert not good.exists() and not bad.exists()
    assert outside.exists()  # given by path, not spooled: not ours to remove
    assert Quarantine(kit.layout).list()[-1].archive is not None  # the refused copy stays


def test_pool_process_killed_mid_scan_loses_no_job(kit: WorkerKit) -> None:
    """SIGKILL the pool child while it scans: the message is requeued and the step re-run."""
    kit.gate.arm("scan")  # the scan holds until killed: the kill always lands mid-scan
    try:
        job_id = start_job(kit.settings, UploadJob(archive=str(kit.build(CLEAN_SOURCE))))
        held = _wait_until(kit, lambda: kit.gate.reached("scan"), "the scan to be under way")
        pid, _tree = held
        children = psutil.Process(kit.proc.pid).children()
        assert pid in {child.pid for child in children}, "the scan runs in a pool process"
        held_proc = psutil.Process(pid)
        held_proc.kill()  # killed while held: it never scans
        held_proc.wait(timeout=10)
        kit.gate.disarm("scan")  # the redelivered scan (held too until now) goes through
        done = kit.wait(job_id)
    finally:
        kit.gate.disarm("scan")
    _assert_succeeded(kit, done)
    attempts = {s["name"]: s["attempt"] for s in done.steps}
    assert attempts == {"validate_install": 1, "scan": 2}, done.steps
    assert done.result["status"] == "approved"
    assert kit.proc.poll() is None  # the worker itself survived and replaced its child


def _wait_until(kit: WorkerKit, cond: Callable[[], Any], what: str) -> Any:
    """Poll ``cond`` until truthy; fail (with the worker's log) at the deadline or if it died."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (value := cond()):
        if kit.proc.poll() is not None:
            pytest.fail(f"worker exited with {kit.proc.returncode}:\n{kit.worker_log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{kit.worker_log()}")
        time.sleep(0.01)
    return value


def test_jobs_queued_while_the_worker_is_down_run_after_a_crash(kit: WorkerKit) -> None:
    """Kept last in the module: it kills the shared worker and starts a new one."""
    kit.crash_worker()
    archives = [kit.build(CLEAN_SOURCE), kit.build(RISKY_SOURCE)]
    job_ids = [start_job(kit.settings, UploadJob(archive=str(a))) for a in archives]
    with kit.registry() as reg:
        assert [reg.get_job(j).status for j in job_ids] == [JobStatus.queued] * 2
    kit.start_worker()
    done = [kit.wait(j) for j in job_ids]
    for job in done:
        _assert_succeeded(kit, job)
    assert [job.result["status"] for job in done] == ["approved", "review"]


#: The job time limit of ``short_limit_kit``: far above what an unheld step takes (the
#: validate step of a small plugin), so only a held step can run past it.
SHORT_LIMIT_S = 3.0


@pytest.fixture
def short_limit_kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerKit]:
    """A worker (embedded broker) whose tasks may run SHORT_LIMIT_S (soft limit at 90 %)."""
    yield from _kit(
        tmp_path_factory.mktemp("workers-limit"),
        "",
        {"PLUGVISOR_JOB_TIME_LIMIT_S": str(SHORT_LIMIT_S)},
    )


def test_scan_past_the_time_limit_fails_the_job(short_limit_kit: WorkerKit) -> None:
    """The scan is held (not merely slow) until the soft time limit ends it."""
    kit = short_limit_kit
    kit.gate.arm("scan")  # released only by the time limit (or the finally below)
    try:
        job_id = start_job(kit.settings, UploadJob(archive=str(kit.build(CLEAN_SOURCE))))
        job = kit.wait(job_id)
    finally:
        kit.gate.disarm("scan")
    assert kit.gate.reached("scan") is not None, "the scan never reached its hook point"
    assert job.status is JobStatus.failed, (job.to_dict(), kit.worker_log())
    assert job.error["code"] == "job.time_limit", job.error
    assert [s["status"] for s in job.steps] == ["succeeded", "failed"]
    with kit.registry() as reg:
        record = reg.get_version(job.steps[0]["result"]["name"], "1.0.0")
    assert record.status is VersionStatus.review  # never approved without a full scan
