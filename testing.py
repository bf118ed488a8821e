"""Helpers for tests and benchmarks: plugin versions built on the fly, a daemon subprocess.

``store_test_version`` puts a version into a state directory the way an install does
(plugin.yaml + package + MANIFEST.json, stored read-only under ``versions/<digest>/``,
recorded ``approved`` in the registry) without the archive and signature steps, so
suites about the daemon do not depend on packing. ``VERSIONED_PLUGIN`` is a small
plugin whose answer names its version and whose ``MODE`` selects a behaviour.

It is also a pytest plugin for plugin authors (entry point ``pytest11``, loaded by any
pytest run where plugvisor is installed): the ``sandboxed_plugin`` fixture runs a plugin
directory in the real sandbox under its profile, and the errors a call raises are
exported here::

    from plugvisor.testing import BudgetExceeded

    def test_answer(sandboxed_plugin):
        assert sandboxed_plugin(PLUGIN_DIR).call({"name": "Ada"}) == {...}
        with pytest.raises(BudgetExceeded):
            sandboxed_plugin(PLUGIN_DIR).call({"huge": True})
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugvisor.core.errors import (
    BudgetExceeded,
    NotFoundError,
    PluginRuntimeError,
    PolicyViolation,
)
from plugvisor.core.manifest import canonical_json, parse_plugin_yaml
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry, VersionStatus
from plugvisor.state.store import VersionStore

try:
    import pytest
except ImportError:  # an install without the dev extra: the helpers work, no fixture
    pytest = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from plugvisor.devkit import DevSandbox

__all__ = [
    "VERSIONED_PLUGIN",
    "BudgetExceeded",
    "PluginRuntimeError",
    "PolicyViolation",
    "SandboxedPluginFactory",
    "sandboxed_plugin",
    "store_test_version",
]

#: A versioned test plugin. ``MODE``: ok, unhealthy (health() is False), error (every
#: call raises), setup_error (setup() raises), slow_setup (setup() takes 0.3 s),
#: violate (every call tries to write a file, which the default profile forbids).
VERSIONED_PLUGIN = '''\
"""Test plugin {name} {version} ({mode})."""

VERSION = "{version}"
MODE = "{mode}"


class Plugin:
    def setup(self, ctx):
        if MODE == "setup_error":
            raise RuntimeError("setup refuses on purpose")
        if MODE == "slow_setup":
            import time
            time.sleep(0.3)
        self.calls = 0

    def health(self):
        return MODE != "unhealthy"

    def handle(self, request):
        self.calls += 1
        if MODE == "error":
            raise ValueError("version " + VERSION + " is broken on purpose")
        if MODE == "violate":
            open("/tmp/plugvisor-violation-probe", "w").close()
        if isinstance(request, dict) and request.get("sleep"):
            import time
            time.sleep(request["sleep"])
        return {{"version": VERSION, "echo": request, "calls": self.calls}}
'''


def store_test_version(
    layout: StateLayout,
    name: str,
    version: str,
    mode: str = "ok",
    *,
    requires: dict[str, str] | None = None,
    activate: bool = False,
    profile: str = "default",
    source: str | None = None,
    status: VersionStatus = VersionStatus.approved,
) -> str:
    """Build, store and record one version of plugin ``name``; return its digest."""
    layout.ensure()
    src = Path(tempfile.mkdtemp(dir=layout.staging_dir))
    pkg = src / name.replace("-", "_")
    pkg.mkdir()
    code = source if source is not None else VERSIONED_PLUGIN
    (pkg / "__init__.py").write_text(code.format(name=name, version=version, mode=mode))
    lines = [
        f"name: {name}", f"version: {version}", "api: 1", f"entrypoint: {pkg.name}:Plugin",
        f"profile: {profile}",
    ]  # fmt: skip
    if requires:
        lines.append("requires:")
        lines += [f'  {dep}: "{rng}"' for dep, rng in requires.items()]
    (src / "plugin.yaml").write_text("\n".join(lines) + "\n")
    files = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        data = path.read_bytes()
        rel = path.relative_to(src).as_posix()
        files.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    manifest = canonical_json({"name": name, "version": version, "files": files})
    (src / "MANIFEST.json").write_bytes(manifest)
    digest = hashlib.sha256(manifest).hexdigest()
    meta = parse_plugin_yaml((src / "plugin.yaml").read_bytes())
    VersionStore(layout).add(src, digest)
    with Registry(layout) as reg:
        reg.add_version(meta, digest, "0" * 64, status)
        if activate:
            reg.activate(name, version)
    return digest


# ---- the pytest plugin for plugin authors (entry point ``pytest11: plugvisor``) -------------


class SandboxedPluginFactory:
    """The ``sandboxed_plugin`` fixture: ``sandboxed_plugin(DIR).call(request)``.

    Each call of the factory starts one :class:`~plugvisor.devkit.DevSandbox` (a private
    template, a throw-away state directory, one host running the plugin under its profile);
    every sandbox is closed at the test's teardown. ``sandboxed_plugin.call(request)`` uses
    the plugin directory holding the test (the nearest ancestor with a plugin.yaml).
    """

    def __init__(self, test_path: Path | None) -> None:
        self._test_path = test_path
        self._made: list[DevSandbox] = []
        self._default: DevSandbox | None = None

    def __call__(
        self,
        plugin_dir: Path | str | None = None,
        profile: str | None = None,
        *,
        config: dict[str, Any] | None = None,
    ) -> DevSandbox:
        """Start the plugin in ``plugin_dir`` (default: the test's plugin) in the sandbox."""
        from plugvisor.devkit import DevSandbox  # noqa: PLC0415 -- only tests that use it pay

        sandbox = DevSandbox(plugin_dir or self._plugin_dir(), profile, config=config)
        self._made.append(sandbox)
        return sandbox.start()

    def call(self, request: Any, timeout: float | None = None) -> Any:
        """``handle(request)`` of the test's own plugin (one sandbox per test, reused)."""
        if self._default is None:
            self._default = self()
        return self._default.call(request, timeout)

    def _plugin_dir(self) -> Path:
        start = self._test_path.parent if self._test_path is not None else Path.cwd()
        for candidate in (start, *start.parents):
            if (candidate / "plugin.yaml").is_file():
                return candidate
        raise NotFoundError(
            "plugin_yaml", f"no plugin.yaml in {start} or above: pass the plugin directory",
            path=str(start),
        )  # fmt: skip

    def close(self) -> None:
        """Stop every sandbox this factory started (teardown, then the template)."""
        while self._made:
            self._made.pop().close()
        self._default = None


if pytest is not None:

    @pytest.fixture
    def sandboxed_plugin(request: pytest.FixtureRequest) -> Iterator[SandboxedPluginFactory]:
        """Load plugin directories under their profile in the real sandbox (closed after)."""
        factory = SandboxedPluginFactory(Path(str(request.node.path)))
        try:
            yield factory
        finally:
            factory.close()
