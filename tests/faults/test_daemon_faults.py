"""Faults of the daemon and its plugin hosts: kill -9 mid-swap and mid-drain, a host killed
mid-call under load, and wall-clock jumps during watch windows.

``tests/integration/test_daemon_crash.py`` already kills the whole daemon *session* at
several instants of a swap and checks the registry; these kill the daemon process
alone, as ``kill -9 <pid>`` does, so the template and hosts it leaves must exit by
themselves. After each: one active version, the live side rebuilt from it on restart,
calls answered by it, and no process of the dead daemon left running.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import Any

import psutil
import pytest

from plugvisor.core.errors import PlugvisorError
from plugvisor.messaging.commands import Activate
from plugvisor.messaging.control import send_command
from plugvisor.state.registry import VersionStatus
from plugvisor.tests.support.procs import alive, descendants

pytestmark = pytest.mark.slow


def _actives(kit: Any, name: str) -> tuple[str | None, list[str]]:
    with kit.registry() as reg:
        plugin = reg.get_plugin(name)
        listed = [v.version for v in reg.list_versions(name) if v.status is VersionStatus.active]
    return plugin.active_version, listed


def _pool(kit: Any, name: str) -> dict[str, Any]:
    pool = kit.command("status")["result"]["plugins"][name]["pool"]
    return dict(pool or {})


def _quiet_send(kit: Any, name: str, version: str, cid: str) -> None:
    # The daemon dies under this command on purpose: no outcome is expected.
    with contextlib.suppress(PlugvisorError):
        send_command(kit.settings, Activate(name, version), timeout=3, command_id=cid)  # fmt: skip


def _assert_rebuilt(kit: Any, name: str, expect: set[str]) -> str:
    """Restart: one active version in the registry, and calls answered by it."""
    kit.start()
    active, listed = _actives(kit, name)
    assert listed == [active] and active in expect, (active, listed)
    client = kit.client()
    assert {client.call(name, {})["version"] for _ in range(10)} == {active}
    status = kit.command("status")["result"]["plugins"][name]
    assert status["state"] == "active" and status["version"] == active, status
    return str(active)


def test_kill9_daemon_mid_swap_spawn_leaves_no_orphan(daemon_kit: Any, faults: Any) -> None:
    kit = daemon_kit
    kit.add_version("midswap", "1.0.0", activate=True)
    kit.add_version("midswap", "2.0.0", mode="slow_setup")  # setup() takes 0.3 s
    kit.start()
    assert kit.client().call("midswap", {})["version"] == "1.0.0"
    before = descendants(kit.proc.pid)
    cid = uuid.uuid4().hex
    sender = threading.Thread(target=_quiet_send, args=(kit, "midswap", "2.0.0", cid),
                              daemon=True)  # fmt: skip
    sender.start()
    # The instant under test: the new version's host exists and is still in setup().
    new = faults.wait_for(lambda: descendants(kit.proc.pid) - before, 10, "the new version's host")
    left = faults.kill9_daemon_only(kit)
    assert new <= left
    faults.assert_no_orphans(left)
    active = _assert_rebuilt(kit, "midswap", {"1.0.0", "2.0.0"})
    with kit.registry() as reg:
        activated = [e.to_version for e in reg.list_events(plugin="midswap")
                     if e.kind == "activated"]  # fmt: skip
    # The registry commit follows a healthy host: if the kill came first, 2.0.0 never went live.
    assert (active == "2.0.0") == ("2.0.0" in activated), (active, activated)
    sender.join(timeout=10)


def test_kill9_daemon_mid_drain_keeps_the_new_version(daemon_kit: Any, faults: Any) -> None:
    kit = daemon_kit
    kit.add_version("middrain", "1.0.0", activate=True)
    kit.add_version("middrain", "2.0.0")
    kit.start()
    slow: dict[str, Any] = {}

    def slow_call() -> None:
        try:
            slow["value"] = kit.client(timeout=30).call("middrain", {"sleep": 4})
        except PlugvisorError as exc:
            slow["error"] = exc.code

    caller = threading.Thread(target=slow_call, daemon=True)
    caller.start()
    faults.wait_for(lambda: _pool(kit, "middrain").get("busy"), 10, "the slow call on 1.0.0")
    old_hosts = set(_pool(kit, "middrain")["pids"])
    outcome = kit.command("activate", name="middrain", version="2.0.0")
    assert outcome["ok"] and outcome["result"]["outcome"] == "swapped", outcome
    # 1.0.0's pool is draining now: its host is still busy with the 4 s call.
    assert alive(old_hosts) == old_hosts and caller.is_alive()
    assert set(_pool(kit, "middrain")["pids"]).isdisjoint(old_hosts)
    left = faults.kill9_daemon_only(kit)
    assert old_hosts <= left
    caller.join(timeout=15)
    assert not caller.is_alive(), "the in-flight caller hung after the daemon died"
    # The caller learns its call is lost (no answer can come from a dead daemon).
    assert slow.get("error") in {"plugin.unavailable", "plugin.crashed"}, slow
    faults.assert_no_orphans(left)
    assert _assert_rebuilt(kit, "middrain", {"2.0.0"}) == "2.0.0"


def test_host_killed_mid_call_under_load_fails_only_that_call(daemon_kit: Any, faults: Any) -> None:
    kit = daemon_kit
    kit.add_version("solid", "1.0.0", activate=True)
    kit.start()
    kit.client().call("solid", {})
    faults.wait_for(lambda: len(_pool(kit, "solid").get("pids", [])) == 1, 10, "one warm host")
    slow: dict[str, Any] = {}

    def slow_call() -> None:
        try:
            slow["value"] = kit.client().call("solid", {"sleep": 10})
        except PlugvisorError as exc:
            slow["error"] = exc.code

    caller = threading.Thread(target=slow_call, daemon=True)
    caller.start()
    faults.wait_for(lambda: _pool(kit, "solid").get("busy") == 1, 10, "the slow call")
    victim = _pool(kit, "solid")["pids"][0]
    stop = threading.Event()
    ok: list[int] = []
    failures: list[str] = []

    def load() -> None:
        client = kit.client()
        while not stop.is_set():
            try:
                client.call("solid", {})
                ok.append(1)
            except PlugvisorError as exc:
                failures.append(exc.code)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    faults.wait_for(lambda: len(ok) > 50, 10, "calls on other hosts while one is busy")
    psutil.Process(victim).kill()
    caller.join(timeout=15)
    done = len(ok)
    faults.wait_for(lambda: len(ok) > done + 50, 10, "calls after the kill")
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert slow == {"error": "plugin.crashed"}
    assert failures == []  # the other callers never noticed
    assert not alive({victim})  # reaped by the daemon, no zombie
    pids = _pool(kit, "solid")["pids"]
    assert victim not in pids and pids
    assert kit.client().call("solid", {})["version"] == "1.0.0"


# ---- clock jumps -------------------------------------------------------------------------------


def _event_times(kit: Any) -> list[float]:
    from plugvisor.messaging.control import fetch_events  # noqa: PLC0415

    return [float(e["time"]) for e in fetch_events(kit.settings, limit=1000, timeout=0.5)
            if "time" in e]  # fmt: skip


def test_wall_clock_jump_forward_does_not_end_a_watch_window(
    daemon_kit: Any, fake_clock: Any, faults: Any
) -> None:
    kit = daemon_kit
    kit.env["PLUGVISOR_WATCH_WINDOW_S"] = "60"
    kit.add_version("leap", "1.0.0", activate=True)
    kit.add_version("leap", "2.0.0", mode="error")
    kit.start()
    client = kit.client()
    assert client.call("leap", {})["version"] == "1.0.0"
    _event_times(kit)  # drain the start-up events
    outcome = kit.command("activate", name="leap", version="2.0.0")
    assert outcome["ok"], outcome
    fake_clock.jump(+86400.0)  # a day forward: a wall-clock window would be over
    errors = 0

    def back_on_v1() -> bool:
        nonlocal errors
        try:
            return bool(client.call("leap", {})["version"] == "1.0.0")
        except PlugvisorError as exc:
            assert exc.code == "plugin.error", exc
            errors += 1
            return False

    faults.wait_for(back_on_v1, 15, "the automatic rollback despite the clock jump")
    assert errors >= 3  # the fixture's watch_error_threshold
    assert _actives(kit, "leap") == ("1.0.0", ["1.0.0"])
    times = _event_times(kit)
    assert times and max(times) > time.time() + 86400 - 600, times  # the daemon saw the jump


def test_wall_clock_jump_backward_does_not_reopen_a_watch_window(
    daemon_kit: Any, fake_clock: Any, faults: Any
) -> None:
    kit = daemon_kit
    kit.env["PLUGVISOR_WATCH_WINDOW_S"] = "1.5"
    kit.add_version("lapse", "1.0.0", activate=True)
    kit.add_version("lapse", "2.0.0", mode="error")
    kit.start()
    client = kit.client()
    outcome = kit.command("activate", name="lapse", version="2.0.0")
    assert outcome["ok"], outcome
    fake_clock.jump(-3600.0)  # an hour back inside the window: wall-clock arithmetic would
    # stretch the window by an hour and the errors below would roll 2.0.0 back.

    def window_over() -> bool:
        watch = kit.command("status")["result"]["plugins"]["lapse"]["watch"]
        return watch is None or watch["remaining_s"] == 0

    faults.wait_for(window_over, 10, "the watch window to end (monotonic)")
    for _ in range(6):  # twice the threshold, all after the window
        with pytest.raises(PlugvisorError) as exc:
            client.call("lapse", {})
        assert exc.value.code == "plugin.error"
    assert _actives(kit, "lapse") == ("2.0.0", ["2.0.0"])
    with kit.registry() as reg:
        kinds = [e.kind for e in reg.list_events(plugin="lapse")]
    assert "auto_rollback" not in kinds, kinds
    times = _event_times(kit)
    assert times and min(times) < time.time() - 3000, times  # the daemon saw the jump
