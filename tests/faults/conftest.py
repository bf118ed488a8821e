"""Fixtures of the fault-injection suite: the integration suites' rigs, reused, plus probes.

``daemon_kit`` is the integration suite's fixture (a real daemon over a throw-away state
dir), loaded from ``tests/integration/conftest.py`` rather than copied: test directories
cannot import each other's conftest, so the module is loaded by path. ``reload_rig``
builds the reload suite's :class:`Rig` (a daemon and a ``plugvisor worker`` on the
embedded broker, with the worker's pause hook) from ``test_workers_reload.py`` the same
way. ``fake_clock`` runs the daemon under ``fake_clock_daemon.py``, which shifts
``time.time()`` (the wall clock) by what a file says, leaving ``time.monotonic()`` alone.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from plugvisor.core.config import load_settings
from plugvisor.core.signing import generate_keypair
from plugvisor.state.layout import StateLayout
from plugvisor.state.trust import TrustStore
from plugvisor.tests.support.procs import alive, descendants, orphan_sandbox_processes

HERE = Path(__file__).resolve().parent
INTEGRATION = HERE.parent / "integration"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_integration = _load(INTEGRATION / "conftest.py", "_pv_faults_integration_conftest")
_reload = _load(INTEGRATION / "test_workers_reload.py", "_pv_faults_workers_reload")

#: The integration suite's daemon fixture (registered here by name).
daemon_kit = _integration.daemon_kit
wait_for = _integration.wait_for
Rig = _reload.Rig
RELOAD_SOURCE: str = _reload.SOURCE


class FaultTools:
    """Helpers the fault tests share (a fixture: test modules cannot import a conftest)."""

    wait_for = staticmethod(wait_for)
    alive = staticmethod(alive)
    descendants = staticmethod(descendants)

    @staticmethod
    def kill9_daemon_only(kit: Any) -> set[int]:
        """SIGKILL the daemon process alone (not its group); the descendants it left behind.

        Unlike ``DaemonKit.kill9`` (which kills the whole session), the template and the
        hosts are left to notice by themselves, which is what a real ``kill -9`` does.
        """
        assert kit.proc is not None and kit.proc.poll() is None
        left = descendants(kit.proc.pid)
        kit.proc.kill()
        kit.proc.wait(10)
        if kit.notify is not None:
            kit.notify.close()
            kit.notify = None
        return left

    @staticmethod
    def assert_no_orphans(pids: set[int], timeout: float = 15.0) -> None:
        """Every process in ``pids`` exits by itself within ``timeout`` (no orphan hosts)."""
        wait_for(lambda: not alive(pids), timeout,
                 f"the dead daemon's processes {sorted(alive(pids))} to exit")  # fmt: skip
        assert orphan_sandbox_processes(pids=pids) == []


@pytest.fixture
def faults() -> FaultTools:
    """The shared helpers of the fault tests."""
    return FaultTools()


# ---- a fake wall clock -------------------------------------------------------------------------


class FakeClock:
    """Shifts the daemon's ``time.time()`` by ``offset`` seconds (see fake_clock_daemon.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def jump(self, offset: float, timeout: float = 10.0) -> None:
        """Set the offset and wait until the daemon acknowledged it."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(repr(float(offset)))
        os.replace(tmp, self.path)
        applied = Path(f"{self.path}.applied")
        wait_for(lambda: applied.exists() and applied.read_text() == repr(float(offset)),
                 timeout, f"the daemon to apply the clock offset {offset}")  # fmt: skip


@pytest.fixture
def fake_clock(daemon_kit: Any, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Run ``daemon_kit``'s daemon with a wall clock the test can move."""
    path = daemon_kit.root / "fake-clock"
    monkeypatch.setenv("PLUGVISOR_TEST_DAEMON_CMD", str(HERE / "fake_clock_daemon.py"))
    daemon_kit.env["PLUGVISOR_TEST_CLOCK_FILE"] = str(path)
    return FakeClock(path)


# ---- the reload rig ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reload_rig() -> Iterator[Any]:
    """A daemon and a worker on the embedded broker over one state dir (module scope)."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="pv-faults-"))
    os.chmod(base, 0o755)  # the sandbox user traverses to versions/
    root = base / "state"
    gate = base / "gate"
    gate.mkdir()
    queue = f"plugvisor.jobs.faults-{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(
        PLUGVISOR_STATE_DIR=str(root), PLUGVISOR_BROKER_URL="", PLUGVISOR_JOB_QUEUE=queue,
        PLUGVISOR_BROKER_POLLING_INTERVAL="0.01", PLUGVISOR_METRICS_PORT="0",
        PLUGVISOR_LOG_FORMAT="console", PLUGVISOR_WATCH_WINDOW_S="0",
        PLUGVISOR_DRAIN_TIMEOUT_S="5", PLUGVISOR_PLUGIN_CONCURRENCY="2",
        PLUGVISOR_BACKUP_RETENTION="3", PLUGVISOR_TEST_PAUSE_DIR=str(gate),
    )  # fmt: skip
    overrides: dict[str, Any] = {
        "state_dir": str(root), "broker_url": "", "job_queue": queue,
        "broker_polling_interval": 0.01, "backup_retention": 3,
    }  # fmt: skip
    settings = load_settings(overrides, env={})
    StateLayout(root).ensure()
    generate_keypair(base / "signer")
    TrustStore(root).trust(base / "signer.pub")
    rig = Rig(root, "sqlite", settings, env, base / "signer", gate)
    try:
        rig.start_daemon()
        rig.start_worker()
        yield rig
    finally:
        for step in ("snapshot", "trial"):
            rig.disarm(step)
        rig.stop()
        shutil.rmtree(base, ignore_errors=True)
