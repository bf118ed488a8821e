"""Fixtures of the fault-injection suite: the integration suites' rigs, reused, plus probes.

``daemon_kit`` is the daemon rig's fixture (:mod:`plugvisor.tests.support.daemonkit`,
re-exported here by name). ``reload_rig`` is the reload rig
(:mod:`plugvisor.tests.support.reloadrig`: a daemon and a worker on the embedded broker,
with the worker's pause hook). ``fake_clock`` runs the daemon under
``fake_clock_daemon.py``, which shifts ``time.time()`` (the wall clock) by what a file
says, leaving ``time.monotonic()`` alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugvisor.tests.support.daemonkit import daemon_kit
from plugvisor.tests.support.procs import alive, descendants, orphan_sandbox_processes
from plugvisor.tests.support.reloadrig import Rig
from plugvisor.tests.support.reloadrig import reload_rig as _reload_rig
from plugvisor.tests.support.waiting import wait_for

__all__ = ["daemon_kit", "fake_clock", "faults", "reload_rig"]

HERE = Path(__file__).resolve().parent


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
def reload_rig() -> Iterator[Rig]:
    """A daemon and a worker on the embedded broker over one state dir (module scope)."""
    with _reload_rig("sqlite", prefix="pv-faults-") as rig:
        yield rig
