"""README.md stays true: every setting is documented with its variable and default."""

from __future__ import annotations

from pathlib import Path

from plugvisor.core.config import setting_docs

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme_table() -> None:
    for name, env, default, _doc in setting_docs():
        assert f"| `{name}` | `{env}` | `{default}` |" in README, name


def test_two_commands_are_the_first_code_block() -> None:
    first_block = README.split("```")[1]
    assert "scripts/up.sh" in first_block
    assert "scripts/test.sh" in first_block
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
