"""The hash-chained security log: appends from several processes, tamper detection, the CLI."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from plugvisor.state.security_log import (
    FIELDS,
    GENESIS,
    SecurityLog,
    head_path,
    verify_log,
)


def _fill(path: Path, n: int) -> list[dict[str, object]]:
    log = SecurityLog(path)
    return [
        log.record("greeter", "1.0.0", f"r{i}", "policy.forbidden", f"network: try {i}", "refused")
        for i in range(n)
    ]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_record_writes_a_chained_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "security.log"
    first, second = _fill(path, 2)
    assert tuple(json.loads(_lines(path)[0])) == tuple(sorted(FIELDS))
    assert first["prev"] == GENESIS and second["prev"] == first["hash"]
    assert first["request_id"] == "r0" and first["action"] == "refused"
    head = json.loads(head_path(path).read_text())
    assert head == {"lines": 2, "hash": second["hash"]}
    report = verify_log(path)
    assert report.ok and report.lines == 2 and report.first_bad_line is None


def _append_many(path: str, who: int, n: int) -> None:
    log = SecurityLog(path)
    for i in range(n):
        log.record(f"p{who}", "1.0.0", f"{who}-{i}", "budget.files", "x" * 50, "refused")


def test_concurrent_appends_from_processes_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "security.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    report = verify_log(path)
    assert report.ok, report
    assert report.lines == 100
    ids = {json.loads(raw)["request_id"] for raw in _lines(path)}
    assert len(ids) == 100  # nothing lost, nothing doubled
    assert json.loads(head_path(path).read_text())["lines"] == 100


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_removed_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "security.log"
    _fill(path, 5)
    lines = _lines(path)
    del lines[2]
    _rewrite(path, lines)
    report = verify_log(path)
    assert not report.ok and report.first_bad_line == 3 and "prev" in report.reason


def test_altered_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "security.log"
    _fill(path, 5)
    lines = _lines(path)
    lines[3] = lines[3].replace(b"network: try 3", b"network: nothing")
    _rewrite(path, lines)
    report = verify_log(path)
    assert not report.ok and report.first_bad_line == 4 and "altered" in report.reason


def test_reordered_lines_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "security.log"
    _fill(path, 5)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(path, lines)
    report = verify_log(path)
    assert not report.ok and report.first_bad_line == 2


def test_inserted_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "security.log"
    records = _fill(path, 4)
    lines = _lines(path)
    # A forged line that even carries the right prev, with a made-up hash.
    forged = dict(records[1], detail="harmless", prev=records[1]["hash"], hash="f" * 64)
    lines.insert(2, (json.dumps(forged) + "\n").encode())
    _rewrite(path, lines)
    report = verify_log(path)
    assert not report.ok and report.first_bad_line == 3


def test_tail_truncation_is_detected_through_the_head(tmp_path: Path) -> None:
    path = tmp_path / "security.log"
    _fill(path, 5)
    _rewrite(path, _lines(path)[:-1])  # the chain alone is still valid
    report = verify_log(path)
    assert not report.ok and report.lines == 4 and report.first_bad_line == 5
    assert "truncated" in report.reason


def test_missing_head_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "security.log"
    _fill(path, 2)
    head_path(path).unlink()
    report = verify_log(path)
    assert not report.ok and "head" in report.reason


def test_head_one_line_behind_after_a_crash_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "security.log"
    records = _fill(path, 3)
    # What a crash between the fsync'd append and the head update leaves behind.
    head_path(path).write_text(json.dumps({"lines": 2, "hash": records[1]["hash"]}))
    report = verify_log(path)
    assert report.ok and report.lines == 3
    # The next append recounts and repairs the head.
    SecurityLog(path).record("greeter", "1.0.0", None, "budget.files", "d", "refused")
    assert json.loads(head_path(path).read_text())["lines"] == 4
    assert verify_log(path).reason == "chain intact"


def test_no_log_yet_is_ok(tmp_path: Path) -> None:
    assert verify_log(tmp_path / "security.log").ok


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plugvisor", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("tamper", [False, True])
def test_cli_verify_exit_code_names_the_line(tmp_path: Path, tamper: bool) -> None:
    path = tmp_path / "logs" / "security.log"
    _fill(path, 3)
    if tamper:
        lines = _lines(path)
        lines[1] = lines[1].replace(b"try 1", b"try X")
        _rewrite(path, lines)
    proc = _cli(tmp_path, "security-log", "verify")
    if tamper:
        assert proc.returncode != 0
        assert "line 2" in proc.stderr and "altered" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert "3 lines, chain intact" in proc.stdout
    shown = _cli(tmp_path, "--json", "security-log", "show", "-n", "2")
    assert shown.returncode == 0, shown.stderr
    assert [r["request_id"] for r in json.loads(shown.stdout)] == ["r1", "r2"]
