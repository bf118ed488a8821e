"""The registry's connection: engine, SQLite hooks, read and write transactions, migration."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from plugvisor.core.errors import StateError
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry.codec import utc_now
from plugvisor.state.registry.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    check_not_newer,
    schema_version_t,
)

T = TypeVar("T")


#: PostgreSQL errors a write transaction is retried on: serialization failure, deadlock.
_PG_RETRY_STATES = frozenset({"40001", "40P01"})

#: Key of the advisory lock that serialises migrations across processes on PostgreSQL.
_PG_MIGRATION_LOCK = 0x706C7567  # "plug"


class RaceLost(Exception):
    """Raised inside a write when a concurrent writer inserted the same key first.

    :meth:`Database._write` retries the whole transaction: the next attempt sees the
    winner's row (and locks it), so the outcome is the one a serial order gives.
    """


def is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


def insert_first(conn: Connection, stmt: Any, params: Any = None) -> None:
    """Execute an INSERT of a key a concurrent writer may insert too; losing is :class:`RaceLost`.

    On SQLite the write lock taken at BEGIN already serialises writers; on PostgreSQL two
    transactions can both find the key absent, and the second insert waits for the first
    to commit and then fails with a unique violation.
    """
    try:
        conn.execute(stmt, params)
    except IntegrityError as exc:
        raise RaceLost(str(exc.orig)) from exc


def _pg_retryable(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _PG_RETRY_STATES


def engine_url(url: str) -> str:
    """``url`` with psycopg 3 as the PostgreSQL driver when the URL names none.

    SQLAlchemy's default for a bare ``postgresql://`` is psycopg2, which plugvisor does
    not ship; ``postgres://`` (the libpq spelling) is accepted too.
    """
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


def enable_wal(cur: Any, timeout: float) -> None:
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


def precreate(path: Path) -> None:
    """Create the DB file 0o640 before SQLite does (it would use the umask, often 0o644)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    except FileExistsError:
        return
    except OSError as exc:
        raise StateError("unusable", f"cannot create registry {path}: {exc}") from exc
    os.close(fd)


class Database:
    """The registry database. Open with a :class:`StateLayout` or a SQLAlchemy URL.

    ``lock_timeout`` bounds how long one write waits for the database lock (SQLite's
    busy handler first, then retries) before :class:`StateError` ``state.locked``.
    """

    def __init__(self, target: StateLayout | str, *, lock_timeout: float = 10.0) -> None:
        if isinstance(target, StateLayout):
            target.root.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{target.registry_db}"
            precreate(target.registry_db)
            #: How errors name where the database came from.
            self.source = f"registry {target.registry_db}"
        else:
            url = engine_url(target)
            self.source = "database_url"
        self.url = url
        self.lock_timeout = lock_timeout
        try:
            parsed = sa.engine.make_url(url)
            self._shown_url = parsed.render_as_string(hide_password=True)
            pg = parsed.get_backend_name() == "postgresql"
            self._engine = sa.create_engine(
                parsed,
                # A fleet's database restarts and fails over: test a pooled connection
                # before use instead of failing the first statement after an outage.
                pool_pre_ping=pg,
                **({"connect_args": {"connect_timeout": max(1, int(lock_timeout))}} if pg else {}),
            )
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise StateError(
                "database", f"{self.source}: cannot use {url!r}: {exc}", setting="database_url"
            ) from exc
        # Errors and logs name the database without its password.
        self._sqlite = self._engine.dialect.name == "sqlite"
        self._postgres = pg
        if self._sqlite:
            self._install_sqlite_hooks(self._engine, lock_timeout)
        # On PostgreSQL a read sees one snapshot (as SQLite's read transaction does);
        # writes stay READ COMMITTED and take row locks (SELECT ... FOR UPDATE).
        self._reader = (
            self._engine.execution_options(isolation_level="REPEATABLE READ")
            if pg
            else self._engine
        )
        self._writer = self._engine.execution_options(plugvisor_write=True)
        self._migrate()

    # ---- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Release every pooled connection (idempotent)."""
        self._engine.dispose()

    def __enter__(self) -> Self:
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
                enable_wal(cur, lock_timeout)
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
            with self._reader.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise self._failed("read", exc) from exc

    def _failed(self, what: str, exc: DBAPIError) -> StateError:
        return StateError(
            "database", f"{self.source} ({self._shown_url}): registry {what} failed: {exc.orig}",
            url=self._shown_url, setting="database_url" if self.source == "database_url" else None,
        )  # fmt: skip

    def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction, retrying until the deadline when it lost a
        race: a locked SQLite database, a PostgreSQL serialization failure or deadlock, or
        a :class:`RaceLost` raised by ``fn``."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        while True:
            try:
                with self._writer.begin() as conn:
                    return fn(conn)
            except (DBAPIError, RaceLost) as exc:
                if isinstance(exc, DBAPIError) and not (
                    (isinstance(exc, OperationalError) and self._sqlite and is_locked(exc))
                    or (self._postgres and _pg_retryable(exc))
                ):
                    raise self._failed("write", exc) from exc
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
            if self._postgres:
                # CREATE TABLE IF NOT EXISTS is not safe against a concurrent one there.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            conn.exec_driver_sql(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER NOT NULL, applied VARCHAR(40) NOT NULL)"
            )
            # Re-read under the write lock: another process may have migrated meanwhile.
            found = conn.execute(sa.select(sa.func.max(schema_version_t.c.version))).scalar()
            current = int(found or 0)
            check_not_newer(current)
            for number, migration in enumerate(MIGRATIONS[current:], start=current + 1):
                migration(conn)
                conn.execute(sa.insert(schema_version_t).values(version=number, applied=utc_now()))

        self._write(run)

    def _current_schema(self) -> int:
        with self._read() as conn:
            if not sa.inspect(conn).has_table("schema_version"):
                return 0
            found = conn.execute(sa.select(sa.func.max(schema_version_t.c.version))).scalar()
        current = int(found or 0)
        check_not_newer(current)
        return current

    def schema_version(self) -> int:
        """The migration level of the open database."""
        return self._current_schema()
