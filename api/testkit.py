"""Test helpers for the API suites: an app over a throw-away state dir, tokens per role.

Lives in the package (not in a conftest) because pytest's importlib mode keeps test
modules from importing each other; each ``tests/integration/test_api_*.py`` builds its
fixture from :class:`ApiKit` in a few lines.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, make_server

from plugvisor.api.app import create_app, services
from plugvisor.core.config import Settings, load_settings
from plugvisor.core.manifest import parse_plugin_yaml
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry, VersionRecord, VersionStatus
from plugvisor.state.tokens import TOKENS_FILE, Role, TokenStore

__all__ = ["ApiKit", "LiveServer"]


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
            os.chmod(root, 0o755)  # noqa: S103 -- the sandbox user must traverse to versions/
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
