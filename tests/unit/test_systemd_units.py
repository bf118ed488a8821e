"""The shipped systemd units pass ``systemd-analyze verify`` and keep their hardening."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
ANALYZE = shutil.which("systemd-analyze") or ""

needs_analyze = pytest.mark.skipif(
    not ANALYZE, reason="SKIPPED LOUDLY: systemd-analyze (Debian package systemd) is missing"
)


def _installed_copy(tmp_path: Path) -> Path:
    """Units rewritten to point at this checkout's venv (verify checks ExecStart exists)."""
    venv_bin = Path(sys.executable).parent
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS.iterdir():
        if unit.suffix in (".service", ".target"):
            text = unit.read_text().replace("/opt/plugvisor/.venv/bin", str(venv_bin))
            (out / unit.name).write_text(text)
    return out


@needs_analyze
def test_units_verify(tmp_path: Path) -> None:
    units = _installed_copy(tmp_path)
    names = [
        "plugvisor-daemon.service",
        "plugvisor-worker@1.service",
        "plugvisor-api.service",
        "plugvisor.target",
    ]
    if not (units / "plugvisor-worker@1.service").exists():
        shutil.copy(units / "plugvisor-worker@.service", units / "plugvisor-worker@1.service")
    proc = subprocess.run(
        [ANALYZE, "verify", "--man=no", *names],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 even for unknown keys and only warns on stderr: any output fails.
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@needs_analyze
@pytest.mark.parametrize("unit", ["plugvisor-daemon.service", "plugvisor-api.service"])
def test_units_are_hardened(tmp_path: Path, unit: str) -> None:
    units = _installed_copy(tmp_path)
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", unit],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
    )
    last = proc.stdout.strip().splitlines()[-1]
    # "Overall exposure level for X: 1.7 OK" -- lower is safer; 10 is unprotected.
    exposure = float(last.split(":")[1].split()[0])
    assert exposure <= 5.0, last


def test_daemon_unit_contract() -> None:
    text = (UNITS / "plugvisor-daemon.service").read_text()
    for needle in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/plugvisor",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=",
        "User=plugvisor",
    ):
        assert needle in text, needle
    assert "plugvisor-plugin" in (UNITS / "plugvisor.sysusers.conf").read_text()


def _api_exec_start() -> list[str]:
    text = (UNITS / "plugvisor-api.service").read_text()
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_api_unit_puts_gunicorn_control_socket_in_its_runtime_dir() -> None:
    """gunicorn >= 25.1's control socket defaults under $HOME: read-only with this hardening."""
    text = (UNITS / "plugvisor-api.service").read_text()
    argv = _api_exec_start()
    assert "RuntimeDirectory=plugvisor-api" in text
    sock = argv[argv.index("--control-socket") + 1]
    assert sock.startswith("/run/plugvisor-api/"), sock
    assert argv[argv.index("--control-socket-mode") + 1] == "0600"


def test_api_unit_command_line_runs_and_makes_the_control_socket(tmp_path: Path) -> None:
    """The unit's ExecStart, paths moved under tmp_path, starts and binds its control socket."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    home = tmp_path / "home"
    home.mkdir(mode=0o500)  # like the unit: nothing may be created under $HOME
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        a.replace("/opt/plugvisor/.venv/bin", str(Path(sys.executable).parent))
        .replace("/run/plugvisor-api", str(run_dir))
        .replace("127.0.0.1:8470", f"127.0.0.1:{port}")
        for a in _api_exec_start()
    ]
    argv[argv.index("--workers") + 1] = "1"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGVISOR_", "XDG_"))}
    env.update(HOME=str(home), PLUGVISOR_STATE_DIR=str(tmp_path / "state"))
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    sock = run_dir / "gunicorn.ctl"
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no control socket:\n{log.read_text()}"
            time.sleep(0.05)
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert not (home / ".gunicorn").exists()
        assert "Failed to start control socket" not in log.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
