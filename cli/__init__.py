"""The ``plugvisor`` command line: one group, subcommands loaded lazily from their modules.

Errors become messages and exit codes here and nowhere else: a
:class:`~plugvisor.core.errors.PlugvisorError` prints ``error: <code>: <message>`` on
stderr (or the JSON error under ``--json``) and exits with the class's ``exit_code``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from plugvisor import __version__
from plugvisor.cli.context import CliContext
from plugvisor.core.entrypoint import exit_with
from plugvisor.core.errors import PlugvisorError

__all__ = ["cli", "main"]

#: subcommand name -> ("module:attribute", one-line help). A command's module is
#: imported only when that command runs, so ``plugvisor call`` does not pay for
#: importing Celery or Flask, and ``--help`` imports nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "api": ("plugvisor.cli.api:api", "Run the HTTP API and admin page (dev server)."),
    "audit": ("plugvisor.cli.remote:audit", "A plugin's security report (--rescan: scan again)."),
    "call": ("plugvisor.cli.daemon:call", "Call a plugin through the daemon."),
    "config": ("plugvisor.cli.config:config", "Show every setting and its value."),
    "daemon": ("plugvisor.cli.daemon:daemon", "Run the supervisor daemon (foreground)."),
    "dev": ("plugvisor.cli.dev:dev", "Run or check an unsigned plugin directory locally."),
    "hosts": ("plugvisor.cli.hosts:hosts", "List the hosts of the fleet and what each runs."),
    "init": ("plugvisor.cli.init:init", "Scaffold a new plugin directory."),
    "install": ("plugvisor.cli.install:install", "Validate and install a signed archive."),
    "jobs": ("plugvisor.cli.remote:jobs", "Show a job or list recent jobs via the API."),
    "keys": ("plugvisor.cli.keys:keys", "Generate, trust and list signing keys."),
    "pack": ("plugvisor.cli.package:pack", "Pack and sign a plugin directory."),
    "reload": ("plugvisor.cli.remote:reload", "Reload a plugin to a version via the API."),
    "remote-status": ("plugvisor.cli.remote:remote_status", "Health and plugins, via the API."),
    "review": ("plugvisor.cli.remote:review", "Approve or reject a version held for review."),
    "rollback": ("plugvisor.cli.remote:rollback", "Roll a plugin back via the API."),
    "sandbox-check": (
        "plugvisor.cli.sandbox:sandbox_check",
        "Show which sandbox layers this kernel offers and which are active.",
    ),
    "security-log": (
        "plugvisor.cli.security_log:security_log",
        "Verify the hash-chained security log; show recent violations.",
    ),
    "status": ("plugvisor.cli.install:status", "List plugins and their versions."),
    "tokens": ("plugvisor.cli.tokens:tokens", "Create, list and revoke API tokens."),
    "up": ("plugvisor.cli.up:up", "Start daemon, worker and API with the demo plugin."),
    "upload": ("plugvisor.cli.remote:upload", "Upload a signed archive via the API."),
    "verify": ("plugvisor.cli.package:verify", "Check an archive and print every check."),
    "worker": ("plugvisor.cli.worker:worker", "Run a Celery worker for upload/scan/audit jobs."),
}


#: Commands that must start fast and never log (they print their answer on stdout).
LIGHT_COMMANDS = frozenset({"call"})


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            module, _, attr = self._lazy[cmd_name][0].partition(":")
            cmd = getattr(importlib.import_module(module), attr)
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self._lazy[name][1]) for name in sorted(self._lazy)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--state-dir",
    envvar="PLUGVISOR_STATE_DIR",
    type=click.Path(file_okay=False),
    help="State directory (default ./var; env PLUGVISOR_STATE_DIR).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.version_option(__version__, prog_name="plugvisor")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, as_json: bool) -> None:
    """plugvisor: run untrusted Python plugins in a sandbox and hot-swap them under load."""
    ctx.obj = CliContext(state_dir=state_dir, as_json=as_json)
    # Records go to stderr so stdout stays the command's answer (``--json`` output is
    # parsed by scripts). Long-running commands (daemon, worker, api) configure again
    # with their own component name and the settings' level and format. ``call`` is on
    # the host application's hot path and logs nothing: it skips importing structlog.
    if ctx.invoked_subcommand in LIGHT_COMMANDS:
        return
    from plugvisor.core.log import configure_logging  # noqa: PLC0415 -- structlog is slow to import

    configure_logging(
        level=os.environ.get("PLUGVISOR_LOG_LEVEL", "warning"),
        fmt=os.environ.get("PLUGVISOR_LOG_FORMAT", "json"),
        component="cli",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn plugvisor errors into exit codes, once."""
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        # Without standalone mode click returns what ``ctx.exit(n)`` asked for.
        rv = cli.main(args=argv, prog_name="plugvisor", standalone_mode=False)
    except PlugvisorError as err:
        exit_with(err, as_json)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
