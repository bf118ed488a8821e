"""``plugvisor install ARCHIVE`` and ``plugvisor status [NAME]``: local admin on the state dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.cli.hosts import plugin_host_lines
from plugvisor.core.errors import NotFoundError
from plugvisor.state.install import install_archive
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry

__all__ = ["install", "status"]


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@pass_cli
def install(ctx: CliContext, archive: Path, as_json: bool) -> None:
    """Validate a signed ARCHIVE, extract it into the version store and record it approved.

    A refused archive is kept in <state>/quarantine/ with reason.json and the command
    exits non-zero with the rule broken (e.g. signature.untrusted, version.not_newer).
    """
    ctx.as_json = ctx.as_json or as_json
    record = install_archive(ctx.settings, archive)
    emit(
        ctx,
        {"ok": True, "version": record.summary()},
        f"installed {record.plugin} {record.version} ({record.status.value})\n"
        f"digest {record.digest}",
    )


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@pass_cli
def status(ctx: CliContext, name: str | None, as_json: bool) -> None:
    """List plugins (or one plugin NAME): active and previous version, every version's status."""
    ctx.as_json = ctx.as_json or as_json
    layout = StateLayout(ctx.settings.state_dir)
    if not ctx.settings.database_url and not layout.registry_db.exists():
        # Reading status must not create a state directory at a mistyped path.
        if name is not None:
            raise NotFoundError("plugin", f"no plugin named {name!r}", plugin=name)
        emit(ctx, {"plugins": []}, "no plugins installed")
        return
    with Registry.open(ctx.settings) as registry:
        plugins = [registry.get_plugin(name)] if name else registry.list_plugins()
        down_after = ctx.settings.host_down_after_s
        data = {"plugins": [registry.plugin_summary(p, down_after_s=down_after) for p in plugins]}
    text = "\n".join(_plugin_text(p) for p in data["plugins"]) or "no plugins installed"
    emit(ctx, data, text)


def _plugin_text(p: dict[str, Any]) -> str:
    """One plugin of :meth:`Registry.plugin_summary` as ``status`` prints it."""
    head = (
        f"{p['name']}  active {p['active_version'] or '-'}  previous {p['previous_version'] or '-'}"
    )
    if p["disabled"]:
        head += f"  DISABLED: {p['disabled_reason']}"
    lines = [head]
    versions = p["versions"]
    width = max((len(v["version"]) for v in versions), default=0)
    for v in versions:
        lines.append(f"  {v['version']:<{width}}  {v['status']:<11}  digest {v['digest'][:12]}")
    lines.extend(plugin_host_lines(p["hosts"]))  # a fleet: which host runs what
    return "\n".join(lines)
