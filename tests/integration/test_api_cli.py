"""The CLI over the API, end to end: real HTTP server, real worker, real signed archives.

``plugvisor tokens`` works on the state directory; the remote commands run as
subprocesses against the API served over HTTP on 127.0.0.1 (werkzeug in a thread) with
a real ``plugvisor worker`` consuming the embedded SQLite broker. Nothing is mocked.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plugvisor.cli.remote import JobProgress
from plugvisor.core.archive import pack
from plugvisor.core.signing import generate_keypair
from plugvisor.state.install import install_archive
from plugvisor.state.registry import JobStatus, VersionStatus
from plugvisor.state.tokens import TOKENS_FILE, Role, TokenStore
from plugvisor.state.trust import TrustStore
from plugvisor.tests.support.apikit import ApiKit, LiveServer

REPO = Path(__file__).resolve().parents[2]
PLUGVISOR = REPO / ".venv" / "bin" / "plugvisor"
TIMEOUT = 120

CLEAN = """
import json


class Plugin:
    def handle(self, request):
        return {"echo": json.loads(json.dumps(request))}
"""

RISKY = """
import subprocess


class Plugin:
    def handle(self, request):
        return subprocess.check_output(request["cmd"], shell=True).decode()
"""


VERSIONED = """
VERSION = "{version}"


class Plugin:
    def handle(self, request):
        return {{"version": VERSION, "echo": request}}
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGVISOR_")}
    env.update(PLUGVISOR_LOG_FORMAT="console", **extra)
    return env


def _run(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(PLUGVISOR), *args], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    if check:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


# ---- tokens ----------------------------------------------------------------------------------
def test_tokens_create_prints_the_token_last(tmp_path: Path) -> None:
    env = _env()
    out = _run("--state-dir", str(tmp_path), "tokens", "create", "--role", "operator",
               "--label", "ci", env=env)  # fmt: skip
    token = out.stdout.splitlines()[-1]
    store = TokenStore(tmp_path / TOKENS_FILE)
    assert store.verify(token) is Role.OPERATOR
    assert store.verify(token + "x") is None
    assert token not in (tmp_path / TOKENS_FILE).read_text(), "only the hash is stored"
    assert (tmp_path / TOKENS_FILE).stat().st_mode & 0o777 == 0o600
    as_json = _run("--state-dir", str(tmp_path), "--json", "tokens", "create", "--role",
                   "viewer", env=env)  # fmt: skip
    data = json.loads(as_json.stdout)
    assert store.verify(data["token"]) is Role.VIEWER
    listing = _run("--state-dir", str(tmp_path), "--json", "tokens", "list", env=env)
    rows = json.loads(listing.stdout)
    assert sorted(r["role"] for r in rows) == ["operator", "viewer"]
    assert token not in listing.stdout
    op_id = next(r["id"] for r in rows if r["role"] == "operator")
    _run("--state-dir", str(tmp_path), "tokens", "revoke", op_id, env=env)
    assert store.verify(token) is None
    gone = _run("--state-dir", str(tmp_path), "tokens", "revoke", op_id, env=env, check=False)
    assert gone.returncode != 0
    assert "not_found.token" in gone.stderr
    bad = _run("--state-dir", str(tmp_path), "tokens", "create", "--role", "root", env=env,
               check=False)  # fmt: skip
    assert bad.returncode == 2
    assert "root" in bad.stderr


def test_progress_redraws_on_a_tty_and_prints_lines_otherwise() -> None:
    job: dict[str, Any] = {"id": "j1", "kind": "upload", "status": "running", "steps": []}
    step = {"name": "validate_install", "status": "running"}
    tty, plain = io.StringIO(), io.StringIO()
    for stream, is_tty in ((tty, True), (plain, False)):
        show = JobProgress(stream, tty=is_tty)
        show({**job, "display_status": "running: validate_install", "steps": [step]})
        show({**job, "display_status": "running: scan", "steps": [
            {**step, "status": "succeeded", "duration": 0.012},
            {"name": "scan", "status": "running"},
        ]})  # fmt: skip
        show({**job, "status": "succeeded", "display_status": "succeeded", "steps": [
            {**step, "status": "succeeded", "duration": 0.012},
            {"name": "scan", "status": "succeeded", "duration": 0.2},
        ]})  # fmt: skip
    assert "\x1b[2F\x1b[J" in tty.getvalue(), "second draw moves up over the first block"
    assert "\x1b[3F\x1b[J" in tty.getvalue()
    assert "\x1b" not in plain.getvalue()
    assert plain.getvalue().splitlines() == [
        "job j1 (upload) queued",
        "validate_install: running",
        "validate_install: succeeded (12 ms)",
        "scan: running",
        "scan: succeeded (200 ms)",
        "job j1 succeeded",
    ]


# ---- remote commands against a live API and a real worker -------------------------------------
@dataclass
class Remote:
    kit: ApiKit
    url: str
    key: Path
    stranger: Path
    worker_log: Path

    def env(self, role: Role | None = Role.ADMIN) -> dict[str, str]:
        extra = {"PLUGVISOR_API_URL": self.url, "PLUGVISOR_STATE_DIR": str(self.kit.root)}
        if role is not None:
            extra["PLUGVISOR_API_TOKEN"] = self.kit.tokens[role]
        return _env(**extra)

    def build(self, name: str, version: str, source: str, key: Path | None = None) -> Path:
        src = Path(tempfile.mkdtemp(prefix="src-", dir=self.kit.root.parent))
        (src / name).mkdir()
        (src / "plugin.yaml").write_text(
            f"name: {name}\nversion: {version}\napi: 1\nentrypoint: {name}:Plugin\n"
            "profile: default\n"
        )
        (src / name / "__init__.py").write_text(textwrap.dedent(source).lstrip())
        return pack(src, key or self.key, src.parent)


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    base = Path(tempfile.mkdtemp(prefix="pv-api-cli-", dir="/tmp"))
    root = base / "state"
    root.mkdir(mode=0o755)
    kit = ApiKit.create(root=root, broker_polling_interval=0.01)
    generate_keypair(base / "signer")
    generate_keypair(base / "stranger")
    TrustStore(root).trust(base / "signer.pub")
    log_path = base / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [str(PLUGVISOR), "--state-dir", str(root), "worker", "--concurrency", "1"],
            env=_env(PLUGVISOR_BROKER_POLLING_INTERVAL="0.01"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with LiveServer(kit.app) as server:
            yield Remote(kit, server.url, base / "signer", base / "stranger", log_path)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
        kit.close()


def test_upload_follows_the_job_to_approved(remote: Remote) -> None:
    archive = remote.build("cleanplug", "1.0.0", CLEAN)
    out = _run("upload", str(archive), env=remote.env(), check=False)
    assert out.returncode == 0, (out.stdout, out.stderr, remote.worker_log.read_text()[-3000:])
    lines = out.stdout.splitlines()
    assert lines[0].startswith("job ") and lines[0].endswith("(upload) queued")
    assert "validate_install: succeeded" in " ".join(lines)
    assert any(line.startswith("scan: succeeded") for line in lines)
    assert any(line.endswith(" succeeded") and line.startswith("job ") for line in lines)
    result = json.loads(out.stdout[out.stdout.index("{") :])
    assert result["status"] == "approved"
    record = remote.kit.registry().get_version("cleanplug", "1.0.0")
    assert record.status is VersionStatus.approved
    # jobs: the list and one job, in JSON for scripts.
    listing = json.loads(_run("--json", "jobs", env=remote.env(Role.VIEWER)).stdout)
    job_id = next(j["id"] for j in listing if j["kind"] == "upload")
    one = json.loads(_run("--json", "jobs", job_id, env=remote.env(Role.VIEWER)).stdout)
    assert one["status"] == "succeeded"
    assert [s["name"] for s in one["steps"]] == ["validate_install", "scan"]


def test_untrusted_upload_fails_with_its_code(remote: Remote) -> None:
    archive = remote.build("strangeplug", "1.0.0", CLEAN, key=remote.stranger)
    out = _run("upload", str(archive), env=remote.env(), check=False)
    assert out.returncode != 0
    assert "error: signature.untrusted" in out.stderr, (out.stdout, out.stderr)
    as_json = _run("--json", "upload", str(archive), env=remote.env(), check=False)
    assert as_json.returncode != 0
    job = json.loads(as_json.stdout)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "signature.untrusted"


def test_review_audit_and_rescan(remote: Remote) -> None:
    archive = remote.build("riskyplug", "1.0.0", RISKY)
    _run("upload", str(archive), env=remote.env())
    assert remote.kit.registry().get_version("riskyplug", "1.0.0").status is VersionStatus.review
    report = json.loads(_run("--json", "audit", "riskyplug", env=remote.env(Role.VIEWER)).stdout)
    assert report["status"] == "review"
    assert report["integrity"] == {
        "ok": True,
        "digest": report["integrity"]["digest"],
        "problems": [],
    }
    assert report["signature"]["key_trusted_now"] is True
    rules = {f["rule"] for f in report["findings"]}
    assert rules, "the risky plugin has findings"
    assert all(f["file"] and f["line"] for f in report["findings"])
    assert any(f["cwe"] == "CWE-78" for f in report["findings"]), report["findings"]
    text = _run("audit", "riskyplug", env=remote.env(Role.VIEWER)).stdout
    assert "riskyplug 1.0.0 (review)" in text
    assert f"findings: {len(report['findings'])}" in text
    # An operator may re-scan; the report stays the same code's report.
    rescan = _run("--json", "audit", "riskyplug", "--rescan", env=remote.env(Role.OPERATOR))
    assert {f["rule"] for f in json.loads(rescan.stdout)["findings"]} == rules
    # Review needs admin: an operator is refused with 403 auth.forbidden.
    denied = _run("review", "riskyplug", "1.0.0", "approve", "--reason", "ok",
                  env=remote.env(Role.OPERATOR), check=False)  # fmt: skip
    assert denied.returncode != 0
    assert "auth.forbidden" in denied.stderr
    _run("review", "riskyplug", "1.0.0", "approve", "--reason", "shell use is intended",
         env=remote.env())  # fmt: skip
    record = remote.kit.registry().get_version("riskyplug", "1.0.0")
    assert record.status is VersionStatus.approved
    assert record.review_reason == "shell use is intended"
    assert record.review_by is not None and "test-admin" in record.review_by


def test_remote_status_and_auth_errors(remote: Remote) -> None:
    out = _run("--json", "remote-status", env=remote.env(Role.VIEWER), check=False)
    data = json.loads(out.stdout)
    assert data["api_url"] == remote.url
    assert data["health"]["broker"]["reachable"] is True
    assert data["health"]["daemon"]["reachable"] is False
    assert out.returncode == 1, "no daemon in this module: degraded"
    assert "plugins" in data
    no_token = _run("jobs", env=remote.env(None), check=False)
    assert no_token.returncode != 0
    assert "auth.missing" in no_token.stderr
    assert "PLUGVISOR_API_TOKEN" in no_token.stderr
    bad = remote.env(None)
    bad["PLUGVISOR_API_TOKEN"] = "pvt_wrong"
    refused = _run("jobs", env=bad, check=False)
    assert "auth.invalid" in refused.stderr
    down = remote.env()
    down["PLUGVISOR_API_URL"] = "http://127.0.0.1:9"
    unreachable = _run("jobs", env=down, check=False)
    assert unreachable.returncode != 0
    assert "request.unreachable" in unreachable.stderr


def test_reload_via_cli_starts_a_job(remote: Remote) -> None:
    remote.kit.add_version("reloadme", "1.0.0")
    out = _run("--json", "reload", "reloadme", "--version", "1.0.0", "--no-wait",
               env=remote.env(Role.OPERATOR))  # fmt: skip
    job = json.loads(out.stdout)
    assert job["kind"] == "reload"
    assert remote.kit.registry().get_job(job["id"]).status in set(JobStatus)


# ---- serving: gunicorn (production) and `plugvisor api` (development) ----------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_health(url: str, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:  # 503: no daemon, still an answer
            return dict(json.loads(exc.read()))
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from {url} within 30 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)


@pytest.mark.parametrize("server", ["gunicorn", "plugvisor-api"])
def test_the_app_serves_under_gunicorn_and_the_dev_command(tmp_path: Path, server: str) -> None:
    port = _free_port()
    env = _env(PLUGVISOR_STATE_DIR=str(tmp_path / "state"))
    if server == "gunicorn":
        cmd = [str(REPO / ".venv" / "bin" / "gunicorn"), "--workers", "1", "--bind",
               f"127.0.0.1:{port}", "plugvisor.api:create_app()"]  # fmt: skip
    else:
        cmd = [str(PLUGVISOR), "api", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        health = _wait_health(f"http://127.0.0.1:{port}", proc, log)
        assert health["broker"]["reachable"] is True
        assert health["daemon"]["reachable"] is False
        token = TokenStore(tmp_path / "state" / TOKENS_FILE).create(Role.VIEWER, "srv")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/plugins", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read()) == {"plugins": []}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---- reload and rollback end to end: API + CLI + worker + daemon -------------------------------
def test_reload_and_rollback_through_the_api(daemon_kit: Any) -> None:
    """The CLI follows reload/rollback jobs that a real worker runs against a real daemon."""
    root = daemon_kit.root
    daemon_kit.layout.ensure()
    keys = Path(tempfile.mkdtemp(prefix="pv-api-keys-"))
    generate_keypair(keys / "signer")
    TrustStore(root).trust(keys / "signer.pub")
    # Signed and installed as an upload would be: a rollback re-verifies the signature.
    for version in ("1.0.0", "1.1.0"):
        src = keys / f"src-{version}"
        (src / "echo").mkdir(parents=True)
        (src / "plugin.yaml").write_text(
            f"name: echo\nversion: {version}\napi: 1\nentrypoint: echo:Plugin\nprofile: default\n"
        )
        (src / "echo" / "__init__.py").write_text(VERSIONED.format(version=version))
        install_archive(daemon_kit.settings, pack(src, keys / "signer", keys))
    with daemon_kit.registry() as reg:
        reg.activate("echo", "1.0.0")
    daemon_kit.start()
    log_path = root / "logs" / "api-test-worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [str(PLUGVISOR), "--state-dir", str(root), "worker", "--concurrency", "1"],
            env=_env(PLUGVISOR_BROKER_POLLING_INTERVAL="0.01"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    kit = ApiKit.create(root=root, broker_polling_interval=0.01)
    try:
        with LiveServer(kit.app) as server:
            env = _env(
                PLUGVISOR_API_URL=server.url,
                PLUGVISOR_API_TOKEN=kit.tokens[Role.OPERATOR],
                PLUGVISOR_STATE_DIR=str(root),
            )
            op = kit.auth(Role.OPERATOR)

            def served_version() -> str:
                resp = kit.client.post("/api/plugins/echo/call", json={"q": 1}, headers=op)
                assert resp.status_code == 200, resp.data
                return str(resp.get_json()["result"]["version"])

            assert served_version() == "1.0.0"
            out = _run("reload", "echo", "--version", "1.1.0", env=env, check=False)
            assert out.returncode == 0, (out.stdout, out.stderr, log_path.read_text()[-3000:])
            steps = [
                line.split(":")[0] for line in out.stdout.splitlines() if ": succeeded" in line
            ]
            # One line per step change, the swap last (step names are the worker's).
            assert {"snapshot", "trial", "activate"} <= set(steps), out.stdout
            assert steps[-1] == "activate", out.stdout
            assert served_version() == "1.1.0"
            back = _run("--json", "rollback", "echo", env=env, check=False)
            assert back.returncode == 0, (back.stdout, back.stderr, log_path.read_text()[-3000:])
            job = json.loads(back.stdout)
            assert job["status"] == "succeeded"
            assert served_version() == "1.0.0"
            plugin = kit.client.get("/api/plugins/echo", headers=op).get_json()
            assert plugin["active_version"] == "1.0.0"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
        kit.close()
        shutil.rmtree(keys, ignore_errors=True)
