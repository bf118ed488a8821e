"""The call path through a real daemon: calls, refusals, the CLI, metrics, sd_notify, SIGTERM."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from plugvisor.client import Client
from plugvisor.core.errors import PluginRuntimeError, PlugvisorError

pytestmark = pytest.mark.slow

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_call_roundtrip_refusals_and_clean_stop(daemon_kit):
    daemon_kit.add_version("greeter", "1.0.0", activate=True)
    daemon_kit.add_version("broken", "1.0.0", mode="error", activate=True)
    daemon_kit.start()
    sock = daemon_kit.layout.daemon_socket
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    client = daemon_kit.client()
    assert client.call("greeter", {"hi": 1}) == {"version": "1.0.0", "echo": {"hi": 1}, "calls": 1}
    env = json.loads(client.call_raw("greeter", b"[1,2]"))
    assert env["ok"] is True and env["result"]["echo"] == [1, 2]
    with pytest.raises(PluginRuntimeError) as exc:
        client.call("nobody-here", {})
    assert exc.value.code == "plugin.not_found"
    with pytest.raises(PluginRuntimeError) as exc:
        client.call("broken", {})
    assert exc.value.code == "plugin.error" and "broken on purpose" in exc.value.message
    # Threads share one Client: one connection per thread, answers never cross.
    answers: dict[int, object] = {}

    def worker(i: int) -> None:
        answers[i] = client.call("greeter", {"i": i})["echo"]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {i: {"i": i} for i in range(8)}
    stale = Client(sock, timeout=10)  # keeps its connection across the restart below
    assert stale.call("greeter", {})["version"] == "1.0.0"
    assert daemon_kit.stop() == 0
    assert not sock.exists()
    assert not daemon_kit.layout.daemon_pid.exists()
    with pytest.raises(PluginRuntimeError) as exc:
        client.call("greeter", {})
    assert exc.value.code == "plugin.unavailable"
    # A connection the daemon closed is replaced transparently once the daemon is back.
    daemon_kit.start()
    assert stale.call("greeter", {})["version"] == "1.0.0"
    stale.close()


def test_cli_call_prints_the_envelope_and_exit_code(daemon_kit):
    daemon_kit.add_version("greeter", "1.0.0", activate=True)
    daemon_kit.start()
    cmd = [str(VENV_BIN / "plugvisor"), "--state-dir", str(daemon_kit.root), "call"]
    ok = subprocess.run([*cmd, "greeter", '{"a": 1}'], capture_output=True, text=True, timeout=30,
                        env=daemon_kit.env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"ok": True, "result": {"version": "1.0.0", "echo": {"a": 1},
                                                             "calls": 1}}  # fmt: skip
    bad = subprocess.run([*cmd, "missing", "{}"], capture_output=True, text=True, timeout=30,
                         env=daemon_kit.env)  # fmt: skip
    assert bad.returncode != 0
    assert json.loads(bad.stdout)["error"]["code"] == "plugin.not_found"
    # `call` stays light: no Celery, Flask or SQLAlchemy in its process.
    probe = subprocess.run(
        [str(VENV_BIN / "python"), "-c",
         "import sys\nfrom plugvisor.cli import main\n"
         "try:\n    main(['--state-dir', sys.argv[1], 'call', 'greeter', '{}'])\n"
         "except SystemExit:\n    pass\n"
         "heavy = [m for m in ('celery', 'flask', 'sqlalchemy', 'kombu') if m in sys.modules]\n"
         "print(repr(heavy), file=sys.stderr)", str(daemon_kit.root)],
        capture_output=True, text=True, timeout=30, env=daemon_kit.env,
    )  # fmt: skip
    assert probe.stderr.strip().splitlines()[-1] == "[]", probe.stderr


def test_overload_is_refused_with_a_typed_error(daemon_kit):
    daemon_kit.env.update(PLUGVISOR_PLUGIN_CONCURRENCY="1", PLUGVISOR_PLUGIN_QUEUE_LIMIT="1")
    daemon_kit.add_version("slowpoke", "1.0.0", activate=True)
    daemon_kit.start()
    codes: list[str] = []
    lock = threading.Lock()

    def call(hold_s: float) -> None:
        try:
            daemon_kit.client().call("slowpoke", {"sleep": hold_s})
            code = "ok"
        except PlugvisorError as exc:
            code = exc.code
        with lock:
            codes.append(code)

    def pool() -> dict[str, Any]:
        return dict(daemon_kit.command("status")["result"]["plugins"]["slowpoke"]["pool"])

    # Synchronised on the pool's own counters, not on how fast this machine is: one call
    # runs, one waits in the queue, and only then do two more arrive. The held calls stay
    # under the profile's time budget; the sync needs a small part of it.
    running = threading.Thread(target=call, args=(4.0,))
    running.start()
    daemon_kit.wait_for(lambda: pool()["busy"] == 1, 10, "the first call running")
    queued = threading.Thread(target=call, args=(0.0,))
    queued.start()
    daemon_kit.wait_for(lambda: pool()["waiting"] == 1, 10, "the second call queued")
    assert pool()["busy"] == 1, "the first call ended before the overload could be tested"
    call(0.0)
    call(0.0)
    assert codes == ["plugin.overloaded", "plugin.overloaded"], codes
    running.join(timeout=30)
    queued.join(timeout=30)
    assert sorted(codes) == ["ok", "ok", "plugin.overloaded", "plugin.overloaded"], codes


def test_metrics_endpoint_and_watchdog_pings(daemon_kit):
    port = _free_port()
    daemon_kit.env.update(PLUGVISOR_METRICS_PORT=str(port), WATCHDOG_USEC="200000")
    daemon_kit.add_version("greeter", "1.0.0", activate=True)
    daemon_kit.start()
    client = daemon_kit.client()
    for _ in range(3):
        client.call("greeter", {})
    with pytest.raises(PluginRuntimeError):
        client.call("ghost", {})
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'plugvisor_calls_total{code="ok",plugin="greeter"} 3.0' in body
    assert 'plugvisor_calls_total{code="plugin.not_found",plugin="_unknown"} 1.0' in body
    assert "plugvisor_call_seconds_bucket" in body
    # WATCHDOG_USEC=0.2 s: pings every 0.1 s on the fake NOTIFY_SOCKET.
    pings = []

    def three_pings() -> bool:
        try:
            msg = daemon_kit.notify.recv(4096).decode()
        except TimeoutError:
            return False
        if "WATCHDOG=1" in msg.split("\n"):
            pings.append(msg)
        return len(pings) >= 3

    daemon_kit.wait_for(three_pings, 5, "three WATCHDOG=1 pings")


def test_pool_grows_under_concurrency_and_shrinks_when_idle(daemon_kit):
    daemon_kit.env.update(PLUGVISOR_PLUGIN_CONCURRENCY="3", PLUGVISOR_HOST_IDLE_TIMEOUT_S="0.5")
    daemon_kit.add_version("elastic", "1.0.0", activate=True)
    daemon_kit.start()

    def hosts() -> int:
        pool = daemon_kit.command("status")["result"]["plugins"]["elastic"]["pool"]
        return int(pool["hosts"])

    assert hosts() == 1
    # Each call holds its host for most of the profile's time budget, so the pool must
    # grow to three however slowly hosts spawn here (the wait is on the pool's count).
    threads = [
        threading.Thread(target=lambda: daemon_kit.client().call("elastic", {"sleep": 4.0}))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    daemon_kit.wait_for(lambda: hosts() == 3, 10, "three hosts for three concurrent calls")
    for t in threads:
        t.join(timeout=10)
    daemon_kit.wait_for(lambda: hosts() == 1, 10, "the pool to shrink back to one host")


def test_a_second_daemon_on_the_same_state_dir_is_refused(daemon_kit):
    daemon_kit.add_version("greeter", "1.0.0", activate=True)
    daemon_kit.start()
    second = subprocess.run(
        [str(VENV_BIN / "plugvisor"), "--state-dir", str(daemon_kit.root), "daemon"],
        capture_output=True, text=True, timeout=60, env=daemon_kit.env,
    )  # fmt: skip
    assert second.returncode != 0
    assert "state.daemon_running" in second.stderr
    # The first daemon keeps its socket, pid file and plugins.
    assert daemon_kit.layout.daemon_socket.exists()
    assert int(daemon_kit.layout.daemon_pid.read_text()) == daemon_kit.proc.pid
    assert daemon_kit.client().call("greeter", {})["version"] == "1.0.0"
