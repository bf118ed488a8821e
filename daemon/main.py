"""``plugvisor daemon``: wire the supervisor together, run until SIGTERM.

Start-up order: state tree → ``run/daemon.pid`` → registry → sandbox template →
every active version started in dependency order (files re-verified before each
spawn; a version accepted on another host of the fleet is fetched and verified first) →
call socket → control-plane consumer → fleet agent (heartbeat, observed state,
convergence: :mod:`plugvisor.daemon.fleet`) → metrics endpoint → ``READY=1``
(and ``WATCHDOG=1`` pings when systemd asks for them).

Signals: SIGTERM/SIGINT stop accepting calls, drain calls in progress
(``drain_timeout_s``), stop every plugin host, remove the pid file and the socket, exit
0. SIGHUP re-reads the settings: log level/format, crash and watch thresholds, back-off
and drain limits take effect at once; pool sizes apply to pools started afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from plugvisor.core.config import Settings
from plugvisor.core.errors import PlugvisorError, StateError
from plugvisor.core.log import configure_logging, get_logger
from plugvisor.daemon.callserver import CallServer
from plugvisor.daemon.control import CommandHandlers, ControlPlane
from plugvisor.daemon.fleet import HostAgent
from plugvisor.daemon.metrics import DaemonMetrics
from plugvisor.daemon.notify import Notifier
from plugvisor.daemon.supervisor import Supervisor
from plugvisor.daemon.swap import SwapEngine
from plugvisor.messaging.commands import Activate, Disable, Enable, Rollback, Status
from plugvisor.messaging.preflight import check_broker
from plugvisor.sandbox import Spawner, detect_layers
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry
from plugvisor.state.security_log import SecurityLog
from plugvisor.state.staging import recover_state
from plugvisor.state.store import VersionStore

__all__ = ["Daemon", "run_daemon"]

_log = get_logger("plugvisor.daemon")


class Daemon:
    """One daemon process: its parts, started and stopped in order."""

    def __init__(self, settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self._reload = reload
        self.layout = StateLayout(Path(settings.state_dir))
        self.stop_requested = threading.Event()
        self.hup_requested = threading.Event()
        self.notifier = Notifier()
        self.metrics = DaemonMetrics()
        self.registry: Registry | None = None
        self.spawner: Any = None
        self.supervisor: Supervisor | None = None
        self.swap: SwapEngine | None = None
        self.calls: CallServer | None = None
        self.control: ControlPlane | None = None
        self.fleet: HostAgent | None = None
        self._lock_fd: int | None = None

    # ---- start ----------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        # An unreachable broker is refused before anything starts; an unreachable registry
        # is refused by the first open below (recover_state), naming database_url.
        check_broker(s)
        self.layout.ensure()
        self._write_pid()
        # Debris of a crash mid-install (staging leftovers, trees never recorded).
        recover_state(
            self.layout,
            database_url=s.database_url,
            staging_grace_s=s.recovery_grace_s / 12,
            orphan_grace_s=s.recovery_grace_s,
        )
        self.registry = Registry.open(s)
        self.spawner = Spawner(
            s,
            security_log=SecurityLog(self.layout.security_log),
            on_violation=self._on_violation,
        )
        self.spawner.start()
        layers = self._report_layers()
        sup = self.supervisor = Supervisor(
            s, self.layout, self.registry, VersionStore(self.layout), self.spawner,
            metrics=self.metrics,
        )  # fmt: skip
        self.swap = SwapEngine(sup)
        started = sup.start_all()
        sup.start_monitor()
        self.calls = CallServer(self.layout.daemon_socket, sup.dispatch)
        self.calls.start()
        self.control = ControlPlane(s, self.registry, self.command_handlers())
        self.control.prepare(timeout=5.0)  # a broker lost since preflight: retried in background
        sup.sinks.append(self.control.publish_event)
        self.control.start()
        # Registers this host, then converges it to the fleet's desired state every beat.
        self.fleet = HostAgent(s, sup, self.swap, layers)
        self.fleet.start()
        sup.sinks.append(self.fleet.poke)  # observed rows follow every change at once
        port = self.metrics.serve(s.metrics_addr, s.metrics_port)
        status = f"{sum(v == 'active' for v in started.values())}/{len(started)} plugins running"
        self.notifier.ready(status)
        calls = self.calls
        # Pings stop (and systemd restarts us) when the monitor or the accept loop died.
        self.notifier.start_watchdog(lambda: sup.healthy() and calls.healthy())
        _log.info(
            "daemon_ready", pid=os.getpid(), socket=str(self.layout.daemon_socket),
            plugins=started, metrics_port=port,
        )  # fmt: skip

    def _report_layers(self) -> dict[str, bool]:
        """Log which sandbox layers this kernel enforces (a missing one is a warning)."""
        report = detect_layers(self.settings.sandbox_user)
        for layer in report.inactive:
            _log.warning("sandbox_layer_inactive", layer=layer.name, reason=layer.reason)
        layers = {x.name: x.active for x in report}
        _log.info("sandbox_layers", layers=layers)
        return layers

    def _write_pid(self) -> None:
        """Take ``run/daemon.lock`` for the daemon's lifetime, then write ``run/daemon.pid``.

        The lock (``flock``) is what makes a second daemon on the same state directory
        refuse to start; the kernel drops it when this process dies, even by ``kill -9``.
        """
        lock_path = self.layout.run_dir / "daemon.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                other = self.layout.daemon_pid.read_text().strip()
            except OSError:
                other = "?"
            raise StateError(
                "daemon_running", f"a daemon (pid {other}) already runs for {self.layout.root}",
                pid=other,
            ) from None  # fmt: skip
        self._lock_fd = fd
        tmp = self.layout.daemon_pid.with_name(f".daemon.pid.{os.getpid()}")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.layout.daemon_pid)

    # ---- callbacks ------------------------------------------------------------------------
    def _on_violation(self, plugin: str, version: str, kind: str, detail: str) -> None:
        if self.supervisor is not None:
            self.supervisor.violation(plugin, version, kind, detail)

    # ---- control commands: one handler per messaging.commands class ----------------------
    def command_handlers(self) -> CommandHandlers:
        """The handler of every control command (the control plane dispatches by class)."""
        return {
            Status: self._status,
            Activate: self._activate,
            Rollback: self._rollback,
            Disable: self._disable,
            Enable: self._enable,
        }

    def _parts(self) -> tuple[Supervisor, SwapEngine]:
        assert self.supervisor is not None and self.swap is not None  # set by start()
        return self.supervisor, self.swap

    def _status(self, _cmd: Status) -> dict[str, Any]:
        return {"pid": os.getpid(), "plugins": self._parts()[0].status()}

    def _activate(self, cmd: Activate) -> Any:
        return self._parts()[1].activate(cmd.name, cmd.version)

    def _rollback(self, cmd: Rollback) -> Any:
        return self._parts()[1].rollback(cmd.name, cmd.version, restore_from=cmd.restore_from)

    def _disable(self, cmd: Disable) -> Any:
        return self._parts()[0].disable(cmd.name, cmd.reason, source="command")

    def _enable(self, cmd: Enable) -> Any:
        return self._parts()[0].enable(cmd.name)

    # ---- run / stop -----------------------------------------------------------------------
    def run(self) -> None:
        """Block until SIGTERM/SIGINT; apply SIGHUP reloads meanwhile."""
        while not self.stop_requested.is_set():
            self.stop_requested.wait(0.5)
            if self.hup_requested.is_set():
                self.hup_requested.clear()
                self.reload()

    def reload(self) -> None:
        if self._reload is None:
            return
        try:
            new = self._reload()
        except PlugvisorError as exc:
            _log.error("reload_failed", error=str(exc))
            return
        self.settings = new
        configure_logging(new.log_level, new.log_format, component="daemon")
        if self.fleet is not None:
            self.fleet.settings = new
        if self.supervisor is not None:
            self.supervisor.settings = new
            self.supervisor.violations.threshold = new.violation_threshold
            self.supervisor.violations.window_s = new.violation_window_s
        _log.info("settings_reloaded")

    def stop(self) -> None:
        """Graceful stop: no new calls, drain, stop plugins, clean up run/."""
        t0 = time.monotonic()
        drain = self.settings.drain_timeout_s
        self.notifier.stopping()
        if self.calls is not None:
            self.calls.stop_accepting()
        if self.control is not None:
            self.control.stop()
        if self.fleet is not None:
            self.fleet.stop()  # no convergence may start a pool while we drain
        if self.calls is not None:
            self.calls.drain(drain)
        if self.supervisor is not None:
            self.supervisor.shutdown(drain_timeout=min(drain, 5.0))
        if self.spawner is not None:
            self.spawner.close()
        self.metrics.close()
        self.notifier.close()
        if self.registry is not None:
            self.registry.close()
        # The socket file went with stop_accepting(); the pid file only if it names us.
        with contextlib.suppress(FileNotFoundError):
            if self.layout.daemon_pid.read_text().strip() == str(os.getpid()):
                self.layout.daemon_pid.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock last, after run/ is cleaned up
            self._lock_fd = None
        _log.info("daemon_stopped", took_s=round(time.monotonic() - t0, 3))


def run_daemon(settings: Settings, reload: Callable[[], Settings] | None = None) -> int:
    """Run the daemon in this process until SIGTERM; return the exit code."""
    configure_logging(settings.log_level, settings.log_format, component="daemon")
    daemon = Daemon(settings, reload)

    def on_term(signum: int, _frame: FrameType | None) -> None:
        daemon.stop_requested.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        daemon.hup_requested.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        daemon.start()
        daemon.run()
    except PlugvisorError as exc:
        _log.error("daemon_failed", code=exc.code, error=exc.message)
        daemon.stop()
        raise
    daemon.stop()
    return 0
