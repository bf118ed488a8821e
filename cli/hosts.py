"""``plugvisor hosts``: the daemons of the fleet, from the registry's heartbeats."""

from __future__ import annotations

from typing import Any

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry

__all__ = ["hosts", "plugin_host_lines"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@pass_cli
def hosts(ctx: CliContext, as_json: bool) -> None:
    """List every host of the fleet: up or down, sandbox layers, load, what each runs.

    A host is down when its daemon has not sent a heartbeat for host_down_after_s.
    """
    ctx.as_json = ctx.as_json or as_json
    settings = ctx.settings
    if not settings.database_url and not StateLayout(settings.state_dir).registry_db.exists():
        emit(ctx, {"hosts": []}, "no hosts registered")  # creates nothing at a mistyped path
        return
    with Registry.open(settings) as registry:
        rows = registry.host_summaries(down_after_s=settings.host_down_after_s)
    emit(ctx, {"hosts": rows}, "\n".join(_host_text(h) for h in rows) or "no hosts registered")


def _host_text(h: dict[str, Any]) -> str:
    layers = ",".join(sorted(k for k, on in h["layers"].items() if on)) or "none"
    head = (
        f"{h['host_id']}  {h['status'].upper()}  seen {h['seconds_since_seen']:.0f}s ago  "
        f"pid {h['pid']}  v{h['plugvisor_version']}  layers {layers}  "
        f"load {h['load'].get('loadavg_1m', '-')}"
    )
    plugins = [
        f"  {name} {p['version'] or '-'} {p['health']}" for name, p in sorted(h["plugins"].items())
    ]
    return "\n".join([head, *plugins])


def plugin_host_lines(hosts: list[dict[str, Any]]) -> list[str]:
    """The per-host lines of a plugin view (``status``, ``audit``); none on one machine."""
    if len(hosts) <= 1:
        return []
    lines = []
    for h in hosts:
        flags = [h["health"]] + (["BEHIND"] if h["behind"] else [])
        flags += ["HOST DOWN"] if h["host_status"] == "down" else []
        lines.append(f"  host {h['host_id']}: {h['version'] or '-'}  {' '.join(flags)}")
    return lines
