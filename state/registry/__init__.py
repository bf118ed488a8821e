"""The plugin registry: plugins, versions, dependency edges, jobs, commands and events.

SQLAlchemy Core over SQLite in WAL mode (PostgreSQL for a fleet goes through the same
statements). The schema is versioned in code (:mod:`.schema`): the migrations are applied
in order, in one transaction, when a :class:`Registry` opens, and ``schema_version``
remembers how far a database has come, so reopening is a no-op and an older binary
refuses a newer DB.

One module per aggregate, each a :class:`~.db.Database` subclass over the same engine:
:mod:`.versions` (plugins, versions, activation, dependencies), :mod:`.jobs`,
:mod:`.commands`, :mod:`.events`, and for the fleet :mod:`.artefacts` (the shared store of
signed archives) and :mod:`.hosts` (heartbeats, observed state); :mod:`.records` holds
what their rows read back as. :class:`Registry` is the facade the processes open: all of
them in one object over one engine.

Versions are stored as text and compared in Python with :mod:`plugvisor.core.semver`
(string order is not SemVer precedence). Two invariants are enforced inside the
transaction that could break them: a new version must be higher than every version of
that plugin ever recorded (``add_version``, the rollback-attack rule), and a plugin has at
most one ``active`` version (``activate``, backed by a partial unique index so not even a
buggy caller can store two).

Who writes what (the single-writer rule, docs/ARCHITECTURE.md "State"): the daemon is the
only writer of the *live* fields — which version is active, ``disabled``, and the events
of swaps, crashes and violations; workers write what a job produces before anything runs
— new versions, review statuses and reports, and their own job records — and ask the
daemon (a control command) for every change to what serves calls.

On SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (the write lock is
taken before the first read, so read-check-write sequences cannot interleave), and a
write that still meets ``database is locked`` is retried until a deadline.

Engines must not cross ``fork()``: open a :class:`Registry` in the process that uses it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from plugvisor.state.layout import StateLayout
from plugvisor.state.registry.artefacts import Artefacts
from plugvisor.state.registry.commands import Commands
from plugvisor.state.registry.hosts import Hosts
from plugvisor.state.registry.jobs import Jobs
from plugvisor.state.registry.records import (
    ACTIVATABLE,
    ActivationCheck,
    CommandRecord,
    Dependent,
    EventRecord,
    HostRecord,
    JobRecord,
    JobStatus,
    ObservedRecord,
    PluginMetaLike,
    PluginRecord,
    VersionRecord,
    VersionStatus,
)
from plugvisor.state.registry.schema import SCHEMA_VERSION
from plugvisor.state.registry.versions import Versions

if TYPE_CHECKING:
    from plugvisor.core.config import Settings

__all__ = [
    "ACTIVATABLE",
    "SCHEMA_VERSION",
    "ActivationCheck",
    "CommandRecord",
    "Dependent",
    "EventRecord",
    "HostRecord",
    "JobRecord",
    "JobStatus",
    "ObservedRecord",
    "PluginMetaLike",
    "PluginRecord",
    "Registry",
    "VersionRecord",
    "VersionStatus",
]


class Registry(Versions, Jobs, Commands, Artefacts, Hosts):
    """The registry database. Open with a :class:`StateLayout` or a SQLAlchemy URL.

    ``lock_timeout`` bounds how long one write waits for the database lock (SQLite's
    busy handler first, then retries) before :class:`StateError` ``state.locked``.
    """

    def plugin_summary(self, plugin: PluginRecord, *, down_after_s: float) -> dict[str, Any]:
        """:meth:`PluginRecord.summary` with its versions and, per host, what runs there.

        ``hosts``: one row per host that ever ran the plugin, with the version it runs,
        its health, whether the host is ``up`` or ``down`` (no heartbeat for
        ``down_after_s``) and whether it is ``behind`` the desired (active) version.
        """
        now = datetime.now(UTC)
        known = {h.host_id: h for h in self.list_hosts()}
        out = plugin.summary(self.list_versions(plugin.name))
        rows = []
        for o in self.list_observed(plugin=plugin.name):
            host = known.get(o.host_id)
            down = host is None or host.is_down(now, down_after_s)
            rows.append({
                "host_id": o.host_id, "version": o.active_version, "health": o.health,
                "detail": o.detail, "host_status": "down" if down else "up",
                "behind": not plugin.disabled and o.active_version != plugin.active_version,
                "changed": o.changed.isoformat(),
            })  # fmt: skip
        out["hosts"] = rows
        return out

    def host_summaries(self, *, down_after_s: float) -> list[dict[str, Any]]:
        """Every host as ``plugvisor hosts`` and ``GET /api/hosts`` show it."""
        observed = self.list_observed()
        now = datetime.now(UTC)
        return [h.summary(observed, now, down_after_s) for h in self.list_hosts()]

    @classmethod
    def open(cls, settings: Settings, *, lock_timeout: float = 10.0) -> Registry:
        """The registry ``settings`` name: ``database_url``, else the state dir's SQLite file."""
        target = settings.database_url or StateLayout(settings.state_dir)
        return cls(target, lock_timeout=lock_timeout)
