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
from openapi_spec_validator import validate

from plugvisor.api.testkit import ApiKit
from plugvisor.state.tokens import Role


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
