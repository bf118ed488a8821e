"""ResourceMonitor: a psutil watchdog that kills hosts whose memory grows past their limit.

RLIMIT_AS already makes large allocations fail inside the child (``budget.memory`` via
MemoryError); the monitor is the second, outside layer: it samples every registered host's
RSS every ``interval`` seconds and SIGKILLs a host above its limit, so the in-flight call
reports ``budget.memory``. The limit is the host's baseline RSS (the runtime, measured by
the child before the plugin was imported) plus the profile's ``memory_limit``: a forked
child's RSS includes pages it shares with the template, which are not the plugin's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import psutil

from plugvisor.core.log import get_logger

__all__ = ["MonitoredHost", "ResourceMonitor"]

_log = get_logger("plugvisor.sandbox.monitor")


class MonitoredHost(Protocol):
    """What the monitor needs from a host (``PluginHost`` provides it)."""

    @property
    def pid(self) -> int: ...

    @property
    def rss_limit(self) -> int: ...

    def kill_for_budget(self, kind: str, detail: str) -> None: ...


@dataclass
class _Entry:
    host: MonitoredHost
    proc: psutil.Process
    peak: int = 0


class ResourceMonitor:
    """One daemon thread for all hosts of a spawner; start() and stop() are idempotent."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="plugvisor-resource-monitor", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    def register(self, host: MonitoredHost) -> None:
        try:
            proc = psutil.Process(host.pid)
        except psutil.NoSuchProcess:
            return  # already gone; the call path reports it
        with self._lock:
            self._entries[host.pid] = _Entry(host, proc)

    def unregister(self, pid: int) -> None:
        with self._lock:
            self._entries.pop(pid, None)

    def peak_rss(self, pid: int) -> int:
        """Highest RSS sampled for ``pid`` (0 when unknown)."""
        with self._lock:
            entry = self._entries.get(pid)
        return entry.peak if entry else 0

    def sample_once(self) -> None:
        """One pass over every host (the thread's body; callable from tests)."""
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            try:
                rss = entry.proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                self.unregister(entry.host.pid)
                continue
            except psutil.AccessDenied as exc:  # pragma: no cover - we run as root or owner
                _log.warning("monitor.access_denied", pid=entry.host.pid, error=str(exc))
                continue
            entry.peak = max(entry.peak, rss)
            limit = entry.host.rss_limit
            if rss > limit:
                self.unregister(entry.host.pid)
                entry.host.kill_for_budget(
                    "memory", f"RSS {rss} bytes above the limit of {limit} bytes"
                )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample_once()
            except Exception:  # the watchdog must outlive any one bad sample
                _log.exception("monitor.sample_failed")
