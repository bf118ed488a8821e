"""``plugvisor worker``: run a Celery worker for the job queue (upload, scan, audit, review)."""

from __future__ import annotations

import click

from plugvisor.cli.context import CliContext, pass_cli

__all__ = ["worker"]


@click.command()
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks run at once (default: half the cores, at least 1).",
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "solo"]),
    default="prefork",
    show_default=True,
    help="prefork runs tasks in child processes (hard time limits work); solo in this one.",
)
@click.option(
    "-n",
    "--hostname",
    default=None,
    help="Worker node name, unique per broker (default worker-PID@HOST).",
)
@pass_cli
def worker(ctx: CliContext, concurrency: int | None, pool: str, hostname: str | None) -> None:
    """Run a worker: consumes jobs from the broker the settings select, until stopped."""
    _ = ctx.settings  # a bad setting is refused here, naming it, before the exec
    args = ["--pool", pool]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    if hostname is not None:
        args += ["--hostname", hostname]
    ctx.exec_process("plugvisor.workers", *args)
