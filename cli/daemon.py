"""``plugvisor daemon`` (run the supervisor) and ``plugvisor call NAME JSON`` (call a plugin).

``call`` stays light on purpose: it imports only the client (standard library + the
error classes), never Celery, Flask or SQLAlchemy; the daemon's modules are imported
only when ``daemon`` runs.
"""

from __future__ import annotations

import json
import sys

import click

from plugvisor.cli.context import CliContext, pass_cli

__all__ = ["call", "daemon"]


@click.command()
@pass_cli
def daemon(ctx: CliContext) -> None:
    """Run the supervisor daemon in the foreground until SIGTERM (systemd Type=notify)."""
    _ = ctx.settings  # a bad setting is refused here, naming it, before the exec
    ctx.exec_process("plugvisor.daemon")


@click.command()
@click.argument("name")
@click.argument("request", default="null")
@click.option("--timeout", type=float, default=None, help="Seconds to wait (call_timeout_s).")
@pass_cli
def call(ctx: CliContext, name: str, request: str, timeout: float | None) -> None:
    """Call plugin NAME with the JSON REQUEST; print the envelope, exit non-zero on error."""
    from plugvisor.client import Client  # noqa: PLC0415 -- only what `call` needs
    from plugvisor.core.errors import ApiError, PlugvisorError  # noqa: PLC0415
    from plugvisor.state.layout import StateLayout  # noqa: PLC0415

    try:
        json.loads(request)
    except ValueError as exc:
        raise ApiError("not_json", f"REQUEST is not JSON: {exc}") from exc
    settings = ctx.settings
    sock = StateLayout(settings.state_dir).daemon_socket
    client = Client(sock, timeout=timeout or settings.call_timeout_s)
    try:
        envelope = client.call_raw(name, request.encode("utf-8"))
    except PlugvisorError as err:
        click.echo(json.dumps({"ok": False, "error": err.to_dict()}, sort_keys=True))
        sys.exit(err.exit_code)
    finally:
        client.close()
    click.echo(envelope.decode("utf-8", errors="replace"))
    try:
        ok = json.loads(envelope).get("ok") is True
    except (ValueError, AttributeError):
        ok = False
    sys.exit(0 if ok else 1)
