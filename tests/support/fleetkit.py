"""The fleet rig: several real daemons (own state dirs and host ids) over one PostgreSQL.

Each host is a :class:`~plugvisor.tests.support.daemonkit.DaemonKit` whose environment
adds ``PLUGVISOR_DATABASE_URL`` (the shared registry and artefact store),
``PLUGVISOR_HOST_ID`` and a short heartbeat, and whose state dir trusts the rig's signing
key. Versions are real signed archives (:func:`plugvisor.core.archive.pack`), installed
on one host with :func:`plugvisor.state.install.install_archive`: the other hosts have
to fetch and verify them from the shared store.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from plugvisor.client import Client
from plugvisor.core.archive import pack
from plugvisor.core.errors import PlugvisorError
from plugvisor.core.signing import generate_keypair
from plugvisor.state.install import install_archive
from plugvisor.state.registry import Registry, VersionRecord
from plugvisor.state.trust import TrustStore
from plugvisor.testing import VERSIONED_PLUGIN
from plugvisor.tests.support.daemonkit import DaemonKit, new_daemon_kit

__all__ = ["Fleet", "make_fleet"]


@dataclasses.dataclass
class Fleet:
    """Hosts by id, the shared database, and a signing key every host trusts."""

    database_url: str
    hosts: dict[str, DaemonKit]
    key: Path
    work: Path
    _clients: dict[str, Client] = dataclasses.field(default_factory=dict)

    def archive(self, name: str, version: str, mode: str = "ok") -> Path:
        """A signed archive of the versioned test plugin."""
        src = self.work / f"src-{name}-{version}" / name
        pkg = src / name.replace("-", "_")
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(VERSIONED_PLUGIN.format(name=name, version=version,
                                                                 mode=mode))  # fmt: skip
        (src / "plugin.yaml").write_text(
            f"name: {name}\nversion: {version}\napi: 1\nentrypoint: {pkg.name}:Plugin\n"
            "profile: default\n"
        )
        return pack(src, self.key, self.work / "out")

    def install(self, host: str, archive: Path) -> VersionRecord:
        """Install ``archive`` on ``host`` (its tree there, its row and bytes shared)."""
        return install_archive(self.hosts[host].settings, archive)

    def registry(self) -> Registry:
        return Registry(self.database_url)

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
                **{f"PLUGVISOR_{k.upper()}": v for k, v in env.items()},
            )
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
