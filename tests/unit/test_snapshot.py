"""Snapshots on disk: atomic, hashed, idempotent per job, retained oldest-first; staged restores."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugvisor.core.config import Settings, load_settings
from plugvisor.core.fs import exchange_paths
from plugvisor.state import backups as snap
from plugvisor.state.layout import StateLayout
from plugvisor.state.registry import Registry
from plugvisor.testing import store_test_version


@pytest.fixture
def state(tmp_path: Path) -> Iterator[tuple[Settings, Registry, StateLayout]]:
    layout = StateLayout(tmp_path / "state").ensure()
    settings = load_settings({"state_dir": str(layout.root), "backup_retention": 2}, env={})
    registry = Registry(layout)
    yield settings, registry, layout
    registry.close()


def _live(layout: StateLayout, registry: Registry, name: str, version: str) -> None:
    store_test_version(layout, name, version)
    registry.activate(name, version)
    layout.ensure_plugin_data(name)
    (layout.plugin_files_dir(name) / "notes.txt").write_text(f"written by {version}")
    with sqlite3.connect(layout.plugin_db(name)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        db.execute("INSERT INTO t VALUES (?)", (version,))


def _visible(layout: StateLayout, name: str) -> list[str]:
    root = layout.plugin_backups_dir(name)
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_snapshot_copies_data_and_db_with_a_hashed_manifest(state) -> None:
    settings, registry, layout = state
    _live(layout, registry, "alpha", "1.0.0")
    # A writer holding the DB open in WAL mode: the backup API still gets a consistent copy.
    writer = sqlite3.connect(layout.plugin_db("alpha"))
    writer.execute("INSERT INTO t VALUES ('uncommitted-not-copied')")
    out = snap.snapshot_active(settings, registry, "alpha", "job-1")
    writer.rollback()
    writer.close()
    assert out is not None and out["version"] == "1.0.0"
    path = layout.backup_dir("alpha", "1.0.0")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["code"]["digest"] == registry.get_version("alpha", "1.0.0").digest
    assert {f["path"] for f in manifest["files"]} == {"data/db.sqlite", "data/files/notes.txt"}
    with sqlite3.connect(path / "data" / "db.sqlite") as db:
        assert db.execute("SELECT v FROM t").fetchall() == [("1.0.0",)]
    assert snap.verify_backup(path) == []
    (path / "data" / "files" / "notes.txt").write_text("tampered")
    assert snap.verify_backup(path) == ["data/files/notes.txt: sha256 differs from the manifest"]


def test_snapshot_is_idempotent_per_job_and_replaces_per_version(state) -> None:
    settings, registry, layout = state
    _live(layout, registry, "beta", "1.0.0")
    first = snap.snapshot_active(settings, registry, "beta", "job-1")
    again = snap.snapshot_active(settings, registry, "beta", "job-1")
    assert again is not None and first is not None
    assert again["created"] == first["created"]  # not rewritten
    other = snap.snapshot_active(settings, registry, "beta", "job-2")
    assert other is not None and other["job_id"] == "job-2"
    assert os.listdir(layout.plugin_backups_dir("beta")) == ["1.0.0"]  # no debris


def test_on_copied_sees_the_copied_data_before_the_manifest(state) -> None:
    settings, registry, layout = state
    _live(layout, registry, "theta", "1.0.0")
    seen: list[tuple[bool, bool, bool]] = []

    def on_copied(tmp: Path) -> None:
        seen.append((
            (tmp / "data" / "files" / "notes.txt").is_file(),
            (tmp / "data" / "db.sqlite").is_file(),
            (tmp / "manifest.json").exists(),
        ))  # fmt: skip

    snap.snapshot_active(settings, registry, "theta", "job-1", on_copied=on_copied)
    assert seen == [(True, True, False)]


def test_failed_snapshot_leaves_no_partial_backup(state, monkeypatch) -> None:
    settings, registry, layout = state
    _live(layout, registry, "gamma", "1.0.0")

    def broken(src: Path, dst: Path, timeout: float = 30.0) -> None:
        raise sqlite3.OperationalError("disk I/O error (injected)")

    monkeypatch.setattr(snap, "copy_sqlite", broken)
    with pytest.raises(sqlite3.OperationalError):
        snap.snapshot_active(settings, registry, "gamma", "job-1")
    assert os.listdir(layout.plugin_backups_dir("gamma")) == []


def test_killed_snapshot_debris_is_invisible_and_cleaned(state) -> None:
    settings, registry, layout = state
    _live(layout, registry, "delta", "1.0.0")
    debris = layout.plugin_backups_dir("delta")
    debris.mkdir(parents=True)
    (debris / ".tmp-job-1-dead").mkdir()  # what a SIGKILLed attempt of job-1 leaves
    assert snap.list_backups(layout, "delta") == []
    snap.snapshot_active(settings, registry, "delta", "job-1")
    assert os.listdir(debris) == ["1.0.0"]


def test_retention_removes_the_oldest_but_never_protected(state) -> None:
    settings, registry, layout = state
    for i, version in enumerate(["1.0.0", "1.1.0", "1.2.0", "1.3.0"]):
        _live(layout, registry, "eps", version)
        snap.snapshot_active(settings, registry, "eps", f"job-{i}", protect={"1.0.0"})
    # retention 2: 1.1.0 and 1.2.0 went oldest first; 1.0.0 was protected each time.
    assert _visible(layout, "eps") == ["1.0.0", "1.3.0"]


def test_stage_restore_builds_a_complete_tree_once(state) -> None:
    settings, registry, layout = state
    _live(layout, registry, "zeta", "1.0.0")
    snap.snapshot_active(settings, registry, "zeta", "job-1")
    (layout.plugin_files_dir("zeta") / "later.txt").write_text("after the snapshot")
    staged = snap.stage_restore(settings, "zeta", "1.0.0", "job-9")
    stage = Path(staged["stage"])
    assert staged["applied"] is False
    assert (stage / "RESTORE_ID").read_text() == "job-9"
    assert sorted(os.listdir(stage / "files")) == ["notes.txt"]
    exchange_paths(stage, layout.plugin_data_root("zeta"))  # what the daemon does
    assert snap.stage_restore(settings, "zeta", "1.0.0", "job-9")["applied"] is True
    assert sorted(os.listdir(layout.plugin_files_dir("zeta"))) == ["notes.txt"]
    assert (stage / "files" / "later.txt").exists()  # the replaced data, kept aside


def test_copy_sqlite_during_concurrent_writes_is_consistent(tmp_path: Path) -> None:
    src = tmp_path / "live.sqlite"
    with sqlite3.connect(src) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (a INTEGER, b INTEGER)")
    stop = threading.Event()

    def write() -> None:
        conn = sqlite3.connect(src, timeout=10)
        i = 0
        while not stop.is_set():
            i += 1
            with conn:  # every transaction keeps a == b
                conn.execute("INSERT INTO t VALUES (?, ?)", (i, i))
        conn.close()

    t = threading.Thread(target=write)
    t.start()
    try:
        for n in range(5):
            dst = tmp_path / f"copy{n}.sqlite"
            snap.copy_sqlite(src, dst)
            with sqlite3.connect(dst) as db:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                assert db.execute("SELECT COUNT(*) FROM t WHERE a != b").fetchone() == (0,)
    finally:
        stop.set()
        t.join()
