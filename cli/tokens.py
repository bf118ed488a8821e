"""``plugvisor tokens``: create, list and revoke the API's bearer tokens (local admin).

Works on ``<state>/api-tokens.json`` directly, so the first admin token can be made
before the API runs. ``tokens create`` prints the new token as the LAST line of stdout
so scripts can take it with ``| tail -n1``.
"""

from __future__ import annotations

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.state.tokens import TOKENS_FILE, Role, TokenStore

__all__ = ["tokens"]


def _store(ctx: CliContext) -> TokenStore:
    return TokenStore(ctx.settings.state_dir / TOKENS_FILE)


@click.group()
def tokens() -> None:
    """Manage API bearer tokens (roles: viewer < operator < admin)."""


@tokens.command("create")
@click.option(
    "--role",
    required=True,
    type=click.Choice([r.value for r in Role]),
    help="viewer: read; operator: reload, rollback, audit, call; admin: everything.",
)
@click.option("--label", default="", help="Who or what the token is for (shown by list).")
@pass_cli
def create(ctx: CliContext, role: str, label: str) -> None:
    """Create a token and print it (last line of stdout; it is not stored in clear)."""
    store = _store(ctx)
    token = store.create(Role(role), label)
    if ctx.as_json:
        emit(ctx, {"role": role, "label": label, "token": token})
        return
    click.echo(f"created {role} token (store it now; it cannot be shown again):")
    click.echo(token)


@tokens.command("list")
@pass_cli
def list_(ctx: CliContext) -> None:
    """List stored tokens: id, role, label (never the token itself)."""
    infos = _store(ctx).list()
    rows = [i.to_dict() for i in infos]
    text = "\n".join(f"{i.id}  {i.role.value:<8}  {i.label}" for i in infos) or "no tokens"
    emit(ctx, rows, text)


@tokens.command("revoke")
@click.argument("token_id")
@pass_cli
def revoke(ctx: CliContext, token_id: str) -> None:
    """Revoke the token with TOKEN_ID (as shown by list)."""
    info = _store(ctx).revoke(token_id)
    emit(ctx, info.to_dict(), f"revoked {info.id} ({info.role.value} {info.label})".rstrip())
