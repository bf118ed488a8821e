"""The fleet rig: several real daemons (own state dirs and host ids) over one PostgreSQL.

Each host is a :class:`~plugvisor.tests.support.daemonkit.DaemonKit` whose environment
adds ``PLUGVISOR_DATABASE_URL`` (the shared registry and artefact store),
``PLUGVISOR_HOST_ID`` and a short heartbeat, and whose state dir trusts the rig's signing
key. Versions are real signed archives (:func:`plugvisor.core.archive.pack`), installed
on one host with :func:`plugvisor.state.install.install_archive` (or uploaded through
an API process, :meth:`Fleet.start_api`, for a worker, :meth:`Fleet.start_worker`): the
other hosts have to fetch and verify them from the shared store.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from plugvisor.cli.remote import ApiClient
from plugvisor.client import Client
from plugvisor.core.archive import pack
from plugvisor.core.errors import PlugvisorError
from plugvisor.core.signing import generate_keypair
from plugvisor.state.install import install_archive
from plugvisor.state.registry import Registry, VersionRecord
from plugvisor.state.registry.db import engine_url
from plugvisor.state.tokens import TOKENS_FILE, Role, TokenStore
from plugvisor.state.trust import TrustStore
from plugvisor.testing import VERSIONED_PLUGIN
from plugvisor.tests.support.apikit import free_port
from plugvisor.tests.support.daemonkit import PLUGVISOR, DaemonKit, new_daemon_kit
from plugvisor.tests.support.procs import terminate

__all__ = ["Fleet", "make_fleet"]


@dataclasses.dataclass
class Fleet:
    """Hosts by id, the shared database, and a signing key every host trusts."""

    database_url: str
    hosts: dict[str, DaemonKit]
    key: Path
    work: Path
    _clients: dict[str, Client] = dataclasses.field(default_factory=dict)
    _procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    def _spawn(self, host: str, name: str, *args: str) -> subprocess.Popen[bytes]:
        kit = self.hosts[host]
        log = kit.root / "logs" / f"{name}-{len(self._procs)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(PLUGVISOR), "--state-dir", str(kit.root), *args], env=kit.env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._procs.append(proc)
        return proc

    def start_worker(self, host: str, concurrency: int = 2) -> subprocess.Popen[bytes]:
        """A ``plugvisor worker`` on ``host``'s state dir (jobs from the fleet's job queue)."""
        return self._spawn(
            host, "worker", "worker", "--concurrency", str(concurrency),
            "--hostname", f"fleet-{uuid.uuid4().hex[:8]}@{host}",
        )  # fmt: skip

    def start_api(self, host: str, role: Role = Role.ADMIN) -> ApiClient:
        """A ``plugvisor api`` process on ``host``'s state dir; a client with a ``role`` token."""
        self.hosts[host].layout.ensure()
        token = TokenStore(self.hosts[host].root / TOKENS_FILE).create(role, f"fleet-{role.value}")
        port = free_port()
        proc = self._spawn(host, "api", "api", "--host", "127.0.0.1", "--port", str(port))
        client = ApiClient(f"http://127.0.0.1:{port}", token, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.request("GET", "/api/health", auth=False, ok_statuses=(503,))
                return client
            except PlugvisorError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def archive(self, name: str, version: str, mode: str = "ok") -> Path:
        """A signed archive of the versioned test plugin."""
        unique = uuid.uuid4().hex[:8]
        src = self.work / f"src-{name}-{version}-{unique}" / name
        pkg = src / name.replace("-", "_")
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(VERSIONED_PLUGIN.format(name=name, version=version,
                                                                 mode=mode))  # fmt: skip
        (src / "plugin.yaml").write_text(
            f"name: {name}\nversion: {version}\napi: 1\nentrypoint: {pkg.name}:Plugin\n"
            "profile: default\n"
        )
        return pack(src, self.key, self.work / f"out-{unique}")

    def install(self, host: str, archive: Path) -> VersionRecord:
        """Install ``archive`` on ``host`` (its tree there, its row and bytes shared)."""
        return install_archive(self.hosts[host].settings, archive)

    def registry(self) -> Registry:
        return Registry(self.database_url)

    def tamper_artefact(self, digest: str) -> None:
        """Change one file's bytes in the stored archive of ``digest`` (same size and manifest),
        in the database behind every host's back."""
        engine = sa.create_engine(engine_url(self.database_url))
        try:
            with engine.begin() as conn:
                stored = conn.execute(
                    sa.text("SELECT archive FROM artefacts WHERE digest = :d"), {"d": digest}
                ).scalar_one()
                conn.execute(sa.text("UPDATE artefacts SET archive = :a WHERE digest = :d"),
                             {"a": _tamper(bytes(stored)), "d": digest})  # fmt: skip
        finally:
            engine.dispose()

    def served(self, host: str, plugin: str) -> str | None:
        """The version ``host`` answers ``plugin`` calls with (None: it does not serve it)."""
        client = self._clients.get(host)
        if client is None:
            client = self._clients[host] = self.hosts[host].client(timeout=10)
        try:
            out: Any = client.call(plugin, {"ping": 1})
        except (PlugvisorError, OSError):
            self._clients.pop(host, None)  # a restarted daemon needs a new connection
            return None
        return str(out["version"])

    def stop(self) -> None:
        for proc in self._procs:
            terminate(proc)
        for kit in self.hosts.values():
            try:
                kit.stop(timeout=20)
            finally:
                kit.kill9()


@pytest.fixture
def make_fleet(postgres_url: str) -> Iterator[Callable[..., Fleet]]:
    """``make_fleet(n, **env)``: n stopped daemons ``h1``..``hn`` over one PostgreSQL database."""
    made: list[Fleet] = []
    roots: list[Path] = []

    def make(n: int, **env: str) -> Fleet:
        work = Path(tempfile.mkdtemp(dir="/tmp", prefix="pv-fleet-"))
        roots.append(work)
        key = work / "signer"
        generate_keypair(key)
        hosts: dict[str, DaemonKit] = {}
        for i in range(1, n + 1):
            kit = new_daemon_kit()
            roots.append(kit.root)
            kit.env.update(
                PLUGVISOR_DATABASE_URL=postgres_url,
                PLUGVISOR_HOST_ID=f"h{i}",
                PLUGVISOR_HEARTBEAT_INTERVAL_S="0.3",
                PLUGVISOR_HOST_DOWN_AFTER_S="3",
            )
            kit.env.update({f"PLUGVISOR_{k.upper()}": v for k, v in env.items()})
            TrustStore(kit.root).trust(Path(f"{key}.pub"))
            hosts[f"h{i}"] = kit
        fleet = Fleet(database_url=postgres_url, hosts=hosts, key=key, work=work)
        made.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in made:
            fleet.stop()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def _tamper(archive: bytes) -> bytes:
    """The same archive with one file's bytes changed (same size, same manifest)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as src,
        tarfile.open(fileobj=out, mode="w:gz") as dst,
    ):
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            if m.name.endswith("__init__.py"):
                data = data.replace(b"calls", b"CALLS")
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return out.getvalue()
