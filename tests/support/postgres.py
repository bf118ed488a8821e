"""A PostgreSQL cluster on loopback for the test suite (Debian's ``postgresql`` binaries).

Started the way PLATFORM-NOTES measured to work: ``initdb`` into a temporary directory
(as the ``postgres`` user when running as root: initdb refuses root), ``pg_ctl start``
listening on 127.0.0.1 only, on a free port, its Unix socket inside the cluster
directory; stopped (``pg_ctl -m fast stop``) and removed when the context ends. Each
caller asks :meth:`LoopbackPostgres.new_database` for a database of its own, so tests
never see each other's rows.

::

    with loopback_postgres() as pg:            # PostgresUnavailable: not installed
        url = pg.new_database()                # postgresql+psycopg://postgres@127.0.0.1:P/db_...
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoopbackPostgres", "PostgresUnavailable", "loopback_postgres", "pg_bindir"]


class PostgresUnavailable(Exception):
    """PostgreSQL is not installed, or the cluster did not come up (the message says which)."""


def pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``initdb``, or None."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    majors = sorted((p for p in root.iterdir() if (p / "bin" / "initdb").is_file()),
                    key=lambda p: int(p.name) if p.name.isdigit() else 0)  # fmt: skip
    return majors[-1] / "bin" if majors else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoopbackPostgres:
    """A running cluster: where it listens and how to make a database in it."""

    port: int
    directory: Path

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3, trust auth on loopback)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "pv") -> str:
        """Create an empty database of the caller's own; its URL."""
        import psycopg  # noqa: PLC0415 -- a dev dependency, only where PostgreSQL runs

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(f'CREATE DATABASE "{name}"')  # name: our own hex, never input
        return self.url(name)


def _as_postgres(argv: list[str]) -> list[str]:
    """Run as the ``postgres`` user when root (initdb and the server refuse root)."""
    if os.geteuid() != 0:
        return argv
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresUnavailable("running as root and there is no 'postgres' user") from exc
    return ["runuser", "-u", "postgres", "--", *argv]


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(_as_postgres(argv), capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise PostgresUnavailable(f"{what} failed ({done.returncode}): "
                                  f"{(done.stderr or done.stdout).strip()[-800:]}")  # fmt: skip


@contextlib.contextmanager
def loopback_postgres() -> Iterator[LoopbackPostgres]:
    """Start a throw-away cluster on 127.0.0.1; stop and remove it afterwards."""
    bindir = pg_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL is not installed (scripts/test.sh installs it: apt-get install postgresql)"
        )
    # /tmp, not the test's tmp_path: every directory on the way must be traversable by
    # the postgres user, and /root is not.
    base = Path(tempfile.mkdtemp(prefix="plugvisor-pg-", dir="/tmp"))
    base.chmod(0o755)
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    port = _free_port()
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
              "--no-sync", "-E", "UTF8"], "initdb")  # fmt: skip
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w",
              "-t", "60", "-o",
              f"-c listen_addresses=127.0.0.1 -c port={port} -k {base} -c fsync=off "
              "-c max_connections=200", "start"], "pg_ctl start")  # fmt: skip
        started = True
        yield LoopbackPostgres(port=port, directory=base)
    finally:
        if started:
            with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                     "pg_ctl stop")  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)
