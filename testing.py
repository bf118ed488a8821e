"""Helpers for tests and benchmarks: plugin versions built on the fly, a daemon subprocess.

``store_test_version`` puts a version into a state directory the way an install does
(plugin.yaml + package + MANIFEST.json, stored read-only under ``versions/<digest>/``,
recorded ``approved`` in the registry) without the archive and signature steps, so
suites about the daemon do not depend on packing. ``VERSIONED_PLUGIN`` is a small
plugin whose answer names its version and whose ``MODE`` selects a behaviour.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from plugvisor.core.manifest import canonical_json, parse_plugin_yaml
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry, VersionStatus
from plugvisor.state.store import VersionStore

__all__ = ["VERSIONED_PLUGIN", "store_test_version"]

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
        reg.add_version(meta, digest, "0" * 64, VersionStatus.approved)
        if activate:
            reg.activate(name, version)
    return digest
