"""The registry: monotonic versions, one active version, dependencies, jobs, commands, schema.

Every test that takes ``reg`` or ``target`` runs twice: on SQLite (the embedded default)
and on PostgreSQL (a fleet's shared registry, a throw-away cluster on 127.0.0.1).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import socket
import sqlite3
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from plugvisor.core.errors import ConflictError, NotFoundError, StateError, VersionError
from plugvisor.core.manifest import PluginMeta
from plugvisor.core.semver import parse_range, parse_version
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import (
    SCHEMA_VERSION,
    Dependent,
    JobStatus,
    Registry,
    VersionStatus,
)
from plugvisor.state.registry.db import engine_url
from plugvisor.state.registry.schema import MIGRATIONS

KEYID = "ab" * 32


def meta(name: str, version: str, **requires: str) -> PluginMeta:
    return PluginMeta(
        name=name,
        version=parse_version(version),
        api=1,
        entrypoint=f"{name}:Plugin",
        requires={dep.replace("_", "-"): parse_range(r) for dep, r in requires.items()},
    )


def digest(name: str, version: str) -> str:
    return hashlib.sha256(f"{name}@{version}".encode()).hexdigest()


@pytest.fixture
def layout(tmp_path: Path) -> StateLayout:
    return StateLayout(tmp_path / "state").ensure()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, layout: StateLayout) -> StateLayout | str:
    """Where a Registry opens: the state dir's SQLite file, or an empty PostgreSQL database."""
    if request.param == "sqlite":
        return layout
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def reg(target: StateLayout | str):
    with Registry(target) as registry:
        yield registry


def _concurrently(*calls: Callable[[], object]) -> None:
    """Run each call in a thread of its own, all at once; wait for every one."""
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a writer hung"


def _raw(reg: Registry) -> sa.Engine:
    """An engine on the same database that bypasses the Registry (a buggy or hostile writer)."""
    return sa.create_engine(reg.url)


def add(reg: Registry, name: str, version: str, status=VersionStatus.approved, **requires: str):
    return reg.add_version(meta(name, version, **requires), digest(name, version), KEYID, status)


# ---- monotonic versions --------------------------------------------------------------------


def test_add_version_records_plugin_version_and_requires(reg: Registry) -> None:
    rec = add(reg, "greeter", "1.2.0", formatter=">=1.0,<2")
    assert rec.plugin == "greeter" and rec.version == "1.2.0"
    assert rec.status is VersionStatus.approved
    assert rec.requires == {"formatter": ">=1.0,<2"}
    assert rec.meta["entrypoint"] == "greeter:Plugin"
    plugin = reg.get_plugin("greeter")
    assert plugin.highest_version == "1.2.0"
    assert plugin.active_version is None
    assert reg.get_version("greeter", "1.2.0") == rec


@pytest.mark.parametrize("again", ["1.2.0", "1.1.9", "0.9.0", "1.2.0-rc.1", "1.2.0+rebuild"])
def test_equal_or_lower_version_is_refused_as_not_newer(reg: Registry, again: str) -> None:
    add(reg, "greeter", "1.2.0")
    with pytest.raises(VersionError) as info:
        reg.add_version(meta("greeter", again), digest("greeter", again), KEYID)
    err = info.value
    assert err.code == "version.not_newer"
    # Both versions are named, so the operator sees what the archive tried to replay.
    assert again in err.message and "1.2.0" in err.message
    assert err.details["highest"] == "1.2.0"
    # Nothing of the refused version was written.
    assert [v.version for v in reg.list_versions("greeter")] == ["1.2.0"]
    assert reg.get_plugin("greeter").highest_version == "1.2.0"


def test_monotonic_rule_uses_semver_precedence_not_string_order(reg: Registry) -> None:
    add(reg, "p", "1.0.0-alpha")
    add(reg, "p", "1.0.0-alpha.1")
    add(reg, "p", "1.0.0-beta.2")
    add(reg, "p", "1.0.0-beta.11")  # "11" > "2" numerically, lower as a string
    add(reg, "p", "1.0.0-rc.1")
    add(reg, "p", "1.0.0")
    add(reg, "p", "1.9.0")
    add(reg, "p", "1.10.0")  # "1.10.0" < "1.9.0" as strings
    with pytest.raises(VersionError, match="not newer"):
        add(reg, "p", "1.10.0-rc.1")  # a pre-release is lower than its release
    assert [v.version for v in reg.list_versions("p")] == [
        "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1",
        "1.0.0", "1.9.0", "1.10.0",
    ]  # fmt: skip


def test_highest_version_counts_every_recorded_version_even_rejected(reg: Registry) -> None:
    add(reg, "p", "2.0.0", status=VersionStatus.review)
    reg.set_status("p", "2.0.0", VersionStatus.quarantined, by="alice", reason="bad")
    with pytest.raises(VersionError) as info:
        add(reg, "p", "2.0.0")
    assert info.value.code == "version.not_newer"


def test_malformed_range_is_refused_before_anything_is_stored(reg: Registry) -> None:
    bad = PluginMeta(name="p", version=parse_version("1.0.0"), api=1, entrypoint="p:P",
                     requires={"q": "~1.0"})  # type: ignore[dict-item]  # fmt: skip
    with pytest.raises(VersionError) as info:
        reg.add_version(bad, digest("p", "1"), KEYID)
    assert info.value.code == "version.invalid"
    assert reg.find_plugin("p") is None


def test_concurrent_adds_of_the_same_version_admit_exactly_one(target) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with Registry(target) as r:
            try:
                add(r, "race", "1.0.0")
                result = "ok"
            except VersionError as err:
                result = err.code
            except ConflictError as err:
                result = err.code
        with lock:
            outcomes.append(result)

    _concurrently(*[worker] * 6)
    assert sorted(outcomes) == ["ok"] + ["version.not_newer"] * 5, outcomes


# ---- activation -------------------------------------------------------------------------------


def test_activate_retires_the_old_version_and_records_previous(reg: Registry) -> None:
    add(reg, "p", "1.0.0")
    add(reg, "p", "1.1.0")
    old, new = reg.activate("p", "1.0.0")
    assert old is None and new.status is VersionStatus.active
    old, new = reg.activate("p", "1.1.0")
    assert old is not None and old.version == "1.0.0" and old.status is VersionStatus.retired
    assert new.version == "1.1.0" and new.status is VersionStatus.active
    plugin = reg.get_plugin("p")
    assert (plugin.active_version, plugin.previous_version) == ("1.1.0", "1.0.0")
    assert [v.plugin + v.version for v in reg.active_versions()] == ["p1.1.0"]
    # Rollback: a retired version can become active again.
    old, new = reg.activate("p", "1.0.0")
    assert old is not None and old.version == "1.1.0" and new.version == "1.0.0"
    assert reg.get_plugin("p").previous_version == "1.1.0"
    events = reg.list_events(plugin="p")
    assert events[0].kind == "activated" and events[0].from_version == "1.1.0"
    assert events[0].to_version == "1.0.0"


def test_activating_the_active_version_changes_nothing(reg: Registry) -> None:
    add(reg, "p", "1.0.0")
    reg.activate("p", "1.0.0")
    before = reg.get_plugin("p")
    old, new = reg.activate("p", "1.0.0")
    assert old == new and new.status is VersionStatus.active
    assert reg.get_plugin("p") == before


@pytest.mark.parametrize(
    "status", [VersionStatus.review, VersionStatus.quarantined, VersionStatus.disabled]
)
def test_only_approved_or_retired_versions_can_be_activated(
    reg: Registry, status: VersionStatus
) -> None:
    add(reg, "p", "1.0.0", status=status)
    with pytest.raises(ConflictError) as info:
        reg.activate("p", "1.0.0")
    assert info.value.code == "conflict.not_activatable"
    assert reg.get_plugin("p").active_version is None


def test_activate_unknown_plugin_or_version_is_not_found(reg: Registry) -> None:
    with pytest.raises(NotFoundError) as info:
        reg.activate("ghost", "1.0.0")
    assert info.value.code == "not_found.plugin"
    add(reg, "p", "1.0.0")
    with pytest.raises(NotFoundError) as info:
        reg.activate("p", "9.9.9")
    assert info.value.code == "not_found.version"


def test_one_active_version_is_enforced_by_the_database_itself(reg: Registry) -> None:
    add(reg, "p", "1.0.0")
    add(reg, "p", "1.1.0")
    reg.activate("p", "1.0.0")
    # Bypass the Registry: even a buggy writer cannot store a second active row.
    engine = _raw(reg)
    try:
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE versions SET status='active' WHERE plugin='p' AND version='1.1.0'"
            )
    finally:
        engine.dispose()


def test_concurrent_activations_leave_exactly_one_active_version(target) -> None:
    with Registry(target) as r:
        for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
            add(r, "p", v)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(version: str) -> None:
        with Registry(target) as r:
            start.wait()
            try:
                for _ in range(5):
                    r.activate("p", version)
            except BaseException as exc:
                errors.append(exc)

    _concurrently(*(functools.partial(worker, v) for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0")))
    assert errors == []
    with Registry(target) as r:
        active = [v.version for v in r.list_versions("p") if v.status is VersionStatus.active]
        assert len(active) == 1
        assert r.get_plugin("p").active_version == active[0]
        # Every activation that changed something is one event, in a serial order.
        changes = [
            e for e in reversed(r.list_events(limit=1000, plugin="p")) if e.kind == "activated"
        ]
        assert changes[-1].to_version == active[0]
        for before, after in itertools.pairwise(changes):
            assert after.from_version == before.to_version


def test_set_status_records_the_review_decision(reg: Registry) -> None:
    add(reg, "p", "1.0.0", status=VersionStatus.review)
    rec = reg.set_status(
        "p", "1.0.0", VersionStatus.approved, by="alice", reason="false positive",
        report={"findings": []},
    )  # fmt: skip
    assert rec.status is VersionStatus.approved
    assert (rec.review_by, rec.review_reason) == ("alice", "false positive")
    assert rec.review_at is not None and rec.report == {"findings": []}
    event = reg.list_events(plugin="p")[0]
    assert (event.kind, event.outcome) == ("status", "approved")
    assert event.reason == "review -> approved: false positive"
    with pytest.raises(StateError):
        reg.set_status("p", "1.0.0", VersionStatus.active)


def test_disabling_the_active_version_leaves_no_active_version(reg: Registry) -> None:
    add(reg, "p", "1.0.0")
    reg.activate("p", "1.0.0")
    reg.set_status("p", "1.0.0", VersionStatus.disabled, reason="violations")
    plugin = reg.get_plugin("p")
    assert plugin.active_version is None and plugin.previous_version == "1.0.0"
    assert reg.active_versions() == []


def test_disable_and_enable_a_plugin(reg: Registry) -> None:
    add(reg, "p", "1.0.0")
    add(reg, "p", "1.1.0")
    reg.activate("p", "1.0.0")
    rec = reg.disable("p", "5 violations in 60s")
    assert rec.disabled and rec.disabled_reason == "5 violations in 60s"
    assert rec.disabled_at is not None and rec.active_version == "1.0.0"
    with pytest.raises(ConflictError) as info:
        reg.activate("p", "1.1.0")
    assert info.value.code == "conflict.plugin_disabled"
    rec = reg.enable("p")
    assert not rec.disabled and rec.disabled_reason is None
    reg.activate("p", "1.1.0")
    kinds = [e.kind for e in reg.list_events(plugin="p")]
    assert kinds[:3] == ["activated", "enabled", "disabled"]


# ---- dependencies ------------------------------------------------------------------------------


def test_dependents_are_active_plugins_whose_active_version_requires_the_name(
    reg: Registry,
) -> None:
    add(reg, "formatter", "1.0.0")
    add(reg, "greeter", "1.0.0", formatter=">=1.0,<2")
    add(reg, "other", "1.0.0", formatter=">=1.0")
    reg.activate("formatter", "1.0.0")
    reg.activate("greeter", "1.0.0")
    # "other" is recorded but not active: not a dependent.
    assert reg.dependents("formatter") == [Dependent("greeter", "1.0.0", ">=1.0,<2")]
    assert reg.dependents("greeter") == []


def test_check_dependencies_names_each_conflict(reg: Registry) -> None:
    add(reg, "formatter", "1.0.0")
    add(reg, "formatter", "2.0.0")
    add(reg, "greeter", "1.0.0", formatter=">=1.0,<2")
    add(reg, "shouter", "1.0.0", formatter="<1.5")
    for name in ("formatter", "greeter", "shouter"):
        reg.activate(name, "1.0.0")
    assert reg.check_dependencies(("formatter", "1.0.0")) == []
    conflicts = reg.check_dependencies(("formatter", "2.0.0"))
    assert len(conflicts) == 2
    assert any("greeter 1.0.0 requires formatter >=1.0,<2" in c and "2.0.0" in c
               for c in conflicts)  # fmt: skip
    assert any("shouter 1.0.0 requires formatter <1.5" in c for c in conflicts)


def test_check_dependencies_of_a_new_meta_reports_unmet_requires(reg: Registry) -> None:
    add(reg, "formatter", "1.0.0")
    reg.activate("formatter", "1.0.0")
    add(reg, "ghoster", "1.0.0")  # recorded, never active
    new = meta("greeter", "2.0.0", formatter=">=2", ghoster="*", missing=">=1")
    conflicts = reg.check_dependencies(new)
    assert conflicts == [
        "greeter 2.0.0 requires formatter >=2, but formatter 1.0.0 is active",
        "greeter 2.0.0 requires ghoster *, but ghoster has no active version",
        "greeter 2.0.0 requires missing >=1, but missing has no active version",
    ]
    reg.disable("formatter", "crashing")
    ok_range = meta("greeter", "2.0.0", formatter=">=1")
    assert reg.check_dependencies(ok_range) == [
        "greeter 2.0.0 requires formatter >=1, but formatter is disabled (crashing)"
    ]


def test_check_activation_reads_status_digest_and_conflicts_in_one_go(reg: Registry) -> None:
    add(reg, "formatter", "1.0.0")
    add(reg, "formatter", "2.0.0", status=VersionStatus.review)
    add(reg, "greeter", "1.0.0", formatter=">=1.0,<2")
    reg.activate("formatter", "1.0.0")
    reg.activate("greeter", "1.0.0")
    check = reg.check_activation("formatter", "2.0.0")
    assert (check.version, check.status, check.digest) == (
        "2.0.0", VersionStatus.review, digest("formatter", "2.0.0"),
    )  # fmt: skip
    assert check.plugin.active_version == "1.0.0"
    assert check.conflicts == reg.check_dependencies(("formatter", "2.0.0"))
    assert len(check.conflicts) == 1 and "greeter 1.0.0 requires formatter" in check.conflicts[0]
    assert reg.check_activation("greeter", "1.0.0").conflicts == []
    with pytest.raises(NotFoundError) as info:
        reg.check_activation("formatter", "9.0.0")
    assert info.value.code == "not_found.version"


def test_switch_active_returns_the_version_it_replaced(reg: Registry) -> None:
    add(reg, "p", "1.0.0")
    add(reg, "p", "1.1.0")
    add(reg, "p", "1.2.0", status=VersionStatus.review)
    assert reg.switch_active("p", "1.0.0") is None
    assert reg.switch_active("p", "1.1.0") == "1.0.0"
    assert reg.switch_active("p", "1.1.0") == "1.1.0"  # already active: nothing changes
    plugin = reg.get_plugin("p")
    assert (plugin.active_version, plugin.previous_version) == ("1.1.0", "1.0.0")
    assert reg.get_version("p", "1.0.0").status is VersionStatus.retired
    with pytest.raises(ConflictError) as info:
        reg.switch_active("p", "1.2.0")
    assert info.value.code == "conflict.not_activatable"
    assert reg.get_plugin("p").active_version == "1.1.0"
    assert [e.kind for e in reg.list_events(plugin="p")][:2] == ["activated", "activated"]


# ---- jobs, commands, events ----------------------------------------------------------------------


def test_job_lifecycle_and_display_status(reg: Registry) -> None:
    job = reg.create_job("upload", {"archive": "a.tar.gz"})
    assert job.status is JobStatus.queued and job.params == {"archive": "a.tar.gz"}
    steps = [{"name": "validate", "status": "running", "started": "t0", "ended": None,
              "detail": None}]  # fmt: skip
    job = reg.update_job(job.id, status=JobStatus.running, step="validate", steps=steps)
    assert job.display_status == "running: validate" and job.steps == tuple(steps)
    job = reg.update_job(
        job.id, status="failed", error={"code": "signature.untrusted", "message": "no key"}
    )
    assert job.display_status == "failed: signature.untrusted: no key"
    assert job.step == "validate"  # untouched fields stay
    assert reg.get_job(job.id) == job
    assert [j.id for j in reg.list_jobs(status="failed")] == [job.id]
    assert reg.list_jobs(status=JobStatus.queued) == []
    with pytest.raises(NotFoundError) as info:
        reg.get_job("nope")
    assert info.value.code == "not_found.job"


def test_repeated_idempotency_key_returns_the_existing_job(reg: Registry) -> None:
    first = reg.create_job("reload", {"name": "p"}, idempotency_key="k-1")
    again = reg.create_job("reload", {"name": "p"}, idempotency_key="k-1")
    assert again.id == first.id
    other = reg.create_job("reload", {"name": "p"}, idempotency_key="k-2")
    assert other.id != first.id
    assert len(reg.list_jobs()) == 2
    with pytest.raises(ConflictError) as info:
        reg.create_job("audit", {}, idempotency_key="k-1")
    assert info.value.code == "conflict.idempotency_key"


def test_command_outcome_is_returned_for_a_repeated_delivery(reg: Registry) -> None:
    assert reg.record_command("c1", "h1", "activate", {"name": "p"}) is None
    # Delivered again before it finished: apply again.
    assert reg.record_command("c1", "h1", "activate", {"name": "p"}) is None
    reg.finish_command("c1", "h1", {"ok": True, "version": "1.0.0"})
    assert reg.record_command("c1", "h1", "activate", {"name": "p"}) == {
        "ok": True, "version": "1.0.0"}  # fmt: skip
    assert reg.get_command("c1", "h1").outcome == {"ok": True, "version": "1.0.0"}
    with pytest.raises(NotFoundError):
        reg.finish_command("never", "h1", {})


def test_command_records_are_per_host(reg: Registry) -> None:
    # The same command reaches every host of a fleet: each applies it once, on its own.
    assert reg.record_command("c1", "h1", "activate", {"name": "p"}) is None
    reg.finish_command("c1", "h1", {"ok": True, "host": "h1"})
    assert reg.record_command("c1", "h2", "activate", {"name": "p"}) is None  # h2: apply
    reg.finish_command("c1", "h2", {"ok": False, "host": "h2"})
    assert reg.record_command("c1", "h1", "activate", {}) == {"ok": True, "host": "h1"}
    assert reg.get_command("c1", "h2").outcome == {"ok": False, "host": "h2"}
    with pytest.raises(NotFoundError) as info:
        reg.get_command("c1", "h3")
    assert "h3" in info.value.message


def test_migration_3_keeps_earlier_command_records(target) -> None:
    # A registry at schema 2 with a command record, then opened by this version.
    url = f"sqlite:///{target.registry_db}" if isinstance(target, StateLayout) else target
    engine = sa.create_engine(engine_url(url))
    try:
        with engine.begin() as conn:
            for migrate in MIGRATIONS[:2]:
                migrate(conn)
            conn.execute(sa.text("CREATE TABLE schema_version (version INTEGER NOT NULL, "
                                 "applied VARCHAR(40) NOT NULL)"))  # fmt: skip
            conn.execute(sa.text("INSERT INTO schema_version VALUES (1, 'then'), (2, 'then')"))
            conn.execute(sa.text(
                "INSERT INTO commands (id, kind, params, outcome, created, finished) "
                "VALUES ('old-1', 'status', '{}', '{\"ok\": true}', '2026-01-01T00:00:00+00:00', "
                "'2026-01-01T00:00:01+00:00')"
            ))  # fmt: skip
    finally:
        engine.dispose()
    with Registry(target) as r:
        assert r.schema_version() == SCHEMA_VERSION
        old = r.get_command("old-1", "")
        assert (old.kind, old.outcome) == ("status", {"ok": True})
        assert r.record_command("old-1", "h1", "status") is None  # no host answers from it


def test_record_and_list_events_newest_first(reg: Registry) -> None:
    reg.record_event("p", "crashed", from_version="1.0.0", outcome="restarted", reason="SIGKILL")
    reg.record_event("p", "rolled_back", from_version="1.1.0", to_version="1.0.0")
    events = reg.list_events(limit=10)
    assert [e.kind for e in events] == ["rolled_back", "crashed"]
    assert events[1].reason == "SIGKILL" and events[1].outcome == "restarted"
    assert len(reg.list_events(limit=1)) == 1


# ---- schema, locking -----------------------------------------------------------------------------


def test_migrations_are_idempotent_on_reopen(target) -> None:
    with Registry(target) as r:
        add(r, "p", "1.0.0")
        assert r.schema_version() == SCHEMA_VERSION
        url = r.url
    with Registry(target) as r:
        assert r.schema_version() == SCHEMA_VERSION
        assert r.get_version("p", "1.0.0").version == "1.0.0"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version FROM schema_version").fetchall()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [(n,) for n in range(1, SCHEMA_VERSION + 1)]


def test_concurrent_first_opens_migrate_once(target) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def opener() -> None:
        start.wait()
        try:
            Registry(target).close()
        except BaseException as exc:
            errors.append(exc)

    _concurrently(*[opener] * 4)
    assert errors == []
    with Registry(target) as r:
        assert r.schema_version() == SCHEMA_VERSION


def test_sqlite_registry_runs_in_wal_mode(layout: StateLayout) -> None:
    Registry(layout).close()
    con = sqlite3.connect(layout.registry_db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_a_newer_schema_is_refused(reg: Registry, target) -> None:
    engine = _raw(reg)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION + 1}, 'later')"
            )
    finally:
        engine.dispose()
    with pytest.raises(StateError) as info:
        Registry(target)
    assert info.value.code == "state.schema_too_new"


def test_registry_file_is_not_world_readable(layout: StateLayout) -> None:
    Registry(layout).close()
    assert layout.registry_db.stat().st_mode & 0o007 == 0


def test_a_write_waits_for_a_held_lock_then_gives_up_with_state_locked(
    layout: StateLayout,
) -> None:
    with Registry(layout):
        pass
    holder = sqlite3.connect(layout.registry_db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with Registry(layout, lock_timeout=0.3) as r:
            with pytest.raises(StateError) as info:
                r.create_job("upload")
            assert info.value.code == "state.locked"
            # Readers are not blocked by a writer in WAL mode.
            assert r.list_jobs() == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_sqlalchemy_url_opens_that_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.sqlite'}"
    with Registry(url) as r:
        add(r, "p", "1.0.0")
        assert r.url == url
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM versions").scalar() == 1
    engine.dispose()


def test_concurrent_jobs_with_one_idempotency_key_are_one_job(target) -> None:
    ids: list[str] = []
    start = threading.Barrier(5)

    def submit() -> None:
        with Registry(target) as r:
            start.wait()
            ids.append(r.create_job("upload", {"n": 1}, idempotency_key="same-key").id)

    _concurrently(*[submit] * 5)
    assert len(ids) == 5 and len(set(ids)) == 1
    with Registry(target) as r:
        assert [j.id for j in r.list_jobs()] == ids[:1]


def test_concurrent_records_of_one_command_store_it_once(target) -> None:
    results: list[object] = []
    start = threading.Barrier(4)

    def record() -> None:
        with Registry(target) as r:
            start.wait()
            results.append(r.record_command("cmd-1", "h1", "activate", {"name": "p"}))

    _concurrently(*[record] * 4)
    assert results == [None] * 4  # none finished yet: each may apply (idempotent apply)
    with Registry(target) as r:
        r.finish_command("cmd-1", "h1", {"ok": True})
        assert r.record_command("cmd-1", "h1", "activate", {"name": "p"}) == {"ok": True}


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@db:5432/pv", "postgresql+psycopg://u:p@db:5432/pv"),
        ("postgres://u@db/pv", "postgresql+psycopg://u@db/pv"),
        ("postgresql+psycopg://u@db/pv", "postgresql+psycopg://u@db/pv"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_a_bare_postgresql_url_uses_psycopg_3(given: str, used: str) -> None:
    assert engine_url(given) == used


def test_an_unreachable_database_url_is_a_clear_error_naming_the_setting() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StateError) as info:
        Registry(f"postgresql://plugvisor:secret@127.0.0.1:{port}/pv", lock_timeout=1)
    assert info.value.code == "state.database"
    assert "database_url" in info.value.message
    assert "secret" not in info.value.message  # the password is never shown


def test_a_malformed_database_url_is_a_clear_error() -> None:
    with pytest.raises(StateError) as info:
        Registry("nosuchdb://x")
    assert info.value.code == "state.database"
    assert "database_url" in info.value.message


def test_heartbeats_register_a_host_and_refresh_it(reg: Registry) -> None:
    reg.heartbeat("web-1", started_at="2026-01-01T00:00:00+00:00", plugvisor_version="0.1.0",
                  pid=10, layers={"landlock": True}, load={"plugins": 0})  # fmt: skip
    [first] = reg.list_hosts()
    reg.heartbeat("web-1", started_at="2026-01-01T00:00:00+00:00", plugvisor_version="0.1.0",
                  pid=11, layers={"landlock": True}, load={"plugins": 2})  # fmt: skip
    [again] = reg.list_hosts()
    assert (again.host_id, again.pid, again.load, again.layers) == (
        "web-1", 11, {"plugins": 2}, {"landlock": True},
    )  # fmt: skip
    assert again.last_seen >= first.last_seen
    assert not again.is_down(again.last_seen, 30)
    assert again.is_down(again.last_seen + timedelta(seconds=31), 30)


def test_observed_rows_change_only_when_what_runs_changes(reg: Registry) -> None:
    assert reg.observe("web-1", "p", "1.0.0", "serving") is True
    assert reg.observe("web-1", "p", "1.0.0", "serving") is False  # a beat with no news
    assert reg.observe("web-2", "p", None, "down", "requirement q is not running") is True
    assert reg.observe("web-1", "p", "1.1.0", "serving") is True
    rows = [(o.host_id, o.active_version, o.health) for o in reg.list_observed(plugin="p")]
    assert rows == [("web-1", "1.1.0", "serving"), ("web-2", None, "down")]
    assert [o.plugin for o in reg.list_observed(host_id="web-2")] == ["p"]


def test_plugin_summary_shows_each_host_behind_or_down(reg: Registry) -> None:
    add(reg, "p", "1.0.0")
    add(reg, "p", "1.1.0")
    reg.activate("p", "1.1.0")
    for host in ("a", "b"):
        reg.heartbeat(host, started_at="2026-01-01T00:00:00+00:00", plugvisor_version="0.1.0",
                      pid=1, layers={}, load={})  # fmt: skip
    reg.observe("a", "p", "1.1.0", "serving")
    reg.observe("b", "p", "1.0.0", "serving")
    rows = {
        r["host_id"]: r for r in reg.plugin_summary(reg.get_plugin("p"), down_after_s=60)["hosts"]
    }
    assert (rows["a"]["behind"], rows["b"]["behind"]) == (False, True)
    assert {r["host_status"] for r in rows.values()} == {"up"}
    rows = reg.plugin_summary(reg.get_plugin("p"), down_after_s=-1)["hosts"]
    assert {r["host_status"] for r in rows} == {"down"}


def test_an_artefact_is_stored_with_its_version_in_one_transaction(reg: Registry) -> None:
    rec = reg.add_version(meta("p", "1.0.0"), digest("p", "1.0.0"), KEYID, archive=b"tar-bytes")
    assert reg.get_artefact(rec.digest) == b"tar-bytes"
    assert reg.artefact_digests() == {rec.digest}
    with pytest.raises(ConflictError):  # the same digest again: nothing stored
        reg.add_version(meta("p", "1.1.0"), rec.digest, KEYID, archive=b"other")
    assert reg.get_artefact(rec.digest) == b"tar-bytes"
    with pytest.raises(NotFoundError) as info:
        reg.get_artefact("00" * 32)
    assert info.value.code == "not_found.artefact"
