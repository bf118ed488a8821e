"""README command 1: ``plugvisor up`` brings up daemon, worker and API with greeter active."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

PLUGVISOR = [sys.executable, "-m", "plugvisor"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_line(proc: subprocess.Popen[bytes], want: str, timeout: float) -> list[str]:
    """Lines of ``proc``'s stdout up to the one equal to ``want`` (fails at the deadline).

    Reads the raw pipe: ``select`` on a buffered reader misses lines already buffered.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            lines = buf.decode("utf-8", "replace").splitlines()
            if want in (line.strip() for line in lines):
                return lines
        elif proc.poll() is not None:
            break
    raise AssertionError(
        f"no {want!r} line within {timeout} s; output:\n" + buf.decode("utf-8", "replace")
    )


@pytest.mark.slow
def test_up_serves_greeter_and_stops_cleanly() -> None:
    # The sandbox user must traverse to the plugin code: a 0o755 dir under /tmp.
    state = Path(tempfile.mkdtemp(prefix="pv-up-", dir="/tmp"))
    state.chmod(0o755)
    port = _free_port()
    proc = subprocess.Popen(
        [
            *PLUGVISOR,
            "--state-dir",
            str(state / "var"),
            "up",
            "--port",
            str(port),
            "--metrics-port",
            str(_free_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=(state / "up.log").open("wb"),
        env={**os.environ, "PLUGVISOR_LOG_LEVEL": "warning"},
    )
    try:
        try:
            lines = _wait_line(proc, "ready", timeout=90)
        except AssertionError as exc:
            log = (state / "up.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{exc}\n--- stderr ---\n{log}") from None
        token_line = next(line for line in lines if "admin token:" in line)
        assert token_line.split()[-1].startswith("pvt_")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # daemon (+ its template and plugin), worker, api

        out = subprocess.run(
            [*PLUGVISOR, "--state-dir", str(state / "var"), "call", "greeter", '{"name": "x"}'],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {
            "ok": True,
            "result": {"greeting": "Hello, x!", "version": "1.0.0"},
        }
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    assert rc == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running after up stopped: {[p.pid for p in alive]}"


@pytest.mark.slow
def test_up_is_idempotent_on_an_existing_state_dir() -> None:
    """A second ``up`` reuses key, install and activation instead of failing on them."""
    state = Path(tempfile.mkdtemp(prefix="pv-up2-", dir="/tmp"))
    state.chmod(0o755)
    for _ in range(2):
        proc = subprocess.Popen(
            [
                *PLUGVISOR,
                "--state-dir",
                str(state / "var"),
                "up",
                "--port",
                str(_free_port()),
                "--metrics-port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_line(proc, "ready", timeout=90)
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
