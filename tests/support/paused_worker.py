"""A ``plugvisor worker`` whose steps a test can hold: the pause-file step hook, then the worker.

Run as::

    python -m plugvisor.tests.support.paused_worker --gate DIR [--state-dir D] [worker options]

It installs a :func:`plugvisor.workers.hooks.set_step_hook` hook in the worker's main
process (the pool children inherit it at fork), then runs the worker as ``plugvisor
worker`` does: settings from ``--state-dir`` and ``PLUGVISOR_*``, logging configured for
the ``worker`` component, :func:`plugvisor.workers.app.run_worker`. The hook pauses a
step while ``DIR/<step>.armed`` exists: it writes ``DIR/<step>.reached`` (the pid of the
process in the step and its work dir) and waits until the test removes the ``armed``
file (:class:`PauseGate` is the test's side). Production never reads any of this.

Hook points: ``scan``, ``snapshot`` and ``trial``, all called by the product (see
:mod:`plugvisor.workers.hooks`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

__all__ = ["MAX_PAUSE_S", "STEPS", "PauseGate", "main", "pause_hook", "worker_command"]

#: A paused step gives up after this long (a test that forgot to release it).
MAX_PAUSE_S = 120.0

#: The steps a gate can hold.
STEPS = ("scan", "snapshot", "trial")


def pause_hook(gate: Path) -> Callable[[str, Path], None]:
    """The step hook: hold ``step`` while ``gate/<step>.armed`` exists (at most MAX_PAUSE_S)."""

    def hook(step: str, where: Path) -> None:
        armed = gate / f"{step}.armed"
        if not armed.exists():
            return
        reached = gate / f"{step}.reached"
        tmp = reached.with_name(f".{reached.name}.{os.getpid()}")
        tmp.write_text(f"{os.getpid()} {where}\n")
        os.replace(tmp, reached)  # the test never reads half a line
        deadline = time.monotonic() + MAX_PAUSE_S
        # Polling, not a blocking read: the worker's time limits (SIGUSR1 raises
        # SoftTimeLimitExceeded here) and SIGKILL must be able to end the pause.
        while armed.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    return hook


@dataclasses.dataclass(frozen=True)
class PauseGate:
    """The test's side of the gate directory: arm a step, see it reached, release it."""

    path: Path

    def arm(self, step: str) -> None:
        """Hold the next run of ``step`` (and every run, until :meth:`disarm`)."""
        (self.path / f"{step}.reached").unlink(missing_ok=True)
        (self.path / f"{step}.armed").touch()

    def disarm(self, step: str) -> None:
        """Release ``step`` (a paused process goes on)."""
        (self.path / f"{step}.armed").unlink(missing_ok=True)

    def disarm_all(self) -> None:
        for step in STEPS:
            self.disarm(step)

    def reached(self, step: str) -> tuple[int, Path] | None:
        """``(pid, work dir)`` of a process paused in ``step``, or None (not yet)."""
        marker = self.path / f"{step}.reached"
        try:
            pid, where = marker.read_text().split(maxsplit=1)
        except (FileNotFoundError, ValueError):
            return None
        return int(pid), Path(where.strip())


def worker_command(gate: Path, state_dir: Path, *args: str, python: str | None = None) -> list[str]:
    """The argv that runs this launcher (``args``: more worker options)."""
    return [python or sys.executable, "-m", __name__, "--gate", str(gate),
            "--state-dir", str(state_dir), *args]  # fmt: skip


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--gate", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory of the <step>.armed / <step>.reached files.")  # fmt: skip
@click.option("--state-dir", envvar="PLUGVISOR_STATE_DIR", default=None)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=None)
@click.option("--pool", type=click.Choice(["prefork", "solo"]), default="prefork")
@click.option("-n", "--hostname", default=None)
def main(
    gate: Path, state_dir: str | None, concurrency: int | None, pool: str, hostname: str | None
) -> None:
    """Run a worker whose steps pause while ``GATE/<step>.armed`` exists."""
    from plugvisor.core.config import load_settings  # noqa: PLC0415
    from plugvisor.core.log import configure_logging  # noqa: PLC0415
    from plugvisor.workers.app import run_worker  # noqa: PLC0415
    from plugvisor.workers.hooks import set_step_hook  # noqa: PLC0415

    set_step_hook(pause_hook(gate))
    settings = load_settings({"state_dir": state_dir})
    configure_logging(settings.log_level, settings.log_format, component="worker")
    sys.exit(run_worker(settings, concurrency=concurrency, pool=pool, hostname=hostname))


if __name__ == "__main__":
    main(prog_name="paused_worker")
