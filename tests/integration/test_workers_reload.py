"""Reload and rollback jobs end to end: a real daemon, a real worker, a real broker.

One daemon and one ``plugvisor worker`` (prefork, one pool process) per broker serve the
module: the embedded SQLite broker, and RabbitMQ when the ``rabbitmq_url`` fixture can
start one. Versions are packed, signed with a trusted key and installed as an upload
would; they go live through the daemon's control plane, and calls go through
:class:`plugvisor.client.Client`. Fault tests stop a step at a known instant with the
worker's test hook (``PLUGVISOR_TEST_PAUSE_DIR``: the step waits while
``<dir>/<step>.armed`` exists), then SIGKILL the process running it. No sleeps as
synchronisation: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from kombu.connection import Connection as KombuConnection
from kombu.exceptions import KombuError

from plugvisor.client import Client
from plugvisor.core.archive import pack
from plugvisor.core.config import Settings, load_settings
from plugvisor.core.errors import JobError
from plugvisor.core.signing import generate_keypair
from plugvisor.messaging.commands import Activate
from plugvisor.messaging.control import outcome_result, send_command, send_raw_command
from plugvisor.messaging.jobs import JOBS, ReloadJob, start_job, wait_for_job
from plugvisor.state.install import install_archive
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import JobRecord, JobStatus, Registry, VersionStatus
from plugvisor.state.trust import TrustStore
from plugvisor.tests.support.rabbitmq import rabbitmqctl
from plugvisor.workers.app import recover_stale_jobs

REPO = Path(__file__).resolve().parents[2]
PLUGVISOR = REPO / ".venv" / "bin" / "plugvisor"
JOB_TIMEOUT = 90.0

#: Rows in ctx.db and, with a writable profile, one file per note in data_dir.
SOURCE = '''
"""Test plugin {name} {version} ({mode})."""
import os

VERSION = "{version}"
MODE = "{mode}"


class Plugin:
    def setup(self, ctx):
        self.ctx = ctx
        ctx.db.execute("CREATE TABLE IF NOT EXISTS notes (v TEXT, text TEXT)")
        if MODE == "poison_sensitive" and ctx.db.execute(
            "SELECT 1 FROM notes WHERE text = 'poison'"
        ):
            raise RuntimeError("refusing to start on poisoned data")

    def health(self):
        return MODE != "unhealthy"

    def selftest(self):
        if MODE == "selftest_raises":
            raise RuntimeError("selftest broken on purpose")
        return MODE != "selftest_false"

    def handle(self, request):
        note = request.get("write") if isinstance(request, dict) else None
        if note:
            self.ctx.db.execute("INSERT INTO notes VALUES (?, ?)", [VERSION, note])
            with open(os.path.join(self.ctx.data_dir, note + ".txt"), "w") as fh:
                fh.write(VERSION)
        rows = self.ctx.db.execute("SELECT v, text FROM notes ORDER BY rowid")
        files = sorted(os.listdir(self.ctx.data_dir))
        return {{"version": VERSION, "rows": rows, "files": files}}
'''

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


class Job:
    """A finished job record with ``result``/``error`` as plain dicts (for the asserts)."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.id = record.id
        self.status = record.status
        self.steps = record.steps
        self.result: dict[str, Any] = dict(record.result or {})
        self.error: dict[str, Any] = dict(record.error or {})

    def to_dict(self) -> dict[str, Any]:
        return self.record.to_dict()


def _wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@dataclasses.dataclass
class Rig:
    """A state dir with a trusted key, its daemon and its worker, on one broker."""

    root: Path
    broker: str
    settings: Settings
    env: dict[str, str]
    key: Path
    gate: Path
    daemon: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    counter: int = 0

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.root)

    def registry(self) -> Registry:
        return Registry(self.layout)

    def unique(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    # ---- versions ------------------------------------------------------------------------
    def install(
        self,
        name: str,
        version: str,
        mode: str = "ok",
        *,
        source: str = SOURCE,
        profile: str = "trusted",
        requires: dict[str, str] | None = None,
        status: VersionStatus = VersionStatus.approved,
    ) -> None:
        """Pack, sign and install one version (as an upload would, scan skipped)."""
        src = self.root.parent / f"src-{name}-{version}"
        pkg = src / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(
            textwrap.dedent(source).lstrip().format(name=name, version=version, mode=mode)
        )
        lines = [f"name: {name}", f"version: {version}", "api: 1",
                 f"entrypoint: {name}:Plugin", f"profile: {profile}"]  # fmt: skip
        if requires:
            lines.append("requires:")
            lines += [f'  {dep}: "{rng}"' for dep, rng in requires.items()]
        (src / "plugin.yaml").write_text("\n".join(lines) + "\n")
        archive = pack(src, self.key, self.root.parent / "archives")
        install_archive(self.settings, archive, status)

    def go_live(self, name: str, version: str) -> None:
        """Activate through the daemon (the real swap path)."""
        outcome_result(send_command(self.settings, Activate(name, version), timeout=30))

    def call(self, name: str, request: Any) -> Any:
        with Client(self.layout.daemon_socket, timeout=30) as client:
            return client.call(name, request)

    # ---- jobs ----------------------------------------------------------------------------
    def job(self, kind: str, **params: Any) -> Job:
        return self.wait(start_job(self.settings, JOBS.parse(kind, params)))

    def wait(self, job_id: str) -> Job:
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            try:
                return Job(wait_for_job(self.settings, job_id, timeout=0.5))
            except JobError as err:
                if err.code != "job.timeout":
                    raise
            for what, proc in (("worker", self.worker), ("daemon", self.daemon)):
                if proc is not None and proc.poll() is not None:
                    pytest.fail(f"{what} exited with {proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} not finished in {JOB_TIMEOUT} s:\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for name in ("worker.log", "daemon.log"):
            path = self.root.parent / name
            if path.exists():
                out.append(f"--- {name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def events(self, name: str, kind: str = "activated") -> list[Any]:
        with self.registry() as reg:
            found = [e for e in reg.list_events(limit=1000, plugin=name) if e.kind == kind]
        return sorted(found, key=lambda e: e.id)  # oldest first

    def backups(self, name: str) -> list[str]:
        root = self.layout.plugin_backups_dir(name)
        return sorted(p.name for p in root.iterdir()) if root.is_dir() else []

    # ---- the pause hook -------------------------------------------------------------------
    def arm(self, step: str) -> None:
        (self.gate / f"{step}.reached").unlink(missing_ok=True)
        (self.gate / f"{step}.armed").touch()

    def disarm(self, step: str) -> None:
        (self.gate / f"{step}.armed").unlink(missing_ok=True)

    def reached(self, step: str) -> tuple[int, Path]:
        """Wait until a task stands paused in ``step``; (pid of that process, its work dir)."""
        marker = self.gate / f"{step}.reached"

        def written() -> str:
            text = marker.read_text() if marker.exists() else ""
            return text if text.endswith("\n") else ""

        text = _wait_for(written, JOB_TIMEOUT, f"a task paused in {step}")
        pid, where = text.split(maxsplit=1)
        return int(pid), Path(where.strip())

    # ---- processes ----------------------------------------------------------------------
    def start_daemon(self) -> None:
        notify_path = self.root / "run" / f"notify-{time.monotonic_ns()}.sock"
        self.layout.ensure()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(0.2)
        with (self.root.parent / "daemon.log").open("ab") as log:
            self.daemon = subprocess.Popen(
                [str(PLUGVISOR), "--state-dir", str(self.root), "daemon"],
                env={**self.env, "NOTIFY_SOCKET": str(notify_path)},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                if self.daemon.poll() is not None:
                    pytest.fail(f"daemon exited with {self.daemon.returncode}:\n{self.logs()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"daemon not READY within 60 s:\n{self.logs()}")
                try:
                    if "READY=1" in notify.recv(4096).decode().split("\n"):
                        return
                except TimeoutError:
                    continue
        finally:
            notify.close()

    def start_worker(self) -> None:
        with (self.root.parent / "worker.log").open("ab") as log:
            self.worker = subprocess.Popen(
                [str(PLUGVISOR), "--state-dir", str(self.root), "worker", "--concurrency", "1",
                 "--hostname", f"reload-{uuid.uuid4().hex[:12]}@%h"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def pool_child(self) -> psutil.Process:
        assert self.worker is not None
        main = psutil.Process(self.worker.pid)
        children = _wait_for(main.children, 30,
                             "the worker's pool process")  # fmt: skip
        return children[0]  # type: ignore[no-any-return]

    def stop(self) -> None:
        for proc in (self.worker, self.daemon):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture(scope="module", params=["sqlite", "rabbitmq"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A daemon and a worker per broker for the module (tests use their own plugin names)."""
    url = request.getfixturevalue("rabbitmq_url") if request.param == "rabbitmq" else ""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="pv-reload-"))
    os.chmod(base, 0o755)  # the sandbox user traverses to versions/
    root = base / "state"
    gate = base / "gate"
    gate.mkdir()
    queue = f"plugvisor.jobs.test-{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(
        PLUGVISOR_STATE_DIR=str(root),
        PLUGVISOR_BROKER_URL=url,
        PLUGVISOR_JOB_QUEUE=queue,
        PLUGVISOR_BROKER_POLLING_INTERVAL="0.01",
        PLUGVISOR_METRICS_PORT="0",
        PLUGVISOR_LOG_FORMAT="console",
        PLUGVISOR_WATCH_WINDOW_S="0",
        PLUGVISOR_DRAIN_TIMEOUT_S="5",
        PLUGVISOR_PLUGIN_CONCURRENCY="2",
        PLUGVISOR_BACKUP_RETENTION="3",
        PLUGVISOR_TEST_PAUSE_DIR=str(gate),
    )
    overrides: dict[str, Any] = {
        "state_dir": str(root), "broker_url": url, "job_queue": queue,
        "broker_polling_interval": 0.01, "backup_retention": 3,
    }  # fmt: skip
    settings = load_settings(overrides, env={})
    StateLayout(root).ensure()
    generate_keypair(base / "signer")
    TrustStore(root).trust(base / "signer.pub")
    kit = Rig(root, request.param, settings, env, base / "signer", gate)
    try:
        kit.start_daemon()
        kit.start_worker()
        yield kit
    finally:
        for step in ("snapshot", "trial"):
            kit.disarm(step)
        kit.stop()
        if url:
            _delete_queue(url, queue)
        shutil.rmtree(base, ignore_errors=True)


def _delete_queue(url: str, queue: str) -> None:
    try:
        with KombuConnection(url, connect_timeout=5) as conn:
            channel = conn.channel()
            channel.queue_delete(queue)
            channel.exchange_delete(queue)
    except (OSError, KombuError) as exc:
        warnings.warn(f"could not delete RabbitMQ queue {queue}: {exc}", stacklevel=1)


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
