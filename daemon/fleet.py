"""This daemon's part in the fleet: heartbeat, observed state, convergence.

Every ``heartbeat_interval_s`` the agent (one thread):

1. refreshes this host's row in the registry (started_at, last_seen, version, pid, the
   sandbox layers this kernel enforces, load), so ``plugvisor hosts`` can tell ``up``
   from ``down``;
2. converges: the fleet's desired state is the registry's ``active_version`` and
   ``disabled`` of each plugin; a plugin whose desired version is not what runs here is
   swapped to it exactly as a reload does (fetch + verify the artefact if this host
   lacks it → spawn → health → switch), and a plugin disabled fleet-wide stops here;
3. records what runs here (``observed`` rows, written by this daemon only).

A daemon that starts or comes back after a partition therefore converges on its own.
Every state change of a plugin here (a commanded swap, a crash, a disable: the
supervisor's events) wakes the agent for a beat at once (:meth:`HostAgent.poke`), so
observed rows follow a reload in moments rather than at the next heartbeat.
A convergence that fails (an artefact that does not verify here, a version that does not
start) is recorded in ``observed`` and retried only after a back-off, so a broken
version costs one attempt per back-off, not one per beat.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psutil

from plugvisor import __version__
from plugvisor.core.config import Settings
from plugvisor.core.errors import PlugvisorError
from plugvisor.core.log import get_logger
from plugvisor.daemon.supervisor import SlotState, Supervisor
from plugvisor.daemon.swap import SwapEngine
from plugvisor.state.registry import PluginRecord

__all__ = ["HostAgent"]

_log = get_logger("plugvisor.daemon.fleet")

#: observed.health for each slot state.
_HEALTH = {SlotState.ACTIVE: "serving", SlotState.DOWN: "down", SlotState.DISABLED: "disabled"}


class HostAgent:
    """Heartbeats, observed rows and convergence of one daemon (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        sup: Supervisor,
        swap: SwapEngine,
        layers: dict[str, bool],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.sup = sup
        self.swap = swap
        self.host = settings.host
        self.layers = dict(layers)
        self.started_at = datetime.now(UTC).isoformat(timespec="microseconds")
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: (plugin, version) -> when a failed convergence may be tried again.
        self._retry_at: dict[tuple[str, str], float] = {}
        self._proc = psutil.Process()

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Register this host now (a failure is logged, the thread keeps trying), then beat."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="fleet-agent", daemon=True)
        self._thread.start()

    def poke(self, _event: object = None) -> None:
        """Beat now (a supervisor event sink: something changed here)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.settings.heartbeat_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.beat()

    # ---- one beat ----------------------------------------------------------------------------
    def beat(self) -> list[dict[str, Any]]:
        """Heartbeat, converge, record what runs; the convergence changes made."""
        changes: list[dict[str, Any]] = []
        try:
            self.sup.registry.heartbeat(
                self.host, started_at=self.started_at, plugvisor_version=__version__,
                pid=os.getpid(), layers=self.layers, load=self._load(),
            )  # fmt: skip
            for plugin in self.sup.registry.list_plugins():
                change = self._converge(plugin)
                if change is not None:
                    changes.append(change)
            self._observe()
        except PlugvisorError as exc:
            # The registry is unreachable (a partition): keep serving, try at the next beat.
            _log.warning("fleet_beat_failed", host=self.host, error=str(exc))
        return changes

    def _converge(self, plugin: PluginRecord) -> dict[str, Any] | None:
        name = plugin.name
        slot = self.sup.slots.get(name)
        running = slot.pool.version if slot is not None and slot.pool is not None else None
        if plugin.disabled:
            if running is not None and slot is not None:
                reason = plugin.disabled_reason or "disabled"
                old = self.sup.route(slot, None, SlotState.DISABLED, reason, plugin.active_version)
                if old is not None:
                    self.sup.retire(old, drain_timeout=self.settings.drain_timeout_s)
                _log.info("fleet_converged", host=self.host, plugin=name, to="disabled")
                return {"plugin": name, "from": running, "to": None, "outcome": "disabled"}
            return None
        desired = plugin.active_version
        # A failure is remembered for the version it was about, no longer.
        for stale in [k for k in self._retry_at if k[0] == name and k[1] != desired]:
            del self._retry_at[stale]
        if desired is None or desired == running:
            self._retry_at.pop((name, str(desired)), None)
            return None
        key = (name, desired)
        if self._clock() < self._retry_at.get(key, 0.0):
            return None
        try:
            outcome = self.swap.activate(name, desired, kind="converge", watch=False)
        except PlugvisorError as exc:
            self._retry_at[key] = self._clock() + max(30.0, 6 * self.settings.heartbeat_interval_s)
            # The swap reports a refusal before spawn as start_failed; the cause is the rule.
            cause = str(exc.details.get("cause") or exc.code)
            _log.warning("fleet_converge_failed", host=self.host, plugin=name, version=desired,
                         code=cause, error=exc.message)  # fmt: skip
            self._safe_observe(name, running, "failed", f"{desired}: {cause}: {exc.message}")
            return {"plugin": name, "from": running, "to": desired, "outcome": "failed",
                    "error": cause}  # fmt: skip
        self._retry_at.pop(key, None)
        _log.info("fleet_converged", host=self.host, plugin=name, version=desired, from_=running)
        return {"plugin": name, "from": running, "to": desired,
                "outcome": str(outcome.get("outcome", "swapped"))}  # fmt: skip

    def _observe(self) -> None:
        # One read per beat; a write (a write lock on SQLite) only for a row that changed.
        stored = {
            o.plugin: (o.active_version, o.health, o.detail)
            for o in self.sup.registry.list_observed(host_id=self.host)
        }
        for name, slot in list(self.sup.slots.items()):
            if any(k[0] == name for k in self._retry_at):
                continue  # the "failed" row stands until a convergence succeeds
            row = (
                slot.pool.version if slot.pool is not None else None,
                _HEALTH[slot.state],
                (slot.reason or "")[:1000],
            )
            if stored.get(name) != row:
                self._safe_observe(name, *row)

    def _safe_observe(self, name: str, version: str | None, health: str, detail: str) -> None:
        try:
            self.sup.registry.observe(self.host, name, version, health, detail[:1000])
        except PlugvisorError as exc:
            _log.warning("fleet_observe_failed", host=self.host, plugin=name, error=str(exc))

    def _load(self) -> dict[str, Any]:
        hosts = sum(
            int(slot.pool.snapshot()["hosts"])
            for slot in list(self.sup.slots.values())
            if slot.pool is not None
        )
        return {
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "plugins": len(self.sup.slots),
            "plugin_hosts": hosts,
            "daemon_rss_bytes": self._proc.memory_info().rss,
        }
