"""``plugvisor pack`` and ``plugvisor verify``: build a signed archive, check one."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from plugvisor.cli.context import CliContext, emit, pass_cli
from plugvisor.core.archive import ArchiveLimits, check_archive
from plugvisor.core.archive import pack as pack_archive
from plugvisor.core.signing import load_public_key
from plugvisor.state.trust import TrustStore

__all__ = ["pack", "verify"]


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Ed25519 private key (PEM) from 'plugvisor keys generate'.",
)
@click.option(
    "-o",
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory the archive is written to.",
)
@pass_cli
def pack(ctx: CliContext, directory: Path, key_path: Path, out_dir: Path) -> None:
    """Pack and sign DIRECTORY into NAME-VERSION.tar.gz; prints the archive path last.

    Leaves out tests/, __pycache__/, *.pyc and dot-files; refuses a directory that
    breaks the package rules (plugin.yaml, file count, size, symbolic links).
    """
    out = pack_archive(directory, key_path, out_dir, ArchiveLimits.from_settings(ctx.settings))
    path = str(out.absolute())
    emit(ctx, {"ok": True, "archive": path}, path)


@click.command()
@click.argument("archive", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--key",
    "extra_keys",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Also trust this public key (PEM) for this check; repeatable.",
)
@pass_cli
def verify(ctx: CliContext, archive: Path, extra_keys: tuple[Path, ...]) -> None:
    """Run every check on ARCHIVE against the trusted keys; exit 1 if any fails."""
    trusted = TrustStore(ctx.settings.state_dir).load_all()
    trusted += [load_public_key(p) for p in extra_keys]
    checks = check_archive(archive, trusted, ArchiveLimits.from_settings(ctx.settings))
    ok = all(c.ok for c in checks)
    lines = [f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in checks]
    lines.append(f"{archive}: {'valid' if ok else 'INVALID'}")
    emit(
        ctx,
        {"ok": ok, "archive": str(archive), "checks": [c.to_dict() for c in checks]},
        "\n".join(lines),
    )
    if not ok:
        # Not ctx.exit(1): main() runs click with standalone_mode=False, which swallows it.
        sys.exit(1)
