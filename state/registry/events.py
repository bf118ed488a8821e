"""Events: the append-only record of every plugin state change."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugvisor.state.registry.codec import utc_now
from plugvisor.state.registry.db import Database
from plugvisor.state.registry.records import EventRecord, event_record
from plugvisor.state.registry.schema import (
    Q,
    events_t,
)


class Events(Database):
    """Appending and listing events; other aggregates append inside their own transactions."""

    def record_event(
        self,
        plugin: str,
        kind: str,
        *,
        from_version: str | None = None,
        to_version: str | None = None,
        outcome: str = "ok",
        reason: str = "",
    ) -> EventRecord:
        """Append one state-change event (swaps, rollbacks, crashes, ...) for the record."""
        return self._write(
            lambda conn: self._event(conn, plugin, kind, from_version, to_version, outcome, reason)
        )

    def list_events(self, limit: int = 100, plugin: str | None = None) -> list[EventRecord]:
        """Events, newest first."""
        query = sa.select(events_t).order_by(events_t.c.id.desc()).limit(limit)
        if plugin is not None:
            query = query.where(events_t.c.plugin == plugin)
        with self._read() as conn:
            return [event_record(r) for r in conn.execute(query).all()]

    def _event(  # noqa: PLR0917 -- private; one column per argument
        self,
        conn: Connection,
        plugin: str,
        kind: str,
        from_version: str | None,
        to_version: str | None,
        outcome: str,
        reason: str,
    ) -> EventRecord:
        row = conn.execute(
            Q.event,
            {"b_plugin": plugin, "b_kind": kind, "b_from": from_version, "b_to": to_version,
             "b_outcome": outcome, "b_reason": reason, "b_at": utc_now()},
        ).one()  # fmt: skip
        return event_record(row)
