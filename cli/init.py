"""``plugvisor init NAME``: scaffold a plugin directory that passes every upload check."""

from __future__ import annotations

import keyword
import os
import tempfile
from pathlib import Path

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.core.errors import ConflictError, ManifestError
from plugvisor.core.fs import fsync_dir
from plugvisor.core.manifest import NAME_RE
from plugvisor.core.profile import load_profile

__all__ = ["init", "package_name", "scaffold"]

_PLUGIN_YAML = """\
name: {name}
version: 0.1.0                # SemVer; every upload must be higher than any accepted before
api: 1                        # plugin API version the host must support
entrypoint: {package}:Plugin
profile: {profile:<20} # see docs/authoring.md: what each profile allows
description: {name} -- describe what it does in one line.
"""

_PLUGIN_CODE = '''\
"""{name}: a plugvisor plugin (see docs/authoring.md for the runtime contract)."""


class Plugin:
    """Runs in its own sandboxed process under the `{profile}` profile.

    The process may be replaced at any time (crash, swap, budget breach): keep
    durable state in ctx.db, never only in memory.
    """

    def setup(self, ctx):
        # Called once per process, before the first request, with its own budget of
        # ctx.db queries. ctx.db is the plugin's own SQLite database; its queries run in
        # the host and count against max_db_queries per request.
        self.db = ctx.db
        self.log = ctx.log  # structured: ctx.log.info("event", key=value)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS calls (name TEXT PRIMARY KEY, count INTEGER NOT NULL)"
        )
        self.log.info("{name}_ready")

    def handle(self, request):
        # JSON in, JSON out. An exception becomes plugin.error for the caller; breaking
        # a budget or the profile ends the request with budget.* or policy.forbidden.
        name = str(request.get("name", "world")) if isinstance(request, dict) else "world"
        self.db.execute(
            "INSERT INTO calls (name, count) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET count = count + 1",
            [name],
        )
        count = self.db.execute("SELECT count FROM calls WHERE name = ?", [name])[0][0]
        self.log.info("handled", name=name, count=count)
        return {{"hello": name, "count": count}}

    def health(self):
        # Truthy when ready to serve; checked before a new version takes traffic.
        return True

    def teardown(self):
        # Called when the process is stopped gracefully (swap, shutdown); keep it short.
        self.log.info("{name}_stopping")
'''

_TEST_CODE = '''\
"""Tests of {name}, run in the real sandbox by the plugvisor pytest plugin.

Run from the plugin directory: python -m pytest tests
(tests/ is never packed: `plugvisor pack` leaves it out of the archive.)
"""

from pathlib import Path

import pytest

from plugvisor.testing import BudgetExceeded, PluginRuntimeError, PolicyViolation

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def test_hello(sandboxed_plugin):
    # sandboxed_plugin.call: the plugin holding this test, under its profile.
    assert sandboxed_plugin.call({{"name": "Ada"}}) == {{"hello": "Ada", "count": 1}}
    assert sandboxed_plugin.call({{"name": "Ada"}}) == {{"hello": "Ada", "count": 2}}


def test_each_sandbox_starts_with_an_empty_database(sandboxed_plugin):
    # sandboxed_plugin(DIR[, profile]): a fresh sandbox (new process, new ctx.db).
    plugin = sandboxed_plugin(PLUGIN_DIR, "strict")
    assert plugin.call({{"name": "Ada"}}) == {{"hello": "Ada", "count": 1}}


def test_errors_are_typed():
    # What plugin.call raises: budget.* / policy.forbidden / plugin.error and the rest.
    assert issubclass(BudgetExceeded, PluginRuntimeError)
    assert issubclass(PolicyViolation, PluginRuntimeError)
    with pytest.raises(PluginRuntimeError):
        raise BudgetExceeded("time", "example")
'''

_README = """\
# {name}

A plugvisor plugin (profile `{profile}`).

    plugvisor dev check .                       # the upload's package rules and scan
    plugvisor dev run . --request '{{"name": "Ada"}}'   # one request in the real sandbox
    python -m pytest tests                      # sandboxed tests (plugvisor.testing)
    mkdir -p ~/.plugvisor && plugvisor keys generate ~/.plugvisor/author.key
                                                # once, outside the plugin directory;
                                                # give author.key.pub to the operator
    plugvisor pack . --key ~/.plugvisor/author.key    # writes {name}-0.1.0.tar.gz

Bump `version` in plugin.yaml for every upload: a version equal to or lower than one
already accepted is refused as a rollback attack. See docs/authoring.md in plugvisor.
"""


def package_name(name: str) -> str:
    """The Python package of plugin ``name``: ``-`` becomes ``_`` (an identifier)."""
    return name.replace("-", "_")


def scaffold(name: str, parent: Path, profile: str = "default") -> Path:
    """Write ``parent/name/`` (plugin.yaml, package, tests/, README.md); return its path.

    Written in a temporary sibling and renamed into place, so a failure leaves nothing.
    Refuses a name plugin.yaml would refuse (``manifest.invalid_name``) and an existing
    path (``conflict.directory_exists``).
    """
    pkg = package_name(name)
    if not NAME_RE.match(name) or keyword.iskeyword(pkg) or not pkg.isidentifier():
        raise ManifestError(
            "invalid_name",
            f"plugin name {name!r} must match {NAME_RE.pattern} and its package name "
            f"{pkg!r} must not be a Python keyword",
            field="name",
        )
    dest = parent / name
    if os.path.lexists(dest):
        raise ConflictError(
            "directory_exists", f"{dest} already exists; choose another name or --dir",
            path=str(dest),
        )  # fmt: skip
    parent.mkdir(parents=True, exist_ok=True)
    fields = {"name": name, "package": pkg, "profile": profile}
    files = {
        "plugin.yaml": _PLUGIN_YAML.format(**fields),
        f"{pkg}/__init__.py": _PLUGIN_CODE.format(**fields),
        "tests/test_plugin.py": _TEST_CODE.format(**fields),
        "README.md": _README.format(**fields),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)  # noqa: S103 -- mkdtemp's 0o700 is not what a project dir has
        os.rename(tmp, dest)  # not os.replace: never over a directory created meanwhile
    except BaseException:
        import shutil  # noqa: PLC0415 -- only on failure

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)
    return dest


@click.command()
@click.argument("name")
@click.option(
    "--profile", default="default", show_default=True, help="Security profile in plugin.yaml."
)
@click.option(
    "--dir",
    "parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Parent directory of the new plugin directory.",
)
@pass_cli
def init(ctx: CliContext, name: str, profile: str, parent: Path) -> None:
    """Create NAME/: plugin.yaml (0.1.0), a commented Plugin package, tests/ and a README.

    NAME may contain '-'; the package is NAME with '-' turned into '_'. The result
    passes 'plugvisor dev check' as written.
    """
    load_profile(profile, ctx.settings)  # an unknown profile fails now, not at upload
    dest = scaffold(name, parent, profile)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    emit(
        ctx,
        {"ok": True, "directory": str(dest.absolute()), "files": files},
        f"created {dest}\n"
        + "".join(f"  {f}\n" for f in files)
        + f"next: plugvisor dev check {dest} && plugvisor dev run {dest} --request '{{}}'",
    )
