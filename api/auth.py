"""Bearer-token authentication and role checks for the API.

``Authorization: Bearer <token>`` is looked up in the state directory's
:class:`~plugvisor.state.tokens.TokenStore`. No or an unknown token is 401
(``auth.missing`` / ``auth.invalid``, with ``WWW-Authenticate: Bearer``); a known token
whose role is below what the endpoint needs is 403 (``auth.forbidden``).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g, request

from plugvisor.core.errors import AuthError
from plugvisor.state.tokens import Role, TokenStore, hash_token

__all__ = ["Forbidden", "Principal", "authorize", "current_principal"]


class Forbidden(AuthError):
    """The token is valid but its role is too low: ``auth.forbidden``, HTTP 403."""

    http_status = 403


@dataclass(frozen=True)
class Principal:
    """Who made the request: the token's short id, its role and label (for audit records)."""

    token_id: str
    role: Role
    label: str

    def describe(self) -> str:
        return f"token:{self.token_id}" + (f" ({self.label})" if self.label else "")


def _store() -> TokenStore:
    store = current_app.extensions["plugvisor"].tokens
    assert isinstance(store, TokenStore)
    return store


def authorize(needed: Role) -> Principal:
    """Check the request's bearer token against ``needed``; remember and return the principal."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise AuthError("missing", "this endpoint needs an 'Authorization: Bearer <token>' header")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("invalid", "the Authorization header must be 'Bearer <token>'")
    store = _store()
    role = store.verify(token)
    if role is None:
        raise AuthError("invalid", "the bearer token is not known (revoked or mistyped?)")
    token_id = hash_token(token)[:12]
    label = next((i.label for i in store.list() if i.id == token_id), "")
    principal = Principal(token_id=token_id, role=role, label=label)
    g.principal = principal
    if not role.allows(needed):
        raise Forbidden(
            "forbidden",
            f"this endpoint needs the {needed.value} role; the token has {role.value}",
            needed=needed.value,
            role=role.value,
        )
    return principal


def current_principal() -> Principal | None:
    """The principal of the current request, once :func:`authorize` has run."""
    p = g.get("principal")
    return p if isinstance(p, Principal) else None
