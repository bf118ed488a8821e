"""The plugin authors' kit end to end, through the real CLI and the real sandbox.

``init`` -> ``dev check`` -> ``dev run`` -> ``keys generate`` + ``pack`` -> upload through a
real worker (embedded SQLite broker) -> approved; ``dev run`` naming each broken budget
with its figure and a forbidden operation with its line; the ``sandboxed_plugin`` pytest
fixture used from an author's own project; the examples of ``docs/authoring.md`` run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugvisor.core.config import load_settings
from plugvisor.core.profile import load_profile
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry, VersionStatus

REPO = Path(__file__).resolve().parents[2]
PLUGVISOR = REPO / ".venv" / "bin" / "plugvisor"
PYTHON = REPO / ".venv" / "bin" / "python"
DOC = REPO / "docs" / "authoring.md"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGVISOR_", "PYTEST_"))}
    env.update(extra)
    return env


def pv(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run the plugvisor CLI; stdout and stderr as text."""
    return subprocess.run(
        [str(PLUGVISOR), *args], capture_output=True, text=True, timeout=timeout,
        env=env or _env(), check=False,
    )  # fmt: skip


def _no_sandbox_leftovers(name: str) -> bool:
    return not list(Path("/tmp").glob(f"pv-dev-{name}-*"))


# ---- init -> check -> run -> keys -> pack -> upload -> approved ----------------------------------


@pytest.fixture
def worker_state(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A state directory served by a real worker on the embedded broker (own queue)."""
    root = tmp_path / "state"
    StateLayout(root).ensure()
    env = _env(
        PLUGVISOR_BROKER_POLLING_INTERVAL="0.01",
        PLUGVISOR_JOB_QUEUE=f"plugvisor.jobs.test-{uuid.uuid4().hex[:12]}",
        PLUGVISOR_STATE_DIR=str(root),
    )
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [str(PLUGVISOR), "worker", "--concurrency", "1",
         "--hostname", f"kit-{uuid.uuid4().hex[:8]}@%h"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield root, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_init_check_run_pack_upload_approved(
    tmp_path: Path, worker_state: tuple[Path, dict[str, str]]
) -> None:
    root, env = worker_state
    name = f"kit-{uuid.uuid4().hex[:6]}"
    work = tmp_path / "work"

    done = pv("init", name, "--dir", str(work))
    assert done.returncode == 0, done.stderr
    plugin = work / name
    pkg = name.replace("-", "_")
    assert (plugin / pkg / "__init__.py").is_file() and (plugin / "tests").is_dir()
    assert f"entrypoint: {pkg}:Plugin" in (plugin / "plugin.yaml").read_text()

    done = pv("dev", "check", str(plugin))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("approved: an upload would be approved")
    assert "FAIL" not in done.stdout

    done = pv(
        "dev", "run", str(plugin), "--request", '{"name": "Ada"}', "--request", '{"name": "Ada"}'
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answers = re.findall(r"^  ok: (.*)$", done.stdout, re.M)
    assert [json.loads(a) for a in answers] == [
        {"hello": "Ada", "count": 1},
        {"hello": "Ada", "count": 2},
    ]
    assert "db queries 2 of 10" in done.stdout and "files 0 of 50" in done.stdout
    assert _no_sandbox_leftovers(name)

    key = tmp_path / "keys" / "author.key"
    key.parent.mkdir()
    assert pv("keys", "generate", str(key)).returncode == 0
    assert pv("keys", "trust", f"{key}.pub", env=env).returncode == 0
    done = pv("pack", str(plugin), "--key", str(key), "-o", str(tmp_path / "dist"))
    assert done.returncode == 0, done.stderr
    archive = Path(done.stdout.strip().splitlines()[-1])
    assert archive.name == f"{name}-0.1.0.tar.gz"

    # Upload through the real pipeline: a job on the broker, run by the worker.
    from plugvisor.messaging.jobs import UploadJob, start_job, wait_for_job  # noqa: PLC0415 -- Celery

    settings = load_settings({}, env=env)
    job_id = start_job(settings, UploadJob(archive=str(archive)))
    record = wait_for_job(settings, job_id, timeout=90)
    assert record.status.value == "succeeded", record.to_dict()
    assert record.result is not None and record.result["status"] == "approved", record.result
    with Registry(StateLayout(root)) as reg:
        version = reg.get_version(name, "0.1.0")
    assert version.status is VersionStatus.approved
    # tests/ stayed out of the archive, and what was stored is what dev check scanned.
    assert not (StateLayout(root).version_dir(version.digest) / "tests").exists()


# ---- dev run: budgets and forbidden operations ------------------------------------------------

BREAKER = '''\
"""Breaks one budget (or the profile) per request, on demand."""

import time


class Plugin:
    def setup(self, ctx):
        self.db = ctx.db

    def handle(self, request):
        op = request.get("op")
        if op == "time":
            time.sleep(3)
        elif op == "memory":
            hog = bytearray(512 * 1024 * 1024)
            return len(hog)
        elif op == "files":
            for _ in range(60):
                open(__file__, "rb").close()
        elif op == "db_queries":
            for _ in range(12):
                self.db.execute("SELECT 1")
        elif op == "write":
            open("/tmp/pv-authoring-kit-probe", "w").close()
        return {"op": op}
'''


@pytest.fixture
def breaker(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A plugin that breaks budgets, and a profiles dir with ``quick`` (default, 1 s)."""
    plugin = tmp_path / "breaker"
    (plugin / "breaker").mkdir(parents=True)
    (plugin / "breaker" / "__init__.py").write_text(BREAKER)
    (plugin / "plugin.yaml").write_text(
        "name: breaker\nversion: 0.1.0\napi: 1\nentrypoint: breaker:Plugin\nprofile: default\n"
    )
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    default = (REPO / "profiles" / "default.yaml").read_text()
    quick = default.replace("max_execution_time: 5 ", "max_execution_time: 1 ")
    assert quick != default
    (profiles / "quick.yaml").write_text(quick)
    return plugin, _env(PLUGVISOR_PROFILES_DIR=str(profiles))


def _line_of(source: str, needle: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if needle in line)


def test_dev_run_names_each_budget_and_its_figure(breaker: tuple[Path, dict[str, str]]) -> None:
    plugin, env = breaker
    ops = ["time", "memory", "files", "db_queries", "ok"]
    args = [a for op in ops for a in ("--request", json.dumps({"op": op}))]
    done = pv("dev", "run", str(plugin), "--profile", "quick", *args, env=env)
    assert done.returncode == 1, done.stdout + done.stderr  # some requests failed
    blocks = re.split(r"^request \d+: ", done.stdout, flags=re.M)[1:]
    assert len(blocks) == len(ops), done.stdout
    by_op = dict(zip(ops, blocks, strict=True))
    assert "error budget.time: plugin did not answer within its time budget (1" in by_op["time"]
    assert "broke budget.time: request ran past 1 s (max_execution_time)" in by_op["time"]
    assert "broke budget.memory: request went over 64.0 MiB (memory_limit)" in by_op["memory"]
    assert (
        "error budget.memory: plugin exceeded its memory limit (67108864 bytes)" in by_op["memory"]
    )
    files_line = _line_of(BREAKER, 'open(__file__, "rb")')
    assert "broke budget.files: request opened more than 50 files (max_files)" in by_op["files"]
    assert "opened 51 files, max_files is 50" in by_op["files"]
    assert f"(at breaker/__init__.py, line {files_line})" in by_op["files"]
    assert "files 51 of 50" in by_op["files"]
    assert "broke budget.db_queries: request ran more than 10 ctx.db queries" in by_op["db_queries"]
    assert "query 11 exceeds max_db_queries (10)" in by_op["db_queries"]
    assert "db queries 11 of 10" in by_op["db_queries"]
    # The host killed by the time budget was replaced: later requests are answered.
    assert '  ok: {"op": "ok"}' in by_op["ok"]
    assert _no_sandbox_leftovers("breaker")


def test_dev_run_names_a_forbidden_operation_and_its_line(
    breaker: tuple[Path, dict[str, str]],
) -> None:
    plugin, env = breaker
    done = pv("dev", "run", str(plugin), "--request", '{"op": "write"}', env=env)
    assert done.returncode == 1
    line = _line_of(BREAKER, '"/tmp/pv-authoring-kit-probe", "w"')
    assert (
        "error policy.forbidden: file_write: open('/tmp/pv-authoring-kit-probe', 'w')"
        in done.stdout
    )
    assert (
        "violation: forbidden operation file_write: open('/tmp/pv-authoring-kit-probe', 'w') "
        f"(at breaker/__init__.py, line {line})"
    ) in done.stdout
    assert not Path("/tmp/pv-authoring-kit-probe").exists()


def test_dev_run_json_reports_usage(breaker: tuple[Path, dict[str, str]]) -> None:
    plugin, env = breaker
    done = pv("--json", "dev", "run", str(plugin), "--request", '{"op": "db_queries"}', env=env)
    doc = json.loads(done.stdout)
    (req,) = doc["requests"]
    assert doc["ok"] is False and req["error"]["code"] == "budget.db_queries"
    assert req["usage"]["db_queries"] == 11 and req["usage"]["peak_rss"] > 0
    assert [v["kind"] for v in req["violations"]] == ["budget.db_queries"]


def test_dev_check_reports_what_upload_would(tmp_path: Path) -> None:
    plugin = tmp_path / "risky"
    (plugin / "risky").mkdir(parents=True)
    (plugin / "plugin.yaml").write_text(
        "name: risky\nversion: 1.0.0\napi: 1\nentrypoint: risky:Plugin\n"
    )
    (plugin / "risky" / "__init__.py").write_text(
        "import subprocess\n\n\nclass Plugin:\n    def handle(self, request):\n"
        "        return subprocess.check_output(['id']).decode()\n"
    )
    done = pv("dev", "check", str(plugin))
    assert done.returncode == 1
    assert "review: an upload would be held for review" in done.stdout
    assert re.search(r"risky/__init__\.py:1: .*subprocess", done.stdout), done.stdout
    # A package rule broken: refused, naming the rule.
    (plugin / "plugin.yaml").write_text(
        "name: risky\nversion: one\napi: 1\nentrypoint: risky:Plugin\n"
    )
    done = pv("dev", "check", str(plugin))
    assert done.returncode == 1
    assert "FAIL  pack:" in done.stdout and "refused" in done.stdout


def test_init_refuses_bad_names_and_existing_directories(tmp_path: Path) -> None:
    done = pv("init", "Not-A-Name", "--dir", str(tmp_path))
    assert done.returncode != 0 and "manifest.invalid_name" in done.stderr
    assert pv("init", "twice", "--dir", str(tmp_path)).returncode == 0
    done = pv("init", "twice", "--dir", str(tmp_path))
    assert done.returncode != 0 and "conflict.directory_exists" in done.stderr
    done = pv("init", "other", "--dir", str(tmp_path), "--profile", "nonesuch")
    assert done.returncode != 0 and "profile." in done.stderr
    assert not (tmp_path / "other").exists()


# ---- the pytest fixture from an author's own project -----------------------------------------

AUTHOR_TEST = """\
from pathlib import Path

import pytest

from plugvisor.testing import BudgetExceeded, PluginRuntimeError, PolicyViolation

PLUGIN = Path(__file__).parent / "breaker"


def test_answers(sandboxed_plugin):
    assert sandboxed_plugin(PLUGIN).call({"op": "ok"}) == {"op": "ok"}


def test_budget(sandboxed_plugin):
    plugin = sandboxed_plugin(PLUGIN)
    with pytest.raises(BudgetExceeded) as info:
        plugin.call({"op": "db_queries"})
    assert info.value.code == "budget.db_queries"
    assert plugin.call({"op": "ok"}) == {"op": "ok"}


def test_policy(sandboxed_plugin):
    with pytest.raises(PolicyViolation, match="file_write: open"):
        sandboxed_plugin(PLUGIN).call({"op": "write"})
    # Under strict, open() itself is not among the allowed functions.
    strict = r"builtin: open\\(\\) \\(not allowed by profile strict\\)"
    with pytest.raises(PolicyViolation, match=strict):
        sandboxed_plugin(PLUGIN, "strict").call({"op": "write"})


def test_plugin_error_is_typed(sandboxed_plugin):
    with pytest.raises(PluginRuntimeError) as info:
        sandboxed_plugin(PLUGIN).call(["not", "a", "dict"])
    assert info.value.code == "plugin.error"
"""


def test_pytest_fixture_in_an_authors_project(
    tmp_path: Path, breaker: tuple[Path, dict[str, str]]
) -> None:
    plugin, _env_unused = breaker
    project = tmp_path / "author-project"
    project.mkdir()
    shutil.copytree(plugin, project / "breaker")
    (project / "test_breaker.py").write_text(AUTHOR_TEST)
    assert not list(project.rglob("conftest.py"))
    done = subprocess.run(
        [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_breaker.py"],
        cwd=project, capture_output=True, text=True, timeout=180, env=_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout
    assert _no_sandbox_leftovers("breaker")


# ---- docs/authoring.md: the examples run, the figures are the profiles' ----------------------

_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def _doc_blocks() -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in _FENCE.finditer(DOC.read_text(encoding="utf-8"))]


def _doc_files(dest: Path) -> list[str]:
    """Write every block whose first line is ``# file: PATH``; the paths written."""
    written = []
    for _lang, body in _doc_blocks():
        first, _, rest = body.partition("\n")
        m = re.match(r"#\s*file:\s*(\S+)\s*$", first)
        if m:
            path = dest / m[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rest)
            written.append(m[1])
    return written


def test_docs_examples_run(tmp_path: Path) -> None:
    written = _doc_files(tmp_path)
    assert any(p.endswith("plugin.yaml") for p in written), written
    commands = [
        body for lang, body in _doc_blocks() if lang == "console" and body.startswith("$ plugvisor")
    ]
    assert commands, "docs/authoring.md shows no plugvisor commands"
    for block in commands:
        # "$ plugvisor ARGS" lines run in tmp_path; the lines shown after one (other than
        # the measured budgets) must appear in its real output.
        for cmd in re.split(r"^\$ ", block, flags=re.M)[1:]:
            line, _, shown = cmd.partition("\n")
            args = shlex.split(line)
            assert args[0] == "plugvisor", line
            args = args[1:]
            done = subprocess.run(
                [str(PLUGVISOR), *args], cwd=tmp_path, capture_output=True, text=True,
                timeout=120, env=_env(), check=False,
            )  # fmt: skip
            for expect in shown.splitlines():
                if expect.strip() and "budgets:" not in expect and "..." not in expect:
                    assert expect.rstrip() in done.stdout, (line, expect, done.stdout, done.stderr)
    # The author's tests shown in the guide pass in the sandbox.
    test_files = [p for p in written if "/tests/" in p]
    assert test_files
    done = subprocess.run(
        [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", *test_files],
        cwd=tmp_path, capture_output=True, text=True, timeout=180, env=_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_docs_profile_table_matches_the_profiles() -> None:
    settings = load_settings({}, env={})
    rows = re.findall(
        r"^\| `(\w+)` \| (\d+) MiB \| (\d+) s \| (\d+) \| (\d+) \|", DOC.read_text(), re.M
    )
    assert {r[0] for r in rows} == {"default", "strict", "trusted"}, rows
    for name, mem, secs, files, queries in rows:
        p = load_profile(name, settings)
        assert (int(mem) * 1024**2, float(secs), int(files), int(queries)) == (
            p.memory_limit, p.max_execution_time, p.max_files, p.max_db_queries,
        ), name  # fmt: skip


def test_docs_rollback_section_matches_the_pipelines() -> None:
    """The guide says what rollback does to data; it must change when the pipelines do."""
    from plugvisor.messaging.jobs import RollbackJob  # noqa: PLC0415

    text = " ".join(DOC.read_text(encoding="utf-8").split())
    restores = "restore" in RollbackJob.tasks
    says_restored = "data snapshot is restored with the version on rollback" in text
    if restores:
        why = "RollbackJob.tasks restores data: the guide must say so"
    else:
        why = "RollbackJob.tasks has no 'restore' step: the guide must not promise it"
    assert restores == says_restored, f"docs/authoring.md, 'Swaps, rollback and your data': {why}"
