"""Reload and rollback jobs end to end: a real daemon, a real worker, a real broker.

One daemon and one ``plugvisor worker`` (prefork, one pool process) per broker serve the
module: the embedded SQLite broker, and RabbitMQ when the ``rabbitmq_url`` fixture can
start one (the rig: :mod:`plugvisor.tests.support.reloadrig`). Fault tests stop a step at
a known instant with the worker's step hook (the worker runs under
:mod:`plugvisor.tests.support.paused_worker`: the step waits while ``<gate>/<step>.armed``
exists), then SIGKILL the process running it. No sleeps as synchronisation: every wait
polls a condition with a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from plugvisor.messaging.control import send_raw_command
from plugvisor.messaging.jobs import ReloadJob, start_job
from plugvisor.state.registry import JobStatus, VersionStatus
from plugvisor.state.trust import TrustStore
from plugvisor.tests.support.rabbitmq import rabbitmqctl
from plugvisor.tests.support.reloadrig import SOURCE, Job, Rig, reload_rig
from plugvisor.workers.app import recover_stale_jobs

#: setup() writes outside data_dir: the default profile forbids file writes.
VIOLATING_SOURCE = '''
"""Test plugin {name} {version}: setup breaks the profile."""
VERSION = "{version}"


class Plugin:
    def setup(self, ctx):
        open("/tmp/plugvisor-trial-probe-{name}", "w").close()

    def handle(self, request):
        return {{"version": VERSION}}
'''


@pytest.fixture(scope="module", params=["sqlite", "rabbitmq"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A daemon and a worker per broker for the module (tests use their own plugin names)."""
    url = request.getfixturevalue("rabbitmq_url") if request.param == "rabbitmq" else ""
    with reload_rig(request.param, url) as kit:
        yield kit


def _ok(rig: Rig, job: Job) -> None:
    assert job.status is JobStatus.succeeded, (job.to_dict(), rig.logs())


def _live(rig: Rig, name: str, v1: str = "1.0.0") -> None:
    rig.install(name, v1)
    rig.go_live(name, v1)


# ---- reload ------------------------------------------------------------------------------------


def test_reload_happy_path_serves_the_new_version(rig: Rig) -> None:
    name = rig.unique("happy")
    _live(rig, name)
    assert rig.call(name, {"write": "a"})["version"] == "1.0.0"
    rig.install(name, "1.1.0")
    rig.install(name, "2.0.0", status=VersionStatus.review)  # not approved: never chosen
    job = rig.job("reload", name=name)  # no version: the highest approved newer one
    _ok(rig, job)
    assert [s["name"] for s in job.steps] == ["check", "snapshot", "trial", "activate"]
    assert job.result["version"] == "1.1.0" and job.result["from"] == "1.0.0"
    assert job.result["outcome"] == "swapped"
    assert job.result["trial"]["healthy"] is True
    assert job.result["trial"]["selftest"] == "passed"
    answer = rig.call(name, {})
    assert answer["version"] == "1.1.0"
    assert answer["rows"] == [["1.0.0", "a"]]  # the live data went on with the new version
    with rig.registry() as reg:
        assert reg.get_plugin(name).active_version == "1.1.0"
    # The snapshot: the old version's code reference and data, hashes in the manifest.
    assert rig.backups(name) == ["1.0.0"]
    manifest = (rig.layout.backup_dir(name, "1.0.0") / "manifest.json").read_text()
    assert '"data/db.sqlite"' in manifest and '"data/files/a.txt"' in manifest
    assert len(rig.events(name)) == 2  # go_live + this reload


def test_reload_refuses_unapproved_and_conflicting_versions(rig: Rig) -> None:
    base, app = rig.unique("base"), rig.unique("app")
    _live(rig, base)
    rig.install(app, "1.0.0", requires={base: ">=1.0,<2"})
    rig.go_live(app, "1.0.0")
    rig.install(base, "2.0.0")
    job = rig.job("reload", name=base, version="2.0.0")
    assert job.status is JobStatus.failed, job.to_dict()
    assert job.error["code"] == "dependency.conflict"
    assert f"{app} 1.0.0 requires {base} >=1.0,<2" in job.error["message"]
    assert f"does not admit {base} 2.0.0" in job.error["message"]
    # A version needing a plugin that is not there, named too.
    rig.install(app, "1.1.0", requires={base: ">=1.0,<2", "ghost": ">=1"})
    job = rig.job("reload", name=app, version="1.1.0")
    assert job.error["code"] == "dependency.conflict"
    assert "requires ghost >=1, but ghost has no active version" in job.error["message"]
    # A version in review is refused naming its status.
    rig.install(base, "3.0.0", status=VersionStatus.review)
    job = rig.job("reload", name=base, version="3.0.0")
    assert job.error["code"] == "conflict.not_approved"
    assert "is review, not approved" in job.error["message"]
    assert [s["status"] for s in job.steps] == ["failed"]
    assert rig.call(base, {})["version"] == "1.0.0"
    assert rig.backups(base) == []  # refused before the snapshot


@pytest.mark.parametrize(
    ("mode", "source", "profile", "code"),
    [
        ("unhealthy", SOURCE, "trusted", "sandbox.unhealthy"),
        ("ok", VIOLATING_SOURCE, "default", "policy.forbidden"),
        ("selftest_false", SOURCE, "trusted", "sandbox.selftest_failed"),
        ("selftest_raises", SOURCE, "trusted", "plugin.error"),
    ],
    ids=["health-false", "violation-in-setup", "selftest-false", "selftest-raises"],
)
def test_failed_trial_keeps_the_old_version_serving(
    rig: Rig, mode: str, source: str, profile: str, code: str
) -> None:
    name = rig.unique("trial")
    _live(rig, name)
    rig.call(name, {"write": "kept"})
    rig.install(name, "2.0.0", mode, source=source, profile=profile)
    job = rig.job("reload", name=name, version="2.0.0")
    assert job.status is JobStatus.failed, job.to_dict()
    assert job.error["code"] == code, (job.error, rig.logs())
    assert [(s["name"], s["status"]) for s in job.steps] == [
        ("check", "succeeded"), ("snapshot", "succeeded"), ("trial", "failed"),
    ]  # fmt: skip
    answer = rig.call(name, {})
    assert answer["version"] == "1.0.0" and answer["rows"] == [["1.0.0", "kept"]]
    with rig.registry() as reg:
        assert reg.get_plugin(name).active_version == "1.0.0"
    assert len(rig.events(name)) == 1
    assert not list(rig.layout.staging_dir.glob("trial-*"))  # the throw-away copy is gone


# ---- rollback ----------------------------------------------------------------------------------


def test_rollback_restores_code_and_data(rig: Rig) -> None:
    name = rig.unique("back")
    _live(rig, name)
    rig.call(name, {"write": "one"})
    rig.install(name, "2.0.0")
    _ok(rig, rig.job("reload", name=name, version="2.0.0"))  # snapshot of 1.0.0 with "one"
    after = rig.call(name, {"write": "two"})
    assert after["version"] == "2.0.0"
    assert after["rows"] == [["1.0.0", "one"], ["2.0.0", "two"]]
    job = rig.job("rollback", name=name)  # to the previous version
    _ok(rig, job)
    assert job.result["version"] == "1.0.0" and job.result["restored"] is True
    answer = rig.call(name, {})
    assert answer == {"version": "1.0.0", "rows": [["1.0.0", "one"]], "files": ["one.txt"]}
    # Reversible: 2.0.0 was snapshotted first, and the data it left is kept aside.
    assert rig.backups(name) == [f".pre-rollback-{job.id}", "1.0.0", "2.0.0"]
    # The restored data is live: the plugin writes on top of it.
    assert rig.call(name, {"write": "three"})["rows"] == [["1.0.0", "one"], ["1.0.0", "three"]]
    # Forward again with 2.0.0's own data: another rollback, by name.
    job = rig.job("rollback", name=name, version="2.0.0")
    _ok(rig, job)
    assert rig.call(name, {})["rows"] == [["1.0.0", "one"], ["2.0.0", "two"]]


def test_rollback_whose_target_fails_to_start_puts_everything_back(rig: Rig) -> None:
    """The restored version does not start: data exchanged back, the old version serves."""
    name = rig.unique("undo")
    rig.install(name, "1.0.0", "poison_sensitive")
    rig.go_live(name, "1.0.0")
    rig.call(name, {"write": "poison"})  # read only at setup: 1.0.0 keeps running
    rig.install(name, "2.0.0")
    _ok(rig, rig.job("reload", name=name, version="2.0.0"))  # snapshot holds the poison
    rig.call(name, {"write": "after"})
    job = rig.job("rollback", name=name)
    assert job.status is JobStatus.failed, job.to_dict()
    assert job.error["code"] == "sandbox.start_failed", job.error
    assert "restarted on its own data" in job.error["message"]
    answer = rig.call(name, {})
    assert answer["version"] == "2.0.0"
    assert answer["rows"] == [["1.0.0", "poison"], ["2.0.0", "after"]]
    with rig.registry() as reg:
        assert reg.get_plugin(name).active_version == "2.0.0"
    assert not list(rig.layout.data_dir.glob(f".restore-{name}-*"))  # no staged leftovers


def test_rollback_without_backup_or_trust_is_refused(rig: Rig) -> None:
    name = rig.unique("nobak")
    _live(rig, name)
    rig.install(name, "2.0.0")
    rig.go_live(name, "2.0.0")  # swapped by hand: no snapshot of 1.0.0
    job = rig.job("rollback", name=name)
    assert job.status is JobStatus.failed
    assert job.error["code"] == "not_found.backup", job.error
    assert rig.call(name, {})["version"] == "2.0.0"


def test_rollback_re_verifies_the_stored_signature(rig: Rig) -> None:
    """An un-trusted signing key or a tampered stored MANIFEST.sig refuses the rollback."""
    name = rig.unique("resig")
    _live(rig, name)
    rig.install(name, "2.0.0")
    _ok(rig, rig.job("reload", name=name, version="2.0.0"))  # 1.0.0 has a backup now
    with rig.registry() as reg:
        record = reg.get_version(name, "1.0.0")
    sig_path = rig.layout.version_dir(record.digest) / "MANIFEST.sig"
    assert sig_path.is_file() and not os.stat(sig_path).st_mode & 0o222  # kept, read-only
    trust = TrustStore(rig.root)
    trust.remove(record.keyid)
    try:
        job = rig.job("rollback", name=name)
    finally:
        assert trust.trust(Path(f"{rig.key}.pub")) == record.keyid  # the rig's other tests
    assert job.status is JobStatus.failed, job.to_dict()
    assert job.error["code"] == "signature.untrusted", job.error
    assert rig.call(name, {})["version"] == "2.0.0"  # the old version keeps serving
    # Tampered: well-formed, trusted keyid, but the signature bytes no longer verify.
    doc = json.loads(sig_path.read_bytes())
    raw = bytearray(base64.b64decode(doc["sig"]))
    raw[0] ^= 0x01
    doc["sig"] = base64.b64encode(bytes(raw)).decode()
    sig_path.write_text(json.dumps(doc))  # root writes the 0o444 file
    job = rig.job("rollback", name=name, version="1.0.0")
    assert job.status is JobStatus.failed, job.to_dict()
    assert job.error["code"] == "signature.invalid", job.error
    assert rig.call(name, {})["version"] == "2.0.0"
    with rig.registry() as reg:
        assert reg.get_plugin(name).active_version == "2.0.0"


def test_daemon_refuses_a_restore_from_outside_the_staging_name(rig: Rig) -> None:
    name = rig.unique("guard")
    _live(rig, name)
    rig.install(name, "2.0.0")
    rig.go_live(name, "2.0.0")
    for bad in ("/etc", str(rig.layout.data_dir / name), str(rig.layout.data_dir / ".restore-x-1")):
        outcome = send_raw_command(rig.settings, "rollback",
                                   {"name": name, "restore_from": bad}, timeout=30)  # fmt: skip
        assert outcome["ok"] is False, (bad, outcome)
        assert outcome["error"]["code"] == "request.invalid_field", outcome
    assert rig.call(name, {})["version"] == "2.0.0"  # nothing moved, still serving


# ---- faults ------------------------------------------------------------------------------------


def _kill(pid: int) -> None:
    proc = psutil.Process(pid)
    proc.kill()
    proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["snapshot", "trial"])
def test_worker_killed_mid_step_completes_exactly_once(rig: Rig, step: str) -> None:
    name = rig.unique(f"kill{step}")
    _live(rig, name)
    rig.call(name, {"write": "x"})
    rig.install(name, "2.0.0")
    rig.arm(step)
    try:
        job_id = start_job(rig.settings, ReloadJob(name=name))
        pid, where = rig.reached(step)
        assert pid == rig.pool_child().pid
        if step == "snapshot":
            assert where.name.startswith(".tmp-") and rig.backups(name) == [where.name]
        _kill(pid)  # SIGKILL the process running the step, mid-step
        rig.disarm(step)  # the redelivered task runs through
        job = rig.wait(job_id)
    finally:
        rig.disarm(step)
    _ok(rig, job)
    expected = {"check": 1, "snapshot": 1, "trial": 1, "activate": 1}
    expected[step] = 2
    assert {s["name"]: s["attempt"] for s in job.steps} == expected
    assert rig.backups(name) == ["1.0.0"]  # one backup, no debris of the killed attempt
    assert [e.to_version for e in rig.events(name)] == ["1.0.0", "2.0.0"]  # one activation
    assert rig.call(name, {})["version"] == "2.0.0"
    assert not list(rig.layout.staging_dir.glob("trial-*"))


@pytest.mark.slow
def test_whole_worker_killed_mid_trial_then_a_new_worker_finishes(rig: Rig) -> None:
    """SIGKILL the worker's whole process group; a new worker completes the job once."""
    name = rig.unique("crash")
    _live(rig, name)
    rig.install(name, "2.0.0")
    assert rig.worker is not None
    rig.arm("trial")
    try:
        job_id = start_job(rig.settings, ReloadJob(name=name))
        rig.reached("trial")
        os.killpg(rig.worker.pid, signal.SIGKILL)
        rig.worker.wait(timeout=10)
        rig.disarm("trial")
        if rig.broker == "sqlite":
            # kombu's SQLite transport cannot hand back a message its killed consumer
            # held; the job record can: worker start-up recovery re-enqueues running
            # jobs past the time limit (zero here, so no waiting).
            stale = rig.settings.with_overrides(job_time_limit_s=0.0)
            assert recover_stale_jobs(stale, grace_s=0.0) == [job_id]
        rig.start_worker()  # RabbitMQ redelivers the unacked message to it
        job = rig.wait(job_id)
    finally:
        rig.disarm("trial")
    _ok(rig, job)
    assert {s["name"]: s["attempt"] for s in job.steps} == {
        "check": 1, "snapshot": 1, "trial": 2, "activate": 1,
    }  # fmt: skip
    assert rig.backups(name) == ["1.0.0"]
    assert [e.to_version for e in rig.events(name)] == ["1.0.0", "2.0.0"]
    assert rig.call(name, {})["version"] == "2.0.0"


@pytest.mark.slow
@pytest.mark.parametrize("rig", ["rabbitmq"], indirect=True)  # a broker restart is AMQP's
def test_rabbitmq_restart_mid_job_loses_no_job(rig: Rig) -> None:
    assert rig.broker == "rabbitmq"
    first, second = rig.unique("rmqa"), rig.unique("rmqb")
    for name in (first, second):
        _live(rig, name)
        rig.install(name, "2.0.0")
    rig.arm("trial")
    try:
        running = start_job(rig.settings, ReloadJob(name=first))
        rig.reached("trial")
        queued = start_job(rig.settings, ReloadJob(name=second))  # waits behind it
        _rabbitmqctl("stop_app")
        _rabbitmqctl("start_app")
        rig.disarm("trial")
        jobs = [rig.wait(running), rig.wait(queued)]
    finally:
        rig.disarm("trial")
    for job in jobs:
        _ok(rig, job)
    for name in (first, second):
        assert [e.to_version for e in rig.events(name)] == ["1.0.0", "2.0.0"]
        assert rig.call(name, {})["version"] == "2.0.0"


def _rabbitmqctl(command: str) -> None:
    done = rabbitmqctl(command)
    if done.returncode != 0:
        pytest.fail(f"rabbitmqctl {command} failed: {done.stderr}")
