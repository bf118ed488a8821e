"""The soak (``bench/soak.py``) with tiny bounds: every invariant holds, and it measured."""

from __future__ import annotations

import pytest

from plugvisor.bench.soak import BAD_SOURCES, run_soak

pytestmark = pytest.mark.slow


def test_short_soak_holds_every_invariant() -> None:
    report = run_soak(seconds=20, max_jobs=40, seed=7)
    failed = {name: detail for name, (ok, detail) in report.checks.items() if not ok}
    assert failed == {}, (failed, report.job_errors, report.examples)
    # It did what it says: traffic on every plugin, jobs of each kind, misbehaviour caught.
    assert report.calls["steady"] > 1000
    assert set(report.calls) == {"steady", "rewind", *BAD_SOURCES}
    kinds = {state.split()[0] for state in report.jobs.values()}
    assert {"upload", "reload"} <= kinds, report.jobs
    assert all(state.endswith("succeeded") for state in report.jobs.values()), report.job_errors
    assert "steady" not in report.failures
    assert report.failures["hog"]["budget.memory"] > 0
    assert report.failures["sneaky"]["policy.forbidden"] > 0
    assert report.failures["spinner"]["budget.time"] > 0
    assert {"zero lost jobs", "security log chain intact", "daemon RSS not growing",
            "no orphan plugin processes"} <= set(report.checks)  # fmt: skip
