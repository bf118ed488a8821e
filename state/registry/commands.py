"""Commands: control-plane commands as first recorded, and their outcomes (replay guard).

A record is per (command id, host): a command sent to every host of a fleet is applied
and answered by each host once, whatever number of copies reach it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Connection

from plugvisor.core.errors import NotFoundError
from plugvisor.state.registry.codec import dumps, loads, ts_req, utc_now
from plugvisor.state.registry.db import Database, insert_first
from plugvisor.state.registry.records import CommandRecord
from plugvisor.state.registry.schema import Q


class Commands(Database):
    """Recording, finishing and reading commands."""

    # ---- control-plane commands and events ----------------------------------------------------
    def record_command(
        self, command_id: str, host_id: str, kind: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Remember a command ``host_id`` is about to apply; its outcome if already finished.

        ``None`` means "apply it now": the command is new, or an earlier attempt stopped
        before :meth:`finish_command` (the daemon is the single writer, so re-applying
        is safe: its state changes are transactions of their own).
        """

        def run(conn: Connection) -> dict[str, Any] | None:
            row = conn.execute(Q.command, {"b_id": command_id, "b_host": host_id}).first()
            if row is not None:
                outcome = loads(row.outcome)
                return None if outcome is None else dict(outcome)
            insert_first(
                conn,
                Q.insert_command,
                {"b_id": command_id, "b_host": host_id, "b_kind": kind,
                 "b_params": dumps(dict(params or {})), "b_now": utc_now()},
            )  # fmt: skip
            return None

        return self._write(run)

    def finish_command(self, command_id: str, host_id: str, outcome: Mapping[str, Any]) -> None:
        """Store the outcome a repeated delivery of ``command_id`` to ``host_id`` gets."""

        def run(conn: Connection) -> None:
            done = conn.execute(
                Q.finish_command,
                {"b_id": command_id, "b_host": host_id, "b_outcome": dumps(dict(outcome)),
                 "b_now": utc_now()},
            )  # fmt: skip
            if done.rowcount == 0:
                raise _never_recorded(command_id, host_id)

        self._write(run)

    def get_command(self, command_id: str, host_id: str) -> CommandRecord:
        """One host's record of a command; ``NotFoundError("command")`` when absent."""
        with self._read() as conn:
            row = conn.execute(Q.command, {"b_id": command_id, "b_host": host_id}).first()
        if row is None:
            raise _never_recorded(command_id, host_id)
        return CommandRecord(
            id=row.id, host_id=row.host_id, kind=row.kind, params=loads(row.params),
            outcome=loads(row.outcome), created=ts_req(row.created),
        )  # fmt: skip


def _never_recorded(command_id: str, host_id: str) -> NotFoundError:
    return NotFoundError(
        "command", f"command {command_id!r} was never recorded by host {host_id!r}",
        command_id=command_id, host_id=host_id,
    )  # fmt: skip
