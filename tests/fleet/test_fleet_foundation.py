"""The fleet foundation with real daemons: one PostgreSQL registry and artefact store,
heartbeats, convergence, fetch-and-verify on every host.

Four daemons (own state dirs, host ids h1..h4) share one PostgreSQL and one RabbitMQ on
127.0.0.1; a version is installed on h1 only, so every other host must fetch its archive
from the shared store and verify it with its own trusted keys before it runs. Versions
are activated through h1's own control queue only: the other hosts follow the desired
state by convergence (the reload job's broadcast is ``test_fleet_rabbitmq``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from plugvisor.state.tokens import Role
from plugvisor.tests.support.apikit import ApiKit
from plugvisor.tests.support.waiting import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.rabbitmq, pytest.mark.slow]


def _serving(fleet, hosts, plugin: str, version: str) -> bool:
    return all(fleet.served(h, plugin) == version for h in hosts)


def test_four_daemons_fetch_verify_converge_and_refuse_a_tampered_artefact(
    make_fleet, rabbitmq_url
) -> None:
    fleet = make_fleet(4, broker_url=rabbitmq_url)
    all_hosts = sorted(fleet.hosts)
    v1 = fleet.install("h1", fleet.archive("greeter", "1.0.0"))
    for kit in fleet.hosts.values():
        kit.start()
    with fleet.registry() as reg:
        assert wait_for(lambda: len(reg.list_hosts()) == 4, 30, "4 hosts registered")
        assert {h.host_id for h in reg.list_hosts()} == set(all_hosts)
        assert all(h.layers for h in reg.list_hosts())  # each reports its sandbox layers

    # One activation (through h1's control plane) becomes the fleet's desired version;
    # h2..h4 never saw the archive: they fetch, verify and serve it on their own.
    out = fleet.hosts["h1"].command("activate", name="greeter", version="1.0.0")
    assert out["ok"], out
    assert wait_for(
        lambda: _serving(fleet, all_hosts, "greeter", "1.0.0"), 60, "v1 everywhere", interval=0.1
    )
    for h in all_hosts[1:]:
        assert fleet.hosts[h].layout.version_dir(v1.digest).is_dir()
    # The API (its own state dir, the shared database) lists the 4 hosts and what they run.
    api = ApiKit.create(database_url=fleet.database_url, host_down_after_s=3)
    try:
        resp = api.client.get("/api/hosts", headers=api.auth(Role.VIEWER))
        assert resp.status_code == 200, resp.json
        body: dict[str, Any] = resp.json or {}
        hosts = {h["host_id"]: h for h in body["hosts"]}
        assert sorted(hosts) == all_hosts
        assert all(h["status"] == "up" and "plugin_hosts" in h["load"] for h in hosts.values())
        assert api.client.get("/api/hosts").status_code == 401
        resp = api.client.get("/api/plugins/greeter", headers=api.auth(Role.VIEWER))
        body = resp.json or {}
        assert {(h["host_id"], h["version"]) for h in body["hosts"]} == {
            (h, "1.0.0") for h in all_hosts
        }
    finally:
        api.close()
    with fleet.registry() as reg:
        assert wait_for(
            lambda: {(o.host_id, o.active_version, o.health)
                     for o in reg.list_observed(plugin="greeter")}
            == {(h, "1.0.0", "serving") for h in all_hosts},
            30, "observed rows of every host",
        )  # fmt: skip

    # h4 dies (kill -9); a new version goes live meanwhile; h4 is shown down, then
    # converges to it on start.
    fleet.hosts["h4"].kill9()
    fleet.install("h1", fleet.archive("greeter", "1.1.0"))
    assert fleet.hosts["h1"].command("activate", name="greeter", version="1.1.0")["ok"]
    up = all_hosts[:3]
    assert wait_for(
        lambda: _serving(fleet, up, "greeter", "1.1.0"), 60, "v1.1 on h1..h3", interval=0.1
    )
    with fleet.registry() as reg:
        plugin = reg.get_plugin("greeter")

        def h4_down_and_behind() -> bool:
            rows = {r["host_id"]: r for r in reg.plugin_summary(plugin, down_after_s=3)["hosts"]}
            return bool(rows["h4"]["host_status"] == "down" and rows["h4"]["behind"])

        assert wait_for(h4_down_and_behind, 30, "h4 down and behind")
    fleet.hosts["h4"].start()
    assert fleet.served("h4", "greeter") == "1.1.0"  # converged before READY

    # Bytes changed in the shared store after h1 accepted 1.2.0: every other host
    # refuses them (archive.hash_mismatch, a security.log line) and keeps serving 1.1.0.
    v3 = fleet.install("h1", fleet.archive("greeter", "1.2.0"))
    fleet.tamper_artefact(v3.digest)
    assert fleet.hosts["h1"].command("activate", name="greeter", version="1.2.0")["ok"]
    assert wait_for(
        lambda: fleet.served("h1", "greeter") == "1.2.0", 30, "h1 on 1.2.0", interval=0.1
    )
    others = all_hosts[1:]

    def refused_everywhere() -> bool:
        return all(
            any(json.loads(line)["kind"] == "artefact.archive.hash_mismatch"
                for line in _lines(fleet.hosts[h].layout.security_log))
            for h in others
        )  # fmt: skip

    assert wait_for(refused_everywhere, 60, "every other host refused the tampered artefact")
    for h in others:
        assert fleet.served(h, "greeter") == "1.1.0"
        assert not fleet.hosts[h].layout.version_dir(v3.digest).exists()
    with fleet.registry() as reg:
        # The security.log line comes first; the observed row follows once the swap unwinds.
        def failed_rows() -> dict[str, Any]:
            rows = {o.host_id: o for o in reg.list_observed(plugin="greeter")}
            return rows if all(rows[h].health == "failed" for h in others) else {}

        rows = wait_for(failed_rows, 30, "observed rows of the refusing hosts")
        for h in others:  # still serving the old version, and saying why it is behind
            assert rows[h].active_version == "1.1.0"
            assert "archive.hash_mismatch" in rows[h].detail


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
