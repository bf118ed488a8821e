"""Fixtures of the sandbox suites: one template per session, a host per test, the security log.

The state directory lives under ``/tmp`` with mode 0o755 (not in pytest's ``tmp_path``,
whose 0o700 parent the unprivileged sandbox user cannot traverse). Plugin code is copied
from ``tests/sandbox/plugins/<name>/`` into ``versions/<digest>/`` with the version store's
read-only modes, so a hostile plugin can never damage the checked-in files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from plugvisor.core.config import Settings, load_settings
from plugvisor.core.errors import PlugvisorError
from plugvisor.core.profile import SecurityProfile, load_profile
from plugvisor.state.layout import StateLayout

# Missing modules make every test skip loudly, naming the module, instead of erroring.
_IMPORT_ERRORS: list[str] = []
try:
    from plugvisor.sandbox import HostSpec, Spawner, detect_layers
except ImportError as exc:
    _IMPORT_ERRORS.append(f"plugvisor.sandbox (HostSpec/Spawner) missing: {exc}")
try:
    from plugvisor.state.security_log import SecurityLog
except ImportError as exc:
    _IMPORT_ERRORS.append(f"plugvisor.state.security_log (SecurityLog) missing: {exc}")

PLUGINS_DIR = Path(__file__).parent / "plugins"
#: The request the benign control plugin gets, and what it must answer.
ECHO_REQUEST: dict[str, Any] = {"probe": [1, "two", {"three": 3.5}], "none": None}
ECHO_ANSWER: dict[str, Any] = {"echo": ECHO_REQUEST, "type": "dict"}


def _require_sandbox() -> None:
    if _IMPORT_ERRORS:
        pytest.skip("; ".join(_IMPORT_ERRORS))


def _mkdtemp(mode: int, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix=prefix))
    os.chmod(path, mode)  # explicit: mkdtemp creates 0o700
    return path


@dataclasses.dataclass
class SandboxKit:
    """Spawns hosts for the plugins under ``tests/sandbox/plugins`` and checks from outside."""

    settings: Settings
    layout: StateLayout
    spawner: Any
    security_log: Any
    #: True when ``spawner`` runs the OS layers alone (no audit hook, no import policy).
    os_only: bool = False
    hosts: list[Any] = dataclasses.field(default_factory=list)
    scratch: list[Path] = dataclasses.field(default_factory=list)

    # ---- building hosts ------------------------------------------------------------
    def profile(self, **changes: Any) -> SecurityProfile:
        """The ``default`` profile, optionally with some limits replaced (tighter budgets)."""
        base = load_profile("default", self.settings)
        return dataclasses.replace(base, **changes) if changes else base

    def code_dir(self, name: str, *, writable: bool = False) -> Path:
        """A fresh copy of plugin ``name`` in ``versions/``; read-only unless ``writable``.

        ``writable`` makes every file 0o666 and directory 0o777, so that only the sandbox,
        not file permissions, stands between a hostile plugin and its own code.
        """
        digest = hashlib.sha256(f"{name}:{uuid.uuid4()}".encode()).hexdigest()
        dest: Path = self.layout.versions_dir / digest
        shutil.copytree(PLUGINS_DIR / name, dest, ignore=shutil.ignore_patterns("__pycache__"))
        file_mode, dir_mode = (0o666, 0o777) if writable else (0o444, 0o555)
        for path in sorted(dest.rglob("*"), reverse=True):
            os.chmod(path, dir_mode if path.is_dir() else file_mode)
        os.chmod(dest, dir_mode)
        return dest

    def spec(
        self,
        name: str,
        *,
        profile: SecurityProfile | None = None,
        code_dir: Path | None = None,
    ) -> Any:
        """The HostSpec of plugin ``name`` as the daemon would build it."""
        meta = yaml.safe_load((PLUGINS_DIR / name / "plugin.yaml").read_text(encoding="utf-8"))
        self.layout.ensure_plugin_data(name)
        return HostSpec(
            plugin=name,
            version=str(meta["version"]),
            code_dir=code_dir or self.code_dir(name),
            entrypoint=meta["entrypoint"],
            profile=profile or self.profile(),
            data_dir=self.layout.plugin_files_dir(name),
            db_path=self.layout.plugin_db(name),
            config=dict(meta.get("config") or {}),
            max_response_bytes=self.settings.max_response_bytes,
        )

    def spawn(
        self,
        name: str,
        *,
        profile: SecurityProfile | None = None,
        code_dir: Path | None = None,
        spawner: Any = None,
    ) -> Any:
        """Spawn a host for plugin ``name``; it is stopped when the test ends."""
        spec = self.spec(name, profile=profile, code_dir=code_dir)
        host = (spawner or self.spawner).spawn(spec, timeout=10.0)
        self.hosts.append(host)
        return host

    # ---- calling -------------------------------------------------------------------
    def call_error(
        self,
        host: Any,
        request: Any,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> PlugvisorError:
        """The error a call raises; fails the test when the call succeeds."""
        try:
            result = host.call(request, request_id=request_id, timeout=timeout)
        except PlugvisorError as exc:
            return exc
        except Exception as exc:  # anything untyped is a defect of the call path
            pytest.fail(
                f"{host.spec.plugin}: the call raised {type(exc).__name__}: {exc} "
                "instead of a typed plugvisor error"
            )
        shown = repr(result)
        pytest.fail(f"{host.spec.plugin}: the call succeeded with {shown[:300]}; expected an error")

    def assert_benign_still_works(self) -> None:
        """A fresh benign host of the same spawner answers exactly."""
        host = self.spawn("ok_echo")
        assert host.call(ECHO_REQUEST, timeout=10.0) == ECHO_ANSWER
        host.stop()

    # ---- looking from outside ------------------------------------------------------
    def security_lines(self) -> list[dict[str, Any]]:
        """Every line of the security log, parsed (read as a file, not through the API)."""
        path = self.layout.security_log
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def wait_for_violation(self, request_id: str, timeout: float = 3.0) -> dict[str, Any] | None:
        """The security-log line of ``request_id``, waiting up to ``timeout`` for it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.security_lines():
                if line.get("request_id") == request_id:
                    return line
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def scratch_dir(self, mode: int = 0o777) -> Path:
        """A directory under /tmp with ``mode`` (0o777: the sandbox user could write there)."""
        path = _mkdtemp(mode, "pv-scratch-")
        self.scratch.append(path)
        return path

    def layers(self) -> Any:
        return detect_layers()

    def layer_available(self, layer: str) -> bool:
        """Whether ``detect_layers()`` reports ``layer`` (e.g. ``landlock``) as available."""
        report = detect_layers()
        return layer in report and bool(report[layer].available)

    def stop_all(self) -> None:
        for host in self.hosts:
            host.stop()
        self.hosts.clear()
        for path in self.scratch:
            shutil.rmtree(path, ignore_errors=True)
        self.scratch.clear()


@pytest.fixture(scope="session")
def sandbox_state_dir() -> Iterator[Path]:
    """A state directory the sandbox user can traverse (0o755, under /tmp)."""
    path = _mkdtemp(0o755, "pv-sandbox-state-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox_settings(sandbox_state_dir: Path) -> Settings:
    # env={}: the suite must not pick up an operator's PLUGVISOR_* variables.
    return load_settings({"state_dir": str(sandbox_state_dir)}, env={})


@pytest.fixture(scope="session")
def sandbox_layout(sandbox_settings: Settings) -> StateLayout:
    return StateLayout(sandbox_settings.state_dir).ensure()


@pytest.fixture(scope="session")
def security_log(sandbox_layout: StateLayout) -> Any:
    _require_sandbox()
    return SecurityLog(sandbox_layout.security_log)


@pytest.fixture(scope="session")
def make_spawner(sandbox_settings: Settings, security_log: Any) -> Iterator[Callable[..., Any]]:
    """Starts extra spawners (templates) on demand; all are closed at the end of the session.

    Keyword arguments go to ``Spawner`` (``in_process_policy=False``: OS layers only).
    """
    started: list[Any] = []

    def make(**kwargs: Any) -> Any:
        spawner = Spawner(sandbox_settings, security_log=security_log, **kwargs)
        started.append(spawner)
        spawner.start()
        return spawner

    yield make
    for spawner in started:
        spawner.close()


@pytest.fixture(scope="session")
def spawner(make_spawner: Callable[..., Any]) -> Any:
    """The session's template process, shared by every test."""
    return make_spawner()


@pytest.fixture(scope="session")
def os_only_spawner(make_spawner: Callable[..., Any]) -> Any:
    """A template whose hosts run with the OS layers alone (no in-process policy).

    Attacks are run against it too: the in-process policy stops most of them at the
    import, so only this shows that the kernel layers would stop what gets past it.
    """
    return make_spawner(in_process_policy=False)


@pytest.fixture
def kit(
    sandbox_settings: Settings,
    sandbox_layout: StateLayout,
    spawner: Any,
    security_log: Any,
) -> Iterator[SandboxKit]:
    """Spawn hosts for named plugin dirs; stops them (and removes scratch dirs) after the test."""
    k = SandboxKit(sandbox_settings, sandbox_layout, spawner, security_log)
    yield k
    k.stop_all()
