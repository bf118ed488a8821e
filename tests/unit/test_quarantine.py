"""Quarantine: a refused archive is kept with reason.json, built atomically."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from plugvisor.core.errors import ArchiveError, SignatureError
from plugvisor.state.layout import StateLayout
from plugvisor.state.quarantine import Quarantine


@pytest.fixture
def layout(tmp_path: Path) -> StateLayout:
    return StateLayout(tmp_path / "state").ensure()


def test_put_keeps_the_archive_and_the_reason(layout: StateLayout, tmp_path: Path) -> None:
    archive = tmp_path / "evil-1.0.0.tar.gz"
    archive.write_bytes(b"not really a tarball")
    err = ArchiveError("path_traversal", "member ../x escapes the root", member="../x")
    entry = Quarantine(layout).put(archive, err)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert entry.parent == layout.quarantine_dir
    assert entry.name.endswith("-" + sha[:12])
    assert (entry / archive.name).read_bytes() == archive.read_bytes()
    reason = json.loads((entry / "reason.json").read_text())
    assert reason["code"] == "archive.path_traversal"
    assert reason["message"] == "member ../x escapes the root"
    assert reason["details"] == {"member": "../x"}
    assert reason["archive_sha256"] == sha
    assert reason["original_name"] == "evil-1.0.0.tar.gz"
    assert reason["time"].endswith("+00:00")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o700
    # No temporary directory left behind.
    assert [p.name for p in layout.quarantine_dir.iterdir()] == [entry.name]


def test_list_returns_complete_entries_oldest_first(layout: StateLayout, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x")
    q = Quarantine(layout)
    first = q.put(archive, SignatureError("untrusted", "key abc is not trusted"))
    second = q.put(archive, SignatureError("invalid", "bad signature"))
    assert first != second  # same archive twice: two entries
    (layout.quarantine_dir / ".tmp-half-written").mkdir()
    entries = q.list()
    assert [e.path for e in entries] == [first, second]
    assert [e.code for e in entries] == ["signature.untrusted", "signature.invalid"]
    assert entries[0].archive == first / "a.tar.gz"


def test_an_oversized_archive_keeps_only_the_reason(layout: StateLayout, tmp_path: Path) -> None:
    archive = tmp_path / "huge.tar.gz"
    archive.write_bytes(b"z" * 5000)
    entry = Quarantine(layout, max_copy_bytes=1000).put(
        archive, ArchiveError("too_large", "unpacks to more than 10 MiB")
    )
    assert sorted(p.name for p in entry.iterdir()) == ["reason.json"]
    reason = json.loads((entry / "reason.json").read_text())
    assert reason["archive_kept"] is False and reason["archive_size"] == 5000
    assert reason["archive_sha256"] == hashlib.sha256(b"z" * 5000).hexdigest()


def test_a_hostile_file_name_is_sanitised(layout: StateLayout, tmp_path: Path) -> None:
    archive = tmp_path / "reason.json"
    archive.write_bytes(b"{}")
    entry = Quarantine(layout).put(archive, ArchiveError("corrupt", "not a tar"))
    names = sorted(p.name for p in entry.iterdir())
    assert names == ["archive-reason.json", "reason.json"]
    assert json.loads((entry / "reason.json").read_text())["code"] == "archive.corrupt"
