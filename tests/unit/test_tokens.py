"""state/tokens.py: roles, hashed storage, verification, revocation, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from plugvisor.core.errors import NotFoundError, StateError
from plugvisor.state.tokens import TOKENS_FILE, Role, TokenStore, hash_token


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.ADMIN.allows(Role.VIEWER)
    assert Role.OPERATOR.allows(Role.VIEWER) and not Role.OPERATOR.allows(Role.ADMIN)
    assert not Role.VIEWER.allows(Role.OPERATOR)
    with pytest.raises(StateError) as exc:
        Role.parse("root")
    assert exc.value.code == "state.invalid_role"
    assert "viewer, operator, admin" in exc.value.message


def test_create_verify_list_revoke(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / TOKENS_FILE)
    assert store.verify("anything") is None, "no file yet: nothing verifies"
    a = store.create(Role.ADMIN, "alice")
    v = store.create("viewer", "grafana")
    assert a != v and a.startswith("pvt_") and len(a) > 40
    assert store.verify(a) is Role.ADMIN
    assert store.verify(v) is Role.VIEWER
    assert store.verify("") is None
    assert store.verify(a[:-1]) is None
    raw = (tmp_path / TOKENS_FILE).read_text()
    assert a not in raw and hash_token(a) in raw, "only the hash is stored"
    assert (tmp_path / TOKENS_FILE).stat().st_mode & 0o777 == 0o600
    infos = {i.label: i for i in store.list()}
    assert infos["alice"].role is Role.ADMIN
    assert infos["alice"].id == hash_token(a)[:12]
    removed = store.revoke(infos["alice"].id)
    assert removed.label == "alice"
    assert store.verify(a) is None
    assert store.verify(v) is Role.VIEWER
    with pytest.raises(NotFoundError) as exc:
        store.revoke(infos["alice"].id)
    assert exc.value.code == "not_found.token"


def test_a_second_store_sees_changes(tmp_path: Path) -> None:
    """Another process's store (here: another object) sees a revocation at once."""
    one, two = TokenStore(tmp_path / TOKENS_FILE), TokenStore(tmp_path / TOKENS_FILE)
    token = one.create(Role.OPERATOR)
    assert two.verify(token) is Role.OPERATOR
    one.revoke(hash_token(token)[:12])
    assert two.verify(token) is None


def test_corrupt_file_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / TOKENS_FILE
    path.write_text("{not json")
    with pytest.raises(StateError) as exc:
        TokenStore(path).verify("x")
    assert exc.value.code == "state.corrupt_tokens"
    path.write_text(json.dumps({"tokens": [{"sha256": "x", "id": "x", "role": "god"}]}))
    with pytest.raises(StateError):
        TokenStore(path).list()


def _create_many(path: str, n: int, queue: multiprocessing.Queue[str]) -> None:
    store = TokenStore(path)
    for _ in range(n):
        queue.put(store.create(Role.VIEWER, "racer"))


def test_concurrent_creators_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / TOKENS_FILE
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_create_many, args=(str(path), 10, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    tokens = [queue.get(timeout=30) for _ in range(40)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    store = TokenStore(path)
    assert len(store.list()) == 40
    assert all(store.verify(t) is Role.VIEWER for t in tokens)
