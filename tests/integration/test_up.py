"""README command 1: ``plugvisor up`` brings up daemon, worker and API with greeter active."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from plugvisor.tests.support.apikit import UpStack, free_port, pack_greeter, read_until_line

PLUGVISOR = [sys.executable, "-m", "plugvisor"]


@pytest.mark.slow
def test_up_serves_greeter_and_stops_cleanly() -> None:
    # The sandbox user must traverse to the plugin code: a 0o755 dir under /tmp.
    state = Path(tempfile.mkdtemp(prefix="pv-up-", dir="/tmp"))
    state.chmod(0o755)
    port = free_port()
    proc = subprocess.Popen(
        [
            *PLUGVISOR,
            "--state-dir",
            str(state / "var"),
            "up",
            "--port",
            str(port),
            "--metrics-port",
            str(free_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=(state / "up.log").open("wb"),
        env={**os.environ, "PLUGVISOR_LOG_LEVEL": "warning"},
    )
    try:
        try:
            lines = read_until_line(proc, "ready", timeout=90)
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
                str(free_port()),
                "--metrics-port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            read_until_line(proc, "ready", timeout=90)
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0


@pytest.mark.slow
def test_up_then_reload_via_the_cli_shows_progress_and_serves_the_new_version() -> None:
    """README command 1 continued: upload a newer greeter, reload it with the CLI, call it."""
    base = Path(tempfile.mkdtemp(prefix="pv-up3-", dir="/tmp"))
    base.chmod(0o755)
    try:
        with UpStack.start(base) as up:
            # The URL and token come from up's own output, as the README tells the operator.
            assert up.url.startswith("http://127.0.0.1:")
            assert up.token.startswith("pvt_")
            env = up.env()

            def cli(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([*PLUGVISOR, *args], env=env, capture_output=True,
                                      text=True, timeout=120)  # fmt: skip

            archive = pack_greeter("1.1.0", up.state_dir / "keys" / "demo.key", base)
            uploaded = cli("upload", str(archive))
            assert uploaded.returncode == 0, (uploaded.stdout, uploaded.stderr, up.log_tail())
            assert '"status": "approved"' in uploaded.stdout

            out = cli("reload", "greeter", "--version", "1.1.0")
            assert out.returncode == 0, (out.stdout, out.stderr, up.log_tail())
            lines = out.stdout.splitlines()
            # Progress: the job announced, one line per step change, the outcome last.
            assert lines[0].startswith("job ") and lines[0].endswith("(reload) queued"), lines
            running = [line.split(":")[0] for line in lines if line.endswith(": running")]
            done = [line.split(":")[0] for line in lines if ": succeeded" in line]
            assert {"snapshot", "trial", "activate"} <= set(done), out.stdout
            assert set(running) <= set(done), "every step that ran finished"
            assert done[-1] == "activate", out.stdout
            assert any(line.startswith("job ") and line.endswith(" succeeded") for line in lines)
            result = json.loads(out.stdout[out.stdout.index("{") :])
            assert result["version"] == "1.1.0"
            assert result["outcome"] == "swapped"

            called = cli("call", "greeter", '{"name": "x"}')
            assert called.returncode == 0, called.stderr
            assert json.loads(called.stdout) == {
                "ok": True,
                "result": {"greeting": "Hello, x!", "version": "1.1.0"},
            }
            status = json.loads(cli("--json", "remote-status").stdout)
            greeter = next(p for p in status["plugins"] if p["name"] == "greeter")
            assert greeter["active_version"] == "1.1.0"
        assert up.proc.returncode == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)
