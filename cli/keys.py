"""``plugvisor keys``: generate signing key pairs, trust public keys, list trusted keys."""

from __future__ import annotations

from pathlib import Path

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.core.signing import generate_keypair
from plugvisor.state.trust import TrustStore

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Generate, trust and list Ed25519 signing keys."""


@keys.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@pass_cli
def generate(ctx: CliContext, path: Path) -> None:
    """Write a new private key to PATH (mode 0600) and its public key to PATH.pub."""
    key = generate_keypair(path)
    pub = Path(f"{path}.pub")
    emit(
        ctx,
        {"keyid": key.keyid, "private_key": str(path), "public_key": str(pub)},
        f"keyid {key.keyid}\nprivate key {path}\npublic key {pub}\n"
        f"trust it on a host with: plugvisor keys trust {pub}",
    )


@keys.command()
@click.argument("pub_file", metavar="FILE.pub", type=click.Path(dir_okay=False, path_type=Path))
@pass_cli
def trust(ctx: CliContext, pub_file: Path) -> None:
    """Trust the Ed25519 public key in FILE.pub (PEM) for archive signatures."""
    store = TrustStore(ctx.settings.state_dir)
    kid = store.trust(pub_file)
    emit(ctx, {"keyid": kid, "path": str(store.layout.trusted_key(kid))}, f"trusted {kid}")


@keys.command(name="list")
@pass_cli
def list_keys(ctx: CliContext) -> None:
    """List the trusted keys (keyid and file)."""
    rows = [{"keyid": kid, "path": str(p)} for kid, p in TrustStore(ctx.settings.state_dir).list()]
    text = "\n".join(f"{r['keyid']}  {r['path']}" for r in rows) or "no trusted keys"
    emit(ctx, rows, text)
