"""The live side of the registry: one routing slot per plugin, its hosts, crash handling.

The registry is the truth; the supervisor rebuilds the live side from it at start-up
(every active version, in dependency order, each version's files re-verified against
its manifest right before every spawn) and afterwards is the registry's single
writer of the live fields (active version, disabled).

Routing: each plugin has a :class:`PluginSlot` whose ``pool`` is the routing pointer.
A call reads the pointer once (one attribute read) and uses that pool; a swap or a
disable replaces the pointer under ``_route_lock`` *before* retiring the old pool, so
a caller that meets a closed pool re-reads the pointer and finds its successor.

Crash handling: a host that dies, outside a call or during one, is dropped and
replaced by the monitor thread after an exponential back-off (cap
``restart_backoff_max_s``); ``crash_threshold`` crashes within ``crash_window_s``
disable the plugin (``Registry.disable`` with the reason) and its calls get
``plugin.disabled`` until it is enabled through the control plane.
"""

from __future__ import annotations

import enum
import graphlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from plugvisor.core.config import Settings
from plugvisor.core.envelope import error_envelope
from plugvisor.core.errors import PluginRuntimeError, PlugvisorError, StateError
from plugvisor.core.log import get_logger
from plugvisor.core.manifest import PluginMeta, parse_plugin_yaml
from plugvisor.core.profile import load_profile
from plugvisor.daemon.metrics import DaemonMetrics
from plugvisor.daemon.pool import Host, HostPool, PoolClosed
from plugvisor.sandbox import HostSpec
from plugvisor.sandbox.violations import ViolationTracker
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry
from plugvisor.state.store import VersionStore

__all__ = ["EventSink", "PluginSlot", "SlotState", "Supervisor", "Watch"]

_log = get_logger("plugvisor.daemon.supervisor")

#: Receives every state-change event (the control plane publishes them).
EventSink = Callable[[dict[str, Any]], None]


class SlotState(enum.Enum):
    """Where a plugin's routing slot stands."""

    #: Serving calls from ``pool``.
    ACTIVE = "active"
    #: Disabled in the registry (crash loop, violations, operator); calls get plugin.disabled.
    DISABLED = "disabled"
    #: Active in the registry but not running here (start failed, requirement down).
    DOWN = "down"


@dataclass
class Watch:
    """The watch window after a swap: errors of ``version`` counted until ``until``."""

    version: str
    previous: str | None
    until: float
    threshold: int
    errors: int = 0
    tripped: bool = False


@dataclass(eq=False)
class PluginSlot:
    """One plugin's routing pointer and live bookkeeping."""

    name: str
    pool: HostPool | None = None
    state: SlotState = SlotState.DOWN
    reason: str = ""
    swap_lock: threading.RLock = field(default_factory=threading.RLock)
    crashes: deque[float] = field(default_factory=deque)
    watch: Watch | None = None
    #: The version the registry names active (also when not running).
    version: str | None = None
    #: When a ``down`` slot is tried again (monitor), and the current back-off.
    retry_at: float = 0.0
    retry_delay: float = 0.0


@dataclass(frozen=True)
class _VersionInfo:
    """What the supervisor needs of one registered version to run it."""

    name: str
    version: str
    digest: str
    meta: PluginMeta
    requires: tuple[str, ...]


class Supervisor:
    """Owns every plugin host of this daemon, the routing table and crash handling."""

    def __init__(
        self,
        settings: Settings,
        layout: StateLayout,
        registry: Registry,
        store: VersionStore,
        spawner: Any,
        *,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.registry = registry
        self.store = store
        self.spawner = spawner
        self.metrics = metrics or DaemonMetrics()
        self.slots: dict[str, PluginSlot] = {}
        self.sinks: list[EventSink] = []
        #: Called with (slot, watch) when a watch window trips (set by the swap engine).
        self.on_watch_tripped: Callable[[PluginSlot, Watch], None] | None = None
        self._route_lock = threading.Lock()
        self._slots_lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._retiring: list[threading.Thread] = []
        self._metric_children: dict[tuple[str, str], Any] = {}
        #: Parsed plugin.yaml per code digest (see version_info).
        self._metas: dict[str, PluginMeta] = {}
        self.violations = ViolationTracker(
            settings.violation_threshold, settings.violation_window_s,
            on_trip=self._violations_tripped,
        )  # fmt: skip

    # ---- events ------------------------------------------------------------------------
    def event(
        self,
        plugin: str,
        kind: str,
        *,
        from_version: str | None = None,
        to_version: str | None = None,
        outcome: str = "ok",
        reason: str = "",
        record: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        """Log, record (unless the registry already did) and publish one state change."""
        ev: dict[str, Any] = {
            "plugin": plugin, "kind": kind, "from": from_version, "to": to_version,
            "outcome": outcome, "reason": reason, "time": time.time(), **extra,
        }  # fmt: skip
        _log.info("plugin_" + kind, **{k: v for k, v in ev.items() if k not in ("time", "kind")})
        if record:
            try:
                self.registry.record_event(
                    plugin, kind, from_version=from_version, to_version=to_version,
                    outcome=outcome, reason=reason,
                )  # fmt: skip
            except (PlugvisorError, OSError) as exc:
                _log.warning("record_event_failed", plugin=plugin, kind=kind, error=str(exc))
        for sink in list(self.sinks):
            try:
                sink(ev)
            except (PlugvisorError, OSError) as exc:
                _log.warning("event_publish_failed", plugin=plugin, kind=kind, error=str(exc))
        return ev

    # ---- slots ---------------------------------------------------------------------------
    def slot(self, name: str, create: bool = False) -> PluginSlot | None:
        with self._slots_lock:
            slot = self.slots.get(name)
            if slot is None and create:
                slot = self.slots[name] = PluginSlot(name)
            return slot

    def route(self, slot: PluginSlot, pool: HostPool | None, state: SlotState, reason: str = "",
              version: str | None = None) -> HostPool | None:  # fmt: skip
        """Flip ``slot``'s routing pointer atomically; return the previous pool."""
        with self._route_lock:
            old = slot.pool
            slot.pool = pool
            slot.state = state
            slot.reason = reason
            if version is not None:
                slot.version = version
        self.metrics.hosts.labels(slot.name).set(pool.live_hosts if pool else 0)
        return old

    def retire(self, pool: HostPool | None, drain_timeout: float | None = None) -> None:
        """Drain and stop ``pool`` in the background (the caller does not wait)."""
        if pool is None:
            return
        timeout = self.settings.drain_timeout_s if drain_timeout is None else drain_timeout

        def run() -> None:
            drained = pool.close(timeout)
            _log.info(
                "pool_retired", plugin=pool.plugin, version=pool.version, drained=drained,
                calls=pool.calls, errors=pool.errors,
            )  # fmt: skip

        t = threading.Thread(target=run, name=f"retire-{pool.plugin}", daemon=True)
        t.start()
        self._retiring = [x for x in self._retiring if x.is_alive()] + [t]

    # ---- building pools --------------------------------------------------------------------
    def version_info(self, name: str, version: str, digest: str | None = None) -> _VersionInfo:
        """The registered version ``name`` ``version`` with its plugin.yaml parsed.

        ``digest``: the version's code digest when the caller has just read it from the
        registry (the swap's check), saving a second read.
        """
        if digest is None:
            digest = str(self.registry.get_version(name, version).digest)
        if not self.store.exists(digest):
            # Accepted on another host of the fleet: fetched and re-verified here first.
            # Imported here: signature checks and tar reading (cryptography, tarfile) stay
            # out of the resident daemon until a fetch needs them.
            from plugvisor.state.fetch import ensure_version  # noqa: PLC0415

            ensure_version(self.settings, self.registry, digest)
        meta = self._metas.get(digest)
        if meta is None:
            # Not verified here: every spawn verifies the tree right before it starts. The
            # parse is kept per digest: versions/<digest>/ is content-addressed, and a tree
            # altered after this read still fails that verification before it runs.
            path = self.layout.version_dir(digest) / "plugin.yaml"
            meta = parse_plugin_yaml(path.read_bytes())
            if len(self._metas) >= 256:
                self._metas.clear()
            self._metas[digest] = meta
        return _VersionInfo(
            name=name, version=str(version), digest=digest, meta=meta,
            requires=tuple(sorted(meta.requires)),
        )  # fmt: skip

    def verify(self, digest: str) -> None:
        """Re-hash ``versions/<digest>`` against its MANIFEST.json; ``state.integrity`` if not."""
        problems = self.store.verify(digest)
        if problems:
            raise StateError(
                "integrity", f"version {digest[:12]} differs from its manifest: "
                + "; ".join(problems[:5]), digest=digest, problems=problems[:20],
            )  # fmt: skip

    def build_pool(self, info: _VersionInfo) -> HostPool:
        """A not-yet-started pool of ``info``'s hosts (each spawn re-verifies the files)."""
        s = self.settings
        code_dir = self.layout.version_dir(info.digest)
        profile = load_profile(info.meta.profile or s.default_profile, s)
        self.layout.ensure_plugin_data(info.name)
        spec = HostSpec(
            plugin=info.name,
            version=info.version,
            code_dir=code_dir,
            entrypoint=info.meta.entrypoint,
            profile=profile,
            data_dir=self.layout.plugin_files_dir(info.name),
            db_path=self.layout.plugin_db(info.name),
            config=dict(info.meta.config or {}),
            max_response_bytes=s.max_response_bytes,
        )

        def factory() -> Host:
            # Files are re-checked against the manifest right before every spawn, so
            # a version altered on disk after install never runs.
            try:
                self.verify(info.digest)
            except StateError as exc:
                slot = self.slots.get(info.name)
                if slot is not None and holder and slot.pool is holder[0]:
                    # The live version changed on disk: it never runs again as is. (A new
                    # version failing here only fails its swap.)
                    threading.Thread(
                        target=self.disable, daemon=True,
                        args=(info.name, f"integrity check failed: {exc.message}", "integrity"),
                    ).start()  # fmt: skip
                raise
            host: Host = self.spawner.spawn(spec, timeout=s.swap_health_timeout_s)
            return host

        holder: list[HostPool] = []  # the pool, for the factory's integrity check
        pool = HostPool(
            plugin=info.name,
            version=info.version,
            factory=factory,
            size=s.plugin_concurrency,
            queue_limit=s.plugin_queue_limit,
            backoff_max=s.restart_backoff_max_s,
            on_exit=self._host_exited,
        )
        holder.append(pool)
        return pool

    def start_pool(self, info: _VersionInfo) -> HostPool:
        """Build a pool and start its first host (setup + health); raise on failure."""
        pool = self.build_pool(info)
        pool.start(self.settings.swap_health_timeout_s)
        return pool

    # ---- start-up ----------------------------------------------------------------------
    def start_all(self) -> dict[str, str]:
        """Start every active version of the registry in dependency order.

        Returns ``{plugin: state}``. A plugin whose requirement is not running, or whose
        start fails, stays ``down`` (its calls get ``plugin.unavailable``); one whose files
        fail verification is disabled with the reason.
        """
        infos: dict[str, _VersionInfo] = {}
        for plugin in self.registry.list_plugins():
            name = str(plugin.name)
            active = plugin.active_version
            slot = self.slot(name, create=True)
            assert slot is not None
            if plugin.disabled:
                reason = plugin.disabled_reason or "disabled"
                self.route(slot, None, SlotState.DISABLED, reason, version=active)
                continue
            if not active:
                with self._slots_lock:
                    self.slots.pop(name, None)
                continue
            slot.version = str(active)
            try:
                infos[name] = self.version_info(name, str(active))
            except PlugvisorError as exc:
                if _is_integrity(exc):
                    self.disable(name, f"integrity check failed: {exc.message}", "startup")
                else:
                    self.route(slot, None, SlotState.DOWN, f"cannot read version: {exc}")
            except OSError as exc:
                self.route(slot, None, SlotState.DOWN, f"cannot read version: {exc}")
        graph = {n: {r for r in i.requires if r in infos} for n, i in infos.items()}
        try:
            order = list(graphlib.TopologicalSorter(graph).static_order())
        except graphlib.CycleError as exc:
            # A requirement cycle: start by name; the members whose requirement is not
            # running yet stay down and are retried by the monitor.
            _log.error("requirement_cycle", cycle=list(exc.args[1]))
            order = sorted(infos)
        result: dict[str, str] = {}
        for name in order:
            info = infos[name]
            slot = self.slot(name, create=True)
            assert slot is not None
            self._start_if_ready(slot, info)
            result[name] = slot.state.value
            kind = "started" if slot.state is SlotState.ACTIVE else "start_failed"
            self.event(
                name, kind, to_version=info.version, outcome=slot.state.value, reason=slot.reason
            )
        return result

    def _start_if_ready(self, slot: PluginSlot, info: _VersionInfo) -> None:
        """Start ``slot`` when every plugin it requires is running; else leave it down."""
        missing = [
            r for r in info.requires
            if (s := self.slots.get(r)) is None or s.state is not SlotState.ACTIVE
        ]  # fmt: skip
        if missing:
            reason = f"requires {', '.join(missing)}, not running"
            self.route(slot, None, SlotState.DOWN, reason, info.version)
        else:
            self._start_slot(slot, info)

    def _retry_down(self, slot: PluginSlot) -> None:
        """Try again to start a plugin that is down (start failure, requirement down)."""
        if not slot.swap_lock.acquire(blocking=False):
            return  # a swap, enable or disable is on it
        try:
            if slot.state is not SlotState.DOWN or not slot.version or self._stop.is_set():
                return
            try:
                info = self.version_info(slot.name, slot.version)
            except (PlugvisorError, OSError) as exc:
                self.route(slot, None, SlotState.DOWN, f"cannot read version: {exc}")
                return
            self._start_if_ready(slot, info)
        finally:
            slot.swap_lock.release()
        if _state_of(slot) is SlotState.ACTIVE:  # re-read: _start_if_ready changed it
            slot.retry_delay = 0.0
            self.event(slot.name, "started", to_version=slot.version, outcome="active",
                       reason="retried")  # fmt: skip

    def _start_slot(self, slot: PluginSlot, info: _VersionInfo) -> None:
        try:
            pool = self.start_pool(info)
        except PlugvisorError as exc:
            if _is_integrity(exc):
                # Integrity failures never run: disabled with the reason, not retried.
                self.disable(slot.name, f"integrity check failed: {exc.message}", "startup")
            else:
                self.route(slot, None, SlotState.DOWN, f"start failed: {exc}", info.version)
            return
        slot.crashes.clear()
        self.route(slot, pool, SlotState.ACTIVE, "", info.version)

    # ---- the call path ---------------------------------------------------------------------
    def dispatch(self, name: str, request_id: str, body: bytes) -> bytes:
        """Serve one call: route to the plugin's current pool and return the envelope."""
        t0 = time.perf_counter()
        slot = self.slots.get(name)
        envelope: bytes
        code: str | None
        version: str | None
        if slot is None:
            envelope, code, version = self._refusal(name, None), "plugin.not_found", None
        else:
            envelope, code, version = self._call_slot(slot, request_id, body)
        # Unknown names share one label: callers must not grow the metric label space.
        self._count(name if slot is not None else "_unknown", code or "ok",
                    time.perf_counter() - t0)  # fmt: skip
        if code is not None and slot is not None and version is not None:
            self._note_error(slot, version, code)
        return envelope

    def _call_slot(
        self, slot: PluginSlot, request_id: str, body: bytes
    ) -> tuple[bytes, str | None, str | None]:
        deadline = time.monotonic() + self.settings.call_timeout_s
        last: HostPool | None = None
        while True:
            pool = slot.pool
            if pool is None:
                env = self._refusal(slot.name, slot)
                return env, _code_of_refusal(slot), None
            if pool is last:
                # Closed without a successor yet (shutdown): do not spin.
                err = PluginRuntimeError("unavailable", f"plugin {slot.name!r} is restarting",
                                         plugin=slot.name)  # fmt: skip
                return error_envelope(err.code, err.message, **err.details), err.code, None
            try:
                envelope, code = pool.call(body, request_id, deadline)
            except PoolClosed:
                last = pool
                if slot.pool is not pool:
                    last = None  # the pointer moved on: retry on the new pool
                continue
            except PlugvisorError as exc:
                return error_envelope(exc.code, exc.message, **exc.details), exc.code, None
            return envelope, code, pool.version

    def _refusal(self, name: str, slot: PluginSlot | None) -> bytes:
        err: PlugvisorError
        if slot is None:
            err = PluginRuntimeError("not_found", f"no active plugin named {name!r}", plugin=name)
        elif slot.state is SlotState.DISABLED:
            err = PluginRuntimeError("disabled", f"plugin {name!r} is disabled: {slot.reason}",
                                     plugin=name, reason=slot.reason)  # fmt: skip
        else:
            err = PluginRuntimeError("unavailable", f"plugin {name!r} is not running: "
                                     f"{slot.reason}", plugin=name, reason=slot.reason)  # fmt: skip
        return error_envelope(err.code, err.message, **err.details)

    def _count(self, plugin: str, code: str, seconds: float) -> None:
        key = (plugin, code)
        child = self._metric_children.get(key)
        if child is None:
            child = self._metric_children[key] = self.metrics.calls.labels(plugin, code)
        child.inc()
        hkey = (plugin, "")
        hist = self._metric_children.get(hkey)
        if hist is None:
            hist = self._metric_children[hkey] = self.metrics.call_seconds.labels(plugin)
        hist.observe(seconds)

    def _note_error(self, slot: PluginSlot, version: str, code: str) -> None:
        """Count an error of ``version`` against a running watch window."""
        if code in ("plugin.overloaded", "plugin.unavailable", "plugin.not_found"):
            return  # the daemon's refusals, not the version's errors
        watch = slot.watch
        if watch is None or watch.version != version or watch.tripped:
            return
        if time.monotonic() > watch.until:
            return
        watch.errors += 1
        if watch.errors >= watch.threshold and not watch.tripped:
            watch.tripped = True
            cb = self.on_watch_tripped
            if cb is not None:
                threading.Thread(
                    target=cb, args=(slot, watch), name=f"rollback-{slot.name}", daemon=True
                ).start()

    # ---- violations and crashes ----------------------------------------------------------------
    def violation(self, plugin: str, version: str, kind: str, detail: str = "") -> None:
        """A sandbox violation of ``plugin`` (the sandbox's ``on_violation`` callback).

        Counts against a running watch window; the :class:`ViolationTracker` trips at
        ``violation_threshold`` violations within ``violation_window_s`` and the plugin is
        disabled with the reason.
        """
        self.metrics.violations.labels(plugin, kind).inc()
        slot = self.slots.get(plugin)
        if slot is None:
            return
        self._note_error(slot, version, "violation." + kind)
        self.violations.record(plugin, version, kind, detail)

    def _violations_tripped(self, plugin: str, reason: str) -> None:
        slot = self.slots.get(plugin)
        if slot is not None and slot.state is SlotState.ACTIVE:
            threading.Thread(
                target=self.disable, args=(plugin, reason[:500], "violations"), daemon=True
            ).start()

    def _host_exited(self, pool: HostPool, crashed: bool) -> None:
        if not crashed:
            return
        slot = self.slots.get(pool.plugin)
        if slot is None or slot.pool is not pool:
            return
        self.metrics.restarts.labels(pool.plugin).inc()
        now = time.monotonic()
        window = self.settings.crash_window_s
        with self._route_lock:
            slot.crashes.append(now)
            while slot.crashes and slot.crashes[0] < now - window:
                slot.crashes.popleft()
            count = len(slot.crashes)
        _log.warning("host_crashed", plugin=pool.plugin, version=pool.version,
                     crashes_in_window=count)  # fmt: skip
        if count >= self.settings.crash_threshold:
            reason = f"crashed {count} times within {window:g} s"
            threading.Thread(
                target=self.disable, args=(pool.plugin, reason, "crash_loop"), daemon=True
            ).start()

    # ---- disable / enable ---------------------------------------------------------------------
    def disable(self, name: str, reason: str, source: str = "command") -> dict[str, Any]:
        """Disable ``name`` in the registry, stop its hosts; calls get plugin.disabled."""
        slot = self.slot(name, create=True)
        assert slot is not None
        with slot.swap_lock:
            if slot.state is SlotState.DISABLED:
                return {"plugin": name, "outcome": "kept", "reason": slot.reason}
            self.registry.disable(name, reason)
            old = self.route(slot, None, SlotState.DISABLED, reason)
            slot.watch = None
        self.retire(old, drain_timeout=min(2.0, self.settings.drain_timeout_s))
        self.event(name, "disabled", record=False, reason=reason, source=source, outcome="ok",
                   from_version=old.version if old else None)  # fmt: skip
        return {"plugin": name, "outcome": "disabled", "reason": reason}

    def enable(self, name: str) -> dict[str, Any]:
        """Enable ``name`` and start its active version again (fresh crash history)."""
        self.registry.get_plugin(name)  # NotFoundError("plugin") for an unknown name
        slot = self.slot(name, create=True)
        assert slot is not None
        with slot.swap_lock:
            if slot.state is SlotState.ACTIVE:
                return {"plugin": name, "outcome": "kept", "version": slot.version}
            self.registry.enable(name)
            plugin = self.registry.get_plugin(name)
            active = plugin.active_version
            slot.crashes.clear()
            self.violations.reset(name)
            if not active:
                self.route(slot, None, SlotState.DOWN, "no active version")
            else:
                info = self.version_info(name, str(active))
                self.route(slot, None, SlotState.DOWN, "starting", info.version)
                self._start_slot(slot, info)
        self.event(name, "enabled", record=False, to_version=slot.version, outcome=slot.state.value,
                   reason=slot.reason)  # fmt: skip
        return {"plugin": name, "outcome": slot.state.value, "version": slot.version,
                "reason": slot.reason}  # fmt: skip

    # ---- monitor --------------------------------------------------------------------------------
    def start_monitor(self, interval: float = 0.05) -> None:
        """Reap dead idle hosts, restart after back-off, close watch windows."""

        def loop() -> None:
            while not self._stop.wait(interval):
                self.tick()

        self._monitor = threading.Thread(target=loop, name="supervisor-monitor", daemon=True)
        self._monitor.start()

    def tick(self) -> None:
        """One monitor pass (also callable directly)."""
        now = time.monotonic()
        for slot in list(self.slots.values()):
            pool = slot.pool
            if pool is None:
                if slot.state is SlotState.DOWN and slot.version and now >= slot.retry_at:
                    cap = self.settings.restart_backoff_max_s
                    slot.retry_delay = min(cap, max(0.5, slot.retry_delay * 2))
                    slot.retry_at = now + slot.retry_delay
                    threading.Thread(
                        target=self._retry_down, args=(slot,), name=f"retry-{slot.name}",
                        daemon=True,
                    ).start()  # fmt: skip
                continue
            try:
                pool.reap()
                if slot.pool is pool and slot.state is SlotState.ACTIVE:
                    pool.ensure_warm()
                    pool.trim(self.settings.host_idle_timeout_s)
                self.metrics.hosts.labels(slot.name).set(pool.live_hosts)
            except (PlugvisorError, OSError) as exc:
                _log.warning("monitor_failed", plugin=slot.name, error=str(exc))
            watch = slot.watch
            if watch is not None and not watch.tripped and now > watch.until:
                slot.watch = None
                self.event(slot.name, "watch_passed", to_version=watch.version, errors=watch.errors,
                           outcome="kept")  # fmt: skip

    def healthy(self) -> bool:
        """For the watchdog: the monitor thread is alive."""
        return self._monitor is None or self._monitor.is_alive()

    # ---- status / shutdown ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, slot in sorted(self.slots.items()):
            pool, watch = slot.pool, slot.watch
            out[name] = {
                "state": slot.state.value,
                "version": slot.version,
                "reason": slot.reason,
                "pool": pool.snapshot() if pool else None,
                "watch": None if watch is None else {
                    "version": watch.version, "errors": watch.errors,
                    "remaining_s": round(max(0.0, watch.until - time.monotonic()), 3),
                },
            }  # fmt: skip
        return out

    def shutdown(self, drain_timeout: float) -> None:
        """Stop the monitor, drain every pool within ``drain_timeout``, stop every host."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=2.0)
        pools: list[HostPool] = []
        for slot in list(self.slots.values()):
            old = self.route(slot, None, SlotState.DOWN, "daemon stopping")
            if old is not None:
                pools.append(old)
        threads = [
            threading.Thread(target=p.close, args=(drain_timeout,), daemon=True) for p in pools
        ]
        for t in threads:
            t.start()
        for t in [*threads, *self._retiring]:
            t.join(timeout=drain_timeout + 5.0)


def _code_of_refusal(slot: PluginSlot) -> str:
    return "plugin.disabled" if slot.state is SlotState.DISABLED else "plugin.unavailable"


def _is_integrity(exc: PlugvisorError) -> bool:
    """A version whose files or manifest do not check out (never retried, disabled)."""
    return exc.code == "state.integrity" or exc.area in ("archive", "manifest", "signature")


def _state_of(slot: PluginSlot) -> SlotState:
    return slot.state
