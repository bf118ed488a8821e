"""Every long-running process refuses to start when its registry or broker is unreachable,
with one line naming the setting (no traceback, no password), and exits non-zero --
under systemd the unit fails visibly and is restarted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile

import pytest

from plugvisor.tests.support.daemonkit import PLUGVISOR


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nobody listens


@pytest.mark.parametrize(
    "argv",
    # config --check: the API unit's ExecStartPre (gunicorn loads the app itself).
    [["daemon"], ["worker"], ["api", "--port", "0"], ["config", "--check"]],
    ids=["daemon", "worker", "api", "config-check"],
)
@pytest.mark.parametrize(
    ("setting", "url", "code"),
    [
        ("database_url", "postgresql://pv:s3cret@127.0.0.1:{port}/pv", "state.database"),
        ("broker_url", "amqp://pv:s3cret@127.0.0.1:{port}/pv", "config.broker_unreachable"),
    ],
)
def test_an_unreachable_dependency_is_refused_at_start_naming_the_setting(
    argv: list[str], setting: str, url: str, code: str
) -> None:
    state = tempfile.mkdtemp(dir="/tmp", prefix="pv-preflight-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
    env.pop("NOTIFY_SOCKET", None)
    env[f"PLUGVISOR_{setting.upper()}"] = url.format(port=_closed_port())
    out = subprocess.run(
        [str(PLUGVISOR), "--state-dir", state, *argv],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode != 0, out
    assert f"error: {code}: {setting} (" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "s3cret" not in out.stderr


def test_config_check_reports_what_it_reached(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
    out = subprocess.run(
        [str(PLUGVISOR), "--state-dir", str(tmp_path), "--json", "config", "--check"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["registry"] == "sqlite (state dir)"
    assert report["broker"].startswith("sqla+sqlite:///")
