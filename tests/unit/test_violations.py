"""ViolationTracker: a sliding window per plugin, driven by an injected clock."""

from __future__ import annotations

import threading

import pytest

from plugvisor.sandbox.violations import ViolationTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_trips_once_at_threshold_within_window() -> None:
    clock = Clock()
    t = ViolationTracker(3, 10.0, clock=clock)
    assert [t.add("p", "policy.forbidden") for _ in range(3)] == [False, False, True]
    assert t.add("p", "policy.forbidden") is False  # already tripped: once, not every time
    assert t.count("p") == 4
    assert t.count("other") == 0


def test_window_slides() -> None:
    clock = Clock()
    t = ViolationTracker(3, 10.0, clock=clock)
    t.add("p", "k")
    clock.now += 6
    t.add("p", "k")
    clock.now += 6  # the first one is now 12 s old: out of the window
    assert t.add("p", "k") is False
    assert t.count("p") == 2
    clock.now += 3
    assert t.add("p", "k") is True  # three within the last 10 s (at +6, +12, +15)
    clock.now += 100
    assert t.count("p") == 0
    # Fell below the threshold: it can trip again.
    assert [t.add("p", "k") for _ in range(3)] == [False, False, True]


def test_plugins_are_counted_separately_and_reset() -> None:
    clock = Clock()
    t = ViolationTracker(2, 60.0, clock=clock)
    assert t.add("a", "k") is False
    assert t.add("b", "k") is False
    assert t.add("a", "k") is True
    t.reset("a")
    assert t.count("a") == 0 and t.count("b") == 1
    assert t.add("a", "k") is False


def test_record_calls_on_trip_with_reason() -> None:
    trips: list[tuple[str, str]] = []
    t = ViolationTracker(2, 60.0, clock=Clock(), on_trip=lambda p, r: trips.append((p, r)))
    t.record("greeter", "1.0.0", "budget.files", "opened 51 files")
    assert trips == []
    t.record("greeter", "1.0.0", "policy.forbidden", "network: socket.__new__")
    assert len(trips) == 1 and trips[0][0] == "greeter"
    assert "2 violations within 60s" in trips[0][1] and "policy.forbidden" in trips[0][1]


def test_thread_safe_exactly_one_trip() -> None:
    t = ViolationTracker(500, 3600.0)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [t.add("p", "k") for _ in range(250)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=10)
    assert len(results) == 1000 and results.count(True) == 1
    assert t.count("p") == 1000


@pytest.mark.parametrize(("threshold", "window"), [(0, 1.0), (1, 0.0)])
def test_bad_arguments_refused(threshold: int, window: float) -> None:
    with pytest.raises(ValueError):
        ViolationTracker(threshold, window)
