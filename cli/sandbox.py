"""``plugvisor sandbox-check``: which sandbox layers this kernel offers and which are active."""

from __future__ import annotations

from typing import Any

import click

from plugvisor.cli.context import CliContext, emit, pass_cli

__all__ = ["sandbox_check"]


@click.command("sandbox-check")
@click.option(
    "--no-probe",
    is_flag=True,
    help="Only probe the kernel; do not spawn a probe plugin to show the active layers.",
)
@click.option("--strict", is_flag=True, help="Exit 1 when a layer is not active.")
@pass_cli
def sandbox_check(ctx: CliContext, no_probe: bool, strict: bool) -> None:
    """Show every sandbox layer: available on this kernel, active in a plugin host, why not.

    Without --no-probe a probe plugin is spawned with the OS layers alone and tries to
    read /etc/passwd, write /tmp, open IP sockets, fork and exec from inside.
    """
    from plugvisor.core.profile import load_profile  # noqa: PLC0415 -- lazy CLI import
    from plugvisor.sandbox import detect_layers  # noqa: PLC0415
    from plugvisor.sandbox.probe import run_probe  # noqa: PLC0415

    settings = ctx.settings
    detected = detect_layers(settings.sandbox_user)
    data: dict[str, Any] = {"kernel": detected.to_dict()}
    active = detected.to_dict()
    if not no_probe:
        probe = run_probe(settings, load_profile(settings.default_profile, settings))
        data["probe"] = probe
        active = {**active, **probe["layers"]}
        # The probe disables the in-process policy on purpose; report the kernel view.
        active["policy"] = detected.to_dict()["policy"]
    data["layers"] = active
    lines = [f"{'layer':<14}{'available':<11}{'active':<8}detail"]
    for name, st in active.items():
        lines.append(
            f"{name:<14}{'yes' if st['available'] else 'NO':<11}"
            f"{'yes' if st['active'] else 'NO':<8}{st['reason']}"
        )
    if "probe" in data:
        lines.append("")
        lines.append("probe plugin (OS layers only), from inside:")
        lines.extend(f"  {k}: {v}" for k, v in data["probe"]["attempts"].items())
        lines.append("  /proc status: " + ", ".join(
            f"{k}={v}" for k, v in data["probe"]["proc_status"].items()
        ))  # fmt: skip
        lines.append(f"  timings (ms): {data['probe']['timings_ms']}")
    emit(ctx, data, "\n".join(lines))
    if strict and any(not st["active"] for st in active.values()):
        raise click.exceptions.Exit(1)
