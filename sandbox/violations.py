"""ViolationTracker: counts each plugin's violations in a sliding window and trips once.

SPEC §5: "A plugin that keeps violating within a window is disabled automatically, with
a reason." The tracker only counts and says when; disabling is the daemon's job, done in
the ``on_trip`` callback (called outside the tracker's lock, so it may take its time or
call back into the tracker).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["TripCallback", "ViolationTracker"]

#: ``on_trip(plugin, reason)``.
TripCallback = Callable[[str, str], None]


class _Window:
    __slots__ = ("stamps", "tripped")

    def __init__(self) -> None:
        self.stamps: deque[float] = deque()
        self.tripped = False


class ViolationTracker:
    """Per-plugin sliding-window violation counter; thread-safe.

    :meth:`add` returns True exactly when a plugin reaches ``threshold`` violations within
    the last ``window_s`` seconds; it trips again only after the count has fallen below
    the threshold (old violations left the window) or after :meth:`reset`.
    """

    def __init__(
        self,
        threshold: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_trip: TripCallback | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.threshold = threshold
        self.window_s = window_s
        self._clock = clock
        self._on_trip = on_trip
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def _prune(self, win: _Window, now: float) -> None:
        horizon = now - self.window_s
        while win.stamps and win.stamps[0] <= horizon:
            win.stamps.popleft()
        if len(win.stamps) < self.threshold:
            win.tripped = False

    def add(self, plugin: str, kind: str) -> bool:
        """Count one violation; True when ``plugin`` just reached the threshold.

        Every kind counts alike; ``kind`` is taken for the reason and future weighting.
        """
        with self._lock:
            now = self._clock()
            win = self._windows.setdefault(plugin, _Window())
            self._prune(win, now)
            win.stamps.append(now)
            if len(win.stamps) >= self.threshold and not win.tripped:
                win.tripped = True
                return True
            return False

    def record(self, plugin: str, version: str | None, kind: str, detail: str) -> bool:
        """:meth:`add`, then ``on_trip(plugin, reason)`` when it tripped (the daemon's hook)."""
        tripped = self.add(plugin, kind)
        if tripped and self._on_trip is not None:
            reason = (
                f"{self.threshold} violations within {self.window_s:g}s "
                f"(last: {kind} in {plugin}@{version}: {detail[:200]})"
            )
            self._on_trip(plugin, reason)
        return tripped

    def count(self, plugin: str) -> int:
        """Violations of ``plugin`` within the window now."""
        with self._lock:
            win = self._windows.get(plugin)
            if win is None:
                return 0
            self._prune(win, self._clock())
            return len(win.stamps)

    def reset(self, plugin: str) -> None:
        """Forget ``plugin``'s violations (after it was re-enabled or replaced)."""
        with self._lock:
            self._windows.pop(plugin, None)
