"""Test helpers for the API suites: an app over a throw-away state dir, tokens per role.

Lives in the package (not in a conftest) because pytest's importlib mode keeps test
modules from importing each other; each ``tests/integration/test_api_*.py`` builds its
fixture from :class:`ApiKit` in a few lines.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, make_server

from plugvisor.api.app import create_app, services
from plugvisor.core.archive import pack
from plugvisor.core.config import Settings, load_settings
from plugvisor.core.manifest import parse_plugin_yaml
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry, VersionRecord, VersionStatus
from plugvisor.state.tokens import TOKENS_FILE, Role, TokenStore

__all__ = ["ApiKit", "LiveServer", "UpStack", "free_port", "pack_greeter", "read_until_line"]

#: The demo plugin ``plugvisor up`` installs (a package resource).
GREETER = Path(__file__).resolve().parents[2] / "examples" / "greeter"


@dataclass
class ApiKit:
    """A state directory, the app over it, its test client and one token per role."""

    root: Path
    settings: Settings
    app: Flask
    client: FlaskClient
    tokens: dict[Role, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path | None = None, **overrides: Any) -> ApiKit:
        """Build a kit; ``overrides`` are settings (e.g. ``max_upload_bytes=1024``)."""
        if root is None:
            root = Path(tempfile.mkdtemp(dir="/tmp", prefix="pv-api-"))
            os.chmod(root, 0o755)
        # The daemon's metrics endpoint is off unless a test turns it on: a developer's
        # running daemon must not leak into the assertions.
        values: dict[str, Any] = {"state_dir": str(root), "metrics_port": 0, **overrides}
        settings = load_settings(values, env={})
        app = create_app(settings, {"TESTING": True})
        store = TokenStore(StateLayout(root).root / TOKENS_FILE)
        tokens = {role: store.create(role, f"test-{role.value}") for role in Role}
        return cls(root=root, settings=settings, app=app, client=app.test_client(), tokens=tokens)

    def close(self) -> None:
        services(self.app).close()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.root)

    def registry(self) -> Registry:
        return services(self.app).registry

    def auth(self, role: Role | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Headers with the bearer token of ``role`` (none for ``None``)."""
        out = dict(extra or {})
        if role is not None:
            out["Authorization"] = f"Bearer {self.tokens[role]}"
        return out

    def add_version(
        self,
        name: str,
        version: str,
        status: VersionStatus = VersionStatus.approved,
        *,
        report: Mapping[str, Any] | None = None,
        activate: bool = False,
        keyid: str = "0" * 64,
    ) -> VersionRecord:
        """Record a version in the registry (no code stored: enough for API reads/jobs)."""
        meta = parse_plugin_yaml(
            (
                f"name: {name}\nversion: {version}\napi: 1\nentrypoint: {name}:Plugin\n"
                "profile: default\n"
            ).encode()
        )
        digest = hashlib.sha256(f"{name}-{version}".encode()).hexdigest()
        reg = self.registry()
        record = reg.add_version(meta, digest, keyid, status, report)
        if activate:
            reg.activate(name, version)
            record = reg.get_version(name, version)
        return record


class LiveServer:
    """The app served over real HTTP on 127.0.0.1 (an ephemeral port) in a thread."""

    def __init__(self, app: Flask) -> None:
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pack_greeter(version: str, key: Path, out_dir: Path) -> Path:
    """The demo greeter re-versioned as ``version`` (it answers with it), packed and signed."""
    src = Path(tempfile.mkdtemp(prefix="greeter-src-", dir=out_dir))
    try:
        shutil.copytree(GREETER, src / "greeter", ignore=shutil.ignore_patterns("__pycache__"))
        meta = src / "greeter" / "plugin.yaml"
        meta.write_text(re.sub(r"(?m)^version: .*$", f"version: {version}", meta.read_text()))
        code = src / "greeter" / "greeter" / "__init__.py"
        code.write_text(re.sub(r'(?m)^VERSION = ".*"$', f'VERSION = "{version}"', code.read_text()))
        return pack(src / "greeter", key, out_dir)
    finally:
        shutil.rmtree(src, ignore_errors=True)


@dataclass
class UpStack:
    """``plugvisor --state-dir D up`` as a subprocess on free ports: README command 1.

    :meth:`start` waits for up's final ``ready`` line and reads the URL and the admin
    token from its output; :meth:`stop` sends SIGINT (Ctrl-C) and waits for every child.
    """

    state_dir: Path
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    output: list[str]
    log_path: Path

    @classmethod
    def start(cls, base: Path, timeout: float = 120.0) -> UpStack:
        """Start the stack over ``base/state`` (``base``: traversable by the sandbox user)."""
        state = base / "state"
        log_path = base / "up.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
        env.update(PLUGVISOR_LOG_LEVEL="warning", PLUGVISOR_BROKER_POLLING_INTERVAL="0.01")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "plugvisor", "--state-dir", str(state), "up",
                 "--port", str(free_port()), "--metrics-port", str(free_port())],
                stdout=subprocess.PIPE, stderr=log, env=env,
            )  # fmt: skip
        try:
            lines = read_until_line(proc, "ready", timeout)
        except BaseException:
            _stop(proc)
            raise
        url = token = None
        for line in lines:
            if "API and admin page:" in line:
                url = line.split()[-1].removesuffix("/admin")
            elif "admin token:" in line:
                token = line.split()[-1]
        if url is None or token is None:
            _stop(proc)
            raise AssertionError("up printed no URL or admin token:\n" + "\n".join(lines))
        return cls(state, url, token, proc, lines, log_path)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for CLI subprocesses against this stack (API URL, token, state dir)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
        env.update(
            PLUGVISOR_API_URL=self.url,
            PLUGVISOR_API_TOKEN=self.token,
            PLUGVISOR_STATE_DIR=str(self.state_dir),
            PLUGVISOR_LOG_FORMAT="console",
            **extra,
        )
        return env

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> int:
        """Ctrl-C, as an operator would; the exit code of ``up``."""
        return _stop(self.proc)

    def __enter__(self) -> UpStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_until_line(proc: subprocess.Popen[bytes], want: str, timeout: float) -> list[str]:
    """``proc``'s stdout lines up to the one equal to ``want``; AssertionError at the deadline.

    Reads the raw pipe: ``select`` on a buffered reader misses lines already buffered.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            lines = buf.decode("utf-8", "replace").splitlines()
            if want in (line.strip() for line in lines):
                return lines
        elif proc.poll() is not None:
            break
    raise AssertionError(
        f"no {want!r} line within {timeout} s (exit code {proc.poll()}); output:\n"
        + buf.decode("utf-8", "replace")
    )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode
