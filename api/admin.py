"""``GET /admin``: the server-rendered admin page (Jinja2, small vanilla JS, no build step).

The page itself carries no data, so it is served without a token (a browser cannot send
a bearer header on navigation). The operator pastes a token once; the page keeps it in
``sessionStorage`` and sends it as ``Authorization: Bearer`` on every API call, so the
page can do exactly what the token's role allows and nothing more. A per-response CSP
nonce allows only the page's own inline script and style.
"""

from __future__ import annotations

import secrets

from flask import Blueprint, make_response, render_template
from flask.typing import ResponseReturnValue

__all__ = ["bp"]

bp = Blueprint("admin", __name__, template_folder="templates")


@bp.get("/admin")
def admin_page() -> ResponseReturnValue:
    nonce = secrets.token_urlsafe(16)
    response = make_response(render_template("admin.html", nonce=nonce))
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response
