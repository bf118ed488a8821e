"""The reload rig: a state dir with a trusted key, a real daemon and a real worker, one broker.

Versions of the test plugin (:data:`SOURCE`) are packed, signed with a trusted key and
installed as an upload would; they go live through the daemon's control plane, and calls
go through :class:`plugvisor.client.Client`. The worker runs under
:mod:`plugvisor.tests.support.paused_worker`, so a test can hold its ``snapshot``,
``trial`` or ``scan`` step (:meth:`Rig.arm`, :meth:`Rig.reached`, :meth:`Rig.disarm`)
and then kill the process running it. Used by the reload suite and the fault suite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
import uuid
import warnings
from collections.abc import Iterator
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
from plugvisor.messaging.control import outcome_result, send_command
from plugvisor.messaging.jobs import JOBS, start_job, wait_for_job
from plugvisor.state.install import install_archive
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import JobRecord, Registry, VersionStatus
from plugvisor.state.trust import TrustStore
from plugvisor.tests.support.paused_worker import PauseGate, worker_command
from plugvisor.tests.support.procs import terminate
from plugvisor.tests.support.waiting import wait_for

__all__ = ["JOB_TIMEOUT", "SOURCE", "Job", "Rig", "reload_rig"]

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


@dataclasses.dataclass
class Rig:
    """A state dir with a trusted key, its daemon and its worker, on one broker."""

    root: Path
    broker: str
    settings: Settings
    env: dict[str, str]
    key: Path
    gate: PauseGate
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

    # ---- the pause hook (see plugvisor.tests.support.paused_worker) -------------------------
    def arm(self, step: str) -> None:
        self.gate.arm(step)

    def disarm(self, step: str) -> None:
        self.gate.disarm(step)

    def reached(self, step: str) -> tuple[int, Path]:
        """Wait until a task stands paused in ``step``; (pid of that process, its work dir)."""
        found: tuple[int, Path] = wait_for(lambda: self.gate.reached(step), JOB_TIMEOUT,
                                           f"a task paused in {step}")  # fmt: skip
        return found

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
                worker_command(self.gate.path, self.root, "--concurrency", "1",
                               "--hostname", f"reload-{uuid.uuid4().hex[:12]}@%h"),
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def pool_child(self) -> psutil.Process:
        assert self.worker is not None
        main = psutil.Process(self.worker.pid)
        children = wait_for(main.children, 30,
                             "the worker's pool process")  # fmt: skip
        return children[0]  # type: ignore[no-any-return]

    def stop(self) -> None:
        for proc in (self.worker, self.daemon):
            terminate(proc)


@contextlib.contextmanager
def reload_rig(broker: str, url: str = "", prefix: str = "pv-reload-") -> Iterator[Rig]:
    """A daemon and a paused-hook worker on ``broker`` (``url``; "" = embedded SQLite)."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix=prefix))
    os.chmod(base, 0o755)  # the sandbox user traverses to versions/
    root = base / "state"
    gate = PauseGate(base / "gate")
    gate.path.mkdir()
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
    )
    overrides: dict[str, Any] = {
        "state_dir": str(root), "broker_url": url, "job_queue": queue,
        "broker_polling_interval": 0.01, "backup_retention": 3,
    }  # fmt: skip
    settings = load_settings(overrides, env={})
    StateLayout(root).ensure()
    generate_keypair(base / "signer")
    TrustStore(root).trust(base / "signer.pub")
    rig = Rig(root, broker, settings, env, base / "signer", gate)
    try:
        rig.start_daemon()
        rig.start_worker()
        yield rig
    finally:
        gate.disarm_all()
        rig.stop()
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
