"""``PluginHost.last_usage``: the budgets one call used (wall time, ctx.db queries, files).

The child reports its file count in a ``USAGE`` frame right before the ``RESULT``; the
host counts ``ctx.db`` queries itself. ``plugvisor dev run`` prints these figures.
"""

from __future__ import annotations

from typing import Any

from plugvisor.core.errors import BudgetExceeded
from plugvisor.sandbox import RequestUsage


def _usage(host: Any) -> RequestUsage | None:
    # A function, not the attribute: a type checker would keep an earlier narrowing.
    usage: RequestUsage | None = host.last_usage
    return usage


def test_usage_counts_db_queries_and_files(kit: Any) -> None:
    host = kit.spawn("ok_db")
    assert _usage(host) is None
    # The plugin's database is shared with other tests of the session: rows vary.
    assert [r[1] for r in host.call({"add": ["a", "b"]}, timeout=10.0)["rows"]][-2:] == ["a", "b"]
    usage = _usage(host)
    assert usage is not None
    assert usage.db_queries == 3  # two inserts and one select
    assert usage.files_opened == 0
    assert 0 < usage.elapsed < 10.0
    host.call({}, timeout=10.0)
    again = _usage(host)
    assert again is not None and again.db_queries == 1


def test_usage_counts_files_opened(kit: Any) -> None:
    host = kit.spawn("atk_many_files")
    assert host.call({"count": 7}, timeout=10.0) == 7
    assert host.last_usage is not None and host.last_usage.files_opened == 7


def test_usage_after_a_budget_breach(kit: Any) -> None:
    host = kit.spawn("atk_many_files")
    limit = int(host.spec.profile.max_files)
    err = kit.call_error(host, {"count": limit + 5}, timeout=10.0)
    assert isinstance(err, BudgetExceeded) and err.code == "budget.files"
    usage = host.last_usage
    assert usage is not None and usage.files_opened == limit + 1  # the refused open counts


def test_usage_frame_is_accepted_only_in_the_runtime_s_exact_form() -> None:
    """A subverted child's USAGE frame is a protocol violation (the host then kills it)."""
    import pytest  # noqa: PLC0415

    from plugvisor.sandbox import host as host_module  # noqa: PLC0415

    parse = host_module._files_opened
    assert parse(b'{"files_opened":0}') == 0
    assert parse(b'{"files_opened":51}') == 51
    for forged in (
        b'{"files_opened":-1}', b'{"files_opened":01}', b'{"files_opened": 3}',
        b'{"files_opened":3,"x":1}', b'{"files_opened":3}\n', b'{"files_opened":"3"}',
        b'{"files_opened":12345678901}', b"", b"[]",
    ):  # fmt: skip
        with pytest.raises(host_module._ProtocolViolation):
            parse(forged)
