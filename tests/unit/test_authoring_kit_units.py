"""Pieces of the authors' kit without a sandbox: scaffold, request files, violation words."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugvisor.cli.dev import describe_violation, read_requests
from plugvisor.cli.init import package_name, scaffold
from plugvisor.core.config import load_settings
from plugvisor.core.errors import ApiError, ArchiveError, ConflictError, ManifestError
from plugvisor.core.manifest import parse_plugin_yaml
from plugvisor.core.profile import load_profile
from plugvisor.devkit import budget_figure, copy_plugin_tree


def test_scaffold_writes_a_valid_plugin(tmp_path: Path) -> None:
    dest = scaffold("my-tool", tmp_path, "strict")
    meta = parse_plugin_yaml((dest / "plugin.yaml").read_bytes())
    assert (meta.name, str(meta.version), meta.api, meta.entrypoint, meta.profile) == (
        "my-tool", "0.1.0", 1, "my_tool:Plugin", "strict",
    )  # fmt: skip
    code = (dest / "my_tool" / "__init__.py").read_text()
    for needle in ("class Plugin", "def setup(self, ctx)", "ctx.db", "ctx.log", "def handle",
                   "def health", "def teardown"):  # fmt: skip
        assert needle in code
    compile(code, "my_tool/__init__.py", "exec")  # the template is valid Python
    assert (dest / "tests" / "test_plugin.py").is_file() and (dest / "README.md").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["my-tool"]  # no temp dir left behind


@pytest.mark.parametrize("name", ["Upper", "1abc", "a b", "class", "x" * 65, ""])
def test_scaffold_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ManifestError) as err:
        scaffold(name, tmp_path)
    assert err.value.code == "manifest.invalid_name"
    assert list(tmp_path.iterdir()) == []


def test_scaffold_refuses_an_existing_path(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(ConflictError) as err:
        scaffold("taken", tmp_path)
    assert err.value.code == "conflict.directory_exists"
    assert (tmp_path / "taken").read_text() == "mine"


def test_package_name_is_an_identifier() -> None:
    assert package_name("a-b-c") == "a_b_c" and package_name("a_b").isidentifier()


def test_read_requests(tmp_path: Path) -> None:
    f = tmp_path / "reqs.jsonl"
    f.write_text('# comment\n{"a": 1}\n\n[1, 2]\n')
    assert read_requests(('{"x": true}',), f) == [{"x": True}, {"a": 1}, [1, 2]]
    assert read_requests((), None) == [{}]
    f.write_text("{nope}\n")
    with pytest.raises(ApiError) as err:
        read_requests((), f)
    assert err.value.code == "request.invalid_json" and f"{f}:1" in err.value.message


def test_describe_violation_names_operation_file_and_line() -> None:
    text = describe_violation("policy.forbidden", "network: socket(AF_INET), pkg/net.py:12")
    assert text == "forbidden operation network: socket(AF_INET) (at pkg/net.py, line 12)"
    text = describe_violation("budget.files", "files: opened 51 files, max_files is 50, a/b.py:3")
    assert text == "budget.files: opened 51 files, max_files is 50 (at a/b.py, line 3)"
    # Details without a location are shown as they are.
    assert describe_violation("budget.db_queries", "query 11") == "budget.db_queries: query 11"


def test_budget_figures_come_from_the_profile() -> None:
    profile = load_profile("strict", load_settings({}, env={}))
    assert budget_figure("budget.time", profile) == "request ran past 2 s (max_execution_time)"
    assert budget_figure("budget.memory", profile) == "request went over 32.0 MiB (memory_limit)"
    assert "more than 10 files" in budget_figure("budget.files", profile)
    assert "more than 5 ctx.db queries" in budget_figure("budget.db_queries", profile)


def test_copy_plugin_tree_takes_what_pack_takes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in ("plugin.yaml", "pkg/__init__.py", "pkg/data/x.txt", "tests/test_x.py",
                "pkg/__pycache__/m.pyc", ".hidden", "pkg/tests/kept.py"):  # fmt: skip
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    dest = tmp_path / "dest"
    copy_plugin_tree(src, dest)
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert got == ["pkg/__init__.py", "pkg/data/x.txt", "pkg/tests/kept.py", "plugin.yaml"]
    assert (dest / "plugin.yaml").stat().st_mode & 0o777 == 0o444


def test_copy_plugin_tree_refuses_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "plugin.yaml").write_text("x")
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(ArchiveError) as err:
        copy_plugin_tree(src, tmp_path / "dest")
    assert err.value.code == "archive.symlink"
