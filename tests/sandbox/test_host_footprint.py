"""What a plugin process carries: its own profile's modules, never the parent side.

The template pre-imports the runtime and the default profile's modules; a host whose
profile allows more imports the rest itself before the lock-down. So a default plugin's
process holds neither another profile's network stack nor the daemon's own libraries
(psutil, structlog, PyYAML, libseccomp's bindings), and a trusted plugin still gets the
modules only trusted allows, though Landlock hides the shared libraries they load.
"""

from __future__ import annotations

from typing import Any

from plugvisor.core.profile import load_profile

#: Never in a plugin process: the parent side of the sandbox and what it stands on.
PARENT_SIDE = (
    "plugvisor.sandbox.host",
    "plugvisor.sandbox.monitor",
    "plugvisor.core.log",
    "psutil",
    "structlog",
    "yaml",
    "pyseccomp",
    "ctypes.util",
    "sqlite3",
)
#: Only trusted allows these; a default plugin's process must not carry them.
TRUSTED_ONLY = ("ssl", "http.client", "urllib.request", "email.message")


def test_default_plugin_process_holds_no_parent_side_and_no_other_profiles_modules(
    kit: Any, os_only_spawner: Any
) -> None:
    # OS layers only: the in-process policy (rightly) keeps a plugin away from sys.modules.
    host = kit.spawn("diag_modules", spawner=os_only_spawner)
    modules = set(host.call({}, timeout=10.0))
    assert "plugvisor.sandbox.child" in modules  # the runtime is there: a real answer
    assert "json" in modules and "decimal" in modules  # the default profile's preload
    assert sorted(modules.intersection(PARENT_SIDE)) == []
    assert sorted(modules.intersection(TRUSTED_ONLY)) == []


def test_trusted_plugin_imports_the_modules_only_its_profile_allows(kit: Any) -> None:
    host = kit.spawn("ok_trusted_net", profile=load_profile("trusted", kit.settings))
    answer = host.call({}, timeout=10.0)
    assert answer["ssl"] == "OpenSSL"
    assert answer["status"] == "Not Found"
    assert answer["method"] == "HEAD"
    kit.assert_benign_still_works()
