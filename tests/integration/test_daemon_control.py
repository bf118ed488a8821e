"""The kombu control plane of a real daemon, on the embedded SQLite broker and on RabbitMQ."""

from __future__ import annotations

import pytest

from plugvisor.core.errors import PluginRuntimeError, PlugvisorError
from plugvisor.messaging.commands import Disable, Status
from plugvisor.messaging.control import broadcast_command, fetch_events, send_command

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def broker_kit(request, daemon_kit):
    if request.param == "rabbitmq":
        url = request.getfixturevalue("rabbitmq_url")
        daemon_kit.env["PLUGVISOR_BROKER_URL"] = url
    return daemon_kit


def test_commands_are_applied_recorded_and_answered(broker_kit):
    kit = broker_kit
    kit.add_version("ctl", "1.0.0", activate=True)
    kit.add_version("ctl", "1.1.0")
    kit.add_version("fresh", "0.1.0")  # approved, never activated
    kit.start()
    client = kit.client()
    with pytest.raises(PluginRuntimeError) as exc:
        client.call("fresh", {})
    assert exc.value.code == "plugin.not_found"
    first_activation = kit.command("activate", name="fresh", version="0.1.0")
    assert first_activation["ok"] and first_activation["result"]["from"] is None
    assert client.call("fresh", {})["version"] == "0.1.0"

    status = kit.command("status")
    assert status["ok"] and status["result"]["plugins"]["ctl"]["state"] == "active"

    swapped = kit.command("activate", name="ctl", version="1.1.0")
    assert swapped["ok"] and swapped["result"]["to"] == "1.1.0", swapped
    assert client.call("ctl", {})["version"] == "1.1.0"

    # A repeated command id is answered from the record, not applied twice.
    first = send_command(
        kit.settings,
        Disable("ctl", "maintenance"),
        timeout=30,
        command_id="fixed-id-1",
    )
    again = send_command(
        kit.settings,
        Disable("ctl", "maintenance"),
        timeout=30,
        command_id="fixed-id-1",
    )
    assert first == again and first["ok"] and first["result"]["outcome"] == "disabled"
    with pytest.raises(PluginRuntimeError) as exc:
        client.call("ctl", {})
    assert exc.value.code == "plugin.disabled"
    assert "maintenance" in exc.value.message
    with kit.registry() as reg:
        assert reg.get_command("fixed-id-1", kit.settings.host).outcome == first
        disabled = [e for e in reg.list_events(plugin="ctl") if e.kind == "disabled"]
    assert len(disabled) == 1

    enabled = kit.command("enable", name="ctl")
    assert enabled["ok"] and enabled["result"]["outcome"] == "active"
    assert client.call("ctl", {})["version"] == "1.1.0"

    rolled = kit.command("rollback", name="ctl")
    assert rolled["ok"] and rolled["result"]["to"] == "1.0.0", rolled
    assert client.call("ctl", {})["version"] == "1.0.0"

    bad = kit.command("activate", name="ctl", version="9.9.9")
    assert not bad["ok"] and bad["error"]["code"] == "not_found.version"
    missing = kit.command("activate", name="ctl")
    assert not missing["ok"] and missing["error"]["code"] == "request.missing_field"

    events = fetch_events(kit.settings, limit=50, timeout=1.0)
    seen = [(e["kind"], e.get("from"), e.get("to")) for e in events if e["plugin"] == "ctl"]
    assert ("swapped", "1.0.0", "1.1.0") in seen
    assert ("swapped", "1.1.0", "1.0.0") in seen
    assert any(kind == "disabled" for kind, _, _ in seen)


def test_a_command_the_sender_gave_up_on_is_never_applied(daemon_kit):
    kit = daemon_kit
    kit.add_version("late", "1.0.0", activate=True)
    kit.start()
    assert kit.command("status")["ok"]  # the control queue exists
    assert kit.stop() == 0
    with pytest.raises(PlugvisorError) as exc:
        send_command(kit.settings, Disable("late", "x"), timeout=1,
                     command_id="late-1")  # fmt: skip
    assert exc.value.code == "job.timeout"
    kit.start()
    # The expired command was dropped; a re-send with the same id is applied normally.
    assert kit.client().call("late", {})["version"] == "1.0.0"
    again = send_command(kit.settings, Disable("late", "x"), timeout=30,
                         command_id="late-1")  # fmt: skip
    assert again["ok"] and again["result"]["outcome"] == "disabled"


def test_commands_address_one_host_a_list_or_all(broker_kit):
    kit = broker_kit
    kit.env["PLUGVISOR_HOST_ID"] = "web-1"
    kit.add_version("addr", "1.0.0", activate=True)
    kit.start()
    settings = kit.settings
    # All hosts: one publish routed by "all", answered by each host the registry has up.
    everyone = broadcast_command(settings, Status(), timeout=30, command_id="all-1")
    assert list(everyone) == ["web-1"] and everyone["web-1"]["ok"]
    assert everyone["web-1"]["host"] == "web-1"
    # A list: each host its own copy; a host nobody runs answers nothing and is reported.
    listed = broadcast_command(settings, Status(), hosts=["web-1", "web-9"], timeout=3,
                               command_id="list-1")  # fmt: skip
    assert listed["web-1"]["ok"] and "addr" in listed["web-1"]["result"]["plugins"]
    assert listed["web-9"]["ok"] is False
    assert listed["web-9"]["error"]["code"] == "job.timeout"
    assert "web-9" in listed["web-9"]["error"]["message"]
    # One host, by id; another host's id is not this daemon's command.
    assert send_command(settings, Status(), timeout=30, host="web-1")["host"] == "web-1"
    with pytest.raises(PlugvisorError) as exc:
        send_command(settings, Disable("addr", "x"), timeout=2, host="web-2")
    assert exc.value.code == "job.timeout" and "web-2" in exc.value.message
    assert kit.client().call("addr", {})["version"] == "1.0.0"  # web-2's disable never ran here
    with kit.registry() as reg:  # recorded per (command id, host)
        assert reg.get_command("list-1", "web-1").outcome["ok"]
        with pytest.raises(PlugvisorError):
            reg.get_command("list-1", "web-9")
