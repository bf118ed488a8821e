"""``--help`` on every command and subcommand of ``plugvisor`` (click's own test of its CLIs).

The walk goes through the group's public interface (``list_commands``/``get_command``),
so a command that fails to import, or whose options are broken, fails here by name.
"""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from plugvisor.cli import cli


def _walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group, info_name="plugvisor")
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, f"plugvisor {' '.join((*path, name))} is listed but not found"
        yield (*path, name)
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, (*path, name))


COMMANDS = [(), *_walk(cli)]


def test_the_walk_finds_the_commands_and_their_subcommands() -> None:
    names = {" ".join(path) for path in COMMANDS}
    assert {"daemon", "worker", "api", "call", "upload"} <= names
    assert any(len(path) == 2 for path in COMMANDS), "no subcommand found under any group"


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(("plugvisor", *p)))
def test_help_of_every_command(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="plugvisor")
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output.startswith("Usage: plugvisor"), result.output
    body = result.output.split("\n", 1)[1].strip()
    assert body, f"plugvisor {' '.join(path)} --help prints only its usage line"
