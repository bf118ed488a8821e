"""systemd readiness and watchdog notifications (``sd_notify``), written by hand.

The protocol is one datagram of ``KEY=VALUE`` lines to the Unix socket named by
``NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Without
``NOTIFY_SOCKET`` every call is a no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping

from plugvisor.core.log import get_logger

__all__ = ["Notifier", "watchdog_interval"]

_log = get_logger("plugvisor.daemon.notify")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds (how often to ping), or ``None`` when unset."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not raw.isdigit() or int(raw) <= 0:
        return None
    if pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog is meant for another process
    return int(raw) / 1_000_000 / 2


class Notifier:
    """Sends ``READY=1``, ``STOPPING=1``, ``STATUS=...`` and watchdog pings."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | None = ("\0" + addr[1:]) if addr.startswith("@") else (addr or None)
        self._interval = watchdog_interval(env)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, state: str) -> bool:
        """Send one notification; ``False`` when there is no socket or it failed."""
        if self._addr is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(1.0)
                sock.sendto(state.encode("utf-8"), self._addr)
        except OSError as exc:
            _log.warning("sd_notify_failed", state=state, error=str(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Tell systemd the daemon is ready (after every active plugin was started)."""
        return self.notify("READY=1\nSTATUS=" + status if status else "READY=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def start_watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping ``WATCHDOG=1`` every ``WATCHDOG_USEC/2`` while ``healthy()`` holds."""
        if self._interval is None or self._addr is None or self._thread is not None:
            return
        interval = self._interval

        def loop() -> None:
            while not self._stop.wait(interval):
                if healthy():
                    self.notify("WATCHDOG=1")
                else:
                    _log.warning("watchdog_ping_withheld", reason="daemon not healthy")

        self._thread = threading.Thread(target=loop, name="sd-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
