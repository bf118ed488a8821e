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
    from plugvisor.api import create_app  # noqa: PLC0415 -- Flask only for this command

    settings = ctx.settings
    app = create_app(settings)
    host = host or settings.api_host
    port = settings.api_port if port is None else port
    click.echo(
        f"plugvisor API on http://{host}:{port} (development server; production: "
        'gunicorn "plugvisor.api:create_app()")',
        err=True,
    )
    app.run(host=host, port=port, threaded=True, use_reloader=False, debug=False)
