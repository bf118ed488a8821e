"""The plugin registry: plugins, versions, dependency edges, jobs, commands and events.

SQLAlchemy Core over SQLite in WAL mode (PostgreSQL for a fleet goes through the same
statements). The schema is versioned in code: :data:`_MIGRATIONS` is applied in order,
in one transaction, when a :class:`Registry` opens, and ``schema_version`` remembers how
far a database has come, so reopening is a no-op and an older binary refuses a newer DB.

Versions are stored as text and compared in Python with :mod:`plugvisor.core.semver`
(string order is not SemVer precedence). Two invariants are enforced here, inside the
transaction that could break them: a new version must be higher than every version of
that plugin ever recorded (:meth:`Registry.add_version`, the rollback-attack rule), and a
plugin has at most one ``active`` version (:meth:`Registry.activate`, backed by a partial
unique index so not even a buggy caller can store two).

On SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (the write lock is
taken before the first read, so read-check-write sequences cannot interleave), and a
write that still meets ``database is locked`` is retried until a deadline.

Engines must not cross ``fork()``: open a :class:`Registry` in the process that uses it.
"""

from __future__ import annotations

import enum
import json
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from plugvisor.core.errors import (
    ConflictError,
    NotFoundError,
    PlugvisorError,
    StateError,
    VersionError,
)
from plugvisor.core.semver import Version, parse_range, parse_version
from plugvisor.state.layout import StateLayout

__all__ = [
    "SCHEMA_VERSION",
    "ActivationCheck",
    "CommandRecord",
    "Dependent",
    "EventRecord",
    "JobRecord",
    "JobStatus",
    "PluginMetaLike",
    "PluginRecord",
    "Registry",
    "VersionRecord",
    "VersionStatus",
]

T = TypeVar("T")


class VersionStatus(enum.StrEnum):
    """Where one version of a plugin stands."""

    #: Refused by validation or review; kept for the record, never run.
    quarantined = "quarantined"
    #: Scan findings at or above the review severity: waits for an admin's decision.
    review = "review"
    #: Validated (and scanned clean or approved by an admin): may be activated.
    approved = "approved"
    #: The one version serving calls for its plugin.
    active = "active"
    #: Was active, replaced by another version; may be activated again by a rollback.
    retired = "retired"
    #: Withdrawn by an operator or by the violation tracker; never activated again as is.
    disabled = "disabled"


#: Statuses from which :meth:`Registry.activate` may make a version active.
ACTIVATABLE = frozenset({VersionStatus.approved, VersionStatus.retired, VersionStatus.active})


class JobStatus(enum.StrEnum):
    """Life of a queued job (SPEC §6: ``queued, running: <step>, succeeded, failed``)."""

    #: Recorded, waiting for a worker.
    queued = "queued"
    #: A worker is on it; ``step`` says where.
    running = "running"
    #: Done; ``result`` holds the outcome.
    succeeded = "succeeded"
    #: Stopped; ``error`` holds ``{code, message}``.
    failed = "failed"


class PluginMetaLike(Protocol):
    """What :meth:`Registry.add_version` reads from a parsed ``plugin.yaml`` (``PluginMeta``)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> Any: ...
    @property
    def entrypoint(self) -> str: ...
    @property
    def profile(self) -> str | None: ...
    @property
    def requires(self) -> Mapping[str, Any]: ...


# ---- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginRecord:
    """One plugin: the highest version ever accepted and which version is live."""

    name: str
    highest_version: str
    active_version: str | None
    previous_version: str | None
    disabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    created: datetime
    updated: datetime

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)

    def summary(self, versions: Iterable[VersionRecord]) -> dict[str, Any]:
        """The plugin as the API and the CLI show it, with ``versions`` summarised."""
        return {
            "name": self.name,
            "active_version": self.active_version,
            "previous_version": self.previous_version,
            "highest_version": self.highest_version,
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
            "disabled_at": None if self.disabled_at is None else self.disabled_at.isoformat(),
            "versions": [v.summary() for v in versions],
        }


@dataclass(frozen=True)
class VersionRecord:
    """One recorded version of a plugin, with its code digest and review trail."""

    plugin: str
    version: str
    status: VersionStatus
    digest: str
    keyid: str
    profile: str | None
    entrypoint: str
    meta: dict[str, Any]
    report: dict[str, Any] | None
    requires: dict[str, str]
    review_by: str | None
    review_reason: str | None
    review_at: datetime | None
    created: datetime
    updated: datetime

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)

    def summary(self) -> dict[str, Any]:
        """The version as the API and the CLI list it (no manifest, no scan report)."""
        review = None
        if self.review_by is not None:
            at = None if self.review_at is None else self.review_at.isoformat()
            review = {"by": self.review_by, "reason": self.review_reason, "at": at}
        return {
            "plugin": self.plugin,
            "version": self.version,
            "status": self.status.value,
            "digest": self.digest,
            "keyid": self.keyid,
            "profile": self.profile,
            "requires": dict(self.requires),
            "created": self.created.isoformat(),
            "review": review,
        }


@dataclass(frozen=True)
class JobRecord:
    """One queued job: what it does, where it is, and how it ended."""

    id: str
    kind: str
    status: JobStatus
    step: str | None
    steps: tuple[dict[str, Any], ...]
    params: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    idempotency_key: str | None
    created: datetime
    updated: datetime

    @property
    def display_status(self) -> str:
        """``queued``, ``running: <step>``, ``succeeded`` or ``failed: <reason>`` (SPEC §6)."""
        if self.status is JobStatus.running and self.step:
            return f"running: {self.step}"
        if self.status is JobStatus.failed and self.error:
            return f"failed: {self.error.get('code', '')}: {self.error.get('message', '')}"
        return self.status.value

    def to_dict(self) -> dict[str, Any]:
        out = _record_dict(self)
        out["steps"] = list(self.steps)
        out["display_status"] = self.display_status
        return out


@dataclass(frozen=True)
class CommandRecord:
    """A control-plane command as first recorded, and its outcome once applied."""

    id: str
    kind: str
    params: dict[str, Any]
    outcome: dict[str, Any] | None
    created: datetime

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)


@dataclass(frozen=True)
class EventRecord:
    """One state change of a plugin (activation, status change, disable, ...)."""

    id: int
    plugin: str
    kind: str
    from_version: str | None
    to_version: str | None
    outcome: str
    reason: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)


@dataclass(frozen=True)
class ActivationCheck:
    """What a swap needs to know before it spawns anything (:meth:`Registry.check_activation`).

    Read in one transaction and without the version's stored report (a scan report can be
    large): the daemon runs this on every swap.
    """

    plugin: PluginRecord
    version: str
    status: VersionStatus
    digest: str
    #: Every reason activating the version would break the dependency graph; [] if none.
    conflicts: list[str]


class Dependent(NamedTuple):
    """An active plugin whose active version requires another plugin within ``range``."""

    plugin: str
    version: str
    range: str


def _record_dict(rec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(rec).items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
        elif isinstance(value, enum.Enum):
            out[key] = value.value
        else:
            out[key] = value
    return out


# ---- schema -----------------------------------------------------------------------------

# Lightweight table handles for statements; the DDL lives in the migrations below, so
# an old migration never changes when the current shape does.
_schema_version = sa.table("schema_version", sa.column("version"), sa.column("applied"))
_plugins = sa.table(
    "plugins",
    *(sa.column(c) for c in (
        "name", "highest_version", "active_version", "previous_version", "disabled",
        "disabled_reason", "disabled_at", "created", "updated",
    )),
)  # fmt: skip
_versions = sa.table(
    "versions",
    *(sa.column(c) for c in (
        "plugin", "version", "status", "digest", "keyid", "profile", "entrypoint", "meta",
        "report", "review_by", "review_reason", "review_at", "created", "updated",
    )),
)  # fmt: skip
_requires = sa.table(
    "requires",
    sa.column("plugin"), sa.column("version"), sa.column("requires_name"), sa.column("range"),
)  # fmt: skip
_jobs = sa.table(
    "jobs",
    *(sa.column(c) for c in (
        "id", "kind", "status", "step", "steps", "params", "result", "error",
        "idempotency_key", "created", "updated",
    )),
)  # fmt: skip
_commands = sa.table(
    "commands",
    sa.column("id"), sa.column("kind"), sa.column("params"), sa.column("outcome"),
    sa.column("created"), sa.column("finished"),
)  # fmt: skip
_events = sa.table(
    "events",
    *(sa.column(c) for c in (
        "id", "plugin", "kind", "from_version", "to_version", "outcome", "reason", "at",
    )),
)  # fmt: skip


_b = sa.bindparam
_version_key = (_versions.c.plugin == _b("b_plugin"), _versions.c.version == _b("b_version"))


class _Q:
    """The statements of the hot paths (every swap, command and job step), built once.

    Building a statement (SQLAlchemy's construction and cache key) costs several times
    what executing a prebuilt one with bound parameters does, and a swap runs about a
    dozen (``bench/daemon_bench.py`` reports the swap's phases).
    Bound parameter names carry a ``b_`` prefix: a column's own name is reserved in SET.
    """

    plugin = sa.select(_plugins).where(_plugins.c.name == _b("b_name"))
    plugin_locked = plugin.with_for_update()
    version = sa.select(_versions).where(*_version_key)
    version_check = sa.select(_versions.c.status, _versions.c.digest).where(*_version_key)
    requires = sa.select(_requires.c.requires_name, _requires.c.range).where(
        _requires.c.plugin == _b("b_plugin"), _requires.c.version == _b("b_version")
    )
    dependents = (
        sa.select(_plugins.c.name, _plugins.c.active_version, _requires.c.range)
        .select_from(
            _plugins.join(
                _requires,
                sa.and_(
                    _requires.c.plugin == _plugins.c.name,
                    _requires.c.version == _plugins.c.active_version,
                ),
            )
        )
        .where(_requires.c.requires_name == _b("b_name"))
        .order_by(_plugins.c.name)
    )
    active_of = sa.select(_versions.c.version).where(
        _versions.c.plugin == _b("b_plugin"), _versions.c.status == _b("b_status")
    )
    set_version_status = (
        sa.update(_versions).where(*_version_key).values(status=_b("b_status"), updated=_b("b_now"))
    )
    set_active = (
        sa.update(_plugins)
        .where(_plugins.c.name == _b("b_name"))
        .values(active_version=_b("b_active"), previous_version=_b("b_previous"),
                updated=_b("b_now"))
    )  # fmt: skip
    event = (
        sa.insert(_events)
        .values(
            plugin=_b("b_plugin"), kind=_b("b_kind"), from_version=_b("b_from"),
            to_version=_b("b_to"), outcome=_b("b_outcome"), reason=_b("b_reason"),
            at=_b("b_at"),
        )
        .returning(*_events.c)
    )  # fmt: skip
    command = sa.select(_commands).where(_commands.c.id == _b("b_id"))
    insert_command = sa.insert(_commands).values(
        id=_b("b_id"), kind=_b("b_kind"), params=_b("b_params"), outcome=None,
        created=_b("b_now"), finished=None,
    )  # fmt: skip
    finish_command = (
        sa.update(_commands)
        .where(_commands.c.id == _b("b_id"))
        .values(outcome=_b("b_outcome"), finished=_b("b_now"))
    )
    job = sa.select(_jobs).where(_jobs.c.id == _b("b_id"))


def _migration_1(conn: Connection) -> None:
    """Initial schema: plugins, versions, requires, jobs, commands, events."""
    md = sa.MetaData()
    ts = sa.String(40)  # ISO 8601 UTC text: sorts in time order, readable in sqlite3
    sa.Table(
        "plugins", md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("highest_version", sa.String(128), nullable=False),
        sa.Column("active_version", sa.String(128), nullable=True),
        sa.Column("previous_version", sa.String(128), nullable=True),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("disabled_reason", sa.Text, nullable=True),
        sa.Column("disabled_at", ts, nullable=True),
        sa.Column("created", ts, nullable=False),
        sa.Column("updated", ts, nullable=False),
    )  # fmt: skip
    versions = sa.Table(
        "versions", md,
        sa.Column("plugin", sa.String(64), sa.ForeignKey("plugins.name"), primary_key=True),
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("keyid", sa.String(64), nullable=False),
        sa.Column("profile", sa.String(128), nullable=True),
        sa.Column("entrypoint", sa.String(256), nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Column("report", sa.Text, nullable=True),
        sa.Column("review_by", sa.String(128), nullable=True),
        sa.Column("review_reason", sa.Text, nullable=True),
        sa.Column("review_at", ts, nullable=True),
        sa.Column("created", ts, nullable=False),
        sa.Column("updated", ts, nullable=False),
        sa.CheckConstraint(
            "status IN ('quarantined','review','approved','active','retired','disabled')",
            name="ck_versions_status",
        ),
    )  # fmt: skip
    # At most one active version per plugin, whatever the code above it does.
    sa.Index(
        "ux_versions_one_active", versions.c.plugin, unique=True,
        sqlite_where=versions.c.status == "active",
        postgresql_where=versions.c.status == "active",
    )  # fmt: skip
    sa.Table(
        "requires", md,
        sa.Column("plugin", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("requires_name", sa.String(64), primary_key=True),
        sa.Column("range", sa.String(256), nullable=False),
        sa.ForeignKeyConstraint(
            ["plugin", "version"], ["versions.plugin", "versions.version"], ondelete="CASCADE"
        ),
        sa.Index("ix_requires_name", "requires_name"),
    )  # fmt: skip
    sa.Table(
        "jobs", md,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.String(128), nullable=True),
        sa.Column("steps", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("idempotency_key", sa.String(256), nullable=True, unique=True),
        sa.Column("created", ts, nullable=False),
        sa.Column("updated", ts, nullable=False),
        sa.CheckConstraint(
            "status IN ('queued','running','succeeded','failed')", name="ck_jobs_status"
        ),
        sa.Index("ix_jobs_status_created", "status", "created"),
    )  # fmt: skip
    sa.Table(
        "commands", md,
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.Column("created", ts, nullable=False),
        sa.Column("finished", ts, nullable=True),
    )  # fmt: skip
    sa.Table(
        "events", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("plugin", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("from_version", sa.String(128), nullable=True),
        sa.Column("to_version", sa.String(128), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.Index("ix_events_plugin", "plugin"),
    )  # fmt: skip
    md.create_all(conn)


#: Ordered migrations; the schema version of a database is how many of them it has had.
#: Append only: never edit or reorder a migration that has shipped.
_MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_migration_1,)
SCHEMA_VERSION = len(_MIGRATIONS)

_UNSET: Any = object()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _ts_req(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _check_not_newer(current: int) -> None:
    if current > SCHEMA_VERSION:
        raise StateError(
            "schema_too_new",
            f"registry schema version {current} is newer than this plugvisor understands "
            f"({SCHEMA_VERSION}); upgrade plugvisor",
            found=current, supported=SCHEMA_VERSION,
        )  # fmt: skip


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


# ---- the registry ---------------------------------------------------------------------------


class Registry:
    """The registry database. Open with a :class:`StateLayout` or a SQLAlchemy URL.

    ``lock_timeout`` bounds how long one write waits for the database lock (SQLite's
    busy handler first, then retries) before :class:`StateError` ``state.locked``.
    """

    def __init__(self, target: StateLayout | str, *, lock_timeout: float = 10.0) -> None:
        if isinstance(target, StateLayout):
            target.root.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{target.registry_db}"
            _precreate(target.registry_db)
        else:
            url = target
        self.url = url
        self.lock_timeout = lock_timeout
        self._engine = sa.create_engine(url)
        # Errors and logs name the database without its password.
        self._shown_url = self._engine.url.render_as_string(hide_password=True)
        self._sqlite = self._engine.dialect.name == "sqlite"
        if self._sqlite:
            self._install_sqlite_hooks(self._engine, lock_timeout)
        self._writer = self._engine.execution_options(plugvisor_write=True)
        self._migrate()

    # ---- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Release every pooled connection (idempotent)."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _install_sqlite_hooks(engine: Engine, lock_timeout: float) -> None:
        busy_ms = max(1, int(lock_timeout * 1000))

        @sa_event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from pysqlite so "begin" below decides.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            try:
                cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
                _enable_wal(cur, lock_timeout)
                cur.execute("PRAGMA synchronous = FULL")
                cur.execute("PRAGMA foreign_keys = ON")
            finally:
                cur.close()

        @sa_event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers lock up front: a read-check-write cannot interleave with another.
            write = conn.get_execution_options().get("plugvisor_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction (one consistent snapshot); database failures become StateError."""
        try:
            with self._engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise StateError(
                "database", f"registry read failed: {exc.orig}", url=self._shown_url
            ) from exc

    def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction, retrying on a locked database until the deadline."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        while True:
            try:
                with self._writer.begin() as conn:
                    return fn(conn)
            except OperationalError as exc:
                if not _is_locked(exc):
                    raise StateError(
                        "database", f"registry write failed: {exc.orig}", url=self._shown_url
                    ) from exc
                if time.monotonic() >= deadline:
                    raise StateError(
                        "locked",
                        f"registry database stayed locked for {self.lock_timeout:.1f}s",
                        url=self._shown_url,
                    ) from exc
                # Back-off between retries of a contended lock, jittered so writers spread.
                time.sleep(delay * (0.5 + random.random()))  # noqa: S311
                delay = min(delay * 2, 0.2)

    def _migrate(self) -> None:
        """Bring the schema up to :data:`SCHEMA_VERSION`; a no-op read when it is there."""
        if self._current_schema() == SCHEMA_VERSION:
            return  # the common case takes no write lock, so opening never waits on writers

        def run(conn: Connection) -> None:
            conn.exec_driver_sql(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER NOT NULL, applied VARCHAR(40) NOT NULL)"
            )
            # Re-read under the write lock: another process may have migrated meanwhile.
            found = conn.execute(sa.select(sa.func.max(_schema_version.c.version))).scalar()
            current = int(found or 0)
            _check_not_newer(current)
            for number, migration in enumerate(_MIGRATIONS[current:], start=current + 1):
                migration(conn)
                conn.execute(sa.insert(_schema_version).values(version=number, applied=_now()))

        self._write(run)

    def _current_schema(self) -> int:
        with self._read() as conn:
            if not sa.inspect(conn).has_table("schema_version"):
                return 0
            found = conn.execute(sa.select(sa.func.max(_schema_version.c.version))).scalar()
        current = int(found or 0)
        _check_not_newer(current)
        return current

    def schema_version(self) -> int:
        """The migration level of the open database."""
        return self._current_schema()

    # ---- plugins and versions --------------------------------------------------------------
    def add_version(
        self,
        meta: PluginMetaLike,
        digest: str,
        keyid: str,
        status: VersionStatus = VersionStatus.approved,
        report: Mapping[str, Any] | None = None,
    ) -> VersionRecord:
        """Record a new version; refuse one not higher than every version ever recorded.

        The monotonic check and the insert share one transaction (SQLite write lock taken
        at BEGIN; ``FOR UPDATE`` on the plugin row elsewhere), so two concurrent uploads
        cannot both pass it. Raises ``VersionError("not_newer")`` naming both versions.
        """
        status = VersionStatus(status)
        if status is VersionStatus.active:
            raise StateError(
                "invalid_status", "a new version cannot be added as active; use activate()"
            )
        name = meta.name
        version_text = str(meta.version)
        new = parse_version(version_text)
        requires = {dep: _range_text(rng) for dep, rng in dict(meta.requires).items()}
        for text in requires.values():
            parse_range(text)  # refuse a malformed edge before it is stored
        meta_json = _meta_dict(meta)

        def run(conn: Connection) -> VersionRecord:
            now = _now()
            row = conn.execute(
                sa.select(_plugins.c.highest_version)
                .where(_plugins.c.name == name)
                .with_for_update()
            ).first()
            if row is None:
                conn.execute(
                    sa.insert(_plugins).values(
                        name=name, highest_version=version_text, active_version=None,
                        previous_version=None, disabled=False, disabled_reason=None,
                        disabled_at=None, created=now, updated=now,
                    )
                )  # fmt: skip
            else:
                if not new > parse_version(row.highest_version):
                    raise _not_newer(name, version_text, row.highest_version)
                conn.execute(
                    sa.update(_plugins)
                    .where(_plugins.c.name == name)
                    .values(highest_version=version_text, updated=now)
                )
            try:
                conn.execute(
                    sa.insert(_versions).values(
                        plugin=name, version=version_text, status=status.value, digest=digest,
                        keyid=keyid, profile=meta.profile, entrypoint=meta.entrypoint,
                        meta=_dumps(meta_json),
                        report=None if report is None else _dumps(dict(report)),
                        review_by=None, review_reason=None, review_at=None,
                        created=now, updated=now,
                    )
                )  # fmt: skip
            except IntegrityError as exc:
                raise ConflictError(
                    "duplicate_digest",
                    f"digest {digest} is already recorded for another version",
                    digest=digest,
                ) from exc
            for dep, text in requires.items():
                conn.execute(
                    sa.insert(_requires).values(
                        plugin=name, version=version_text, requires_name=dep, range=text
                    )
                )
            self._event(conn, name, "added", None, version_text, status.value, "")
            return self._version_in(conn, name, version_text)

        return self._write(run)

    def check_newer(self, name: str, version: str) -> None:
        """Raise ``VersionError("not_newer")`` unless ``version`` would pass :meth:`add_version`.

        Advisory (a read): lets an installer refuse before storing anything; the
        authoritative check is the one inside :meth:`add_version`'s transaction.
        """
        plugin = self.find_plugin(name)
        if plugin is not None and not parse_version(version) > parse_version(
            plugin.highest_version
        ):
            raise _not_newer(name, version, plugin.highest_version)

    def get_plugin(self, name: str) -> PluginRecord:
        """The plugin's record; ``NotFoundError("plugin")`` when it was never recorded."""
        with self._read() as conn:
            return self._plugin_in(conn, name)

    def find_plugin(self, name: str) -> PluginRecord | None:
        """The plugin's record, or None."""
        with self._read() as conn:
            row = conn.execute(_Q.plugin, {"b_name": name}).first()
            return None if row is None else _plugin_record(row)

    def list_plugins(self) -> list[PluginRecord]:
        """Every plugin, by name."""
        with self._read() as conn:
            rows = conn.execute(sa.select(_plugins).order_by(_plugins.c.name)).all()
            return [_plugin_record(r) for r in rows]

    def get_version(self, name: str, version: str) -> VersionRecord:
        """One version; ``NotFoundError("version")`` when absent."""
        with self._read() as conn:
            return self._version_in(conn, name, str(version))

    def find_digest(self, digest: str) -> VersionRecord | None:
        """The version whose code has ``digest``, or None (for the version store's GC)."""
        with self._read() as conn:
            row = conn.execute(sa.select(_versions).where(_versions.c.digest == digest)).first()
            if row is None:
                return None
            return self._version_in(conn, row.plugin, row.version)

    def list_versions(self, name: str) -> list[VersionRecord]:
        """Every version of ``name``, lowest SemVer precedence first."""
        with self._read() as conn:
            rows = conn.execute(sa.select(_versions).where(_versions.c.plugin == name)).all()
            records = [self._to_version(conn, r) for r in rows]
        return sorted(records, key=lambda r: parse_version(r.version))

    def active_versions(self) -> list[VersionRecord]:
        """The active version of every plugin that has one, by plugin name."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_versions)
                .where(_versions.c.status == VersionStatus.active.value)
                .order_by(_versions.c.plugin)
            ).all()
            return [self._to_version(conn, r) for r in rows]

    def activate(self, name: str, version: str) -> tuple[VersionRecord | None, VersionRecord]:
        """Make ``version`` the one active version of ``name``; return ``(old, new)``.

        One transaction: the old active version becomes ``retired`` and is remembered as
        ``previous_version``. Activating the version already active changes nothing and
        returns ``(new, new)``. Only approved, retired (a rollback) or active versions
        may be activated, and not while the plugin is disabled.
        """
        version = str(version)

        def run(conn: Connection) -> tuple[VersionRecord | None, VersionRecord]:
            changed, old = self._switch_in(conn, name, version)
            new = self._version_in(conn, name, version)
            if not changed:
                return new, new
            return (self._version_in(conn, name, old) if old else None), new

        return self._write(run)

    def switch_active(self, name: str, version: str) -> str | None:
        """:meth:`activate` for the daemon's swap path: returns the version active before
        (``version`` itself when it already was), without loading either record."""
        version = str(version)
        return self._write(lambda conn: self._switch_in(conn, name, version)[1])

    def _switch_in(self, conn: Connection, name: str, version: str) -> tuple[bool, str | None]:
        """The activation inside ``conn``'s write transaction: ``(changed, old version)``."""
        plugin = self._plugin_in(conn, name, lock=True)
        row = conn.execute(_Q.version_check, {"b_plugin": name, "b_version": version}).first()
        if row is None:
            raise _no_version(name, version)
        status = VersionStatus(row.status)
        if status is VersionStatus.active:
            return False, version
        if status not in ACTIVATABLE:
            raise ConflictError(
                "not_activatable",
                f"{name} {version} is {status.value}; only approved or retired "
                "versions can be activated",
                plugin=name, version=version, status=status.value,
            )  # fmt: skip
        if plugin.disabled:
            raise ConflictError(
                "plugin_disabled",
                f"{name} is disabled ({plugin.disabled_reason}); enable it first",
                plugin=name,
            )
        now = _now()
        current = conn.execute(
            _Q.active_of, {"b_plugin": name, "b_status": VersionStatus.active.value}
        ).first()
        old = current.version if current is not None else None
        if old is not None:
            # Retire first: the partial unique index refuses two active rows at once.
            conn.execute(
                _Q.set_version_status,
                {"b_plugin": name, "b_version": old, "b_status": VersionStatus.retired.value,
                 "b_now": now},
            )  # fmt: skip
        conn.execute(
            _Q.set_version_status,
            {"b_plugin": name, "b_version": version, "b_status": VersionStatus.active.value,
             "b_now": now},
        )  # fmt: skip
        conn.execute(
            _Q.set_active,
            {"b_name": name, "b_active": version, "b_previous": old or plugin.previous_version,
             "b_now": now},
        )  # fmt: skip
        self._event(conn, name, "activated", old, version, "ok", "")
        return True, old

    def set_status(
        self,
        name: str,
        version: str,
        status: VersionStatus,
        *,
        by: str | None = None,
        reason: str | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> VersionRecord:
        """Change one version's status (review decisions, disabling a version, ...).

        ``by``/``reason`` are recorded as the review decision (who, why, when) when given;
        ``report`` replaces the stored scan/audit report. ``active`` is refused: use
        :meth:`activate`, which keeps the one-active invariant. Taking the active version
        to another status leaves the plugin with no active version.
        """
        status = VersionStatus(status)
        version = str(version)
        if status is VersionStatus.active:
            raise StateError("invalid_status", "use activate() to make a version active")

        def run(conn: Connection) -> VersionRecord:
            plugin = self._plugin_in(conn, name, lock=True)
            current = self._version_in(conn, name, version)
            now = _now()
            values: dict[str, Any] = {"status": status.value, "updated": now}
            if by is not None or reason is not None:
                values.update(review_by=by, review_reason=reason, review_at=now)
            if report is not None:
                values["report"] = _dumps(dict(report))
            conn.execute(
                sa.update(_versions)
                .where(_versions.c.plugin == name, _versions.c.version == version)
                .values(**values)
            )
            if plugin.active_version == version:
                conn.execute(
                    sa.update(_plugins)
                    .where(_plugins.c.name == name)
                    .values(active_version=None, previous_version=version, updated=now)
                )
            change = f"{current.status.value} -> {status.value}"
            self._event(
                conn, name, "status", version, version, status.value,
                f"{change}: {reason}" if reason else change,
            )  # fmt: skip
            return self._version_in(conn, name, version)

        return self._write(run)

    def set_report(self, name: str, version: str, report: Mapping[str, Any]) -> VersionRecord:
        """Replace the stored scan/audit report of one version without changing its status."""
        version = str(version)

        def run(conn: Connection) -> VersionRecord:
            self._version_in(conn, name, version)
            conn.execute(
                sa.update(_versions)
                .where(_versions.c.plugin == name, _versions.c.version == version)
                .values(report=_dumps(dict(report)), updated=_now())
            )
            return self._version_in(conn, name, version)

        return self._write(run)

    def disable(self, name: str, reason: str) -> PluginRecord:
        """Mark the plugin disabled with a reason (its active version stays recorded)."""

        def run(conn: Connection) -> PluginRecord:
            plugin = self._plugin_in(conn, name, lock=True)
            now = _now()
            conn.execute(
                sa.update(_plugins)
                .where(_plugins.c.name == name)
                .values(disabled=True, disabled_reason=reason, disabled_at=now, updated=now)
            )
            self._event(
                conn, name, "disabled", plugin.active_version, plugin.active_version, "ok",
                reason,
            )  # fmt: skip
            return self._plugin_in(conn, name)

        return self._write(run)

    def enable(self, name: str) -> PluginRecord:
        """Clear the disabled flag and its reason."""

        def run(conn: Connection) -> PluginRecord:
            plugin = self._plugin_in(conn, name, lock=True)
            conn.execute(
                sa.update(_plugins)
                .where(_plugins.c.name == name)
                .values(disabled=False, disabled_reason=None, disabled_at=None, updated=_now())
            )
            self._event(
                conn, name, "enabled", plugin.active_version, plugin.active_version, "ok", ""
            )
            return self._plugin_in(conn, name)

        return self._write(run)

    # ---- dependencies ----------------------------------------------------------------------
    def dependents(self, name: str) -> list[Dependent]:
        """Plugins whose active version requires ``name``: ``(plugin, version, range)``.

        A disabled plugin still counts: enabling it brings that version back.
        """
        with self._read() as conn:
            return self._dependents_in(conn, name)

    def check_dependencies(self, target: PluginMetaLike | tuple[str, str]) -> list[str]:
        """Every reason activating ``target`` would break the dependency graph; [] if none.

        ``target`` is a parsed ``plugin.yaml`` or a recorded ``(name, version)``. Checks
        (SPEC §6 reload): each ``requires`` entry names a plugin with an enabled active
        version inside the range, and every active dependent's range admits the version.
        """
        with self._read() as conn:
            if isinstance(target, tuple):
                name, version_text = target[0], str(target[1])
                self._version_in(conn, name, version_text)  # not found: NotFoundError
                requires = self._requires_in(conn, name, version_text)
            else:
                name, version_text = target.name, str(target.version)
                requires = {d: _range_text(r) for d, r in dict(target.requires).items()}
            return self._conflicts_in(conn, name, version_text, requires)

    def check_activation(self, name: str, version: str) -> ActivationCheck:
        """The plugin, the version's status and digest, and its dependency conflicts, read in
        one transaction; ``NotFoundError`` for an unknown plugin or version."""
        version = str(version)
        with self._read() as conn:
            plugin = self._plugin_in(conn, name)
            row = conn.execute(_Q.version_check, {"b_plugin": name, "b_version": version}).first()
            if row is None:
                raise _no_version(name, version)
            conflicts = self._conflicts_in(
                conn, name, version, self._requires_in(conn, name, version)
            )
        return ActivationCheck(
            plugin=plugin, version=version, status=VersionStatus(row.status),
            digest=str(row.digest), conflicts=conflicts,
        )  # fmt: skip

    def _conflicts_in(
        self, conn: Connection, name: str, version_text: str, requires: Mapping[str, str]
    ) -> list[str]:
        version = parse_version(version_text)
        conflicts: list[str] = []
        for dep, text in sorted(requires.items()):
            if dep == name:
                continue
            row = conn.execute(_Q.plugin, {"b_name": dep}).first()
            if row is None or row.active_version is None:
                conflicts.append(
                    f"{name} {version_text} requires {dep} {text}, but {dep} has no active version"
                )
                continue
            if not _admits(text, parse_version(row.active_version)):
                conflicts.append(
                    f"{name} {version_text} requires {dep} {text}, "
                    f"but {dep} {row.active_version} is active"
                )
            elif row.disabled:
                conflicts.append(
                    f"{name} {version_text} requires {dep} {text}, "
                    f"but {dep} is disabled ({row.disabled_reason})"
                )
        for user in self._dependents_in(conn, name):
            if user.plugin == name:
                continue
            if not _admits(user.range, version):
                conflicts.append(
                    f"{user.plugin} {user.version} requires {name} {user.range}, "
                    f"which does not admit {name} {version_text}"
                )
        return conflicts

    # ---- jobs -----------------------------------------------------------------------------
    def create_job(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JobRecord:
        """Record a queued job; a repeated ``idempotency_key`` returns the existing job.

        Reusing a key for a different kind of job is refused (``conflict.idempotency_key``).
        """
        params_json = _dumps(dict(params or {}))

        def existing(conn: Connection) -> JobRecord | None:
            if idempotency_key is None:
                return None
            row = conn.execute(
                sa.select(_jobs).where(_jobs.c.idempotency_key == idempotency_key)
            ).first()
            if row is None:
                return None
            if row.kind != kind:
                raise ConflictError(
                    "idempotency_key",
                    f"idempotency key {idempotency_key!r} was used for a {row.kind} job, "
                    f"not {kind}",
                    key=idempotency_key, job_id=row.id,
                )  # fmt: skip
            return _job_record(row)

        def run(conn: Connection) -> JobRecord:
            found = existing(conn)
            if found is not None:
                return found
            now = _now()
            job_id = str(uuid.uuid4())
            conn.execute(
                sa.insert(_jobs).values(
                    id=job_id, kind=kind, status=JobStatus.queued.value, step=None,
                    steps="[]", params=params_json, result=None, error=None,
                    idempotency_key=idempotency_key, created=now, updated=now,
                )
            )  # fmt: skip
            return self._job_in(conn, job_id)

        return self._write(run)

    def update_job(
        self,
        job_id: str,
        *,
        status: JobStatus | str = _UNSET,
        step: str | None = _UNSET,
        steps: Sequence[Mapping[str, Any]] = _UNSET,
        result: Any = _UNSET,
        error: Mapping[str, Any] | PlugvisorError | None = _UNSET,
    ) -> JobRecord:
        """Change the given fields of a job (others stay as they are); return the new record."""
        values: dict[str, Any] = {}
        if status is not _UNSET:
            values["status"] = JobStatus(status).value
        if step is not _UNSET:
            values["step"] = step
        if steps is not _UNSET:
            values["steps"] = _dumps([dict(s) for s in steps])
        if result is not _UNSET:
            values["result"] = None if result is None else _dumps(result)
        if error is not _UNSET:
            if isinstance(error, PlugvisorError):
                error = error.to_dict()
            values["error"] = None if error is None else _dumps(dict(error))

        def run(conn: Connection) -> JobRecord:
            self._job_in(conn, job_id)
            values["updated"] = _now()
            conn.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(**values))
            return self._job_in(conn, job_id)

        return self._write(run)

    def get_job(self, job_id: str) -> JobRecord:
        """One job; ``NotFoundError("job")`` when absent."""
        with self._read() as conn:
            return self._job_in(conn, job_id)

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 100, kind: str | None = None
    ) -> list[JobRecord]:
        """Jobs, newest first, optionally of one status and/or kind."""
        query = sa.select(_jobs).order_by(_jobs.c.created.desc(), _jobs.c.id).limit(limit)
        if status is not None:
            query = query.where(_jobs.c.status == JobStatus(status).value)
        if kind is not None:
            query = query.where(_jobs.c.kind == kind)
        with self._read() as conn:
            return [_job_record(r) for r in conn.execute(query).all()]

    # ---- control-plane commands and events ----------------------------------------------------
    def record_command(
        self, command_id: str, kind: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Remember a command before applying it; return its outcome if it already finished.

        ``None`` means "apply it now": the command is new, or an earlier attempt stopped
        before :meth:`finish_command` (the daemon is the single writer, so re-applying
        is safe: its state changes are transactions of their own).
        """

        def run(conn: Connection) -> dict[str, Any] | None:
            row = conn.execute(_Q.command, {"b_id": command_id}).first()
            if row is not None:
                outcome = _loads(row.outcome)
                return None if outcome is None else dict(outcome)
            conn.execute(
                _Q.insert_command,
                {"b_id": command_id, "b_kind": kind, "b_params": _dumps(dict(params or {})),
                 "b_now": _now()},
            )  # fmt: skip
            return None

        return self._write(run)

    def finish_command(self, command_id: str, outcome: Mapping[str, Any]) -> None:
        """Store the outcome a repeated delivery of ``command_id`` will be answered with."""

        def run(conn: Connection) -> None:
            done = conn.execute(
                _Q.finish_command,
                {"b_id": command_id, "b_outcome": _dumps(dict(outcome)), "b_now": _now()},
            )
            if done.rowcount == 0:
                raise NotFoundError(
                    "command", f"command {command_id!r} was never recorded", command_id=command_id
                )

        self._write(run)

    def get_command(self, command_id: str) -> CommandRecord:
        """One command record; ``NotFoundError("command")`` when absent."""
        with self._read() as conn:
            row = conn.execute(_Q.command, {"b_id": command_id}).first()
        if row is None:
            raise NotFoundError(
                "command", f"command {command_id!r} was never recorded", command_id=command_id
            )
        return CommandRecord(
            id=row.id, kind=row.kind, params=_loads(row.params), outcome=_loads(row.outcome),
            created=_ts_req(row.created),
        )  # fmt: skip

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
        query = sa.select(_events).order_by(_events.c.id.desc()).limit(limit)
        if plugin is not None:
            query = query.where(_events.c.plugin == plugin)
        with self._read() as conn:
            return [_event_record(r) for r in conn.execute(query).all()]

    # ---- internals --------------------------------------------------------------------------
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
            _Q.event,
            {"b_plugin": plugin, "b_kind": kind, "b_from": from_version, "b_to": to_version,
             "b_outcome": outcome, "b_reason": reason, "b_at": _now()},
        ).one()  # fmt: skip
        return _event_record(row)

    def _plugin_in(self, conn: Connection, name: str, lock: bool = False) -> PluginRecord:
        row = conn.execute(_Q.plugin_locked if lock else _Q.plugin, {"b_name": name}).first()
        if row is None:
            raise NotFoundError("plugin", f"no plugin named {name!r}", plugin=name)
        return _plugin_record(row)

    def _version_in(self, conn: Connection, name: str, version: str) -> VersionRecord:
        row = conn.execute(_Q.version, {"b_plugin": name, "b_version": version}).first()
        if row is None:
            raise _no_version(name, version)
        return self._to_version(conn, row)

    def _requires_in(self, conn: Connection, name: str, version: str) -> dict[str, str]:
        edges = conn.execute(_Q.requires, {"b_plugin": name, "b_version": version}).all()
        return {e.requires_name: e.range for e in edges}

    def _to_version(self, conn: Connection, row: Any) -> VersionRecord:
        return VersionRecord(
            plugin=row.plugin, version=row.version, status=VersionStatus(row.status),
            digest=row.digest, keyid=row.keyid, profile=row.profile, entrypoint=row.entrypoint,
            meta=_loads(row.meta), report=_loads(row.report),
            requires=self._requires_in(conn, row.plugin, row.version),
            review_by=row.review_by, review_reason=row.review_reason,
            review_at=_ts(row.review_at), created=_ts_req(row.created),
            updated=_ts_req(row.updated),
        )  # fmt: skip

    def _job_in(self, conn: Connection, job_id: str) -> JobRecord:
        row = conn.execute(_Q.job, {"b_id": job_id}).first()
        if row is None:
            raise NotFoundError("job", f"no job with id {job_id!r}", job_id=job_id)
        return _job_record(row)

    def _dependents_in(self, conn: Connection, name: str) -> list[Dependent]:
        rows = conn.execute(_Q.dependents, {"b_name": name}).all()
        return [Dependent(r.name, r.active_version, r.range) for r in rows]


# ---- helpers -------------------------------------------------------------------------------


def _no_version(name: str, version: str) -> NotFoundError:
    return NotFoundError(
        "version", f"plugin {name!r} has no version {version!r}", plugin=name, version=version
    )


def _not_newer(name: str, version: str, highest: str) -> VersionError:
    return VersionError(
        "not_newer",
        f"{name} {version} is not newer than {highest}, the highest version of {name} ever "
        "accepted; an equal or lower version is refused as a rollback attack (roll back "
        "through the backups)",
        plugin=name, version=version, highest=highest,
    )  # fmt: skip


def _enable_wal(cur: Any, timeout: float) -> None:
    """Put the database in WAL mode (persistent in the file), waiting out other openers.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is
    locked" at once instead of honouring busy_timeout: when daemon, worker and API open
    a fresh state directory together (``plugvisor up``), all but one would fail.
    """
    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return  # the common case: no lock needed
    deadline = time.monotonic() + timeout
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005 + 0.01 * random.random())  # noqa: S311 -- jitter only


def _precreate(path: Path) -> None:
    """Create the DB file 0o640 before SQLite does (it would use the umask, often 0o644)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    except FileExistsError:
        return
    except OSError as exc:
        raise StateError("unusable", f"cannot create registry {path}: {exc}") from exc
    os.close(fd)


def _range_text(rng: Any) -> str:
    """The canonical text of a requirement range (a ``VersionRange`` or a string)."""
    return str(rng).strip()


def _admits(range_text: str, version: Version) -> bool:
    return bool(parse_range(range_text).contains(version))


def _meta_dict(meta: PluginMetaLike) -> dict[str, Any]:
    """A JSON-compatible copy of the parsed plugin.yaml, requirement ranges as text."""
    to_dict = getattr(meta, "to_dict", None)
    out: dict[str, Any]
    if callable(to_dict):
        out = dict(to_dict())
    else:
        out = {
            "name": meta.name,
            "version": str(meta.version),
            "entrypoint": meta.entrypoint,
            "profile": meta.profile,
            "requires": {d: _range_text(r) for d, r in dict(meta.requires).items()},
        }
    # Round-trip now so YAML scalars json cannot hold (dates) become text once, here.
    return dict(json.loads(json.dumps(out, sort_keys=True, default=str)))


def _plugin_record(row: Any) -> PluginRecord:
    return PluginRecord(
        name=row.name, highest_version=row.highest_version, active_version=row.active_version,
        previous_version=row.previous_version, disabled=bool(row.disabled),
        disabled_reason=row.disabled_reason, disabled_at=_ts(row.disabled_at),
        created=_ts_req(row.created), updated=_ts_req(row.updated),
    )  # fmt: skip


def _job_record(row: Any) -> JobRecord:
    return JobRecord(
        id=row.id, kind=row.kind, status=JobStatus(row.status), step=row.step,
        steps=tuple(_loads(row.steps) or ()), params=_loads(row.params) or {},
        result=_loads(row.result), error=_loads(row.error),
        idempotency_key=row.idempotency_key, created=_ts_req(row.created),
        updated=_ts_req(row.updated),
    )  # fmt: skip


def _event_record(row: Any) -> EventRecord:
    return EventRecord(
        id=int(row.id), plugin=row.plugin, kind=row.kind, from_version=row.from_version,
        to_version=row.to_version, outcome=row.outcome, reason=row.reason, at=_ts_req(row.at),
    )  # fmt: skip
