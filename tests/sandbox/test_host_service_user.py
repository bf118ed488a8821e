"""Production identity: a daemon running as a service user, not root, still confines plugins.

The systemd units run the daemon and workers as ``plugvisor`` with the ambient
capabilities CAP_SETUID/CAP_SETGID (and a few more), never as root. Such a process
keeps its capabilities across ``setresuid`` (only leaving uid 0 clears them), so the
lock-down must clear them itself. This test starts the real spawner under ``setpriv``
as an unprivileged user holding exactly the unit's capabilities and checks the plugin
process from outside: it runs as the sandbox user with every capability set empty.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SETPRIV = shutil.which("setpriv")
SERVICE_USER = "daemon"  # uid 1 on Debian: any unprivileged account that is not the sandbox user
UNIT_CAPS = "+setuid,+setgid,+sys_admin,+kill,+chown,+fowner"

SCRIPT = r"""
import json, sys
from pathlib import Path
from plugvisor.core.config import load_settings
from plugvisor.core.profile import load_profile
from plugvisor.sandbox import HostSpec, Spawner, detect_layers

state = Path(sys.argv[1])
settings = load_settings({"state_dir": str(state)}, env={})
spawner = Spawner(settings)
spawner.start()
try:
    host = spawner.spawn(HostSpec(
        plugin="echo", version="0.0.0", code_dir=state / "code", entrypoint="echo:Plugin",
        profile=load_profile("default", settings), data_dir=state / "data",
        db_path=state / "db.sqlite", config={}, max_response_bytes=1 << 20,
    ), timeout=20)
    answer = host.call({"x": 1})
    status = {}
    for line in Path(f"/proc/{host.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "CapEff", "CapPrm", "CapInh", "CapAmb", "NoNewPrivs", "Seccomp"):
            status[key] = value.split()
    print(json.dumps({"answer": answer, "status": status,
                      "privileges": detect_layers(settings.sandbox_user)["privileges"].active}))
    host.stop()
finally:
    spawner.close()
"""


def _service_ids() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pytest.skip(f"SKIPPED LOUDLY: no {SERVICE_USER!r} account to act as the service user")
    return pw.pw_uid, pw.pw_gid


@pytest.mark.skipif(os.geteuid() != 0, reason="SKIPPED LOUDLY: needs root to start setpriv")
@pytest.mark.skipif(SETPRIV is None, reason="SKIPPED LOUDLY: setpriv (util-linux) missing")
def test_service_user_with_ambient_caps_drops_plugins_to_the_sandbox_user() -> None:
    uid, gid = _service_ids()
    base = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    readable = subprocess.run(
        [*base, sys.executable, "-c", "import plugvisor.sandbox"],
        capture_output=True,
        timeout=60,
    )
    if readable.returncode != 0:
        pytest.skip(
            "SKIPPED LOUDLY: the service user cannot import plugvisor from this checkout "
            f"(a parent directory is private): {readable.stderr.decode()[-200:]}"
        )
    state = Path(tempfile.mkdtemp(prefix="pv-svc-", dir="/tmp"))
    try:
        code = state / "code"
        (code / "echo").mkdir(parents=True)
        (code / "plugin.yaml").write_text("name: echo\nversion: 0.0.0\n")
        (code / "echo" / "__init__.py").write_text(
            "class Plugin:\n    def handle(self, request):\n        return request\n"
        )
        (state / "data").mkdir()
        for path in (state, code, code / "echo", state / "data"):
            path.chmod(0o755)
            os.chown(path, uid, gid)
        proc = subprocess.run(
            [
                *base,
                f"--inh-caps={UNIT_CAPS}",
                f"--ambient-caps={UNIT_CAPS}",
                sys.executable,
                "-c",
                SCRIPT,
                str(state),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(state, ignore_errors=True)

    nobody = pwd.getpwnam("nobody")
    status = report["status"]
    assert report["answer"] == {"x": 1}
    assert report["privileges"] is True
    assert status["Uid"] == [str(nobody.pw_uid)] * 4
    assert status["Gid"] == [str(nobody.pw_gid)] * 4
    for caps in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(status[caps][0], 16) == 0, f"{caps} still {status[caps][0]}"
    assert status["NoNewPrivs"] == ["1"]
    assert status["Seccomp"] == ["2"]
