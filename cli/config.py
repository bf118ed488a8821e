"""``plugvisor config``: show every setting, its environment variable and effective value.

``--check`` instead reaches what the settings name (the registry and the broker), as
every process does at start: the API unit runs it as ``ExecStartPre`` (gunicorn loads the
app itself), and an operator runs it after editing ``plugvisor.env``.
"""

from __future__ import annotations

import dataclasses

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.core.config import setting_docs

__all__ = ["config"]


@click.command()
@click.option("--check", is_flag=True, help="Reach the registry and the broker the settings name.")
@pass_cli
def config(ctx: CliContext, check: bool) -> None:
    """Show every setting with its environment variable, effective value and meaning."""
    if check:
        _check(ctx)
        return
    values = dataclasses.asdict(ctx.settings)
    rows = [
        {"name": name, "env": env, "value": str(values[name]), "doc": doc}
        for name, env, _default, doc in setting_docs()
    ]
    text = "\n".join(f"{r['name']} = {r['value']}\n    {r['env']}: {r['doc']}" for r in rows)
    emit(ctx, rows, text)


def _check(ctx: CliContext) -> None:
    from plugvisor.messaging.broker import broker_url, redact  # noqa: PLC0415 -- --check only
    from plugvisor.messaging.preflight import preflight  # noqa: PLC0415
    from plugvisor.state.registry.db import engine_url  # noqa: PLC0415

    s = ctx.settings
    preflight(s)  # a PlugvisorError names the setting; the CLI prints it and exits non-zero
    out = {
        "registry": redact(engine_url(s.database_url)) if s.database_url else "sqlite (state dir)",
        "broker": redact(broker_url(s)),
        "host_id": s.host,
        "ok": True,
    }
    emit(ctx, out, f"registry {out['registry']}: ok\nbroker {out['broker']}: ok\n"
                   f"host id {s.host}")  # fmt: skip
