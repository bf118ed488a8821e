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
from sqlalchemy.exc import DBAPIError, OperationalError

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


def is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


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
                if not is_locked(exc):
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
