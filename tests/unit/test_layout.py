"""The packaging of the repository root as ``plugvisor`` lists every package directory."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_PACKAGES = {
    "tests",
    "bench",
    "examples",
    "docs",
    "scripts",
    "profiles",
    "systemd",
    ".ci",
    "var",
}


def test_every_package_directory_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {"plugvisor"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and (rel.parts[0] in NOT_PACKAGES or rel.parts[0].startswith(".")):
            continue
        if rel.parts:
            found.add("plugvisor." + ".".join(rel.parts))
    assert found == listed


def test_user_top_level_exists() -> None:
    for name in (
        "daemon",
        "workers",
        "api",
        "profiles",
        "state",
        "systemd",
        "tests",
        "core",
        "bench",
    ):
        assert (ROOT / name).is_dir(), name
    assert (ROOT / "pyproject.toml").is_file()
