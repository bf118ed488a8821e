"""Per-run state of the CLI, carried in click's context object rather than in globals."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

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

    def exec_process(self, module: str, *args: str) -> NoReturn:
        """Become ``python -m module args`` (same pid: systemd's notify and signals hold).

        The processes are peers of the CLI, not its libraries: ``plugvisor daemon`` runs
        the daemon's own entry point. The state dir given to the CLI goes along; every
        other setting comes from the same environment and config file.
        """
        argv = [sys.executable, "-m", module, *args]
        if self.state_dir is not None:
            argv += ["--state-dir", self.state_dir]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)  # noqa: S606 -- our own interpreter, argument list


pass_cli = click.make_pass_decorator(CliContext, ensure=True)


def emit(ctx: CliContext, data: Any, text: str | None = None) -> None:
    """Print ``data`` as JSON under ``--json``, else ``text`` (or the JSON when no text)."""
    if ctx.as_json or text is None:
        click.echo(json.dumps(data, indent=None if ctx.as_json else 2, sort_keys=True))
    else:
        click.echo(text)
