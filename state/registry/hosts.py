"""Hosts and observed state: who is in the fleet, when each was last heard of, what it runs.

Each daemon is the single writer of its own rows: its ``hosts`` row (registered at start,
refreshed by every heartbeat) and its ``observed`` rows (one per plugin it runs or has
run). Everyone may read them; a host whose ``last_seen`` is older than the down
threshold is shown as ``down``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugvisor.state.registry.codec import dumps, utc_now
from plugvisor.state.registry.db import Database
from plugvisor.state.registry.records import (
    HostRecord,
    ObservedRecord,
    host_record,
    observed_record,
)
from plugvisor.state.registry.schema import hosts_t, observed_t


class Hosts(Database):
    """Heartbeats and observed rows."""

    def heartbeat(
        self,
        host_id: str,
        *,
        started_at: str,
        plugvisor_version: str,
        pid: int,
        layers: Mapping[str, Any],
        load: Mapping[str, Any],
    ) -> None:
        """Register ``host_id`` or refresh its row (``started_at`` is ISO 8601 UTC)."""
        values = {
            "started_at": started_at, "plugvisor_version": plugvisor_version, "pid": pid,
            "layers": dumps(dict(layers)), "load": dumps(dict(load)),
        }  # fmt: skip

        def run(conn: Connection) -> None:
            values["last_seen"] = utc_now()
            done = conn.execute(
                sa.update(hosts_t).where(hosts_t.c.host_id == host_id).values(**values)
            )
            if done.rowcount == 0:
                conn.execute(sa.insert(hosts_t).values(host_id=host_id, **values))

        self._write(run)

    def list_hosts(self) -> list[HostRecord]:
        """Every host that ever registered, by id."""
        with self._read() as conn:
            rows = conn.execute(sa.select(hosts_t).order_by(hosts_t.c.host_id)).all()
        return [host_record(r) for r in rows]

    def up_hosts(self, *, down_after_s: float) -> list[str]:
        """The ids of the hosts heard from within ``down_after_s`` seconds, sorted."""
        now = datetime.now(UTC)
        return [h.host_id for h in self.list_hosts() if not h.is_down(now, down_after_s)]

    def observe(
        self, host_id: str, plugin: str, active_version: str | None, health: str, detail: str = ""
    ) -> bool:
        """Record what ``host_id`` runs of ``plugin``; True when that changed the row."""

        def run(conn: Connection) -> bool:
            key = (observed_t.c.host_id == host_id, observed_t.c.plugin == plugin)
            row = conn.execute(sa.select(observed_t).where(*key)).first()
            if row is not None and (row.active_version, row.health, row.detail) == (
                active_version, health, detail,
            ):  # fmt: skip
                return False
            values = {"active_version": active_version, "health": health, "detail": detail,
                      "changed": utc_now()}  # fmt: skip
            if row is None:
                conn.execute(sa.insert(observed_t).values(host_id=host_id, plugin=plugin, **values))
            else:
                conn.execute(sa.update(observed_t).where(*key).values(**values))
            return True

        return self._write(run)

    def list_observed(
        self, *, plugin: str | None = None, host_id: str | None = None
    ) -> list[ObservedRecord]:
        """Observed rows, by plugin then host, optionally of one plugin and/or one host."""
        query = sa.select(observed_t).order_by(observed_t.c.plugin, observed_t.c.host_id)
        if plugin is not None:
            query = query.where(observed_t.c.plugin == plugin)
        if host_id is not None:
            query = query.where(observed_t.c.host_id == host_id)
        with self._read() as conn:
            return [observed_record(r) for r in conn.execute(query).all()]
