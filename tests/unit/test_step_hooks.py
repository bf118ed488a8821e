"""The workers' step hook: a no-op unless a harness installs one; bad hooks refused at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugvisor.workers import hooks


def test_without_a_hook_a_step_goes_on() -> None:
    hooks.on_step("snapshot", Path("/nowhere"))  # nothing installed: nothing happens


def test_an_installed_hook_sees_each_step_and_can_be_put_back() -> None:
    seen: list[tuple[str, Path]] = []
    previous = hooks.set_step_hook(lambda step, where: seen.append((step, where)))
    try:
        hooks.on_step("trial", Path("/scratch"))
    finally:
        hooks.set_step_hook(previous)
    hooks.on_step("trial", Path("/again"))  # put back: not seen
    assert seen == [("trial", Path("/scratch"))]


def test_a_hook_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="hook\\(step, where\\)"):
        hooks.set_step_hook("pause")  # type: ignore[arg-type]
