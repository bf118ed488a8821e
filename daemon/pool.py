"""The hosts of one plugin version: a small pool, one request per host at a time.

A :class:`HostPool` belongs to exactly one ``(plugin, version)``. It keeps at least
one warm host and grows on demand up to ``size`` hosts (``settings.plugin_concurrency``);
a caller that finds every host busy waits in a bounded queue (``queue_limit``) and
beyond it gets ``plugin.overloaded``. A swap builds a new pool, flips the routing
pointer to it and :meth:`HostPool.close` drains the old one: waiters of a closed pool
get :class:`PoolClosed` and retry on whatever the pointer now names, so no call fails
because of a swap.

Dead hosts (found after a call or by :meth:`reap`) are dropped and reported through
``on_exit(pool, crashed)``; the supervisor counts crashes and decides on disabling.
Replacements respect an exponential back-off (``backoff_max``) that resets once a
host has served a call.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from plugvisor.core.errors import PluginRuntimeError, PlugvisorError, SandboxError
from plugvisor.core.log import get_logger

__all__ = [
    "Host",
    "HostFactory",
    "HostPool",
    "PoolClosed",
    "envelope_code",
]

_log = get_logger("plugvisor.daemon.pool")

#: Response codes after which a dead host was killed on purpose (budget breach,
#: violation) rather than crashed: it is replaced but does not count as a crash.
_INTENDED_KILL_PREFIXES = ("budget.", "policy.", "response.")


class Host(Protocol):
    """What the pool needs of a plugin host (:class:`plugvisor.sandbox.PluginHost`)."""

    @property
    def alive(self) -> bool: ...

    @property
    def usable(self) -> bool: ...

    @property
    def pid(self) -> int: ...

    def health(self) -> bool: ...

    def call_raw(self, request: bytes, request_id: str) -> bytes: ...

    def stop(self, grace: float = 2.0) -> None: ...


#: Spawns one host of the pool's version (setup done), raising on failure.
HostFactory = Callable[[], Host]


class PoolClosed(Exception):
    """The pool was retired (swap, disable): re-read the routing pointer and retry."""


def envelope_code(envelope: bytes) -> str | None:
    """``None`` for a success envelope, else the error code it carries."""
    head = envelope[:16].replace(b" ", b"")
    if head.startswith(b'{"ok":true'):
        return None
    try:
        data = json.loads(envelope)
    except (ValueError, UnicodeDecodeError):
        return "response.not_json"
    if isinstance(data, dict) and data.get("ok") is True:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return str(code) if code else "plugin.error"


def _crash_envelope(plugin: str, message: str) -> bytes:
    err = PluginRuntimeError("crashed", message, plugin=plugin).to_dict()
    return json.dumps({"ok": False, "error": err}, separators=(",", ":")).encode()


@dataclass
class _Backoff:
    """Exponential back-off between replacements of crashed hosts."""

    cap: float
    failures: int = 0
    not_before: float = 0.0

    def failed(self) -> float:
        delay = min(self.cap, 0.05 * (2.0 ** min(self.failures, 30)))
        self.failures += 1
        self.not_before = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.not_before = 0.0


@dataclass(eq=False)  # pools are identities, compared with ``is``
class HostPool:
    """The hosts of one plugin version, with a bounded wait queue."""

    plugin: str
    version: str
    factory: HostFactory
    size: int
    queue_limit: int
    backoff_max: float
    on_exit: Callable[[HostPool, bool], None] = lambda _pool, _crashed: None
    idle: list[Host] = field(default_factory=list)
    #: When each idle host last finished a call (for trimming a pool after a burst).
    idle_since: dict[int, float] = field(default_factory=dict)
    busy: set[Host] = field(default_factory=set)
    spawning: int = 0
    waiting: int = 0
    closed: bool = False
    calls: int = 0
    errors: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _backoff: _Backoff = field(init=False)

    def __post_init__(self) -> None:
        self._backoff = _Backoff(cap=self.backoff_max)

    # ---- start -------------------------------------------------------------------
    def start(self, health_timeout: float) -> None:
        """Spawn the first host and check its health; raise ``SandboxError`` on failure."""
        deadline = time.monotonic() + health_timeout
        host = self.factory()
        try:
            healthy = host.health()
        except PlugvisorError as exc:
            host.stop(grace=0.5)
            raise SandboxError(
                "unhealthy", f"{self.plugin} {self.version} health check failed: {exc}",
                plugin=self.plugin, version=self.version,
            ) from exc  # fmt: skip
        if not healthy or not host.alive:
            host.stop(grace=0.5)
            raise SandboxError(
                "unhealthy", f"{self.plugin} {self.version} reported unhealthy",
                plugin=self.plugin, version=self.version,
            )  # fmt: skip
        if time.monotonic() > deadline:
            host.stop(grace=0.5)
            raise SandboxError(
                "health_timeout",
                f"{self.plugin} {self.version} took longer than {health_timeout} s to start",
                plugin=self.plugin, version=self.version,
            )  # fmt: skip
        with self._cond:
            self.idle.append(host)

    @property
    def live_hosts(self) -> int:
        with self._cond:
            return len(self.idle) + len(self.busy)

    # ---- acquire / release ----------------------------------------------------------
    def acquire(self, deadline: float) -> Host:
        """A free host, spawning one when below ``size``; wait until ``deadline`` otherwise."""
        with self._cond:
            queued = False
            try:
                while True:
                    if self.closed:
                        raise PoolClosed
                    if self.idle:
                        host = self.idle.pop()
                        self.busy.add(host)
                        return host
                    total = len(self.busy) + self.spawning
                    if total < self.size and time.monotonic() >= self._backoff.not_before:
                        self.spawning += 1
                        break  # spawn outside the lock
                    if not queued:
                        if self.waiting >= self.queue_limit:
                            raise PluginRuntimeError(
                                "overloaded",
                                f"plugin {self.plugin!r} has {self.size} calls running and "
                                f"{self.waiting} waiting (plugin_queue_limit)",
                                plugin=self.plugin,
                            )
                        queued = True
                        self.waiting += 1
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PluginRuntimeError(
                            "overloaded",
                            f"no free host of plugin {self.plugin!r} within the call timeout",
                            plugin=self.plugin,
                        )
                    wait = remaining
                    if self._backoff.not_before:
                        wait = min(wait, max(0.001, self._backoff.not_before - time.monotonic()))
                    self._cond.wait(wait)
            finally:
                if queued:
                    self.waiting -= 1
        return self._spawn_for_caller(deadline)

    def _spawn_for_caller(self, deadline: float) -> Host:
        try:
            host = self.factory()
        except (PlugvisorError, OSError) as exc:
            with self._cond:
                self.spawning -= 1
                delay = self._backoff.failed()
                self._cond.notify_all()
            _log.warning(
                "host_spawn_failed", plugin=self.plugin, version=self.version,
                error=str(exc), retry_in_s=round(delay, 3),
            )  # fmt: skip
            self.on_exit(self, True)
            # Other hosts may free up (or a later spawn succeed) before the deadline.
            return self.acquire(deadline)
        with self._cond:
            self.spawning -= 1
            if self.closed:
                self._cond.notify_all()
                closing = True
            else:
                self.busy.add(host)
                closing = False
        if closing:
            host.stop(grace=0.5)
            raise PoolClosed
        return host

    def release(self, host: Host, code: str | None) -> None:
        """Give ``host`` back after a call that ended with ``code`` (``None`` = ok)."""
        # A host that has just answered is running unless it was condemned meanwhile
        # (``usable``, no syscall); after an error its process is asked (``alive``).
        alive = host.usable if code is None else host.alive
        with self._cond:
            self.busy.discard(host)
            self.calls += 1
            if code is not None:
                self.errors += 1
            if alive and not self.closed:
                self.idle.append(host)
                self.idle_since[id(host)] = time.monotonic()
                if code is None:
                    self._backoff.succeeded()
            if self.waiting or self.closed:  # queued callers, or close() draining
                self._cond.notify_all()
        if not alive:
            # Hosts stopped by close() past the drain deadline did not crash.
            crashed = not self.closed and (
                code is None or not code.startswith(_INTENDED_KILL_PREFIXES)
            )
            if crashed:
                with self._cond:
                    self._backoff.failed()
            host.stop(grace=0.1)  # reap it
            self.on_exit(self, crashed)
        elif self.closed:
            host.stop()

    def call(self, request: bytes, request_id: str, deadline: float) -> tuple[bytes, str | None]:
        """Acquire a host, run one call, release it; return ``(envelope, error code)``."""
        host = self.acquire(deadline)
        code: str | None = "plugin.crashed"
        try:
            try:
                envelope = host.call_raw(request, request_id)
            except PlugvisorError as exc:
                envelope = json.dumps(
                    {"ok": False, "error": exc.to_dict()}, separators=(",", ":")
                ).encode()
            except OSError as exc:
                envelope = _crash_envelope(self.plugin, f"plugin host connection failed: {exc}")
            code = envelope_code(envelope)
            return envelope, code
        finally:
            self.release(host, code)

    # ---- maintenance ---------------------------------------------------------------
    def reap(self) -> int:
        """Drop idle hosts that died outside a call; return how many crashed."""
        with self._cond:
            dead = [h for h in self.idle if not h.alive]
            for h in dead:
                self.idle.remove(h)
                self.idle_since.pop(id(h), None)
                self._backoff.failed()
        for h in dead:
            h.stop(grace=0.1)
            self.on_exit(self, True)
        return len(dead)

    def trim(self, idle_for: float) -> int:
        """Stop hosts idle for ``idle_for`` seconds, keeping one warm; return how many."""
        now = time.monotonic()
        with self._cond:
            if self.closed:
                return 0
            # idle is used as a stack (pop from the end): the oldest idle hosts are first.
            spare = max(0, len(self.idle) + len(self.busy) - 1)
            old = [h for h in self.idle if now - self.idle_since.get(id(h), now) > idle_for]
            victims = old[: min(spare, len(old))]
            for h in victims:
                self.idle.remove(h)
                self.idle_since.pop(id(h), None)
        for h in victims:
            h.stop(grace=1.0)
        return len(victims)

    def ensure_warm(self) -> bool:
        """Spawn one host when none is live and the back-off allows; True if one was added."""
        with self._cond:
            if self.closed or self.idle or self.busy or self.spawning:
                return False
            if time.monotonic() < self._backoff.not_before:
                return False
            self.spawning += 1
        try:
            host = self.factory()
        except (PlugvisorError, OSError) as exc:
            with self._cond:
                self.spawning -= 1
                self._backoff.failed()
            _log.warning(
                "host_restart_failed", plugin=self.plugin, version=self.version, error=str(exc)
            )
            self.on_exit(self, True)
            return False
        with self._cond:
            self.spawning -= 1
            keep = not self._is_closed()  # close() may have run while we spawned
            if keep:
                self.idle.append(host)
                self._cond.notify_all()
        if not keep:
            host.stop(grace=0.5)
        return keep

    def _is_closed(self) -> bool:
        return self.closed

    def close(self, drain_timeout: float) -> bool:
        """Stop taking calls, let in-flight ones finish until the deadline, stop every host.

        Returns True when every in-flight call finished before the deadline.
        """
        deadline = time.monotonic() + drain_timeout
        with self._cond:
            self.closed = True
            self._cond.notify_all()  # waiters move to the new pool
            while (self.busy or self.spawning) and time.monotonic() < deadline:
                self._cond.wait(max(0.001, deadline - time.monotonic()))
            drained = not self.busy
            hosts = [*self.idle, *self.busy]
            self.idle.clear()
            self.idle_since.clear()
        for h in hosts:
            try:
                h.stop(grace=1.0)
            except (OSError, PlugvisorError) as exc:
                _log.warning("host_stop_failed", plugin=self.plugin, error=str(exc))
        return drained

    def snapshot(self) -> dict[str, Any]:
        """Counters for ``status``."""
        with self._cond:
            return {
                "version": self.version,
                "hosts": len(self.idle) + len(self.busy),
                "busy": len(self.busy),
                "waiting": self.waiting,
                "calls": self.calls,
                "errors": self.errors,
                "closed": self.closed,
                "pids": sorted(h.pid for h in (*self.idle, *self.busy)),
            }
