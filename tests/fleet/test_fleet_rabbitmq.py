"""The fleet on its production engine: RabbitMQ carries jobs and per-host commands,
PostgreSQL holds the registry and the artefacts.

Four daemons (own state dirs, host ids h1..h4) on one RabbitMQ vhost and one PostgreSQL
database, one worker and two API processes on h1's state dir (two API processes are
what gunicorn runs). A version is uploaded once through the API; a reload job sends the
activation to every host's own queue and reports each host's outcome, so every host
serves the version when the job ends -- not at a later heartbeat.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from plugvisor.cli.remote import ApiClient
from plugvisor.state.registry.db import engine_url
from plugvisor.tests.support.waiting import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.rabbitmq, pytest.mark.slow]

JOB_TIMEOUT = 120.0


def _done(api: ApiClient, job_id: str) -> dict[str, Any]:
    return api.follow(job_id, lambda _job: None, timeout=JOB_TIMEOUT, interval=0.1)


def _approved(api: ApiClient, name: str, version: str) -> None:
    """Approve the version if the scan held it for review (the scanner's call, not ours)."""
    plugin = api.request("GET", f"/api/plugins/{name}")
    status = {v["version"]: v["status"] for v in plugin["versions"]}[version]
    if status == "review":
        decision = {"version": version, "decision": "approve", "reason": "fleet test"}
        job = api.start(f"/api/plugins/{name}/review", decision)
        assert _done(api, job)["status"] == "succeeded"
    else:
        assert status == "approved", plugin


def _together(*calls) -> list[Any]:
    """Run each call in a thread of its own, released at once; their results in order."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_upload_once_reload_every_host_through_its_own_queue(
    make_fleet, rabbitmq_url, postgres_url
) -> None:
    fleet = make_fleet(
        4, broker_url=rabbitmq_url, job_queue=f"plugvisor.jobs.fleet-{uuid.uuid4().hex[:8]}",
        # Celery's results in the fleet's PostgreSQL too, as the README's fleet setup has it.
        result_backend="db+" + engine_url(postgres_url),
        # Slow heartbeats: hosts must switch because of their own command, not convergence.
        heartbeat_interval_s="10", host_down_after_s="60",
    )  # fmt: skip
    hosts = sorted(fleet.hosts)
    for kit in fleet.hosts.values():
        kit.start()
    fleet.start_worker("h1")
    api = fleet.start_api("h1")
    other_api = fleet.start_api("h1")

    # Upload once through the API; a reload job switches every host and waits for each.
    job = _done(api, api.upload(fleet.archive("greeter", "1.0.0")))
    assert job["status"] == "succeeded", job
    _approved(api, "greeter", "1.0.0")
    job = _done(api, api.start("/api/plugins/reload", {"name": "greeter", "version": "1.0.0"}))
    assert job["status"] == "succeeded", job
    assert sorted(job["result"]["hosts"]) == hosts, job["result"]
    assert job["result"]["behind"] == []
    for h in hosts:  # at the job's end, not a heartbeat later
        assert fleet.served(h, "greeter") == "1.0.0"
    with fleet.registry() as reg:
        for h in hosts:  # each host recorded its own outcome of the one command
            record = reg.get_command(f"{job['id']}:activate", h)
            assert record.outcome is not None and record.outcome["ok"], record
            assert record.outcome["host"] == h
        digest = reg.get_version("greeter", "1.0.0").digest
    for h in hosts[1:]:  # fetched from the shared store and verified there
        assert fleet.hosts[h].layout.version_dir(digest).is_dir()
    listed = api.request("GET", "/api/hosts")
    assert sorted(h["host_id"] for h in listed["hosts"]) == hosts
    assert all(h["status"] == "up" for h in listed["hosts"])

    def every_host_observed() -> bool:  # written when the swap's event wakes each agent
        plugin = api.request("GET", "/api/plugins/greeter")
        return {(h["host_id"], h["version"]) for h in plugin["hosts"]} == {
            (h, "1.0.0") for h in hosts}  # fmt: skip

    assert wait_for(every_host_observed, 5, "observed rows of every host, before a heartbeat")
    report = api.request("GET", "/api/plugins/audit?name=greeter")
    assert sorted((h["host_id"], h["version"]) for h in report["hosts"]) == [
        (h, "1.0.0") for h in hosts]  # fmt: skip

    # The same name and version uploaded at once through both API processes (two
    # different archives): one wins, the other is refused naming the rule.
    first, second = fleet.archive("racer", "1.0.0"), fleet.archive("racer", "1.0.0", mode="x")
    ids = _together(lambda: api.upload(first), lambda: other_api.upload(second))
    jobs = [_done(api, i) for i in ids]
    assert sorted(j["status"] for j in jobs) == ["failed", "succeeded"], jobs
    lost = next(j for j in jobs if j["status"] == "failed")
    assert lost["error"]["code"].startswith(("conflict.", "version.")), lost["error"]
    with fleet.registry() as reg:
        assert [v.version for v in reg.list_versions("racer")] == ["1.0.0"]

    # Two reloads of different versions at once, from both API processes: exactly one
    # version is desired, and every host ends on it.
    for version in ("1.1.0", "1.2.0"):
        assert _done(api, api.upload(fleet.archive("greeter", version)))["status"] == "succeeded"
        _approved(api, "greeter", version)
    ids = _together(
        lambda: api.start("/api/plugins/reload", {"name": "greeter", "version": "1.1.0"}),
        lambda: other_api.start("/api/plugins/reload", {"name": "greeter", "version": "1.2.0"}),
    )
    jobs = [_done(api, i) for i in ids]
    assert all(j["status"] in ("succeeded", "failed") for j in jobs), jobs
    with fleet.registry() as reg:
        desired = reg.get_plugin("greeter").active_version
        active = [v.version for v in reg.list_versions("greeter") if v.status.value == "active"]
    assert desired in ("1.1.0", "1.2.0") and active == [desired]
    assert wait_for(
        lambda: all(fleet.served(h, "greeter") == desired for h in hosts),
        60, f"every host on the desired {desired}", interval=0.1,
    )  # fmt: skip

    # Bytes changed in the shared store after the upload: the reload job's activation is
    # refused by every host that must fetch them, and the job fails naming one of them.
    assert _done(api, api.upload(fleet.archive("greeter", "1.3.0")))["status"] == "succeeded"
    _approved(api, "greeter", "1.3.0")
    with fleet.registry() as reg:
        fleet.tamper_artefact(reg.get_version("greeter", "1.3.0").digest)
    job = _done(api, api.start("/api/plugins/reload", {"name": "greeter", "version": "1.3.0"}))
    assert job["status"] == "failed", job
    err = job["error"]
    assert err["code"] == "sandbox.start_failed", err
    assert err["details"]["cause"] == "archive.hash_mismatch", err
    assert err["details"]["host"] in hosts[1:] and err["message"].startswith("host h"), err
    assert err["details"]["hosts"]["h1"]["outcome"] == "swapped"  # its own extraction
    for h in hosts[1:]:  # never ran the tampered bytes; still on what they ran
        assert fleet.served(h, "greeter") == desired
        assert '"artefact.archive.hash_mismatch"' in fleet.hosts[h].layout.security_log.read_text()

    engine = sa.create_engine(engine_url(postgres_url))
    try:  # the workers' Celery results went to PostgreSQL (the fleet's result_backend)
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM celery_taskmeta")).scalar()
    finally:
        engine.dispose()
    assert stored and stored > 0
