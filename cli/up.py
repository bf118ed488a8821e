"""``plugvisor up``: the whole stack on one machine, on the embedded broker, with the demo plugin.

What it does, in order (each step is idempotent, so a second ``up`` on the same state
directory reuses what the first made):

1. creates the state directory;
2. makes a demo signing key (``keys/demo.key``) and trusts its public half;
3. packs and installs the bundled ``examples/greeter`` plugin unless it is installed;
4. starts the daemon (waits for its ``READY=1`` on a private notify socket), one worker
   and the API (waits for ``/api/health``), each as a child process;
5. activates greeter through the control plane unless a version is active;
6. prints the API URL and a fresh admin token, then waits.

Ctrl-C (or SIGTERM) stops the children in reverse order: SIGTERM, a grace period,
then SIGKILL; every child is reaped before ``up`` exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import click

from plugvisor.cli.context import CliContext, pass_cli
from plugvisor.core.config import Settings
from plugvisor.core.errors import NotFoundError, SandboxError

__all__ = ["up"]

DEMO_PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "greeter"
_STOP_GRACE_S = 15.0


@dataclass
class _Stack:
    """The child processes of one ``up`` run, stopped in reverse start order."""

    settings: Settings
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "plugvisor", "--state-dir", str(self.settings.state_dir),
                *args]  # fmt: skip

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        # The children must agree on the ports chosen here (the API scrapes the
        # daemon's metrics port), so they get them as environment settings.
        shared = {
            "PLUGVISOR_API_PORT": str(self.settings.api_port),
            "PLUGVISOR_METRICS_PORT": str(self.settings.metrics_port),
        }
        proc = subprocess.Popen(self._argv(*args), env={**os.environ, **shared, **(env or {})})
        self.procs.append((name, proc))

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SandboxError(
                    "child_exited", f"the {name} process exited with code {proc.returncode}; "
                    "its log lines above say why", process=name, code=proc.returncode,
                )  # fmt: skip

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                click.echo(
                    f"up: {name} did not stop in {_STOP_GRACE_S:.0f} s; killing it", err=True
                )
                proc.kill()
                proc.wait(timeout=5)


def _prepare(settings: Settings) -> str:
    """State dir, demo key, greeter installed; returns greeter's newest installed version."""
    # Imported here so that ``plugvisor --help`` stays fast.
    from plugvisor.core.archive import pack  # noqa: PLC0415
    from plugvisor.core.manifest import parse_plugin_yaml  # noqa: PLC0415
    from plugvisor.core.signing import generate_keypair  # noqa: PLC0415
    from plugvisor.state.install import install_archive  # noqa: PLC0415
    from plugvisor.state.layout import StateLayout  # noqa: PLC0415
    from plugvisor.state.registry import Registry  # noqa: PLC0415
    from plugvisor.state.trust import TrustStore  # noqa: PLC0415

    layout = StateLayout(settings.state_dir).ensure()
    key = layout.keys_dir / "demo.key"
    if not key.exists():
        generate_keypair(key)
    TrustStore(settings.state_dir).trust(Path(f"{key}.pub"))
    meta = parse_plugin_yaml((DEMO_PLUGIN / "plugin.yaml").read_bytes())
    registry = Registry.open(settings)
    try:
        try:
            registry.get_version(meta.name, str(meta.version))
        except NotFoundError:
            with tempfile.TemporaryDirectory(dir=layout.staging_dir) as tmp:
                install_archive(settings, pack(DEMO_PLUGIN, key, Path(tmp)))
            click.echo(f"up: installed demo plugin {meta.name} {meta.version}")
        plugin = registry.get_plugin(meta.name)
        return str(plugin.active_version or meta.version)
    finally:
        registry.close()


def _wait_ready(notify: socket.socket, stack: _Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        notify.settimeout(0.2)
        try:
            msg = notify.recv(4096).decode("utf-8", "replace")
        except TimeoutError:
            continue
        if "READY=1" in msg.split("\n"):
            return
    raise SandboxError("daemon_not_ready", f"the daemon did not report READY within {timeout} s")


def _wait_http(url: str, stack: _Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 -- our loopback URL
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    raise SandboxError("api_not_ready", f"the API did not answer {url} within {timeout} s")


@click.command()
@click.option("--port", type=int, default=None, help="API port on 127.0.0.1 (default api_port).")
@click.option("--no-demo", is_flag=True, help="Do not install and activate the demo plugin.")
@click.option(
    "--metrics-port", type=int, default=None,
    help="Daemon's Prometheus port on 127.0.0.1 (default metrics_port; 0 turns it off).",
)  # fmt: skip
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes.")
@pass_cli
def up(
    ctx: CliContext, port: int | None, metrics_port: int | None, no_demo: bool, workers: int
) -> None:
    """Start daemon, worker(s) and API on the embedded broker; Ctrl-C stops them all."""
    settings = ctx.settings.with_overrides(state_dir=str(ctx.settings.state_dir.resolve()))
    if port is not None:
        settings = settings.with_overrides(api_port=port)
    if metrics_port is not None:
        settings = settings.with_overrides(metrics_port=metrics_port)
    version = None if no_demo else _prepare(settings)

    stop_requested = False

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stack = _Stack(settings)
    notify_dir = tempfile.mkdtemp(prefix="plugvisor-up-")
    notify_path = os.path.join(notify_dir, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        notify.bind(notify_path)
        stack.start("daemon", "daemon", env={"NOTIFY_SOCKET": notify_path})
        _wait_ready(notify, stack, timeout=60)
        for i in range(1, workers + 1):
            stack.start(f"worker{i}", "worker", "--hostname", f"up{i}@{socket.gethostname()}")
        url = f"http://127.0.0.1:{settings.api_port}"
        stack.start("api", "api", "--host", "127.0.0.1", "--port", str(settings.api_port))
        _wait_http(f"{url}/api/health", stack, timeout=60)
        if version is not None:
            from plugvisor.messaging.commands import Activate  # noqa: PLC0415
            from plugvisor.messaging.control import outcome_result, send_command  # noqa: PLC0415

            outcome_result(send_command(settings, Activate("greeter", version)))  # fmt: skip
        from plugvisor.state.tokens import TOKENS_FILE, TokenStore  # noqa: PLC0415

        token = TokenStore(settings.state_dir / TOKENS_FILE).create("admin", label="plugvisor up")
        sd = settings.state_dir
        click.echo(
            "\nplugvisor is up\n"
            f"  API and admin page: {url}/admin\n"
            f"  admin token:        {token}\n"
            f"  state directory:    {sd}\n"
            "  try:\n"
            f'    plugvisor --state-dir {sd} call greeter \'{{"name": "x"}}\'\n'
            f"    PLUGVISOR_API_URL={url} PLUGVISOR_API_TOKEN=<token> "
            f"plugvisor --state-dir {sd} remote-status\n"
            "  Ctrl-C stops everything.\n"
            "ready",
        )
        while not stop_requested:
            stack.check_alive()
            time.sleep(0.2)
    finally:
        click.echo("up: stopping", err=True)
        stack.stop()
        notify.close()
        with contextlib.suppress(OSError):
            os.unlink(notify_path)
            os.rmdir(notify_dir)
    click.echo("up: stopped", err=True)
