"""The OpenAPI document, the admin page and the API's own metrics.

The document must validate as OpenAPI 3.0, cover every route the app serves (except
the HTML page), and carry the same constraints the handlers enforce (the schemas are
shared, so a request the document calls invalid is refused with 400).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from plugvisor.state.registry import VersionStatus
from plugvisor.state.security_log import SecurityLog
from plugvisor.state.tokens import Role
from plugvisor.tests.support.apikit import ApiKit


@pytest.fixture
def kit() -> Iterator[ApiKit]:
    k = ApiKit.create()
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
def spec(kit: ApiKit) -> dict[str, Any]:
    resp = kit.client.get("/api/openapi.json", headers=kit.auth(Role.VIEWER))
    assert resp.status_code == 200
    doc = resp.get_json()
    assert isinstance(doc, dict)
    return doc


def test_document_validates_as_openapi_3(spec: dict[str, Any]) -> None:
    validate(spec)  # raises OpenAPIValidationError on any violation
    assert spec["openapi"].startswith("3.0")
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


def test_every_route_is_documented(kit: ApiKit, spec: dict[str, Any]) -> None:
    served = set()
    for rule in kit.app.url_map.iter_rules():
        if rule.endpoint == "admin.admin_page":
            continue  # HTML, not part of the JSON API
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            served.add((path, method.lower()))
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert served == documented
    assert ("/api/plugins/{name}/call", "post") in documented


def test_roles_and_errors_are_documented(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    assert paths["/api/plugins"]["post"]["x-required-role"] == "admin"
    assert paths["/api/plugins/reload"]["post"]["x-required-role"] == "operator"
    assert paths["/api/plugins"]["get"]["x-required-role"] == "viewer"
    health = paths["/api/health"]["get"]
    assert "security" not in health, "health needs no token"
    reload = paths["/api/plugins/reload"]["post"]
    assert {"202", "400", "401", "403", "404"} <= set(reload["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in reload["parameters"])
    upload_body = paths["/api/plugins"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload_body


def test_documented_constraints_are_the_enforced_ones(kit: ApiKit, spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    reload = schemas["ReloadRequest"]
    assert reload["required"] == ["name"]
    assert reload["additionalProperties"] is False
    name_pattern = reload["properties"]["name"]["pattern"]
    review = schemas["ReviewRequest"]
    assert review["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert set(review["required"]) == {"version", "decision", "reason"}
    # A name the pattern refuses is refused by the handler too, and the other way round.
    op = kit.auth(Role.OPERATOR)
    for name in ("Greeter", "9lives", "a" * 65):
        assert not re.match(name_pattern, name)
        resp = kit.client.post("/api/plugins/reload", json={"name": name}, headers=op)
        assert resp.status_code == 400, name
    assert re.match(name_pattern, "greeter-2")
    resp = kit.client.post("/api/plugins/reload", json={"name": "greeter-2"}, headers=op)
    assert resp.status_code == 404, "valid name, unknown plugin"


def test_document_is_cached_per_app(kit: ApiKit) -> None:
    h = kit.auth(Role.VIEWER)
    assert kit.client.get("/api/openapi.json", headers=h).data == (
        kit.client.get("/api/openapi.json", headers=h).data
    )


def test_admin_page_is_a_static_shell_with_a_nonce_csp(kit: ApiKit) -> None:
    resp = kit.client.get("/admin")
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    csp = resp.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce is not None
    assert f'<script nonce="{nonce.group(1)}">' in html
    assert "default-src 'none'" in csp
    assert "sessionStorage" in html
    for api_path in ("/api/plugins", "/api/jobs/", "/api/security-log", "/api/plugins/audit"):
        assert api_path in html, api_path
    other = kit.client.get("/admin").headers["Content-Security-Policy"]
    assert other != csp, "a fresh nonce per response"


def test_metrics_count_requests_and_errors(kit: ApiKit) -> None:
    kit.client.get("/api/plugins", headers=kit.auth(Role.VIEWER))
    kit.client.get("/api/plugins")  # 401
    resp = kit.client.get("/metrics", headers=kit.auth(Role.VIEWER))
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    text = resp.get_data(as_text=True)
    labels = 'endpoint="plugins.list_plugins",method="GET",status="200"'
    assert f"plugvisor_api_requests_total{{{labels}}} 1.0" in text
    assert 'plugvisor_api_errors_total{code="auth.missing"} 1.0' in text
    assert "plugvisor_api_daemon_metrics_up 0.0" in text, "daemon endpoint off in this kit"


def test_admin_script_is_valid_javascript(kit: ApiKit, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("!!! node missing: the admin page's script is not syntax-checked !!!")
    html = kit.client.get("/admin").get_data(as_text=True)
    script = re.search(r"<script nonce=\"[^\"]+\">(.*)</script>", html, re.S)
    assert script is not None
    path = tmp_path / "admin.js"
    path.write_text(script.group(1))
    check = subprocess.run([node, "--check", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_answers_match_their_documented_schemas(kit: ApiKit, spec: dict[str, Any]) -> None:
    """Each answer's status is documented, and its body validates against that schema."""
    registry = Registry().with_resource(
        "urn:spec", Resource.from_contents(spec, default_specification=DRAFT4)
    )
    kit.add_version("greeter", "1.0.0", activate=True)
    finding = {
        "rule": "PV103", "name": "forbidden_operation", "severity": "high", "confidence": "high",
        "file": "greeter/__init__.py", "line": 3, "message": "subprocess is forbidden",
        "cwe": 78, "owasp": "A03:2021-Injection", "tool": "compliance",
    }  # fmt: skip
    kit.add_version("greeter", "1.1.0", VersionStatus.review)
    kit.add_version("risky", "0.1.0", VersionStatus.review, report={"findings": [finding]})
    SecurityLog(kit.layout.security_log).record(
        "greeter", "1.0.0", "r1", "policy.forbidden", "socket()", "blocked"
    )
    viewer, op, admin = (kit.auth(r) for r in (Role.VIEWER, Role.OPERATOR, Role.ADMIN))
    started = kit.client.post("/api/plugins/audit", json={"name": "greeter"}, headers=op)
    job_id = started.get_json()["job_id"]
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        ("get", "/api/plugins", "/api/plugins", {"headers": viewer}),
        ("get", "/api/plugins/greeter", "/api/plugins/{name}", {"headers": viewer}),
        ("get", "/api/plugins/nosuch", "/api/plugins/{name}", {"headers": viewer}),
        ("get", "/api/plugins/audit?name=greeter", "/api/plugins/audit", {"headers": viewer}),
        ("get", "/api/plugins/audit", "/api/plugins/audit", {"headers": viewer}),
        ("get", "/api/plugins/audit?name=risky", "/api/plugins/audit", {"headers": viewer}),
        ("post", "/api/plugins/audit", "/api/plugins/audit",
         {"headers": op, "json": {"name": "greeter", "version": "1.1.0"}}),
        ("post", "/api/plugins/reload", "/api/plugins/reload", {"headers": op, "json": {}}),
        ("post", "/api/plugins/greeter/review", "/api/plugins/{name}/review",
         {"headers": admin, "json": {"version": "1.0.0", "decision": "approve", "reason": "x"}}),
        ("get", f"/api/jobs/{job_id}", "/api/jobs/{job_id}", {"headers": viewer}),
        ("get", "/api/jobs?state=queued", "/api/jobs", {"headers": viewer}),
        ("get", "/api/health", "/api/health", {}),
        ("get", "/api/security-log", "/api/security-log", {"headers": viewer}),
        ("get", "/api/keys", "/api/keys", {"headers": viewer}),
        ("get", "/api/plugins", "/api/plugins", {}),
        ("post", "/api/plugins", "/api/plugins", {"headers": op}),
        ("post", "/api/plugins/greeter/call", "/api/plugins/{name}/call",
         {"headers": op, "json": {"x": 1}}),
    ]  # fmt: skip
    for method, url, template, kwargs in calls:
        resp = getattr(kit.client, method)(url, **kwargs)
        documented = spec["paths"][template][method]["responses"]
        assert str(resp.status_code) in documented, (method, url, resp.status_code)
        schema = documented[str(resp.status_code)]["content"]["application/json"]["schema"]
        ref = "urn:spec" + schema["$ref"] if "$ref" in schema else None
        validator = OAS30Validator({"$ref": ref} if ref else schema, registry=registry)
        body = resp.get_json()
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, (method, url, resp.status_code, errors)
        if url.endswith("name=risky"):
            assert body["findings"][0]["cwe"] == "CWE-78"
            assert body["violations"] == [], "the log entry belongs to greeter"
