"""Waiting on a condition with a deadline: the one way the suites wait (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["wait_for"]


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``cond`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
