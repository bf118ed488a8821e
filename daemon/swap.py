"""Blue/green version swaps per plugin: activate, rollback, and the automatic swap back.

One swap of plugin ``name`` to ``version`` (serialised per plugin by the slot's lock):

1. refuse a version that is not approved or retired (quarantined or unreviewed code is
   never spawned) and re-check dependencies (``Registry.check_dependencies``), naming
   each conflict;
2. verify the version's files and start a new pool: first host spawned, ``setup()``
   run and ``health()`` true within ``swap_health_timeout_s`` — on failure nothing has
   changed and the command fails with the reason;
3. ``Registry.activate`` (one transaction): from here a restart runs the new version;
4. flip the routing pointer (one reference swap under the route lock): new calls go to
   the new hosts; callers queued on the old pool move over;
5. retire the old pool in the background: in-flight calls finish (``drain_timeout_s``),
   then its hosts stop.

Crash safety follows from the order: the registry changes only after the new host is
healthy, and at start-up the registry's active version is what runs, so a ``kill -9``
at any instant leaves exactly one active version and a live side rebuilt from it.

A rollback with ``restore_from`` (a worker-staged ``data/.restore-NAME-<job>/``, see
:mod:`plugvisor.workers.reload`) is the one swap that is not blue/green: the data must
not change under either version, so the old hosts are drained and stopped first, then
``data/NAME/`` and the staged directory are exchanged in one ``renameat2`` (files and
DB together), then the target starts; on failure the exchange is undone and the old
version restarted. A kill -9 between the exchange and the registry commit restarts the
old version on the restored data until the worker's re-sent command (same id, not yet
recorded as finished) completes the swap -- the exchange is not repeated (RESTORE_ID).

After a swap a :class:`~plugvisor.daemon.supervisor.Watch` counts the new version's
errors and violations for ``watch_window_s``; reaching ``watch_error_threshold`` swaps
back to the previous version by the same mechanics and records the reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from plugvisor.core.errors import (
    ApiError,
    ConflictError,
    DependencyError,
    PlugvisorError,
    SandboxError,
)
from plugvisor.core.fs import exchange_paths
from plugvisor.core.log import get_logger
from plugvisor.daemon.supervisor import PluginSlot, SlotState, Supervisor, Watch
from plugvisor.state.backups import RESTORE_ID, read_restore_id
from plugvisor.state.registry import ACTIVATABLE, ActivationCheck

__all__ = ["SwapEngine"]

_log = get_logger("plugvisor.daemon.swap")


class SwapEngine:
    """Applies activate / rollback to the live side and the registry, in a crash-safe order."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        supervisor.on_watch_tripped = self._watch_tripped

    def activate(
        self, name: str, version: str, *, kind: str = "activate", watch: bool = True
    ) -> dict[str, Any]:
        """Swap ``name`` to ``version``; return the outcome (``swapped`` or ``kept``)."""
        sup = self.sup
        reg = sup.registry
        version = str(version)
        slot = sup.slot(name, create=True)
        assert slot is not None
        with slot.swap_lock:
            t0 = time.perf_counter()
            running = slot.pool.version if slot.pool is not None else None
            check = reg.check_activation(name, version)
            _refuse_disabled(check)
            if check.plugin.active_version == version and running == version:
                return {"plugin": name, "outcome": "kept", "from": version, "to": version}
            self._refuse(check, kind, running)
            phases = {"checks": time.perf_counter() - t0}
            try:
                info = sup.version_info(name, version, check.digest)
                phases["read_version"] = time.perf_counter() - t0
                pool = sup.start_pool(info)
                phases["verify_spawn_health"] = time.perf_counter() - t0
            except PlugvisorError as exc:
                self._failed(name, kind, running, version, str(exc))
                details = {**exc.details, "plugin": name, "version": version, "cause": exc.code}
                rule = exc.rule if isinstance(exc, SandboxError) else "start_failed"
                raise SandboxError(
                    rule, f"{name} {version} did not start: {exc.message}", **details
                ) from exc
            try:
                old_version = reg.switch_active(name, version)
            except PlugvisorError as exc:
                sup.retire(pool, drain_timeout=0.0)
                self._failed(name, kind, running, version, str(exc))
                raise
            phases["commit"] = time.perf_counter() - t0
            previous = old_version or running
            old_pool = sup.route(slot, pool, SlotState.ACTIVE, "", version)
            flipped_at = time.time()
            slot.crashes.clear()
            slot.watch = (
                Watch(
                    version=version,
                    previous=previous if previous != version else None,
                    until=time.monotonic() + sup.settings.watch_window_s,
                    threshold=sup.settings.watch_error_threshold,
                )
                if watch and sup.settings.watch_window_s > 0
                else None
            )
            took = time.perf_counter() - t0
        sup.retire(old_pool)
        sup.metrics.swaps.labels(name, "ok").inc()
        sup.metrics.swap_seconds.observe(took)
        if kind != "activate":
            sup.metrics.rollbacks.labels(name, kind).inc()
        # The registry recorded "activated" itself; publish the swap with its timing.
        sup.event(
            name, "swapped", record=False, outcome="ok", via=kind, took_ms=round(took * 1000, 3),
            from_version=previous, to_version=version,
        )  # fmt: skip
        return {
            "plugin": name, "outcome": "swapped", "from": previous, "to": version,
            "took_ms": round(took * 1000, 3),
            "flipped_at": flipped_at,  # wall clock of the routing flip
            # Cumulative milliseconds at the end of each phase (for benchmarks and logs).
            "phases_ms": {k: round(v * 1000, 3) for k, v in phases.items()},
        }  # fmt: skip

    def rollback(
        self, name: str, version: str | None = None, restore_from: str | None = None
    ) -> dict[str, Any]:
        """Swap back to ``version`` (default: the version active before the current one).

        With ``restore_from`` (a directory a worker staged as ``data/.restore-NAME-*``
        holding ``files/``, ``db.sqlite`` and ``RESTORE_ID``) the plugin's data is swapped
        with the code: see :meth:`_swap_with_data`.
        """
        target = version or self.sup.registry.get_plugin(name).previous_version
        if not target:
            raise ConflictError(
                "no_previous", f"{name} has no previous version to roll back to", plugin=name
            )
        if restore_from:
            return self._swap_with_data(name, str(target), restore_from)
        return self.activate(name, str(target), kind="rollback", watch=False)

    def _staged_data(self, name: str, restore_from: str) -> tuple[Path, str]:
        """Check ``restore_from`` is a complete staged restore of ``name``; (path, its id)."""
        layout = self.sup.layout
        stage = Path(restore_from)
        if (
            stage.parent != layout.data_dir
            or not stage.name.startswith(f".restore-{name}-")
            or stage.is_symlink()
            or not stage.is_dir()
        ):
            raise ApiError(
                "invalid_field", f"restore_from must be a staged data/.restore-{name}-* "
                f"directory, not {restore_from}", field="restore_from",
            )  # fmt: skip
        restore_id = read_restore_id(stage)
        if restore_id is None:
            raise ApiError(
                "invalid_field", f"{restore_from} is not a complete staged restore (no "
                f"readable {RESTORE_ID})", field="restore_from",
            )  # fmt: skip
        return stage, restore_id

    def _swap_with_data(self, name: str, version: str, restore_from: str) -> dict[str, Any]:
        """Rollback with its data: drain the old hosts, exchange the data dir, start ``version``.

        Not blue/green: the data must not change under either version, so the old hosts
        stop (in-flight calls finish; new calls get ``plugin.unavailable`` meanwhile)
        before ``data/NAME/`` and the staged directory are exchanged in one
        ``renameat2(RENAME_EXCHANGE)`` -- files and DB flip together. If ``version``
        does not start, the exchange is undone and the old version started again.
        Re-applying (same ``RESTORE_ID`` already live) does not exchange twice.
        """
        sup = self.sup
        reg = sup.registry
        slot = sup.slot(name, create=True)
        assert slot is not None
        layout = sup.layout
        live = layout.plugin_data_root(name)
        with slot.swap_lock:
            t0 = time.perf_counter()
            stage, restore_id = self._staged_data(name, restore_from)
            running = slot.pool.version if slot.pool is not None else None
            check = reg.check_activation(name, version)
            _refuse_disabled(check)
            self._refuse(check, "rollback", running)
            info = sup.version_info(name, version, check.digest)
            sup.verify(info.digest)  # before any downtime: a bad tree refuses at once
            old_version = check.plugin.active_version
            layout.ensure_plugin_data(name)
            already = read_restore_id(live) == restore_id
            old_pool = sup.route(slot, None, SlotState.DOWN, f"rolling back to {version}: "
                                 "restoring its data")  # fmt: skip
            if old_pool is not None:
                old_pool.close(sup.settings.drain_timeout_s)  # hosts stopped: DB closed
            phases = {"drain": time.perf_counter() - t0}
            if not already:
                exchange_paths(stage, live)
            phases["exchange"] = time.perf_counter() - t0
            try:
                pool = sup.start_pool(info)
            except PlugvisorError as exc:
                if not already:
                    exchange_paths(stage, live)  # the old version's data back
                self._restart(slot, old_version)
                self._failed(name, "rollback", running, version, str(exc))
                raise SandboxError(
                    "start_failed", f"{name} {version} did not start on its restored data: "
                    f"{exc.message}; {old_version} restarted on its own data",
                    plugin=name, version=version, cause=exc.code,
                ) from exc  # fmt: skip
            phases["spawn_health"] = time.perf_counter() - t0
            try:
                switched_from = reg.switch_active(name, version)
            except PlugvisorError:
                pool.close(0.0)
                if not already:
                    exchange_paths(stage, live)
                self._restart(slot, old_version)
                raise
            sup.route(slot, pool, SlotState.ACTIVE, "", version)
            slot.crashes.clear()
            slot.watch = None
            took = time.perf_counter() - t0
        previous = switched_from or running
        sup.metrics.swaps.labels(name, "ok").inc()
        sup.metrics.swap_seconds.observe(took)
        sup.metrics.rollbacks.labels(name, "rollback").inc()
        sup.event(
            name, "swapped", record=False, outcome="ok", via="rollback", restored=True,
            took_ms=round(took * 1000, 3), from_version=previous, to_version=version,
        )  # fmt: skip
        return {
            "plugin": name, "outcome": "swapped", "from": previous, "to": version,
            "restored": True, "took_ms": round(took * 1000, 3),
            "phases_ms": {k: round(v * 1000, 3) for k, v in phases.items()},
        }  # fmt: skip

    def _refuse(self, check: ActivationCheck, kind: str, running: str | None) -> None:
        """Refuse before anything is spawned: a version that is not approved or retired
        (quarantined or unreviewed code never runs), or one that breaks dependencies."""
        name, version = check.plugin.name, check.version
        if check.status not in ACTIVATABLE:
            raise ConflictError(
                "not_activatable",
                f"{name} {version} is {check.status.value}; only approved or retired "
                "versions can be activated",
                plugin=name, version=version, status=check.status.value,
            )  # fmt: skip
        if check.conflicts:
            self._failed(name, kind, running, version, "; ".join(check.conflicts))
            raise DependencyError(
                "conflict", "; ".join(check.conflicts), plugin=name, version=version,
                conflicts=check.conflicts,
            )  # fmt: skip

    def _restart(self, slot: PluginSlot, version: str | None) -> None:
        """Start ``version`` again after a failed data swap (``down`` if that fails too)."""
        if version is None:
            return
        try:
            pool = self.sup.start_pool(self.sup.version_info(slot.name, version))
        except PlugvisorError as exc:
            self.sup.route(slot, None, SlotState.DOWN, f"restart after failed rollback: {exc}")
            return
        self.sup.route(slot, pool, SlotState.ACTIVE, "", version)

    # ---- automatic rollback -------------------------------------------------------------------
    def _watch_tripped(self, slot: PluginSlot, watch: Watch) -> None:
        """Swap back after the new version erred ``threshold`` times in its watch window."""
        reason = (
            f"{watch.errors} errors or violations of {watch.version} within the "
            f"{self.sup.settings.watch_window_s:g} s watch window "
            f"(watch_error_threshold {watch.threshold})"
        )
        with slot.swap_lock:
            current = slot.pool.version if slot.pool is not None else None
            if slot.watch is not watch or current != watch.version:
                return  # another swap or a disable got there first
            slot.watch = None
            if watch.previous is None:
                self.sup.event(
                    slot.name, "watch_tripped", outcome="kept", reason=reason + "; no previous "
                    "version to roll back to", from_version=watch.version, to_version=watch.version,
                )  # fmt: skip
                return
            try:
                outcome = self.activate(slot.name, watch.previous, kind="auto_rollback",
                                        watch=False)  # fmt: skip
            except PlugvisorError as exc:
                self.sup.event(
                    slot.name, "auto_rollback", outcome="failed", reason=f"{reason}; {exc}",
                    from_version=watch.version, to_version=watch.previous,
                )  # fmt: skip
                return
        self.sup.event(
            slot.name, "auto_rollback", outcome="ok", reason=reason,
            took_ms=outcome.get("took_ms"), from_version=watch.version, to_version=watch.previous,
        )  # fmt: skip

    def _failed(self, name: str, kind: str, running: str | None, version: str, reason: str) -> None:
        self.sup.metrics.swaps.labels(name, "failed").inc()
        self.sup.event(
            name, "swap_failed", outcome="failed", reason=reason, via=kind,
            from_version=running, to_version=version,
        )  # fmt: skip
        _log.warning("swap_refused", plugin=name, version=version, reason=reason)


def _refuse_disabled(check: ActivationCheck) -> None:
    plugin = check.plugin
    if plugin.disabled:
        raise ConflictError(
            "plugin_disabled",
            f"{plugin.name} is disabled ({plugin.disabled_reason}); enable it first",
            plugin=plugin.name,
        )
