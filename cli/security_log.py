"""``plugvisor security-log``: verify the hash chain of the security log, show its tail."""

from __future__ import annotations

import json
from pathlib import Path

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.core.errors import StateError
from plugvisor.state.layout import StateLayout
from plugvisor.state.security_log import verify_log

__all__ = ["security_log"]


def _log_path(ctx: CliContext, path: str | None) -> Path:
    return Path(path) if path else StateLayout(ctx.settings.state_dir).security_log


@click.group("security-log")
def security_log() -> None:
    """The hash-chained log of sandbox violations (<state>/logs/security.log)."""


@security_log.command()
@click.option("--path", type=click.Path(dir_okay=False), help="Log file (default: the state's).")
@pass_cli
def verify(ctx: CliContext, path: str | None) -> None:
    """Check every line's hash chain and the head; exit non-zero naming the first bad line."""
    log = _log_path(ctx, path)
    report = verify_log(log)
    data = {
        "path": str(log),
        "ok": report.ok,
        "lines": report.lines,
        "first_bad_line": report.first_bad_line,
        "reason": report.reason,
    }
    if not report.ok:
        where = f" line {report.first_bad_line}" if report.first_bad_line else ""
        raise StateError("chain_broken", f"{log}{where}: {report.reason}", **data)
    emit(ctx, data, f"{log}: {report.lines} lines, {report.reason}")


@security_log.command()
@click.option("--path", type=click.Path(dir_okay=False), help="Log file (default: the state's).")
@click.option("-n", "--lines", "count", default=20, show_default=True, help="Lines to show.")
@click.option("--plugin", help="Only this plugin's violations.")
@pass_cli
def show(ctx: CliContext, path: str | None, count: int, plugin: str | None) -> None:
    """Show the last violations (newest last)."""
    log = _log_path(ctx, path)
    rows = []
    try:
        with log.open("rb") as fh:
            for raw in fh:
                try:
                    row = json.loads(raw)
                except ValueError:
                    continue  # `verify` names broken lines; `show` shows what it can
                if plugin is None or row.get("plugin") == plugin:
                    rows.append(row)
    except FileNotFoundError:
        pass
    rows = rows[-count:] if count > 0 else []
    text = "\n".join(
        f"{r.get('time')} {r.get('plugin')}@{r.get('version')} [{r.get('request_id')}] "
        f"{r.get('kind')} -> {r.get('action')}: {r.get('detail')}"
        for r in rows
    )
    emit(ctx, rows, text or "(no violations)")
