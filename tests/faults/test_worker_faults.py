"""Faults under reload jobs: disk full while snapshotting, the embedded broker locked,
the daemon killed while a job waits to activate.

``tests/integration/test_workers_reload.py`` covers a worker killed mid-snapshot and
mid-trial (both brokers) and a RabbitMQ ``stop_app``/``start_app`` mid-job; these are the
faults it does not. One daemon and one worker on the embedded broker serve the module
(``reload_rig``); each test uses its own plugin name. The invariant after each: the job
reached a final state once, the registry names one active version and calls get it, a
version went live at most once, and no debris is left in backups/.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from plugvisor.messaging.jobs import ReloadJob, start_job
from plugvisor.state.backups import verify_backup
from plugvisor.state.registry import JobStatus
from plugvisor.tests.support.procs import alive, descendants

pytestmark = pytest.mark.slow

#: Writes ``fill`` bytes into data_dir/blob.bin: data too big for a tiny backups/ mount.
BLOB_SOURCE = '''
"""Test plugin {name} {version} ({mode})."""
import os

VERSION = "{version}"


class Plugin:
    def setup(self, ctx):
        self.ctx = ctx

    def handle(self, request):
        size = request.get("fill") if isinstance(request, dict) else None
        if size:
            with open(os.path.join(self.ctx.data_dir, "blob.bin"), "wb") as fh:
                fh.write(b"x" * size)
        files = {{f: os.path.getsize(os.path.join(self.ctx.data_dir, f))
                  for f in os.listdir(self.ctx.data_dir)}}
        return {{"version": VERSION, "files": files}}
'''


def _activations(rig: Any, name: str) -> list[str]:
    return [e.to_version for e in rig.events(name)]


def _active(rig: Any, name: str) -> str | None:
    with rig.registry() as reg:
        active: str | None = reg.get_plugin(name).active_version
    return active


@contextlib.contextmanager
def _tiny_mount(path: Path, size: str = "256k") -> Iterator[Path]:
    """A ``size`` tmpfs on ``path`` (root only): writes past it fail with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"!!! disk-full fault SKIPPED: tmpfs mount missing ({done.stderr.strip()}) !!!")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, check=False, timeout=30)


def test_disk_full_while_snapshotting_fails_cleanly_then_recovers(reload_rig: Any) -> None:
    rig = reload_rig
    name = rig.unique("diskfull")
    rig.install(name, "1.0.0", source=BLOB_SOURCE)
    rig.go_live(name, "1.0.0")
    assert rig.call(name, {"fill": 600_000})["files"] == {"blob.bin": 600_000}
    rig.install(name, "2.0.0", source=BLOB_SOURCE)
    backups = rig.layout.plugin_backups_dir(name)
    with _tiny_mount(backups):
        job = rig.job("reload", name=name, version="2.0.0")
        # The snapshot ran out of space: the job failed there, nothing went live.
        assert job.status is JobStatus.failed, job.to_dict()
        steps = [(s["name"], s["status"]) for s in job.steps]
        assert steps == [("check", "succeeded"), ("snapshot", "failed")], steps
        assert "No space left" in job.error["message"] or "ENOSPC" in str(job.error), job.error
        assert list(backups.iterdir()) == []  # the partial copy was removed
        assert os.statvfs(backups).f_bfree == os.statvfs(backups).f_blocks  # space given back
        assert _active(rig, name) == "1.0.0"
        assert _activations(rig, name) == ["1.0.0"]
        answer = rig.call(name, {})
        assert answer == {"version": "1.0.0", "files": {"blob.bin": 600_000}}
    # Space back, no manual clean-up: the same reload goes through, once.
    job = rig.job("reload", name=name, version="2.0.0")
    assert job.status is JobStatus.succeeded, (job.to_dict(), rig.logs())
    assert _activations(rig, name) == ["1.0.0", "2.0.0"]
    assert rig.backups(name) == ["1.0.0"]
    assert verify_backup(rig.layout.backup_dir(name, "1.0.0")) == []
    assert rig.call(name, {}) == {"version": "2.0.0", "files": {"blob.bin": 600_000}}


def test_embedded_broker_locked_mid_job_loses_no_job(reload_rig: Any) -> None:
    rig = reload_rig
    first, second = rig.unique("locka"), rig.unique("lockb")
    for name in (first, second):
        rig.install(name, "1.0.0")
        rig.go_live(name, "1.0.0")
        rig.install(name, "2.0.0")
    rig.arm("trial")
    started: dict[str, Any] = {}
    try:
        running = start_job(rig.settings, ReloadJob(name=first))
        rig.reached("trial")
        # Another process holds the broker's database exclusively: nobody reads or writes it.
        lock = sqlite3.connect(rig.layout.broker_db, timeout=5, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:

            def enqueue() -> None:
                try:
                    started["id"] = start_job(rig.settings, ReloadJob(name=second))
                    started["done"] = time.monotonic()
                except Exception as exc:
                    started["error"] = repr(exc)

            sender = threading.Thread(target=enqueue, daemon=True)
            sender.start()
            rig.disarm("trial")  # the first job's next hop meets the locked broker
            # The fault lasts 3 s (its duration is the variable, not a synchronisation).
            time.sleep(3.0)
        finally:
            released = time.monotonic()
            lock.execute("COMMIT")
            lock.close()
        sender.join(timeout=60)
        assert "id" in started, started
        # The fault was real: publishing could not complete while the broker was locked
        # (an order of events, not a duration: no assumption on this machine's speed).
        assert started["done"] >= released, started
        jobs = [rig.wait(running), rig.wait(started["id"])]
    finally:
        rig.disarm("trial")
    for job in jobs:
        assert job.status is JobStatus.succeeded, (job.to_dict(), rig.logs())
        assert {s["name"]: s["attempt"] for s in job.steps} == {
            "check": 1, "snapshot": 1, "trial": 1, "activate": 1,
        }  # fmt: skip
    for name in (first, second):
        assert _activations(rig, name) == ["1.0.0", "2.0.0"]
        assert rig.call(name, {})["version"] == "2.0.0"


def test_daemon_killed_while_a_job_waits_to_activate(reload_rig: Any) -> None:
    rig = reload_rig
    name = rig.unique("nodaemon")
    rig.install(name, "1.0.0")
    rig.go_live(name, "1.0.0")
    rig.call(name, {"write": "kept"})
    rig.install(name, "2.0.0")
    rig.arm("trial")
    try:
        job_id = start_job(rig.settings, ReloadJob(name=name))
        rig.reached("trial")
        left = descendants(rig.daemon.pid)
        psutil.Process(rig.daemon.pid).kill()  # kill -9 of the daemon alone
        rig.daemon.wait(timeout=10)
        rig.disarm("trial")  # the activate step now sends its command to no daemon

        def activating() -> bool:
            with rig.registry() as reg:
                steps = reg.get_job(job_id).steps
            return any(s["name"] == "activate" for s in steps)

        deadline = time.monotonic() + 60
        while not activating():
            assert time.monotonic() < deadline, "the activate step never started"
            time.sleep(0.02)
        # The dead daemon's template and hosts exit by themselves.
        deadline = time.monotonic() + 15
        while alive(left):
            assert time.monotonic() < deadline, f"orphans {sorted(alive(left))}"
            time.sleep(0.02)
        rig.start_daemon()  # as systemd's Restart= would: the queued command is served
        job = rig.wait(job_id)
    finally:
        rig.disarm("trial")
    assert job.status is JobStatus.succeeded, (job.to_dict(), rig.logs())
    assert job.result["version"] == "2.0.0"
    assert _activations(rig, name) == ["1.0.0", "2.0.0"]  # once, not twice
    answer = rig.call(name, {})
    assert answer["version"] == "2.0.0" and answer["rows"] == [["1.0.0", "kept"]]
