"""Per-run state of the CLI, carried in click's context object rather than in globals."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import click

from plugvisor.core.config import Settings, load_settings

__all__ = ["CliContext", "emit", "pass_cli"]


@dataclass
class CliContext:
    """Options given before the subcommand, and the settings built from them once."""

    state_dir: str | None = None
    as_json: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings({"state_dir": self.state_dir})
        return self._settings


pass_cli = click.make_pass_decorator(CliContext, ensure=True)


def emit(ctx: CliContext, data: Any, text: str | None = None) -> None:
    """Print ``data`` as JSON under ``--json``, else ``text`` (or the JSON when no text)."""
    if ctx.as_json or text is None:
        click.echo(json.dumps(data, indent=None if ctx.as_json else 2, sort_keys=True))
    else:
        click.echo(text)
