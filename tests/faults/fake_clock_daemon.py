"""Test hook: the daemon with a wall clock shifted by ``$PLUGVISOR_TEST_CLOCK_FILE``.

Used as ``PLUGVISOR_TEST_DAEMON_CMD`` by the clock-jump faults: ``time.time()`` and
``time.time_ns()`` return the real wall clock plus the offset (seconds, a float) the
file holds; ``time.monotonic()`` is untouched, as on a machine whose clock is stepped by
NTP or an operator. A thread re-reads the file every 10 ms and acknowledges a new offset
in ``<file>.applied`` (atomically), so a test knows when the jump has happened.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_real_time = time.time
_real_time_ns = time.time_ns
_offset = [0.0]


def _read(path: str) -> float:
    try:
        with open(path) as fh:
            return float(fh.read().strip() or 0.0)
    except (OSError, ValueError):
        return _offset[0]


def _follow(path: str) -> None:
    while True:
        value = _read(path)
        if value != _offset[0] or not os.path.exists(path + ".applied"):
            _offset[0] = value
            tmp = f"{path}.applied.tmp"
            with open(tmp, "w") as fh:
                fh.write(repr(value))
            os.replace(tmp, path + ".applied")
        time.sleep(0.01)


def main() -> None:
    path = os.environ["PLUGVISOR_TEST_CLOCK_FILE"]
    _offset[0] = _read(path) if os.path.exists(path) else 0.0
    time.time = lambda: _real_time() + _offset[0]
    time.time_ns = lambda: _real_time_ns() + int(_offset[0] * 1e9)
    threading.Thread(target=_follow, args=(path,), name="fake-clock", daemon=True).start()
    # The daemon's own entry point, in this process: ``plugvisor daemon`` would exec a
    # fresh interpreter and lose the patched clock. Called as the CLI is
    # (``--state-dir DIR daemon``): the trailing command name is the CLI's, not the daemon's.
    from plugvisor.core.entrypoint import run_process  # noqa: PLC0415 -- after the patch
    from plugvisor.daemon.__main__ import main as daemon_main  # noqa: PLC0415

    sys.argv = [sys.argv[0], *(a for a in sys.argv[1:] if a != "daemon")]
    run_process(daemon_main)


if __name__ == "__main__":
    main()
