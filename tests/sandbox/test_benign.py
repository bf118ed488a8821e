"""Honest plugins under the ``default`` profile get exactly the answers plain Python gives.

A sandbox that refuses ordinary code is as useless as one that admits an attack (SPEC §5):
each plugin under ``plugins/ok_*`` does ordinary work with the standard library the
default profile promises, and the expected answers below are literal values.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from plugvisor.core.errors import PlugvisorError
from plugvisor.core.log import configure_logging

CASES: dict[str, tuple[Any, Any]] = {
    "ok_text": (
        {"doc": json.dumps({"text": "Hello world, mail bob@example.com or ALICE@test.org now"})},
        {
            "words": 11,
            "first_sorted": ["alice", "bob", "com"],
            "emails": ["bob@example.com", "ALICE@test.org"],
            "squeezed": "a b c d",
            "dumped": '{"a": [1, 2], "b": 1}',
            "upper": "STRASSE",
            "split": ["a", "b", "", "c"],
            "named": {"key": "port", "value": "8080"},
            "title": "Hello Wide World",
            "centered": "**ok**",
            "formatted": "  3.14|ab  |  c  ",
        },
    ),
    "ok_math": (
        {"data": [2, 4, 4, 4, 5, 5, 7, 9]},
        {
            "decimal_sum": "0.30",
            "gross": "71.36",
            "fraction": "1/2",
            "fraction_limit": "311/99",
            "mean": 5,
            "median": 4.5,
            "mode": 4,
            "pstdev": 2.0,
            "gcd": 12,
            "comb": 120,
            "isqrt": 1000000,
            "seeded": 655,
            "complex": "2j",
            "phase": 1.570796,
            "array": "0100feff0300",
        },
    ),
    "ok_time": (
        {"local": "2024-03-31 01:30"},
        {
            "summer": "2024-07-01T14:00:00+02:00",
            "summer_offset": 7200.0,
            "summer_name": "CEST",
            "winter_offset": 3600.0,
            "new_york": "2024-03-10T08:00:00-04:00",
            "parsed": "2024-03-31T01:30:00+01:00",
            "weekday": "Thursday",
            "leap": True,
            "days": 366,
            "plus": "2025-01-01T01:00:00",
            "clock_moves": True,
        },
    ),
    "ok_collections": (
        {"words": ["the", "cat", "and", "the", "hat", "and", "the", "bat"]},
        {
            "common": [["the", 3], ["and", 2]],
            "by_letter": {
                "a": ["and", "and"],
                "b": ["bat"],
                "c": ["cat"],
                "h": ["hat"],
                "t": ["the", "the", "the"],
            },
            "window": [4, 2, 3],
            "ordered": ["c", "a", "b"],
            "chain": 1,
            "pairs": [["a", "b"], ["a", "c"], ["b", "c"]],
            "accumulate": [1, 3, 6, 10],
            "grouped": [["a", 3], ["b", 2], ["c", 1]],
            "product": 120,
            "fib": 1548008755920,
            "partial": 11,
            "smallest": [1, 2, 3],
            "heap_pop": 1,
            "bisect": 2,
            "insorted": [1, 3, 4, 5, 7],
            "point": {"x": 3, "y": 4},
            "local_point": 2,
            "itemgetter": [[1, "a"], [2, "b"]],
        },
    ),
    "ok_hashing": (
        {"data": "hello"},
        {
            "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha1": "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d",
            "blake2b": "a7b6eda801e5347d",
            "hmac": "9307b3b915efb5171ff14d8cb55fbcc798c6c0ef1456d66ded1a6aa723a58b7b",
            "hmac_eq": True,
            "b64": "aGVsbG8=",
            "b64_back": "hello",
            "urlsafe": "-_8=",
            "crc32": 907060870,
            "hex": "01ff",
            "uuid5": "cfbff0d1-9375-5685-968c-48ce8b15ae17",
            "uuid4_version": 4,
            "packed": "000100000002",
            "unpacked": -1,
            "calcsize": 16,
        },
    ),
    "ok_csv": (
        {"csv": 'name,qty,price\nwidget,3,2.50\n"gadget, large",2,10.25\n'},
        {
            "names": ["widget", "gadget, large"],
            "total": 28.0,
            "written": 'a,"b,c","d""e"\r\n1,,2.5\r\n',
            "semicolons": [["x", "y"], ["1", "2"]],
            "bytes": "bytes ok",
        },
    ),
    "ok_web": (
        {"url": "https://user@example.org:8443/p/a?q=1&q=2&x=%C3%A4#frag"},
        {
            "escaped": "&lt;a href=&#x27;x&#x27;&gt;&amp;&lt;/a&gt;",
            "unescaped": "<éA",
            "host": "example.org",
            "port": 8443,
            "query": {"q": ["1", "2"], "x": ["ä"]},
            "encoded": "q=a+b&n=1",
            "quoted": "%C3%A4/b%20c",
            "joined": "https://x.org/c",
            "hosts": ["192.168.0.1", "192.168.0.2"],
            "private": True,
            "v6": "2001:0db8:0000:0000:0000:0000:0000:0001",
            "wrapped": ["the quick", "brown fox", "jumps over", "the lazy", "dog"],
            "dedented": "a\n  b\n",
            "ratio": 0.75,
            "diff": ["--- ", "+++ ", "@@ -1,2 +1,2 @@", " a", "-b", "+c"],
            "close": ["apple", "ape"],
            "uname": "LATIN SMALL LETTER E WITH ACUTE",
            "nfd_len": 2,
            "category": "Lu",
            "template": "hi bob",
            "letters": "abcde",
        },
    ),
    "ok_multifile": (
        {"x": 5},
        {
            "double": 10,
            "triple": 15,
            "via_parent": 11,
            "sub_name": "sub",
            "deep_module": "sub.deep",
        },
    ),
    "ok_resources": (
        {"currency": "USD"},
        {"greeting": "Grüß Gott from a data file", "rate": 1.08, "is_file": True},
    ),
    "ok_lang": (
        {},
        {
            "items": [{"name": "a", "qty": 5, "tags": []}, {"name": "b", "qty": 2, "tags": []}],
            "replaced": {"name": "a", "qty": 9, "tags": []},
            "frozen": "frozen",
            "color": ["RED", "GREEN", 2],
            "perm": 6,
            "perm_has_x": False,
            "abstract": "refused",
            "area": 9,
            "pair": {"a": 1, "b": 5},
            "box": 4,
            "events": ["enter", "body 1", "exit", "stack closed"],
            "deep": [{"a": [1, [2]]}, {"a": [1, [2, 3]]}],
            "shallow_same": True,
            "dynamic": [1, 7],
        },
    ),
    "ok_exceptions": (
        {},
        {
            "zero": "ZeroDivisionError",
            "formatted": "ZeroDivisionError: division by zero",
            "format_exc_last": "ZeroDivisionError: division by zero",
            "key": "KeyError('k')",
            "value": "invalid literal for int() with base 10: 'x'",
            "app": [7, "app error 7"],
            "chain": ["outer", "inner"],
            "steps": ["try", "finally", "caught"],
            "group_value": 1,
            "group_type": 1,
            "attr": "AttributeError",
        },
    ),
    "ok_syntax": (
        {"names": ["bob", "al", "eve", "christine"]},
        {
            "balance": 25,
            "negative_refused": True,
            "repr": "Account(25)",
            "closure": 2,
            "chunks": [[1, 2], [3, 4], [5]],
            "flat": [1, 2, 3, 4, 5],
            "match": ["bulk pen", "single cup", "mapping k +1", "sequence 1 +2", "other"],
            "walrus": 5,
            "squares": [0, 1, 4, 9, 16],
            "sorted": ["al", "bob", "eve", "christine"],
            "dict_comp": {"a": 1, "b": 2},
            "set_comp": ["e", "h", "l", "o"],
            "fstring": "3.14|'x'|0xa",
            "star": [0, 1, 2, "a", "b"],
            "slots_attr": False,
        },
    ),
    "ok_introspection": (
        {"color": "red"},
        {
            "type": "Special",
            "class": "Special",
            "isinstance": [True, False],
            "issubclass": True,
            "getattr": 3,
            "default": "none",
            "hasattr": [True, False],
            "method": "special of size 3",
            "color": "red",
            "vars": ["color", "size"],
            "dict": {"size": 3, "color": "red"},
            "doc": "A thing.",
            "qualname": "Thing.describe",
            "mro": ["bool", "int", "object"],
            "dir": True,
            "callable": True,
            "name_of_type": "dict",
        },
    ),
}


@pytest.fixture(autouse=True)
def _no_false_alarms(kit: Any) -> Iterator[None]:
    """After each test: no honest plugin was logged as a violation (they count towards
    disabling a plugin, so a false alarm takes honest code down too)."""
    yield
    flagged = [x for x in kit.security_lines() if str(x.get("plugin", "")).startswith("ok_")]
    assert flagged == [], f"honest code was logged as a violation: {flagged}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_plugin_answers_exactly(kit: Any, name: str) -> None:
    request, expected = CASES[name]
    host = kit.spawn(name)
    rid = f"benign-{uuid.uuid4().hex[:12]}"
    assert host.call(request, request_id=rid, timeout=10.0) == expected
    # A second call on the same host: nothing was consumed or locked by the first one.
    assert host.call(request, timeout=10.0) == expected
    assert host.health()


def test_plugin_exception_is_plugin_error_and_host_survives(kit: Any) -> None:
    """An honest ``raise`` for bad input is plugin.error; the same process keeps serving."""
    host = kit.spawn("ok_exceptions")
    pid = host.pid
    with pytest.raises(PlugvisorError) as info:
        host.call({"reject": "negative amount"}, timeout=10.0)
    assert info.value.code == "plugin.error"
    assert "bad input: negative amount" in info.value.message
    assert host.alive and host.pid == pid
    assert host.call({}, timeout=10.0) == CASES["ok_exceptions"][1]


def test_call_raw_fast_path(kit: Any) -> None:
    host = kit.spawn("ok_echo")
    raw = host.call_raw(b'{"a": [1, 2]}', "benign-raw-1")
    assert json.loads(raw) == {"ok": True, "result": {"echo": {"a": [1, 2]}, "type": "dict"}}


def _notes(db_path: Any) -> list[list[Any]]:
    with sqlite3.connect(db_path, timeout=5.0) as db:
        return [list(row) for row in db.execute("SELECT id, body FROM notes ORDER BY id")]


def test_db_persists_across_calls_and_restart(kit: Any) -> None:
    host = kit.spawn("ok_db")
    assert host.call({"add": ["first"]}, timeout=10.0) == {"rows": [[1, "first"]]}
    assert host.call({"add": ["second"]}, timeout=10.0) == {"rows": [[1, "first"], [2, "second"]]}
    host.stop()
    assert not host.alive
    host = kit.spawn("ok_db")
    assert host.call({}, timeout=10.0) == {"rows": [[1, "first"], [2, "second"]]}
    # Exactly the budget (default 10 queries): 9 inserts and the select.
    budget = kit.profile().max_db_queries
    bodies = [f"bulk-{i}" for i in range(budget - 1)]
    rows = host.call({"add": bodies}, timeout=10.0)["rows"]
    assert [r[1] for r in rows] == ["first", "second", *bodies]
    # Seen from outside: the rows are in the plugin's database file.
    assert _notes(kit.layout.plugin_db("ok_db")) == rows


def test_log_records_reach_the_parent(kit: Any) -> None:
    """Info, warning and error records from setup() and a request, tagged with the plugin.

    The level filter is process-wide: set it here rather than inherit whatever an earlier
    test configured (the autouse ``_restore_logging`` puts it back afterwards).
    """
    configure_logging(level="debug", fmt="json", component="test")
    token = uuid.uuid4().hex
    with structlog.testing.capture_logs() as records:
        host = kit.spawn("ok_log")
        assert host.call({"token": token}, timeout=10.0) == "logged"
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            events = {r.get("event") for r in records}
            if {"ok_log.setup", "ok_log.handled", "ok_log.error_level"} <= events:
                break
            time.sleep(0.02)
    by_event = {r.get("event"): r for r in records}
    assert "ok_log.setup" in by_event, records
    assert by_event["ok_log.setup"].get("answer") == 42
    handled = by_event.get("ok_log.handled")
    assert handled is not None, records
    assert handled.get("token") == token and handled.get("n") == 3
    assert handled.get("log_level") == "warning"
    assert handled.get("plugin") == "ok_log", "plugin log records must be tagged with the plugin"
    assert by_event["ok_log.error_level"].get("log_level") == "error"


def test_in_memory_state_across_calls(kit: Any) -> None:
    host = kit.spawn("ok_counter")
    assert host.call({"by": 1}, timeout=10.0) == {"count": 1, "seen": [1]}
    assert host.call({"by": 2}, timeout=10.0) == {"count": 3, "seen": [1, 2]}
    assert host.call({"by": 3}, timeout=10.0) == {"count": 6, "seen": [1, 2, 3]}
    # A new process starts from scratch: in-memory state lives as long as the process.
    other = kit.spawn("ok_counter")
    assert other.call({"by": 5}, timeout=10.0) == {"count": 5, "seen": [5]}


def test_short_sleep_is_allowed(kit: Any) -> None:
    host = kit.spawn("ok_sleep")
    start = time.monotonic()
    slept = host.call({"seconds": 0.05}, timeout=10.0)
    assert 0.05 <= slept < 1.0
    assert time.monotonic() - start >= 0.05
