"""Step hooks: named points inside a job's steps where a test can stop a worker.

Production installs nothing: :func:`on_step` calls a no-op. A test harness (see
``plugvisor.tests.support.paused_worker``) installs its hook with :func:`set_step_hook`
in the worker's main process before the pool forks, so every pool child inherits it;
it can then hold a step at a known instant (to kill the process running it, or to keep
it running past a time limit) without production code reading any test setting.

Steps that call the hook: ``"scan"`` (:mod:`plugvisor.workers.tasks`, ``where`` = the stored
tree, before it is scanned), ``"snapshot"`` (passed by the reload job to
:func:`plugvisor.state.backups.snapshot_active`, ``where`` = the temporary backup
directory, data copied, manifest not yet written) and
``"trial"`` (:func:`plugvisor.workers.trial.run_trial`, ``where`` = the scratch directory,
host started, health not yet asked).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["StepHook", "on_step", "set_step_hook"]

#: ``hook(step, where)``: called when a step reaches its hook point; may block or raise.
StepHook = Callable[[str, Path], None]


def _no_hook(step: str, where: Path) -> None:
    """The production hook: nothing."""


_hook: StepHook = _no_hook


def on_step(step: str, where: Path) -> None:
    """Tell the installed hook that ``step`` reached its hook point (working in ``where``)."""
    _hook(step, where)


def set_step_hook(hook: StepHook | None) -> StepHook:
    """Install ``hook`` for this process and its future children (``None``: the no-op).

    Returns the hook it replaces, so a caller can put it back.
    """
    global _hook  # one hook per process, inherited across fork
    if hook is not None and not callable(hook):
        raise TypeError(f"a step hook must be callable as hook(step, where), not {hook!r}")
    previous, _hook = _hook, hook or _no_hook
    return previous
