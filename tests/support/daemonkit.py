"""The daemon rig: a real daemon process over a throw-away state dir (fixture ``daemon_kit``).

``daemon_kit`` builds plugin versions on the fly (:func:`plugvisor.testing.store_test_version`:
plugin.yaml + package + MANIFEST.json, stored read-only and recorded), starts
``.venv/bin/plugvisor --state-dir D daemon`` as a subprocess and waits for its
``READY=1`` on a fake ``NOTIFY_SOCKET`` (a Unix datagram socket) with a deadline. The
suites that use it re-export the fixture from their ``conftest.py`` by name.

The state directory lives under ``/tmp`` with mode 0o755, not in pytest's ``tmp_path``
(whose 0o700 parent the unprivileged sandbox user cannot traverse).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugvisor.client import Client
from plugvisor.core.config import Settings, load_settings
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry, VersionStatus
from plugvisor.testing import store_test_version
from plugvisor.tests.support.waiting import wait_for

__all__ = ["PLUGVISOR", "DaemonKit", "daemon_kit", "new_daemon_kit"]

REPO = Path(__file__).resolve().parents[2]
PLUGVISOR = REPO / ".venv" / "bin" / "plugvisor"


@dataclasses.dataclass
class DaemonKit:
    """A state directory, plugin versions in it, and the daemon process serving it."""

    root: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    log_path: Path | None = None
    _clients: list[Client] = dataclasses.field(default_factory=list)

    #: ``wait_for(cond, timeout, what)``, for the tests that only get the fixture.
    wait_for = staticmethod(wait_for)

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.root)

    @property
    def settings(self) -> Settings:
        return load_settings({"state_dir": str(self.root)}, env=self.env)

    def registry(self) -> Registry:
        return Registry.open(self.settings)

    # ---- versions ----------------------------------------------------------------------
    def add_version(
        self,
        name: str,
        version: str,
        mode: str = "ok",
        *,
        requires: dict[str, str] | None = None,
        activate: bool = False,
        status: str = "approved",
    ) -> str:
        """Build, store and record one version of the versioned test plugin; return its digest."""
        return store_test_version(
            self.layout, name, version, mode, requires=requires, activate=activate,
            status=VersionStatus(status),
        )  # fmt: skip

    # ---- the daemon process ----------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Start the daemon and wait for READY=1 on the fake NOTIFY_SOCKET."""
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        notify_path = self.root / "run" / f"notify-{time.monotonic_ns()}.sock"
        self.layout.ensure()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        self.notify.settimeout(0.2)
        env = {**self.env, "NOTIFY_SOCKET": str(notify_path)}
        self.log_path = self.root / "logs" / f"daemon-{int(time.time() * 1000)}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*_daemon_cmd(), "--state-dir", str(self.root), "daemon"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"daemon not READY within {timeout} s:\n{self.log_tail()}")
            try:
                msg = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in msg.split("\n"):
                return

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; return the exit code."""
        if self.proc is None:
            return 0
        for c in self._clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                pytest.fail(f"daemon did not stop within {timeout} s:\n{self.log_tail()}")
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        return self.proc.returncode

    def kill9(self) -> None:
        """SIGKILL the daemon and everything in its session (plugin hosts included)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(10)
        # Hosts that left the session (setsid) see their channel close and exit by themselves.
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self, timeout: float = 30.0) -> Client:
        c = Client(self.layout.daemon_socket, timeout=timeout)
        self._clients.append(c)
        return c

    def command(self, kind: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one control-plane command and return its outcome."""
        from plugvisor.messaging.control import send_raw_command  # noqa: PLC0415

        return send_raw_command(self.settings, kind, params, timeout=timeout)


def _daemon_cmd() -> list[str]:
    # PLUGVISOR_TEST_DAEMON_CMD lets a developer run the suite against a wrapper script.
    override = os.environ.get("PLUGVISOR_TEST_DAEMON_CMD")
    if override:
        return [sys.executable, override]
    return [str(PLUGVISOR)]


def new_daemon_kit() -> DaemonKit:
    """A stopped daemon over a fresh state dir under /tmp (the caller tears it down)."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="pv-daemon-"))
    os.chmod(root, 0o755)  # the sandbox user must traverse to versions/
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("PLUGVISOR_") or k == "PLUGVISOR_TEST_DAEMON_CMD"
    }  # fmt: skip
    env.update(
        PLUGVISOR_STATE_DIR=str(root),
        PLUGVISOR_METRICS_PORT="0",
        PLUGVISOR_LOG_LEVEL="info",
        PLUGVISOR_BROKER_POLLING_INTERVAL="0.01",
        PLUGVISOR_WATCH_WINDOW_S="5",
        PLUGVISOR_WATCH_ERROR_THRESHOLD="3",
        PLUGVISOR_DRAIN_TIMEOUT_S="5",
        PLUGVISOR_PLUGIN_CONCURRENCY="4",
    )
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    return DaemonKit(root=root, env=env)


@pytest.fixture
def daemon_kit() -> Iterator[DaemonKit]:
    """A stopped daemon over a fresh state dir (``kit.start()`` runs it); torn down after."""
    kit = new_daemon_kit()
    root = kit.root
    try:
        yield kit
    finally:
        try:
            kit.stop(timeout=20)
        finally:
            kit.kill9()
            shutil.rmtree(root, ignore_errors=True)
