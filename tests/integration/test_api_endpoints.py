"""The HTTP API through Flask's test client over a real state directory and registry.

Every endpoint: success, the three auth failures, bad bodies (400 naming the field),
404s, idempotent job starts. Jobs are really recorded and enqueued on the embedded
broker; with no worker in this module they stay ``queued`` (the worker suite and
test_api_cli.py run them to the end).
"""

from __future__ import annotations

import io
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugvisor.core.signing import generate_keypair
from plugvisor.state.install import install_archive
from plugvisor.state.registry import VersionStatus
from plugvisor.state.security_log import SecurityLog
from plugvisor.state.tokens import TOKENS_FILE, Role, TokenStore, hash_token
from plugvisor.state.trust import TrustStore
from plugvisor.tests.support.apikit import ApiKit, pack_greeter


@pytest.fixture
def kit() -> Iterator[ApiKit]:
    k = ApiKit.create()
    try:
        yield k
    finally:
        k.close()


def _error(resp: Any) -> dict[str, Any]:
    body = resp.get_json()
    assert isinstance(body, dict) and "error" in body, resp.data
    return dict(body["error"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- auth matrix ---------------------------------------------------------------------------
#: (method, path, role needed, json body or None)
ENDPOINTS: list[tuple[str, str, Role, Any]] = [
    ("GET", "/api/plugins", Role.VIEWER, None),
    ("GET", "/api/plugins/greeter", Role.VIEWER, None),
    ("GET", "/api/plugins/audit?name=greeter", Role.VIEWER, None),
    ("GET", "/api/jobs", Role.VIEWER, None),
    ("GET", "/api/jobs/some-id", Role.VIEWER, None),
    ("GET", "/api/openapi.json", Role.VIEWER, None),
    ("GET", "/api/security-log", Role.VIEWER, None),
    ("GET", "/api/keys", Role.VIEWER, None),
    ("POST", "/api/keys", Role.ADMIN, {"public_key": "x"}),
    ("DELETE", "/api/keys/" + "0" * 64, Role.ADMIN, None),
    ("GET", "/metrics", Role.VIEWER, None),
    ("POST", "/api/plugins/reload", Role.OPERATOR, {"name": "greeter"}),
    ("POST", "/api/plugins/rollback", Role.OPERATOR, {"name": "greeter"}),
    ("POST", "/api/plugins/audit", Role.OPERATOR, {"name": "greeter"}),
    ("POST", "/api/plugins/greeter/call", Role.OPERATOR, {"x": 1}),
    ("POST", "/api/plugins", Role.ADMIN, None),
    (
        "POST",
        "/api/plugins/greeter/review",
        Role.ADMIN,
        {"version": "1.0.0", "decision": "approve", "reason": "ok"},
    ),
]
_IDS = [f"{m} {p}" for m, p, _, _ in ENDPOINTS]


@pytest.mark.parametrize(("method", "path", "role", "body"), ENDPOINTS, ids=_IDS)
def test_no_token_is_401_missing(kit: ApiKit, method: str, path: str, role: Role, body: Any):
    resp = kit.client.open(path, method=method, json=body)
    assert resp.status_code == 401
    assert _error(resp)["code"] == "auth.missing"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "role", "body"), ENDPOINTS, ids=_IDS)
def test_unknown_token_is_401_invalid(kit: ApiKit, method: str, path: str, role: Role, body: Any):
    for header in ("Bearer pvt_not-a-real-token", "Basic dXNlcjpwYXNz", "Bearer "):
        resp = kit.client.open(path, method=method, json=body, headers={"Authorization": header})
        assert resp.status_code == 401, header
        assert _error(resp)["code"] == "auth.invalid", header


_ABOVE_VIEWER = [e for e in ENDPOINTS if e[2] is not Role.VIEWER]


@pytest.mark.parametrize(
    ("method", "path", "role", "body"),
    _ABOVE_VIEWER,
    ids=[f"{m} {p}" for m, p, _, _ in _ABOVE_VIEWER],
)
def test_lower_role_is_403(kit: ApiKit, method: str, path: str, role: Role, body: Any):
    lower = [r for r in Role if not r.allows(role)]
    assert lower
    for low in lower:
        resp = kit.client.open(path, method=method, json=body, headers=kit.auth(low))
        assert resp.status_code == 403, low
        err = _error(resp)
        assert err["code"] == "auth.forbidden"
        assert role.value in err["message"]


def test_revoked_token_is_refused(kit: ApiKit) -> None:
    store = TokenStore(kit.root / TOKENS_FILE)
    assert kit.client.get("/api/plugins", headers=kit.auth(Role.ADMIN)).status_code == 200
    store.revoke(hash_token(kit.tokens[Role.ADMIN])[:12])
    resp = kit.client.get("/api/plugins", headers=kit.auth(Role.ADMIN))
    assert resp.status_code == 401
    assert _error(resp)["code"] == "auth.invalid"


def test_health_needs_no_token_and_reports_each_part(kit: ApiKit) -> None:
    resp = kit.client.get("/api/health")
    body = resp.get_json()
    # No daemon runs in this module: the daemon part is down, so the whole is 503.
    assert resp.status_code == 503
    assert body["ok"] is False
    assert body["daemon"]["reachable"] is False
    assert body["daemon"]["socket"].endswith("run/daemon.sock")
    assert body["broker"]["reachable"] is True
    assert body["broker"]["url"] == "embedded (SQLite)"
    assert body["workers"]["method"] == "job_records"
    assert body["workers"]["queued_jobs"] == 0
    assert "seccomp" in body["sandbox"] or "error" in body["sandbox"]


# ---- reads -----------------------------------------------------------------------------------
def test_list_and_show_plugins(kit: ApiKit) -> None:
    viewer = kit.auth(Role.VIEWER)
    assert kit.client.get("/api/plugins", headers=viewer).get_json() == {"plugins": []}
    kit.add_version("greeter", "1.0.0", activate=True)
    kit.add_version("greeter", "1.1.0", activate=True)
    kit.add_version("greeter", "1.2.0", VersionStatus.review)
    listing = kit.client.get("/api/plugins", headers=viewer).get_json()["plugins"]
    assert [p["name"] for p in listing] == ["greeter"]
    (p,) = listing
    assert p["active_version"] == "1.1.0"
    assert p["previous_version"] == "1.0.0"
    assert [(v["version"], v["status"]) for v in p["versions"]] == [
        ("1.0.0", "retired"),
        ("1.1.0", "active"),
        ("1.2.0", "review"),
    ]
    one = kit.client.get("/api/plugins/greeter", headers=viewer)
    assert one.status_code == 200
    assert one.get_json()["active_version"] == "1.1.0"
    assert one.get_json()["events"], "recent events are listed"


def test_unknown_plugin_is_404(kit: ApiKit) -> None:
    resp = kit.client.get("/api/plugins/nosuch", headers=kit.auth(Role.VIEWER))
    assert resp.status_code == 404
    assert _error(resp)["code"] == "not_found.plugin"


def test_jobs_list_filter_and_404(kit: ApiKit) -> None:
    viewer = kit.auth(Role.VIEWER)
    assert kit.client.get("/api/jobs", headers=viewer).get_json() == {"jobs": []}
    resp = kit.client.get("/api/jobs/does-not-exist", headers=viewer)
    assert resp.status_code == 404
    assert _error(resp)["code"] == "not_found.job"
    for query, field in (("state=bogus", "state"), ("limit=0", "limit"), ("nope=1", "nope")):
        resp = kit.client.get(f"/api/jobs?{query}", headers=viewer)
        assert resp.status_code == 400, query
        err = _error(resp)
        assert err["code"] == "request.invalid"
        assert f"'{field}'" in err["message"]
        assert err["details"]["field"] == field


# ---- job-starting endpoints ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["reload", "rollback", "audit"])
def test_target_job_bodies_are_validated(kit: ApiKit, kind: str) -> None:
    op = kit.auth(Role.OPERATOR)
    path = f"/api/plugins/{kind}"
    cases: list[tuple[Any, str]] = [
        ({}, "name"),
        ({"name": "Bad Name!"}, "name"),
        ({"name": 7}, "name"),
        ({"name": "greeter", "version": "one"}, "version"),
        ({"name": "greeter", "extra": 1}, "extra"),
        ([1, 2], "body"),
        ("greeter", "body"),
    ]
    for body, field in cases:
        resp = kit.client.post(path, json=body, headers=op)
        assert resp.status_code == 400, (body, resp.data)
        err = _error(resp)
        assert err["code"] == "request.invalid"
        assert field in err["message"], (body, err)
    resp = kit.client.post(
        path, data="{not json", headers={**op, "Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert "body" in _error(resp)["message"]
    resp = kit.client.post(path, data="name=greeter", headers=op)  # form-encoded, not JSON
    assert resp.status_code == 400
    assert "application/json" in _error(resp)["message"]


@pytest.mark.parametrize("kind", ["reload", "rollback", "audit"])
def test_target_job_unknown_plugin_or_version_is_404(kit: ApiKit, kind: str) -> None:
    op = kit.auth(Role.OPERATOR)
    resp = kit.client.post(f"/api/plugins/{kind}", json={"name": "nosuch"}, headers=op)
    assert resp.status_code == 404
    assert _error(resp)["code"] == "not_found.plugin"
    kit.add_version("greeter", "1.0.0")
    resp = kit.client.post(
        f"/api/plugins/{kind}", json={"name": "greeter", "version": "9.9.9"}, headers=op
    )
    assert resp.status_code == 404
    assert _error(resp)["code"] == "not_found.version"


@pytest.mark.parametrize("kind", ["reload", "rollback", "audit"])
def test_target_job_starts_and_is_idempotent(kit: ApiKit, kind: str) -> None:
    kit.add_version("greeter", "1.0.0", activate=True)
    kit.add_version("greeter", "1.1.0")
    op = kit.auth(Role.OPERATOR, {"Idempotency-Key": f"{kind}-42"})
    body = {"name": "greeter", "version": "1.1.0"}
    first = kit.client.post(f"/api/plugins/{kind}", json=body, headers=op)
    assert first.status_code == 202, first.data
    job_id = first.get_json()["job_id"]
    assert first.get_json()["status_url"] == f"/api/jobs/{job_id}"
    assert first.headers["Location"] == f"/api/jobs/{job_id}"
    second = kit.client.post(f"/api/plugins/{kind}", json=body, headers=op)
    assert second.status_code == 202
    assert second.get_json()["job_id"] == job_id, "same key => same job"
    jobs = kit.registry().list_jobs(kind=kind)
    assert [j.id for j in jobs] == [job_id], "no second job"
    job = kit.client.get(f"/api/jobs/{job_id}", headers=kit.auth(Role.VIEWER)).get_json()
    assert job["id"] == job_id
    assert job["kind"] == kind
    assert job["status"] == "queued"
    assert job["steps"] == []
    assert job["params"]["name"] == "greeter"
    assert job["params"]["version"] == "1.1.0"
    assert job["params"]["requested_by"].startswith("token:")
    assert "idempotency_key" not in job
    # Without a key every POST is a new job.
    third = kit.client.post(f"/api/plugins/{kind}", json=body, headers=kit.auth(Role.OPERATOR))
    assert third.get_json()["job_id"] != job_id
    listed = kit.client.get(f"/api/jobs?state=queued&kind={kind}", headers=kit.auth(Role.VIEWER))
    assert {j["id"] for j in listed.get_json()["jobs"]} == {job_id, third.get_json()["job_id"]}


def test_idempotency_keys_are_per_token_and_checked(kit: ApiKit) -> None:
    kit.add_version("greeter", "1.0.0", activate=True)
    body = {"name": "greeter"}
    a = kit.client.post(
        "/api/plugins/audit", json=body, headers=kit.auth(Role.OPERATOR, {"Idempotency-Key": "k"})
    )
    b = kit.client.post(
        "/api/plugins/audit", json=body, headers=kit.auth(Role.ADMIN, {"Idempotency-Key": "k"})
    )
    assert a.status_code == b.status_code == 202
    assert a.get_json()["job_id"] != b.get_json()["job_id"], "keys are scoped to the token"
    bad = kit.client.post(
        "/api/plugins/audit",
        json=body,
        headers=kit.auth(Role.OPERATOR, {"Idempotency-Key": "x" * 201}),
    )
    assert bad.status_code == 400
    assert "Idempotency-Key" in _error(bad)["message"]


def test_review_validation_conflict_and_start(kit: ApiKit) -> None:
    admin = kit.auth(Role.ADMIN)
    good = {"version": "1.0.0", "decision": "approve", "reason": "read the findings"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({k: v for k, v in good.items() if k != "version"}, "version"),
        ({**good, "decision": "maybe"}, "decision"),
        ({k: v for k, v in good.items() if k != "reason"}, "reason"),
        ({**good, "reason": ""}, "reason"),
    ]
    for body, field in cases:
        resp = kit.client.post("/api/plugins/greeter/review", json=body, headers=admin)
        assert resp.status_code == 400, body
        assert f"'{field}'" in _error(resp)["message"]
    resp = kit.client.post("/api/plugins/greeter/review", json=good, headers=admin)
    assert resp.status_code == 404
    kit.add_version("greeter", "1.0.0", VersionStatus.approved)
    resp = kit.client.post("/api/plugins/greeter/review", json=good, headers=admin)
    assert resp.status_code == 409
    assert _error(resp)["code"] == "conflict.not_in_review"
    kit.add_version("greeter", "1.1.0", VersionStatus.review)
    resp = kit.client.post(
        "/api/plugins/greeter/review", json={**good, "version": "1.1.0"}, headers=admin
    )
    assert resp.status_code == 202, resp.data
    job = kit.registry().get_job(resp.get_json()["job_id"])
    assert job.kind == "review"
    assert job.params["decision"] == "approve"
    assert job.params["reason"] == "read the findings"
    assert job.params["by"] == "token:" + job.params["by"].split(":", 1)[1]
    assert "test-admin" in job.params["by"], "who decided is recorded"


# ---- upload --------------------------------------------------------------------------------
def _multipart(data: bytes, name: str = "greeter-1.0.0.tar.gz") -> dict[str, Any]:
    return {"archive": (io.BytesIO(data), name)}


def test_upload_validation_and_limits() -> None:
    kit = ApiKit.create(max_upload_bytes=4096)
    try:
        admin = kit.auth(Role.ADMIN)
        resp = kit.client.post("/api/plugins", data={}, headers=admin)
        assert resp.status_code == 400
        assert "'archive'" in _error(resp)["message"]
        resp = kit.client.post("/api/plugins", data={"archive": "text"}, headers=admin)
        assert resp.status_code == 400
        assert "'archive'" in _error(resp)["message"]
        resp = kit.client.post(
            "/api/plugins", data=_multipart(b""), headers=admin, content_type="multipart/form-data"
        )
        assert resp.status_code == 400
        assert "empty" in _error(resp)["message"]
        big = kit.client.post(
            "/api/plugins",
            data=_multipart(b"x" * 5000),
            headers=admin,
            content_type="multipart/form-data",
        )
        assert big.status_code == 413
        assert _error(big)["code"] == "request.too_large"
        huge = kit.client.post(
            "/api/plugins",
            data=_multipart(b"x" * 200_000),
            headers=admin,
            content_type="multipart/form-data",
        )
        assert huge.status_code == 413
        assert _error(huge)["code"] == "request.too_large"
        uploads = kit.layout.staging_dir / "uploads"
        assert not any(uploads.iterdir()) if uploads.exists() else True, "nothing left behind"
    finally:
        kit.close()


def test_upload_starts_one_job_per_key(kit: ApiKit) -> None:
    admin = kit.auth(Role.ADMIN, {"Idempotency-Key": "up-1"})
    payload = b"\x1f\x8b not really a tarball; the worker judges it"
    first = kit.client.post(
        "/api/plugins", data=_multipart(payload), headers=admin, content_type="multipart/form-data"
    )
    assert first.status_code == 202, first.data
    job = kit.registry().get_job(first.get_json()["job_id"])
    assert job.kind == "upload"
    archive = Path(job.params["archive"])
    assert archive.read_bytes() == payload
    assert archive.parent == kit.layout.staging_dir / "uploads"
    assert job.params["filename"] == "greeter-1.0.0.tar.gz"
    second = kit.client.post(
        "/api/plugins", data=_multipart(payload), headers=admin, content_type="multipart/form-data"
    )
    assert second.get_json()["job_id"] == job.id
    assert sorted(archive.parent.iterdir()) == [archive], "the retry's copy was removed"


# ---- audit report and security log -----------------------------------------------------------
def test_audit_report_re_verifies_the_stored_signature(kit: ApiKit, tmp_path: Path) -> None:
    """The report verifies MANIFEST.sig again with today's trust, not the install-time one."""
    key = tmp_path / "k.key"
    generate_keypair(key)
    keyid = TrustStore(kit.layout.root).trust(Path(f"{key}.pub"))
    install_archive(kit.settings, pack_greeter("1.0.0", key, tmp_path))
    viewer = kit.auth(Role.VIEWER)

    report = kit.client.get("/api/plugins/audit?name=greeter", headers=viewer).get_json()
    assert report["signature"] == {"status": "verified", "keyid": keyid, "key_trusted_now": True}
    assert report["integrity"]["ok"] is True

    TrustStore(kit.layout.root).remove(keyid)
    report = kit.client.get("/api/plugins/audit?name=greeter", headers=viewer).get_json()
    assert report["signature"]["status"] == "failed"
    assert report["signature"]["error"]["code"] == "signature.untrusted"
    assert report["signature"]["key_trusted_now"] is False


def test_audit_report_shows_findings_signature_profile(kit: ApiKit) -> None:
    viewer = kit.auth(Role.VIEWER)
    resp = kit.client.get("/api/plugins/audit", headers=viewer)
    assert resp.status_code == 400
    assert "'name'" in _error(resp)["message"]
    resp = kit.client.get("/api/plugins/audit?name=nosuch", headers=viewer)
    assert resp.status_code == 404
    finding = {
        "rule": "B602", "name": "subprocess_popen_with_shell_equals_true", "severity": "high",
        "confidence": "high", "file": "greeter/__init__.py", "line": 7,
        "message": "subprocess call with shell=True", "cwe": 78, "owasp": "A03", "tool": "bandit",
    }  # fmt: skip
    kit.add_version(
        "greeter",
        "1.0.0",
        VersionStatus.review,
        report={"findings": [finding], "profile": "default"},
    )
    report = kit.client.get("/api/plugins/audit?name=greeter", headers=viewer).get_json()
    assert report["name"] == "greeter"
    assert report["version"] == "1.0.0"
    assert report["status"] == "review"
    # Recorded only (no stored tree): nothing to re-verify, and the report says so.
    assert report["signature"]["status"] == "failed"
    assert report["signature"]["error"]["code"] == "signature.missing"
    assert report["signature"]["keyid"] == "0" * 64
    assert report["signature"]["key_trusted_now"] is False
    assert report["integrity"]["ok"] is False, "no stored tree for this recorded-only version"
    assert report["profile"]["name"] == "default"
    assert report["profile"]["max_db_queries"] >= 1
    (f,) = report["findings"]
    assert (f["rule"], f["severity"], f["file"], f["line"], f["cwe"]) == (
        "B602", "high", "greeter/__init__.py", 7, "CWE-78",
    )  # fmt: skip
    assert report["violations"] == []
    assert report["security_log"]["ok"] is True


def test_security_log_entries_and_chain(kit: ApiKit) -> None:
    log = SecurityLog(kit.layout.security_log)
    log.record("greeter", "1.0.0", "r1", "policy.forbidden", "socket()", "blocked")
    log.record("other", "2.0.0", "r2", "budget.time", "5 s", "killed")
    viewer = kit.auth(Role.VIEWER)
    body = kit.client.get("/api/security-log", headers=viewer).get_json()
    assert [e["plugin"] for e in body["entries"]] == ["greeter", "other"]
    assert body["chain"]["ok"] is True
    assert (body["chain"]["lines"], body["chain"]["first_bad_line"]) == (2, None)
    only = kit.client.get("/api/security-log?plugin=greeter", headers=viewer).get_json()
    assert [e["kind"] for e in only["entries"]] == ["policy.forbidden"]
    kit.add_version("greeter", "1.0.0", activate=True)
    report = kit.client.get("/api/plugins/audit?name=greeter", headers=viewer).get_json()
    assert [v["request_id"] for v in report["violations"]] == ["r1"]
    # Tamper with the first line: the chain check must notice.
    path = kit.layout.security_log
    lines = path.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[0])
    entry["action"] = "allowed"
    lines[0] = (json.dumps(entry) + "\n").encode()
    path.write_bytes(b"".join(lines))
    chain = kit.client.get("/api/security-log", headers=viewer).get_json()["chain"]
    assert chain["ok"] is False
    assert chain["first_bad_line"] == 1


# ---- call ----------------------------------------------------------------------------------
def test_call_without_daemon_is_503_envelope(kit: ApiKit) -> None:
    op = kit.auth(Role.OPERATOR)
    resp = kit.client.post("/api/plugins/greeter/call", json={"name": "Ada"}, headers=op)
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["ok"] is False
    assert body["error"]["code"] == "plugin.unavailable"
    bad = kit.client.post(
        "/api/plugins/greeter/call",
        data=b"{nope",
        headers={**op, "Content-Type": "application/json"},
    )
    assert bad.status_code == 400
    assert _error(bad)["code"] == "request.invalid"
    bad_name = kit.client.post("/api/plugins/Bad!/call", json={}, headers=op)
    assert bad_name.status_code == 400
    assert "'name'" in _error(bad_name)["message"]


def test_call_through_a_real_daemon(daemon_kit: Any) -> None:
    daemon_kit.add_version("echo", "1.0.0", activate=True)
    daemon_kit.add_version("broken", "1.0.0", mode="error", activate=True)
    port = _free_port()
    daemon_kit.env["PLUGVISOR_METRICS_PORT"] = str(port)
    daemon_kit.start()
    kit = ApiKit.create(root=daemon_kit.root, metrics_port=port)
    try:
        op = kit.auth(Role.OPERATOR)
        resp = kit.client.post("/api/plugins/echo/call", json={"name": "Ada"}, headers=op)
        assert resp.status_code == 200, resp.data
        body = resp.get_json()
        assert body["ok"] is True
        assert body["result"]["echo"] == {"name": "Ada"}
        assert body["result"]["version"] == "1.0.0"
        failed = kit.client.post("/api/plugins/broken/call", json={}, headers=op)
        assert failed.get_json()["ok"] is False
        assert failed.get_json()["error"]["code"] == "plugin.error"
        assert failed.status_code == 502
        missing = kit.client.post("/api/plugins/nosuch/call", json={}, headers=op)
        assert missing.get_json()["error"]["code"] == "plugin.not_found"
        assert missing.status_code == 404
        health = kit.client.get("/api/health")
        assert health.get_json()["daemon"]["reachable"] is True
        assert health.status_code == 200
        # /metrics: the API's own counters followed by the daemon's exposition.
        metrics = kit.client.get("/metrics", headers=kit.auth(Role.VIEWER))
        assert metrics.status_code == 200
        text = metrics.get_data(as_text=True)
        assert 'plugvisor_api_requests_total{endpoint="plugins.call"' in text
        assert "plugvisor_api_daemon_metrics_up 1.0" in text
        assert re.search(r'^plugvisor_calls_total\{[^}]*plugin="echo"[^}]*\} [1-9]', text, re.M), (
            text
        )
    finally:
        kit.close()
        daemon_kit.stop()


# ---- errors ----------------------------------------------------------------------------------
def test_unknown_route_and_method_are_json(kit: ApiKit) -> None:
    resp = kit.client.get("/api/nothing-here")
    assert resp.status_code == 404
    assert _error(resp)["code"] == "not_found.route"
    resp = kit.client.delete("/api/plugins", headers=kit.auth(Role.ADMIN))
    assert resp.status_code == 405
    assert _error(resp)["code"] == "request.method_not_allowed"
    assert set(resp.headers["Allow"].split(", ")) >= {"GET", "POST"}


def test_a_real_bug_is_a_logged_500_internal(kit: ApiKit) -> None:
    def broken() -> str:
        raise RuntimeError("a bug")

    kit.app.add_url_rule("/api/_broken", "broken", broken)
    resp = kit.client.get("/api/_broken")
    assert resp.status_code == 500
    err = _error(resp)
    assert err["code"] == "internal"
    assert "a bug" not in err["message"], "internals stay in the log"


@pytest.mark.rabbitmq
def test_health_on_rabbitmq_pings_workers(rabbitmq_url: str) -> None:
    kit = ApiKit.create(broker_url=rabbitmq_url)
    try:
        body = kit.client.get("/api/health").get_json()
        assert body["broker"]["reachable"] is True
        assert body["broker"]["url"].startswith("amqp://guest:***@127.0.0.1")
        assert body["workers"]["method"] == "ping"
        # Other suites' workers may share this broker: only the shape is certain here.
        assert isinstance(body["workers"]["seen"], bool)
        assert isinstance(body["workers"]["names"], list)
    finally:
        kit.close()
    down = ApiKit.create(broker_url="amqp://guest:guest@127.0.0.1:9//")
    try:
        body = down.client.get("/api/health").get_json()
        assert body["broker"]["reachable"] is False
        assert body["broker"]["detail"]
    finally:
        down.close()


# ---- keys ------------------------------------------------------------------------------------
def test_keys_trust_list_remove(kit: ApiKit, tmp_path: Path) -> None:
    key = generate_keypair(tmp_path / "signer")
    pem = (tmp_path / "signer.pub").read_text()
    admin, viewer = kit.auth(Role.ADMIN), kit.auth(Role.VIEWER)
    assert kit.client.get("/api/keys", headers=viewer).get_json() == {"keys": []}
    denied = kit.client.post("/api/keys", json={"public_key": pem}, headers=kit.auth(Role.OPERATOR))
    assert denied.status_code == 403
    resp = kit.client.post("/api/keys", json={"public_key": pem}, headers=admin)
    assert resp.status_code == 201, resp.data
    assert resp.get_json() == {"keyid": key.keyid}
    assert kit.client.get("/api/keys", headers=viewer).get_json() == {
        "keys": [{"keyid": key.keyid}]
    }
    assert [kid for kid, _ in TrustStore(kit.root).list()] == [key.keyid]
    for body, field in (({}, "public_key"), ({"public_key": ""}, "public_key")):
        bad = kit.client.post("/api/keys", json=body, headers=admin)
        assert bad.status_code == 400
        assert f"'{field}'" in _error(bad)["message"]
    garbage = kit.client.post(
        "/api/keys", json={"public_key": "-----BEGIN nonsense"}, headers=admin
    )
    assert garbage.status_code == 400
    assert _error(garbage)["code"] == "signature.bad_key"
    assert not list(kit.layout.staging_dir.glob("key-*")), "no temp key left behind"
    # The body is PEM text, never a path on the server (found by the schemathesis run).
    other = generate_keypair(tmp_path / "server-local")
    for text in (str(tmp_path / "server-local.pub"), str(tmp_path / "absent.pub")):
        by_path = kit.client.post("/api/keys", json={"public_key": text}, headers=admin)
        assert by_path.status_code == 400, by_path.data
        assert _error(by_path)["code"] == "signature.bad_key"
        assert "No such file" not in _error(by_path)["message"]
    assert other.keyid not in [kid for kid, _ in TrustStore(kit.root).list()]
    gone = kit.client.delete(f"/api/keys/{key.keyid}", headers=admin)
    assert gone.status_code == 200
    assert TrustStore(kit.root).list() == []
    again = kit.client.delete(f"/api/keys/{key.keyid}", headers=admin)
    assert again.status_code == 404
    assert _error(again)["code"] == "not_found.key"
