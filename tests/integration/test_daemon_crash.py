"""Crash safety of a real daemon: kill -9 mid-swap, crashed hosts, crash loops, SIGHUP."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid

import pytest

from plugvisor.core.errors import PlugvisorError
from plugvisor.messaging.commands import Activate
from plugvisor.messaging.control import send_command
from plugvisor.state.registry import VersionStatus

pytestmark = pytest.mark.slow


def _pids(kit, name):
    status = kit.command("status")
    pool = status["result"]["plugins"][name]["pool"]
    return pool["pids"] if pool else []


def test_kill9_mid_swap_leaves_one_active_version(daemon_kit):
    kit = daemon_kit
    kit.add_version("sturdy", "1.0.0", mode="slow_setup", activate=True)
    kit.add_version("sturdy", "2.0.0", mode="slow_setup")
    # Kill at several instants of the swap: before the spawn, during setup(), around
    # the registry commit and the flip.
    for delay in (0.0, 0.15, 0.3, 0.45, 0.6):
        kit.start()
        with kit.registry() as reg:
            active = reg.get_plugin("sturdy").active_version
        target = "2.0.0" if active == "1.0.0" else "1.0.0"
        cid = uuid.uuid4().hex
        sender = threading.Thread(
            target=lambda c=cid, t=target: _quiet_send(kit, t, c), daemon=True
        )
        sender.start()
        with kit.registry() as reg:
            kit.wait_for(
                lambda c=cid: _recorded(reg, c, kit.settings.host), 10, "the command to be recorded"
            )
        time.sleep(delay)  # the instant of the kill is the variable under test
        kit.kill9()
        kit.start()
        with kit.registry() as reg:
            plugin = reg.get_plugin("sturdy")
            actives = [
                v.version for v in reg.list_versions("sturdy") if v.status is VersionStatus.active
            ]
        assert actives == [plugin.active_version], (delay, actives)
        client = kit.client()
        assert client.call("sturdy", {})["version"] == plugin.active_version
        assert kit.stop() == 0
        sender.join(timeout=5)


def _recorded(reg, cid, host):
    try:
        reg.get_command(cid, host)
    except PlugvisorError:
        return False
    return True


def _quiet_send(kit, version, cid):
    # The daemon is killed under this command on purpose: no outcome is expected.
    with contextlib.suppress(PlugvisorError):
        send_command(
            kit.settings, Activate("sturdy", version), timeout=3, command_id=cid,
        )  # fmt: skip


def test_crashed_hosts_are_replaced_and_a_crash_loop_disables(daemon_kit):
    kit = daemon_kit
    kit.env["PLUGVISOR_CRASH_THRESHOLD"] = "4"
    kit.env["PLUGVISOR_CRASH_WINDOW_S"] = "60"
    kit.add_version("fragile", "1.0.0", activate=True)
    kit.start()
    client = kit.client()
    assert client.call("fragile", {})["version"] == "1.0.0"

    # Death mid-call: the caller gets plugin.crashed, the next call a fresh host.
    results = {}

    def slow_call():
        try:
            results["value"] = kit.client().call("fragile", {"sleep": 5})
        except PlugvisorError as exc:
            results["error"] = exc.code

    t = threading.Thread(target=slow_call)
    t.start()
    busy = kit.wait_for(lambda: _busy_pid(kit, "fragile"), 5, "a busy host")
    os.kill(busy, signal.SIGKILL)
    t.join(timeout=10)
    assert results == {"error": "plugin.crashed"}
    assert kit.wait_for(lambda: _call_ok(client, "fragile"), 10, "a replacement host")

    # Death outside a call, again and again: disabled with the reason.
    def crash_until_disabled():
        status = kit.command("status")["result"]["plugins"]["fragile"]
        if status["state"] == "disabled":
            return status
        for pid in (status["pool"] or {}).get("pids", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return None

    status = kit.wait_for(crash_until_disabled, 30, "the crash loop to disable", interval=0.05)
    assert "crashed" in status["reason"]
    with pytest.raises(PlugvisorError) as exc:
        client.call("fragile", {})
    assert exc.value.code == "plugin.disabled"
    with kit.registry() as reg:
        plugin = reg.get_plugin("fragile")
    assert plugin.disabled and "crashed" in (plugin.disabled_reason or "")

    enabled = kit.command("enable", name="fragile")
    assert enabled["ok"] and enabled["result"]["outcome"] == "active", enabled
    assert client.call("fragile", {})["version"] == "1.0.0"


def _busy_pid(kit, name):
    pool = kit.command("status")["result"]["plugins"][name]["pool"]
    if pool and pool["busy"]:
        # The busy host is the one not answering quick calls: the newest pid is idle-spawned.
        return pool["pids"][0] if len(pool["pids"]) == 1 else None
    return None


def _call_ok(client, name):
    try:
        return client.call(name, {})["version"] == "1.0.0"
    except PlugvisorError:
        return False


def test_sighup_reloads_and_sigterm_cleans_up(daemon_kit):
    kit = daemon_kit
    kit.add_version("calm", "1.0.0", activate=True)
    kit.start()
    client = kit.client()
    assert client.call("calm", {})["version"] == "1.0.0"
    kit.proc.send_signal(signal.SIGHUP)
    kit.wait_for(lambda: "settings_reloaded" in kit.log_path.read_text(), 5, "the reload")
    assert client.call("calm", {})["version"] == "1.0.0"
    pid_file = kit.layout.daemon_pid
    assert int(pid_file.read_text()) == kit.proc.pid
    assert kit.stop() == 0
    assert not pid_file.exists() and not kit.layout.daemon_socket.exists()
