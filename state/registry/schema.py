"""The registry's schema: table handles, the prepared statements of the hot paths, and the
versioned migrations (:data:`MIGRATIONS`, append only; ``SCHEMA_VERSION`` is their count).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugvisor.core.errors import StateError

# ---- schema -----------------------------------------------------------------------------

# Lightweight table handles for statements; the DDL lives in the migrations below, so
# an old migration never changes when the current shape does.
schema_version_t = sa.table("schema_version", sa.column("version"), sa.column("applied"))
plugins_t = sa.table(
    "plugins",
    *(sa.column(c) for c in (
        "name", "highest_version", "active_version", "previous_version", "disabled",
        "disabled_reason", "disabled_at", "created", "updated",
    )),
)  # fmt: skip
versions_t = sa.table(
    "versions",
    *(sa.column(c) for c in (
        "plugin", "version", "status", "digest", "keyid", "profile", "entrypoint", "meta",
        "report", "review_by", "review_reason", "review_at", "created", "updated",
    )),
)  # fmt: skip
requires_t = sa.table(
    "requires",
    sa.column("plugin"), sa.column("version"), sa.column("requires_name"), sa.column("range"),
)  # fmt: skip
jobs_t = sa.table(
    "jobs",
    *(sa.column(c) for c in (
        "id", "kind", "status", "step", "steps", "params", "result", "error",
        "idempotency_key", "created", "updated",
    )),
)  # fmt: skip
commands_t = sa.table(
    "commands",
    sa.column("id"), sa.column("host_id"), sa.column("kind"), sa.column("params"),
    sa.column("outcome"), sa.column("created"), sa.column("finished"),
)  # fmt: skip
events_t = sa.table(
    "events",
    *(sa.column(c) for c in (
        "id", "plugin", "kind", "from_version", "to_version", "outcome", "reason", "at",
    )),
)  # fmt: skip

artefacts_t = sa.table(
    "artefacts", sa.column("digest"), sa.column("archive"), sa.column("size"), sa.column("created"),
)  # fmt: skip
hosts_t = sa.table(
    "hosts",
    *(sa.column(c) for c in (
        "host_id", "started_at", "last_seen", "plugvisor_version", "pid", "layers", "load",
    )),
)  # fmt: skip
observed_t = sa.table(
    "observed",
    *(sa.column(c) for c in (
        "host_id", "plugin", "active_version", "health", "detail", "changed",
    )),
)  # fmt: skip

_b = sa.bindparam
_version_key = (versions_t.c.plugin == _b("b_plugin"), versions_t.c.version == _b("b_version"))


class Q:
    """The statements of the hot paths (every swap, command and job step), built once.

    Building a statement (SQLAlchemy's construction and cache key) costs several times
    what executing a prebuilt one with bound parameters does, and a swap runs about a
    dozen (``bench/daemon_bench.py`` reports the swap's phases).
    Bound parameter names carry a ``b_`` prefix: a column's own name is reserved in SET.
    """

    plugin = sa.select(plugins_t).where(plugins_t.c.name == _b("b_name"))
    plugin_locked = plugin.with_for_update()
    version = sa.select(versions_t).where(*_version_key)
    version_check = sa.select(versions_t.c.status, versions_t.c.digest).where(*_version_key)
    requires = sa.select(requires_t.c.requires_name, requires_t.c.range).where(
        requires_t.c.plugin == _b("b_plugin"), requires_t.c.version == _b("b_version")
    )
    dependents = (
        sa.select(plugins_t.c.name, plugins_t.c.active_version, requires_t.c.range)
        .select_from(
            plugins_t.join(
                requires_t,
                sa.and_(
                    requires_t.c.plugin == plugins_t.c.name,
                    requires_t.c.version == plugins_t.c.active_version,
                ),
            )
        )
        .where(requires_t.c.requires_name == _b("b_name"))
        .order_by(plugins_t.c.name)
    )
    active_of = sa.select(versions_t.c.version).where(
        versions_t.c.plugin == _b("b_plugin"), versions_t.c.status == _b("b_status")
    )
    set_version_status = (
        sa.update(versions_t)
        .where(*_version_key)
        .values(status=_b("b_status"), updated=_b("b_now"))
    )
    set_active = (
        sa.update(plugins_t)
        .where(plugins_t.c.name == _b("b_name"))
        .values(active_version=_b("b_active"), previous_version=_b("b_previous"),
                updated=_b("b_now"))
    )  # fmt: skip
    event = (
        sa.insert(events_t)
        .values(
            plugin=_b("b_plugin"), kind=_b("b_kind"), from_version=_b("b_from"),
            to_version=_b("b_to"), outcome=_b("b_outcome"), reason=_b("b_reason"),
            at=_b("b_at"),
        )
        .returning(*events_t.c)
    )  # fmt: skip
    _command_key = (commands_t.c.id == _b("b_id"), commands_t.c.host_id == _b("b_host"))
    command = sa.select(commands_t).where(*_command_key)
    insert_command = sa.insert(commands_t).values(
        id=_b("b_id"), host_id=_b("b_host"), kind=_b("b_kind"), params=_b("b_params"),
        outcome=None, created=_b("b_now"), finished=None,
    )  # fmt: skip
    finish_command = (
        sa.update(commands_t)
        .where(*_command_key)
        .values(outcome=_b("b_outcome"), finished=_b("b_now"))
    )
    job = sa.select(jobs_t).where(jobs_t.c.id == _b("b_id"))


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
def _migration_2(conn: Connection) -> None:
    """The fleet: the shared artefact store, hosts and their heartbeats, observed state.

    Desired state needs no table of its own: ``plugins.active_version`` and
    ``plugins.disabled`` are the fleet's desired state; ``observed`` is what each host
    runs (each daemon writes only its own rows).
    """
    md = sa.MetaData()
    ts = sa.String(40)
    sa.Table(
        "artefacts", md,
        # The version's code digest (sha256 of its MANIFEST.json); the signed archive's bytes.
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("archive", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("created", ts, nullable=False),
    )  # fmt: skip
    sa.Table(
        "hosts", md,
        sa.Column("host_id", sa.String(63), primary_key=True),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("last_seen", ts, nullable=False),
        sa.Column("plugvisor_version", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("layers", sa.Text, nullable=False),
        sa.Column("load", sa.Text, nullable=False),
    )  # fmt: skip
    sa.Table(
        "observed", md,
        sa.Column("host_id", sa.String(63), primary_key=True),
        sa.Column("plugin", sa.String(64), primary_key=True),
        sa.Column("active_version", sa.String(128), nullable=True),
        sa.Column("health", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("changed", ts, nullable=False),
    )  # fmt: skip
    md.create_all(conn)


def _migration_3(conn: Connection) -> None:
    """Command records per (command id, host): a command sent to several hosts is applied,
    recorded and answered by each of them once.

    Rows from before keep their id with the host ``""`` (no host answers from them: a
    command that old has expired anyway).
    """
    md = sa.MetaData()
    ts = sa.String(40)
    # A new table, then the old one's rows, then the swap of names (PostgreSQL keeps an
    # old table's index names, so the new key constraint is named explicitly).
    sa.Table(
        "commands_v3", md,
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("host_id", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.Column("created", ts, nullable=False),
        sa.Column("finished", ts, nullable=True),
        sa.PrimaryKeyConstraint("id", "host_id", name="pk_commands_per_host"),
    )  # fmt: skip
    md.create_all(conn)
    conn.execute(sa.text(
        "INSERT INTO commands_v3 (id, host_id, kind, params, outcome, created, finished) "
        "SELECT id, '', kind, params, outcome, created, finished FROM commands"
    ))  # fmt: skip
    conn.execute(sa.text("DROP TABLE commands"))
    conn.execute(sa.text("ALTER TABLE commands_v3 RENAME TO commands"))


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_migration_1, _migration_2, _migration_3)
SCHEMA_VERSION = len(MIGRATIONS)


def check_not_newer(current: int) -> None:
    if current > SCHEMA_VERSION:
        raise StateError(
            "schema_too_new",
            f"registry schema version {current} is newer than this plugvisor understands "
            f"({SCHEMA_VERSION}); upgrade plugvisor",
            found=current, supported=SCHEMA_VERSION,
        )  # fmt: skip
