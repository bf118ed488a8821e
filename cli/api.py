"""``plugvisor api``: run the HTTP API with Flask's development server.

For development and ``plugvisor up`` on one machine only; production runs gunicorn:
``gunicorn "plugvisor.api:create_app()"`` (see systemd/plugvisor-api.service).
"""

from __future__ import annotations

import click

from plugvisor.cli.context import CliContext, pass_cli

__all__ = ["api"]


@click.command()
@click.option("--host", default=None, help="Address to listen on (default: setting api_host).")
@click.option("--port", type=int, default=None, help="Port (default: setting api_port).")
@pass_cli
def api(ctx: CliContext, host: str | None, port: int | None) -> None:
    """Run the API and admin page (development server; use gunicorn in production)."""
    _ = ctx.settings  # a bad setting is refused here, naming it, before the exec
    args = [] if host is None else ["--host", host]
    if port is not None:
        args += ["--port", str(port)]
    ctx.exec_process("plugvisor.api", *args)
