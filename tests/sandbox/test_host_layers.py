"""Every sandbox layer this kernel offers is detected, applied in the child and visible outside.

Checks from outside (``/proc/<pid>/status``) and from inside (a probe plugin trying what
the OS layers must refuse, with the in-process policy off so that only the kernel answers).
A layer the kernel lacks makes its test skip loudly, naming the layer.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from plugvisor.cli import cli
from plugvisor.core.config import Settings, load_settings
from plugvisor.core.profile import load_profile
from plugvisor.sandbox import HostSpec, Spawner, detect_layers
from plugvisor.sandbox.probe import proc_status, run_probe

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sandbox only")

KERNEL = detect_layers()


def require(layer: str) -> None:
    status = KERNEL[layer]
    if not status.available:
        pytest.skip(f"sandbox layer {layer} missing on this system: {status.reason}")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("privilege drop needs root: the tests run as an unprivileged user")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings({"state_dir": str(tmp_path_factory.mktemp("layers"))}, env={})


@pytest.fixture(scope="module")
def probe(settings: Settings) -> dict[str, object]:
    return run_probe(settings, load_profile("default", settings))


def _code(root: Path) -> Path:
    code = root / "echo"
    (code / "echo").mkdir(parents=True)
    (code / "plugin.yaml").write_text("name: echo\nversion: 0.0.0\n")
    (code / "echo" / "__init__.py").write_text(
        "import json\n\nclass Plugin:\n    def handle(self, request):\n"
        "        return json.loads(json.dumps(request))\n"
    )
    for p in (code, code / "echo"):
        p.chmod(0o755)
    return code


@pytest.fixture(scope="module")
def live_host(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One host of a benign plugin with every layer, the in-process policy included."""
    spawner = Spawner(settings)
    spawner.start()
    spec = HostSpec(
        plugin="echo",
        version="0.0.0",
        code_dir=_code(tmp_path_factory.mktemp("live")),
        entrypoint="echo:Plugin",
        profile=load_profile("default", settings),
    )
    host = spawner.spawn(spec)
    yield host
    host.stop()
    spawner.close()


def test_detect_layers_reports_every_layer() -> None:
    names = [layer.name for layer in KERNEL]
    for name in ("rlimits", "netns", "privileges", "no_new_privs", "landlock", "seccomp"):
        assert name in names
    for layer in KERNEL.inactive:
        assert layer.reason, f"{layer.name} inactive without a reason"


def test_child_runs_as_nobody_with_no_new_privs_and_seccomp(probe: dict[str, Any]) -> None:
    require_root()
    require("seccomp")
    status = probe["proc_status"]
    assert status["Uid"].split() == ["65534"] * 4
    assert status["Gid"].split() == ["65534"] * 4
    assert status["Groups"] == ""
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0


@pytest.mark.parametrize(
    "layer",
    ["session", "fds_env", "rlimits", "netns", "privileges", "no_new_privs", "landlock",
     "seccomp", "monitor", "process"],
)  # fmt: skip
def test_each_layer_is_active_in_a_host(probe: dict[str, Any], layer: str) -> None:
    require(layer)
    if layer == "privileges":
        require_root()
    status = probe["layers"][layer]
    assert status["active"], f"{layer} not active: {status['reason']}"


def test_os_layers_alone_refuse_from_inside(probe: dict[str, Any]) -> None:
    attempts = probe["attempts"]
    require("seccomp")
    assert attempts["inet_socket"].startswith("denied")
    assert attempts["inet6_socket"].startswith("denied")
    # No new sockets at all (a 0o777 Unix socket of another service would be reachable);
    # a connected stream socketpair stays usable for in-process plumbing.
    assert attempts["unix_socket"] == "denied (EPERM)"
    assert attempts["unix_dgram_pair"] == "denied (EPERM)"
    assert attempts["unix_stream_pair"] == "allowed"
    assert attempts["fork"] == "denied (EPERM)"
    assert attempts["exec"] == "denied (EPERM)"
    require("landlock")
    assert attempts["read_etc_passwd"] == "denied (EACCES)"
    assert attempts["write_tmp"].startswith("denied")
    assert attempts["kill_parent"].startswith("denied")
    for name in ("chmod", "utime", "setxattr"):  # metadata: seccomp, Landlock skips it
        assert attempts[name] == "denied (EPERM)", (name, attempts[name])


def test_in_process_policy_layer_is_active(live_host: object) -> None:
    if not KERNEL["policy"].available:
        pytest.skip(f"in-process policy layer missing: {KERNEL['policy'].reason}")
    assert live_host.call({"a": [1]}) == {"a": [1]}  # type: ignore[attr-defined]
    layers = live_host.layers  # type: ignore[attr-defined]
    assert layers["policy"].active, layers["policy"].reason
    status = proc_status(live_host.pid)  # type: ignore[attr-defined]
    assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI configures structlog and the root logger globally: put them back after."""
    config = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.configure(**config)
    logging.getLogger().handlers[:] = handlers


@pytest.mark.usefixtures("restore_logging")
def test_sandbox_check_cli_json() -> None:
    result = CliRunner().invoke(cli, ["--json", "sandbox-check"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert set(data) >= {"kernel", "layers", "probe"}
    assert data["layers"]["seccomp"]["available"] == KERNEL["seccomp"].available
