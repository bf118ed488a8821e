"""Start-up of a real daemon: dependency order, integrity re-check, violations, SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from plugvisor.core.errors import PlugvisorError

pytestmark = pytest.mark.slow


def _call_code(client, name):
    try:
        client.call(name, {})
    except PlugvisorError as exc:
        return exc.code
    return "ok"


def test_dependencies_order_start_up_and_guard_swaps(daemon_kit):
    kit = daemon_kit
    kit.add_version("base", "1.0.0", activate=True)
    kit.add_version("app", "1.0.0", requires={"base": ">=1.0,<2"}, activate=True)
    kit.add_version("app", "2.0.0", requires={"base": ">=2.0"})
    kit.add_version("base", "2.0.0")
    kit.start()
    client = kit.client()
    assert client.call("app", {})["version"] == "1.0.0"
    status = kit.command("status")["result"]["plugins"]
    assert status["base"]["state"] == status["app"]["state"] == "active"
    # app 2.0.0 needs base >= 2: refused, naming the conflict; nothing changes.
    refused = kit.command("activate", name="app", version="2.0.0")
    assert not refused["ok"] and refused["error"]["code"] == "dependency.conflict"
    assert "base" in refused["error"]["message"]
    # base 2.0.0 would break app 1.0.0's range: refused as well.
    refused = kit.command("activate", name="base", version="2.0.0")
    assert not refused["ok"] and "app" in refused["error"]["message"]
    assert client.call("app", {})["version"] == "1.0.0"
    # A requirement that is disabled at start-up keeps its dependents down.
    assert kit.command("disable", name="base", reason="test")["ok"]
    assert kit.stop() == 0
    kit.start()
    client = kit.client()
    assert _call_code(client, "base") == "plugin.disabled"
    assert _call_code(client, "app") == "plugin.unavailable"
    with pytest.raises(PlugvisorError) as exc:
        client.call("app", {})
    assert "base" in exc.value.message
    # Enabling the requirement brings the dependent up by itself (the monitor retries).
    assert kit.command("enable", name="base")["result"]["outcome"] == "active"
    kit.wait_for(lambda: _call_code(client, "app") == "ok", 15, "app to start after base")


def _tamper(kit, digest, name):
    code = kit.layout.version_dir(digest) / name / "__init__.py"
    os.chmod(code, 0o644)
    code.write_text(code.read_text().replace('"ok"', '"owned"'))
    os.chmod(code, 0o444)


def test_tampered_version_is_never_spawned(daemon_kit):
    kit = daemon_kit
    kit.add_version("victim", "1.0.0", activate=True)
    _tamper(kit, kit.add_version("victim", "2.0.0"), "victim")
    kit.start()
    # A tampered new version only fails its swap; the running version keeps serving.
    refused = kit.command("activate", name="victim", version="2.0.0")
    assert not refused["ok"] and refused["error"]["details"]["cause"] == "state.integrity"
    assert "victim/__init__.py" in refused["error"]["message"]
    assert kit.client().call("victim", {})["version"] == "1.0.0"
    assert kit.stop() == 0
    # A tampered active version is disabled at start-up, never run.
    with kit.registry() as reg:
        digest = reg.get_version("victim", "1.0.0").digest
    _tamper(kit, digest, "victim")
    kit.start()
    client = kit.client()
    with pytest.raises(PlugvisorError) as exc:
        client.call("victim", {})
    assert exc.value.code == "plugin.disabled"
    assert "integrity" in exc.value.message
    with kit.registry() as reg:
        plugin = reg.get_plugin("victim")
    assert plugin.disabled and "victim/__init__.py" in (plugin.disabled_reason or "")


def test_repeated_violations_disable_the_plugin(daemon_kit):
    kit = daemon_kit
    kit.env["PLUGVISOR_VIOLATION_THRESHOLD"] = "3"
    kit.add_version("rogue", "1.0.0", mode="violate", activate=True)
    kit.start()
    client = kit.client()
    codes = [_call_code(client, "rogue") for _ in range(3)]
    assert all(c.startswith("policy.") for c in codes), codes
    kit.wait_for(lambda: _call_code(client, "rogue") == "plugin.disabled", 5, "the disable")
    with kit.registry() as reg:
        plugin = reg.get_plugin("rogue")
    assert plugin.disabled and "violations" in (plugin.disabled_reason or "")
    # Every violation is a line of the hash-chained security log the daemon hands the sandbox.
    lines = [json.loads(x) for x in kit.layout.security_log.read_text().splitlines()]
    assert len([x for x in lines if x["plugin"] == "rogue"]) >= 3


def test_sigterm_drains_calls_in_flight(daemon_kit):
    kit = daemon_kit
    kit.add_version("patient", "1.0.0", activate=True)
    kit.start()
    result = {}
    # The call must still be running when the status poll sees it: it lasts many times
    # what a status round trip takes on this machine now (measured, not assumed), within
    # the default profile's 5 s per request.
    t0 = time.monotonic()
    kit.command("status")
    call_s = min(4.5, max(1.0, 20 * (time.monotonic() - t0)))

    def slow_call():
        try:
            result["value"] = kit.client().call("patient", {"sleep": call_s})
        except PlugvisorError as exc:
            result["error"] = exc.code

    t = threading.Thread(target=slow_call)
    t.start()
    kit.wait_for(
        lambda: (kit.command("status")["result"]["plugins"]["patient"]["pool"] or {}).get("busy"),
        call_s, "the slow call to be in flight",
    )  # fmt: skip
    kit.proc.send_signal(signal.SIGTERM)
    t.join(timeout=call_s + 15)
    assert result.get("value", {}).get("version") == "1.0.0", result
    assert kit.proc.wait(call_s + 15) == 0


def test_start_removes_crash_debris_and_keeps_every_recorded_version(daemon_kit):
    kit = daemon_kit
    live = kit.add_version("tidy", "1.0.0", activate=True)
    waiting = kit.add_version("tidy", "2.0.0", status="review")  # recorded, not active
    layout = kit.layout
    layout.ensure()
    # What a crash mid-install leaves: the install's staging dir, an extraction's temp
    # sibling, and a stored tree whose registry row was never written.
    crashed = layout.staging_dir / ("ab" * 16)
    (crashed / "tidy").mkdir(parents=True)
    partial = layout.staging_dir / f".{'cd' * 16}.x1y2.part"
    partial.mkdir()
    orphan = layout.versions_dir / ("ef" * 32)
    orphan.mkdir()
    (orphan / "plugin.yaml").write_text("name: tidy\n")
    # The API's upload spool is not install debris: an upload waiting for its job stays.
    spool = layout.staging_dir / "uploads"
    spool.mkdir(exist_ok=True)
    (spool / "queued.tar.gz").write_bytes(b"x")

    kit.env["PLUGVISOR_RECOVERY_GRACE_S"] = "0"  # everything above counts as old
    kit.start()

    assert sorted(os.listdir(layout.staging_dir)) == ["uploads"]
    assert (spool / "queued.tar.gz").read_bytes() == b"x"
    assert sorted(os.listdir(layout.versions_dir)) == sorted([live, waiting])
    assert kit.client().call("tidy", {})["version"] == "1.0.0"
    assert "state_recovered" in kit.log_tail(200)


def test_start_spares_fresh_unrecorded_trees(daemon_kit):
    kit = daemon_kit
    kit.add_version("young", "1.0.0", activate=True)
    layout = kit.layout
    fresh = layout.versions_dir / ("01" * 32)  # a worker may be about to record it
    fresh.mkdir(parents=True)
    staged = layout.staging_dir / ("02" * 16)
    staged.mkdir(parents=True)
    kit.start()  # default grace: an hour for trees, five minutes for staging
    assert fresh.is_dir() and staged.is_dir()
