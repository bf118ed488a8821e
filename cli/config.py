"""``plugvisor config``: show every setting, its environment variable and effective value."""

from __future__ import annotations

import dataclasses

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.core.config import setting_docs

__all__ = ["config"]


@click.command()
@pass_cli
def config(ctx: CliContext) -> None:
    """Show every setting with its environment variable, effective value and meaning."""
    values = dataclasses.asdict(ctx.settings)
    rows = [
        {"name": name, "env": env, "value": str(values[name]), "doc": doc}
        for name, env, _default, doc in setting_docs()
    ]
    text = "\n".join(f"{r['name']} = {r['value']}\n    {r['env']}: {r['doc']}" for r in rows)
    emit(ctx, rows, text)
