"""Artefacts: the signed archive of every accepted version, stored once, by code digest.

The fleet's shared store (archives are at most ``max_archive_bytes``): a host that lacks
``versions/<digest>/`` fetches the bytes and re-verifies them itself with its own trusted
keys (:mod:`plugvisor.state.fetch`); nothing here is trusted for being in the database.
Rows are written by :meth:`Versions.add_version` in the transaction that records the
version, so a recorded version always has its archive.
"""

from __future__ import annotations

import sqlalchemy as sa

from plugvisor.core.errors import NotFoundError
from plugvisor.state.registry.db import Database
from plugvisor.state.registry.schema import artefacts_t


class Artefacts(Database):
    """Reading stored archives."""

    def get_artefact(self, digest: str) -> bytes:
        """The archive of the version whose code has ``digest``; ``not_found.artefact`` if none."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(artefacts_t.c.archive).where(artefacts_t.c.digest == digest)
            ).first()
        if row is None:
            raise NotFoundError(
                "artefact", f"no stored archive for code digest {digest}", digest=digest
            )
        return bytes(row.archive)

    def artefact_digests(self) -> set[str]:
        """Every digest with a stored archive."""
        with self._read() as conn:
            return {r.digest for r in conn.execute(sa.select(artefacts_t.c.digest)).all()}
