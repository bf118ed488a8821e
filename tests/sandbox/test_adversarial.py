"""Hostile plugins against the sandbox: each tries one thing; the effect is checked from outside.

The attacks on files, programs, sockets and other processes were checked to succeed
when run as the sandbox user without the sandbox, against the same targets: files and
directories are made world-writable (or owned by the sandbox user), victims run as that
user, so a passing test means a sandbox layer stopped it, not file permissions. Where the
kernel's uid checks stop an attack anyway (SIGKILL to PID 1 or the root-owned parent,
setuid(0)), the test still runs, and a variant against a target of the sandbox user
(a victim process, another plugin's host) carries the weight. Each test asserts the
error code the caller gets, that the effect is absent (looked at from this process:
files, sockets, processes, rlimits, namespaces, the plugin's database), and that a fresh
benign host of the same spawner still answers.

Most attacks run twice (the ``layered`` fixture): against the full sandbox, where the
in-process policy usually refuses them first (often at the import), and against hosts
with the OS layers alone (``Spawner(in_process_policy=False)``), which shows that the
kernel layers hold for whatever gets past the policy (``atk_policy_off`` shows that
something can). In the OS-only run, an attack whose kernel layers are all missing on
this machine is skipped, naming them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import resource
import select
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog

from plugvisor.core.errors import PlugvisorError
from plugvisor.core.profile import load_profile

#: An operation the policy refuses (audit hook, import policy) or the OS layer makes fail
#: with EPERM/EACCES so that the plugin's own code raises.
REFUSED = frozenset({"policy.forbidden", "plugin.error"})
MiB = 1024 * 1024


def _rid() -> str:
    return f"adv-{uuid.uuid4().hex[:16]}"


@pytest.fixture(params=["policy", "os_only"])
def layered(request: pytest.FixtureRequest, kit: Any, os_only_spawner: Any) -> Any:
    """The kit, once with the full sandbox and once with the OS layers alone."""
    if request.param == "os_only":
        kit.spawner = os_only_spawner
        kit.os_only = True
    return kit


def _needs(kit: Any, *layers: str) -> None:
    """Without the policy, skip when none of the kernel ``layers`` that stop this exists."""
    if kit.os_only and not any(kit.layer_available(layer) for layer in layers):
        pytest.skip(
            f"{' / '.join(layers)} missing: without the in-process policy nothing stops this"
        )


def _attack(
    kit: Any,
    name: str,
    request: Any,
    codes: frozenset[str],
    *,
    profile: Any = None,
    host: Any = None,
    timeout: float | None = None,
    request_id: str | None = None,
) -> PlugvisorError:
    """Spawn ``name`` (unless ``host`` is given), call it, check the code; return the error.

    A plugin the policy refuses at load (its AST names a blocked attribute) never gets to
    run: ``policy.forbidden`` from the spawn counts as the refusal.
    """
    if host is None:
        try:
            host = kit.spawn(name, profile=profile)
        except PlugvisorError as exc:
            assert exc.code == "policy.forbidden" and not kit.os_only, (
                f"{name}: spawn failed with {exc}"
            )
            return exc
    rid = request_id or _rid()
    err: PlugvisorError = kit.call_error(host, request, request_id=rid, timeout=timeout)
    assert err.code in codes, f"{name}: got {err.code} ({err.message}); expected {sorted(codes)}"
    # An attack that dies of its own bug proves nothing: plugin.error must be a refusal.
    # Without the policy nothing in-process is hidden, so every route must be found too.
    bugs: tuple[str, ...] = (
        "NameError",
        "SyntaxError",
        "TypeError",
        "UnboundLocalError",
        "IndentationError",
    )
    if kit.os_only:
        bugs += ("LookupError", "KeyError", "IndexError", "AttributeError")
    assert not (err.code == "plugin.error" and err.message.startswith(bugs)), (
        f"{name} failed on its own bug, not on the sandbox: {err.message}"
    )
    if err.code.startswith(("policy.", "budget.")):
        line = kit.wait_for_violation(rid)
        assert line is not None, f"{name}: {err.code} but no security-log line for {rid}"
        assert line["plugin"] == name
    return err


def _assert_stays_absent(path: Path, seconds: float = 0.15) -> None:
    """``path`` does not appear within ``seconds`` (a forked or exec'd process may lag)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not path.exists(), f"{path} was created: the attack got through"
        time.sleep(0.02)
    assert not path.exists(), f"{path} was created: the attack got through"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _sandbox_ids(kit: Any) -> tuple[int, int]:
    """The uid/gid plugin hosts run as (read from outside with psutil)."""
    host = kit.spawn("ok_echo")
    proc = psutil.Process(host.pid)
    ids = proc.uids().real, proc.gids().real
    host.stop()
    return ids


@pytest.fixture
def victim(kit: Any) -> Iterator[tuple[subprocess.Popen[str], int, int, bytes]]:
    """A process of the sandbox user with a secret in memory and in its environment.

    Yields (proc, address of the secret's bytes, their size, secret).

    Same uid as the plugin hosts (and no Yama here), so the kernel's uid checks alone
    would let a plugin signal, ptrace or read it; only the sandbox stands in the way.
    """
    uid, gid = _sandbox_ids(kit)
    token = uuid.uuid4().hex
    script = kit.scratch_dir(0o755) / "victim.py"
    script.write_text(
        "import sys, time\n"
        f"secret = ('victim-' + {token!r}).encode()\n"
        "print(id(secret) + 32, len(secret), flush=True)\n"  # bytes payload offset, 64-bit
        "time.sleep(60)\n",
        encoding="utf-8",
    )
    os.chmod(script, 0o644)
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-S", str(script)],
        user=uid,
        group=gid,
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PV_VICTIM_SECRET": f"victim-{token}"},
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        assert ready, "victim did not start"
        addr, size = (int(v) for v in proc.stdout.readline().split())
        yield proc, addr, size, f"victim-{token}".encode()
    finally:
        proc.kill()
        proc.wait(timeout=5)


# ---- running programs, native code, dynamic code, escapes from the object graph ------------

CANARY_ATTACKS = [
    "atk_os_system",
    "atk_popen",
    "atk_posix_spawn",
    "atk_execv",
    "atk_ctypes_system",
    "atk_raw_ctypes",
    "atk_cffi",
    "atk_eval",
    "atk_exec",
    "atk_compile",
    "atk_subclasses",
    "atk_subclasses_getattr",
    "atk_func_globals",
    "atk_builtins_import",
    "atk_getframe",
    "atk_tb_frame",
    "atk_gc_objects",
    "atk_gc_referrers",
    "atk_audit_addhook",
    "atk_audit_clear",
    "atk_import_hidden",
]


@pytest.mark.parametrize("name", CANARY_ATTACKS)
def test_command_attack_creates_nothing(layered: Any, name: str) -> None:
    """Each plugin tries to run ``touch CANARY`` by another route; the canary never appears."""
    _needs(layered, "seccomp")
    canary = layered.scratch_dir(0o777) / "canary"
    _attack(layered, name, {"canary": str(canary)}, REFUSED)
    _assert_stays_absent(canary)
    layered.assert_benign_still_works()


@pytest.mark.parametrize("route", ["typing", "attrgetter"])
def test_policy_cannot_be_switched_off(kit: Any, route: str) -> None:
    """The in-process policy itself holds: no object walk, no real sys, no silenced hook.

    ``atk_policy_off`` reaches ``object.__subclasses__()`` either through the real
    ``getattr`` (a string annotation evaluated by ``typing.get_type_hints`` gets the
    interpreter's real builtins) or through ``type(operator.attrgetter(...))``, which
    builds attrgetters the policy never checked; then ``BuiltinImporter.load_module("sys")``
    gives the real ``sys.modules``, where it marks the policy's thread "busy" so the audit
    hook ignores events, and runs ``os.system``. The OS layers stop the command either
    way; this test asks that the policy refuses (and reports) the escape itself.
    """
    canary = kit.scratch_dir(0o777) / "canary"
    request = {"action": "system", "route": route, "canary": str(canary)}
    _attack(kit, "atk_policy_off", request, frozenset({"policy.forbidden"}))
    _assert_stays_absent(canary)
    kit.assert_benign_still_works()


def test_switched_off_policy_still_meets_the_os_layers(layered: Any) -> None:
    """Past a silenced policy, a world-connectable Unix socket is still out of reach."""
    _needs(layered, "seccomp")
    address = str(layered.scratch_dir(0o777) / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(address)
        os.chmod(address, 0o777)
        listener.listen(8)
        _attack(layered, "atk_policy_off", {"action": "unix", "path": address}, REFUSED)
        readable, _, _ = select.select([listener], [], [], 0.3)
        assert readable == [], "the plugin connected to a Unix socket outside the sandbox"
    layered.assert_benign_still_works()


def test_switched_off_policy_cannot_chmod_outside(kit: Any) -> None:
    """End to end under the full sandbox: silence the policy, then chmod a file outside.

    The file belongs to the sandbox user (as another plugin's data under ``trusted``
    would); Landlock does not cover metadata changes, so after the policy is gone only
    seccomp could refuse chmod.
    """
    uid, gid = _sandbox_ids(kit)
    target = kit.scratch_dir(0o777) / "owned-by-sandbox-user.txt"
    target.write_text("data\n", encoding="utf-8")
    os.chmod(target, 0o600)
    os.chown(target, uid, gid)
    request = {"action": "chmod", "route": "attrgetter", "path": str(target)}
    _attack(kit, "atk_policy_off", request, REFUSED)
    assert target.stat().st_mode & 0o777 == 0o600, "a sandboxed plugin changed a file's mode"
    kit.assert_benign_still_works()


#: Stdlib routes that read attributes (or evaluate names) for the plugin; each leads to
#: ``object.__subclasses__()`` or a real module's namespace when left open.
ATTRIBUTE_ROUTES = [
    "attrgetter_type",
    "methodcaller_type",
    "formatter_base",
    "update_wrapper",
    "lru_cache_dict",
    "wraps_dict",
    "typing_class",
    "method_reduce",
    "forwardref_module",
    "module_claim",
    "global_enum",
    "convert_read",
]


@pytest.mark.parametrize("route", ATTRIBUTE_ROUTES)
def test_stdlib_attribute_routes_are_refused(layered: Any, route: str) -> None:
    """Every stdlib route to the object graph is refused and reported by the policy itself.

    ``atk_attr_routes`` walks from one route to the real ``sys.modules`` and runs
    ``touch CANARY``. Under the full sandbox the policy must refuse the route (not the
    kernel the command); with the OS layers alone, seccomp stops the command.
    """
    _needs(layered, "seccomp")
    canary = layered.scratch_dir(0o777) / "canary"
    codes = REFUSED if layered.os_only else frozenset({"policy.forbidden"})
    _attack(layered, "atk_attr_routes", {"route": route, "canary": str(canary)}, codes)
    _assert_stays_absent(canary)
    layered.assert_benign_still_works()


CHANNEL_ROUTES = [
    "attr",
    "log_attr",
    "dict",
    "log_dict",
    "vars",
    "getattribute",
    "self",
    "closure",
    "log_closure",
    "func_globals",
    "init_globals",
]


@pytest.mark.parametrize("route", CHANNEL_ROUTES)
def test_ctx_does_not_lead_to_the_channel(kit: Any, route: str) -> None:
    """No attribute path from ``ctx.db``/``ctx.log`` reaches the channel socket.

    ``atk_ctx_channel`` sends a well-formed RESULT frame (``"forged"``) for the current
    request on whatever it digs out; the parent cannot tell such a frame from the
    runtime's, so the only defence is that the plugin never holds the socket.
    """
    _attack(kit, "atk_ctx_channel", {"route": route}, REFUSED)
    kit.assert_benign_still_works()


def test_patched_socket_class_does_not_get_the_channel(kit: Any) -> None:
    """Under ``trusted`` (``socket`` allowed) a plugin can replace ``socket.socket``'s
    methods; the runtime's channel is the C socket type, so they never see it."""
    trusted = load_profile("trusted", kit.settings)
    _attack(kit, "atk_ctx_channel", {"route": "socket_patch"}, REFUSED, profile=trusted)
    kit.assert_benign_still_works()


def test_fork_leaves_no_child(layered: Any) -> None:
    _needs(layered, "seccomp", "rlimits")
    canary = layered.scratch_dir(0o777) / "forked"
    host = layered.spawn("atk_fork")
    _attack(layered, "atk_fork", {"canary": str(canary)}, REFUSED, host=host)
    if _alive(host.pid):
        # The forked child would sleep 3 s: it would be visible right now.
        assert psutil.Process(host.pid).children(recursive=True) == []
    _assert_stays_absent(canary, seconds=0.5)  # the child would touch it, then sleep
    layered.assert_benign_still_works()


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def test_no_new_user_namespace(layered: Any) -> None:
    """unshare(CLONE_NEWUSER) would hand the plugin every capability inside a new namespace."""
    _needs(layered, "seccomp")
    host = layered.spawn("atk_unshare_userns")
    before = _ns(host.pid, "user")
    _attack(layered, "atk_unshare_userns", {}, REFUSED, host=host)
    if _alive(host.pid):
        assert _ns(host.pid, "user") == before, "the host entered a new user namespace"
    layered.assert_benign_still_works()


def _key_users() -> dict[str, str]:
    """``/proc/key-users`` by uid: how many keys each user holds (readable from outside)."""
    lines = Path("/proc/key-users").read_text().splitlines()
    return {line.split(":")[0].strip(): line.split(":", 1)[1].split()[0] for line in lines}


def test_kernel_interfaces_out_of_reach(layered: Any) -> None:
    """io_uring, bpf, perf events, userfaultfd and keyrings: kernel attack surface.

    All of them work for the sandbox user here without the sandbox (bpf aside); the fds
    they return would stay open in the host, and a key would show in /proc/key-users.
    """
    _needs(layered, "seccomp")
    uid, _gid = _sandbox_ids(layered)
    keys_before = _key_users().get(str(uid))
    host = layered.spawn("atk_kernel_surface")
    _attack(layered, "atk_kernel_surface", {}, REFUSED, host=host)
    if _alive(host.pid):
        fd_dir = Path(f"/proc/{host.pid}/fd")
        links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        kinds = ("io_uring", "perf_event", "userfaultfd", "bpf")
        assert not [x for x in links if any(k in x for k in kinds)], links
    assert _key_users().get(str(uid)) == keys_before, "the plugin added a key to a keyring"
    layered.assert_benign_still_works()


def test_setuid_root_fails(layered: Any) -> None:
    _needs(layered, "privileges")
    canary = layered.scratch_dir(0o700) / "as-root"
    host = layered.spawn("atk_setuid")
    _attack(layered, "atk_setuid", {"canary": str(canary)}, REFUSED, host=host)
    assert not canary.exists()
    if _alive(host.pid):
        uids = psutil.Process(host.pid).uids()
        assert 0 not in uids, f"host uids {uids} include root"
    layered.assert_benign_still_works()


def test_caught_refusals_are_still_refused_and_logged(
    layered: Any, make_spawner: Callable[..., Any]
) -> None:
    """A plugin that swallows every refusal still gets nothing done, and is still reported."""
    _needs(layered, "seccomp", "landlock")
    seen: list[tuple[str, str]] = []
    spawner = make_spawner(
        in_process_policy=not layered.os_only,
        on_violation=lambda plugin, _version, kind, _detail: seen.append((plugin, kind)),
    )
    canary = layered.scratch_dir(0o777) / "canary"
    host = layered.spawn("atk_catch_all", spawner=spawner)
    rid = _rid()
    try:
        result = host.call({"canary": str(canary)}, request_id=rid, timeout=10.0)
    except PlugvisorError as exc:
        assert exc.code in REFUSED, exc
    else:
        assert isinstance(result, list)
    _assert_stays_absent(canary)
    if not layered.os_only:
        # os, subprocess, write, eval, socket: five refusals, each one reported.
        deadline = time.monotonic() + 3.0
        while len(seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        lines = [x for x in layered.security_lines() if x.get("request_id") == rid]
        assert len(lines) >= 5, lines
        assert {x["kind"] for x in lines} == {"policy.forbidden"}, lines
        assert len(seen) >= 5 and {p for p, _ in seen} == {"atk_catch_all"}, seen
    host.stop()
    spawner.close()
    layered.assert_benign_still_works()


# ---- the file system ------------------------------------------------------------------------

WRITE_ATTACKS = ["atk_write_open", "atk_write_os_open", "atk_write_pathlib", "atk_write_io"]


@pytest.mark.parametrize("target", ["outside", "data_dir"])
@pytest.mark.parametrize("name", WRITE_ATTACKS)
def test_write_refused(layered: Any, name: str, target: str) -> None:
    """No file is written, outside data_dir or (under ``default``) inside it.

    Both directories are made world-writable first: only the sandbox refuses the write.
    """
    _needs(layered, "landlock")
    if target == "outside":
        directory = layered.scratch_dir(0o777)
    else:
        layered.layout.ensure_plugin_data(name)
        directory = layered.layout.plugin_files_dir(name)
        os.chmod(directory, 0o777)
    path = directory / f"written-{uuid.uuid4().hex[:8]}"
    _attack(layered, name, {"path": str(path)}, REFUSED)
    assert not path.exists(), f"{name} wrote {path}"
    layered.assert_benign_still_works()


@pytest.mark.parametrize(
    "name", ["atk_truncate", "atk_remove", "atk_rename", "atk_chmod", "atk_utime", "atk_setxattr"]
)
def test_existing_file_is_not_modified(layered: Any, name: str) -> None:
    """A file outside the plugin, owned by the sandbox user in a world-writable directory.

    Owned by that user (as another plugin's data under ``trusted`` would be), so file
    permissions allow every change here: only the sandbox may refuse it.
    """
    _needs(layered, "landlock", "seccomp")
    uid, gid = _sandbox_ids(layered)
    directory = layered.scratch_dir(0o777)
    target = directory / "owned-by-sandbox-user.txt"
    target.write_text("original content\n", encoding="utf-8")
    os.chmod(target, 0o644)
    os.chown(target, uid, gid)
    before = target.stat()
    _attack(layered, name, {"path": str(target)}, REFUSED)
    assert sorted(p.name for p in directory.iterdir()) == [target.name]
    after = target.stat()
    assert target.read_text(encoding="utf-8") == "original content\n"
    assert (after.st_mode, after.st_uid, after.st_mtime_ns) == (
        before.st_mode,
        before.st_uid,
        before.st_mtime_ns,
    ), f"{name} changed the file's metadata"
    assert os.listxattr(target) == [], f"{name} set extended attributes"
    layered.assert_benign_still_works()


def test_own_code_is_not_overwritten(layered: Any) -> None:
    _needs(layered, "landlock")
    code = layered.code_dir("atk_overwrite_code", writable=True)
    module = code / "atk_overwrite_code" / "__init__.py"
    before = hashlib.sha256(module.read_bytes()).hexdigest()
    host = layered.spawn("atk_overwrite_code", code_dir=code)
    _attack(layered, "atk_overwrite_code", {}, REFUSED, host=host)
    assert hashlib.sha256(module.read_bytes()).hexdigest() == before, "own code was rewritten"
    layered.assert_benign_still_works()


def test_sibling_version_is_not_read_through_dotdot(layered: Any) -> None:
    """``<own code dir>/../<other digest>/plugin.yaml``: a path that starts inside the plugin."""
    _needs(layered, "landlock")
    token = uuid.uuid4().hex
    other = layered.code_dir("ok_echo")
    secret = other / "plugin.yaml"
    os.chmod(secret, 0o644)
    with secret.open("a", encoding="utf-8") as fh:
        fh.write(f"config:\n  api_key: {token}\n")
    os.chmod(secret, 0o444)
    host = layered.spawn("atk_read_sibling")
    try:
        result = host.call({"sibling": other.name}, timeout=10.0)
    except PlugvisorError as exc:
        assert token not in str(exc.to_dict())
        assert exc.code in REFUSED, exc
    else:
        pytest.fail(f"read a sibling version's plugin.yaml (leaked: {token in str(result)})")
    layered.assert_benign_still_works()


def test_peer_environment_is_not_read(layered: Any, victim: Any) -> None:
    """/proc/<pid>/environ of another process of the sandbox user (e.g. another plugin's host)."""
    _needs(layered, "landlock")
    proc, _addr, _size, secret = victim
    host = layered.spawn("atk_read_file")
    try:
        result = host.call({"path": f"/proc/{proc.pid}/environ"}, timeout=10.0)
    except PlugvisorError as exc:
        assert secret.decode() not in str(exc.to_dict())
        assert exc.code in REFUSED, exc
    else:
        leaked = secret.decode() in json.dumps(result)
        pytest.fail(f"read another process's environment (secret leaked: {leaked})")
    layered.assert_benign_still_works()


@pytest.mark.parametrize("kind", ["root_only", "world_readable", "other_plugin"])
def test_secret_file_is_not_read(layered: Any, kind: str) -> None:
    """A root-only file, a world-readable one, and another plugin's plugin.yaml (its config)."""
    token = uuid.uuid4().hex
    if kind == "other_plugin":
        # Another version in the store, with the store's modes (0o444 files, 0o555 dirs).
        other = layered.code_dir("ok_echo")
        secret = other / "plugin.yaml"
        os.chmod(secret, 0o644)
        with secret.open("a", encoding="utf-8") as fh:
            fh.write(f"config:\n  api_key: {token}\n")
        os.chmod(secret, 0o444)
    else:
        secret = layered.scratch_dir(0o755) / "secret.txt"
        secret.write_text(f"secret token {token}\n", encoding="utf-8")
        os.chmod(secret, 0o600 if kind == "root_only" else 0o644)
    host = layered.spawn("atk_read_file")
    try:
        result = host.call({"path": str(secret)}, request_id=_rid(), timeout=10.0)
    except PlugvisorError as exc:
        assert token not in str(exc.to_dict()), "the secret leaked through the error"
        assert exc.code in REFUSED, exc
    else:
        leaked = token in json.dumps(result)
        if leaked and kind != "root_only":
            _needs(layered, "landlock")
        pytest.fail(f"read of a {kind} file outside the plugin succeeded (leaked={leaked})")
    layered.assert_benign_still_works()


# ---- the network and other processes' sockets ------------------------------------------------


def test_tcp_connect_refused(layered: Any) -> None:
    _needs(layered, "seccomp", "netns", "landlock")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        _attack(layered, "atk_tcp_connect", {"port": port}, REFUSED)
        # A completed connect sits in the backlog: the listener would be readable.
        readable, _, _ = select.select([listener], [], [], 0.3)
        assert readable == [], "the plugin connected to a TCP listener on 127.0.0.1"
    layered.assert_benign_still_works()


def test_udp_send_refused(layered: Any) -> None:
    _needs(layered, "seccomp", "netns")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        _attack(layered, "atk_udp_send", {"port": port}, REFUSED)
        readable, _, _ = select.select([sink], [], [], 0.3)
        assert readable == [], f"a datagram arrived: {sink.recv(100)!r}"
    layered.assert_benign_still_works()


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_unix_socket_connect_refused(layered: Any, kind: str) -> None:
    """Unix sockets of other programs (a daemon's control socket, a session bus) stay out of reach.

    The path socket is world-connectable (0o777 in a 0o777 directory), so only the sandbox
    stands in the way; the abstract one has no permissions at all.
    """
    _needs(layered, "seccomp", "landlock")
    if kind == "path":
        address = str(layered.scratch_dir(0o777) / "control.sock")
    else:
        address = f"\0pv-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(address)
        if kind == "path":
            os.chmod(address, 0o777)
        listener.listen(8)
        _attack(layered, "atk_unix_connect", {"path": address}, REFUSED)
        readable, _, _ = select.select([listener], [], [], 0.3)
        assert readable == [], f"the plugin connected to a {kind} Unix socket outside the sandbox"
    layered.assert_benign_still_works()


# ---- the host-side database ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["atk_db_attach", "atk_db_vacuum_into"])
def test_db_cannot_write_files_elsewhere(layered: Any, name: str) -> None:
    """ctx.db runs in the daemon with its rights: SQL must not create files anywhere else."""
    path = layered.scratch_dir(0o777) / "copy.sqlite"
    rid = _rid()
    _attack(layered, name, {"path": str(path)}, REFUSED, request_id=rid)
    assert not path.exists(), f"{name} made the host write {path}"
    action = {"atk_db_attach": "ATTACH DATABASE", "atk_db_vacuum_into": "VACUUM INTO"}[name]
    _assert_db_refusal_logged(layered, name, rid, action)
    layered.assert_benign_still_works()


def _assert_db_refusal_logged(kit: Any, name: str, rid: str, names: str) -> None:
    """The authorizer's refusal is a security-log violation naming the refused SQL action."""
    line = kit.wait_for_violation(rid)
    assert line is not None, f"{name}: the ctx.db refusal left no security-log line for {rid}"
    assert line["plugin"] == name and line["kind"] == "policy.forbidden", line
    assert names in line["detail"], line


def test_db_schema_cannot_be_corrupted(layered: Any) -> None:
    """PRAGMA writable_schema + UPDATE sqlite_master would break the plugin's own database."""
    rid = _rid()
    _attack(layered, "atk_db_corrupt", {}, REFUSED, request_id=rid)
    _assert_db_refusal_logged(layered, "atk_db_corrupt", rid, "PRAGMA writable_schema")
    with sqlite3.connect(layered.layout.plugin_db("atk_db_corrupt"), timeout=5.0) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'keep'").fetchone()[0]
    assert sql == "CREATE TABLE keep (x INTEGER)"
    layered.assert_benign_still_works()


def _hits(db_path: Path) -> list[int]:
    with sqlite3.connect(db_path, timeout=5.0) as db:
        return [row[0] for row in db.execute("SELECT i FROM hits ORDER BY rowid")]


@pytest.mark.parametrize("catch", [False, True])
def test_db_query_flood(kit: Any, catch: bool) -> None:
    """50 queries in one request: the 11th and later never run, caught or not."""
    host = kit.spawn("atk_db_flood")
    db_path = kit.layout.plugin_db("atk_db_flood")
    before = _hits(db_path)
    rid = _rid()
    budget = kit.profile().max_db_queries
    if catch:
        # The plugin swallows each refusal; the breach is still logged.
        try:
            result = host.call({"count": 50, "catch": True}, request_id=rid, timeout=10.0)
        except PlugvisorError as exc:
            assert exc.code == "budget.db_queries", exc
        else:
            assert result == 50 - budget
    else:
        err = kit.call_error(host, {"count": 50}, request_id=rid, timeout=10.0)
        assert err.code == "budget.db_queries", err
    assert kit.wait_for_violation(rid) is not None, "db budget breach not logged"
    new = _hits(db_path)[len(before) :]
    assert all(i < budget for i in new), f"queries beyond the budget ran: {new}"
    assert len(new) <= budget
    kit.assert_benign_still_works()


def test_db_size_is_bounded(kit: Any) -> None:
    """One recursive INSERT of a gigabyte: refused or cut off; the files stay bounded."""
    host = kit.spawn("atk_db_bloat", profile=kit.profile(max_execution_time=3.0))
    codes = frozenset({"plugin.error", "budget.time"})
    _attack(kit, "atk_db_bloat", {}, codes, host=host, timeout=15.0)
    db_path = kit.layout.plugin_db("atk_db_bloat")
    sizes = {p.name: p.stat().st_size for p in db_path.parent.glob(db_path.name + "*")}
    assert sum(sizes.values()) <= 300 * MiB, f"ctx.db grew to {sizes}"
    kit.assert_benign_still_works()


# ---- budgets ---------------------------------------------------------------------------------


def test_memory_bomb(layered: Any) -> None:
    _needs(layered, "rlimits")
    host = layered.spawn("atk_memory_bomb")
    parent = psutil.Process(host.pid).ppid()
    _attack(
        layered, "atk_memory_bomb", {"size": 200 * MiB}, frozenset({"budget.memory"}), host=host
    )
    assert _alive(parent), "the host's parent died"
    layered.assert_benign_still_works()


def _rlimits(pid: int) -> dict[str, tuple[str, str]]:
    """Soft and hard limits of ``pid`` from ``/proc/<pid>/limits``.

    Read from /proc rather than prlimit(2): root in this container lacks CAP_SYS_RESOURCE,
    so prlimit on another user's process fails with EPERM.
    """
    limits = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft, hard = line[:26].strip(), line[26:47].strip(), line[47:68].strip()
        limits[name] = (soft, hard)
    return limits


def test_setrlimit_cannot_lift_the_memory_cap(layered: Any) -> None:
    _needs(layered, "rlimits")
    host = layered.spawn("atk_setrlimit")
    before = _rlimits(host.pid)
    # The host runs under a memory cap, or the attack below would prove nothing.
    capped = ("Max address space", "Max data size")
    assert any(before[name][1] != "unlimited" for name in capped), before
    codes = frozenset({"budget.memory", "policy.forbidden"})
    _attack(layered, "atk_setrlimit", {}, codes, host=host)
    if _alive(host.pid):
        after = _rlimits(host.pid)
        assert after == before, f"rlimits changed from {before} to {after}"
    layered.assert_benign_still_works()


def test_cpu_loop_hits_the_deadline(kit: Any) -> None:
    host = kit.spawn("atk_cpu_loop", profile=kit.profile(max_execution_time=1.0))
    start = time.monotonic()
    _attack(kit, "atk_cpu_loop", {}, frozenset({"budget.time"}), host=host)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed <= 1.0 + 2.0, f"budget.time after {elapsed:.2f}s for a 1s budget"
    # A spinning host cannot be interrupted: it must be gone, not left burning a core.
    deadline = time.monotonic() + 3.0
    while _alive(host.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(host.pid), "the spinning host was left running"
    kit.assert_benign_still_works()


def test_sleep_past_the_deadline(kit: Any) -> None:
    host = kit.spawn("atk_sleep", profile=kit.profile(max_execution_time=1.0))
    start = time.monotonic()
    _attack(kit, "atk_sleep", {"seconds": 30}, frozenset({"budget.time"}), host=host)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed <= 1.0 + 2.0, f"budget.time after {elapsed:.2f}s for a 1s budget"
    kit.assert_benign_still_works()


def test_import_that_never_ends(kit: Any) -> None:
    """A plugin stuck at import fails its spawn in bounded time and leaves no process."""
    spec = kit.spec("atk_import_hang", profile=kit.profile(max_execution_time=1.0))
    before = set(psutil.Process().children(recursive=True))
    template = kit.spawner.template_pid
    start = time.monotonic()
    with pytest.raises(PlugvisorError) as info:
        kit.spawner.spawn(spec, timeout=4.0)
    elapsed = time.monotonic() - start
    # The spawn timeout bounds it in wall time even when RLIMIT_CPU (CPU seconds) lags
    # behind on a loaded machine.
    assert elapsed < 4.0 + 1.5, f"spawn took {elapsed:.1f}s with a 4s timeout"
    # RLIMIT_CPU kills it (budget.time / sandbox.spawn_failed) or the spawn deadline does.
    codes = {"budget.time", "sandbox.spawn_timeout", "sandbox.spawn_failed", "plugin.error"}
    assert info.value.code in codes, info.value

    # The template survives; the hung host is gone (hosts run as the sandbox user).
    assert kit.spawner.template_pid == template and _alive(template), "the template died"

    def left_running() -> list[psutil.Process]:
        now = psutil.Process().children(recursive=True)
        return [p for p in now if p not in before and _alive(p.pid) and p.uids().real != 0]

    deadline = time.monotonic() + 3.0
    while left_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left_running() == [], "the hung plugin's process was left running"
    kit.assert_benign_still_works()


@pytest.mark.parametrize(
    "entrypoint", ["json:JSONDecoder", "os:system", "..ok_echo:Plugin", "ok_echo:__builtins__"]
)
def test_entrypoint_outside_the_package_is_refused(kit: Any, entrypoint: str) -> None:
    """A plugin.yaml naming a stdlib module, a relative escape or a dunder is never started."""
    spec = dataclasses.replace(kit.spec("ok_echo"), entrypoint=entrypoint)
    with pytest.raises(PlugvisorError) as info:
        kit.hosts.append(kit.spawner.spawn(spec, timeout=10.0))
    assert info.value.code.split(".")[0] in {"sandbox", "plugin", "policy"}, info.value
    kit.assert_benign_still_works()


@pytest.mark.parametrize("mode", ["policy", "os_only"])
def test_too_many_files(kit: Any, os_only_spawner: Any, mode: str) -> None:
    """200 opens in one request; without the policy RLIMIT_NOFILE makes open() fail."""
    if mode == "os_only":
        kit.spawner, kit.os_only = os_only_spawner, True
        codes = frozenset({"budget.files", "plugin.error"})
    else:
        codes = frozenset({"budget.files"})
    _attack(kit, "atk_many_files", {"count": 200}, codes)
    kit.assert_benign_still_works()


def test_few_files_are_fine(kit: Any) -> None:
    """The files budget must not refuse honest code: 10 opens of its own file under 50."""
    host = kit.spawn("atk_many_files")
    assert host.call({"count": 10}, timeout=10.0) == 10


# ---- responses and requests ------------------------------------------------------------------


def test_huge_response_is_refused_without_parent_bloat(kit: Any) -> None:
    """200 MB of JSON from a host allowed 1 GiB: response.too_large; this process stays small."""
    host = kit.spawn("atk_big_response", profile=kit.profile(memory_limit=1024 * MiB))
    rss_before = psutil.Process().memory_info().rss
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    codes = frozenset({"response.too_large"})
    _attack(kit, "atk_big_response", {"size": 200 * MiB}, codes, host=host, timeout=30.0)
    rss_after = psutil.Process().memory_info().rss
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert rss_after - rss_before < 100 * MiB, "the parent kept the huge response"
    assert peak_after - peak_before < 100 * MiB, "the parent read the huge response into memory"
    kit.assert_benign_still_works()


def test_response_over_the_cap_under_default(kit: Any) -> None:
    """5 MiB of JSON under the default profile (64 MiB, 4 MiB cap): too large, not out of memory."""
    _attack(kit, "atk_big_response", {"size": 5 * MiB}, frozenset({"response.too_large"}))
    kit.assert_benign_still_works()


@pytest.mark.parametrize("kind", ["set", "bytes", "object", "nan", "tuple_key"])
def test_not_json_response(kit: Any, kind: str) -> None:
    _attack(kit, "atk_not_json", {"kind": kind}, frozenset({"response.not_json"}))
    kit.assert_benign_still_works()


@pytest.mark.parametrize(
    "forged",
    ["not json at all", '1,"ok":false', "[" * 10, "[" * 200_000 + "]" * 200_000],
    ids=["garbage", "injected_key", "truncated", "deeply_nested"],
)
def test_subverted_runtime_cannot_forge_a_response(layered: Any, forged: str) -> None:
    """A child that gets past the policy and corrupts its own encoder still cannot hand
    the caller non-JSON: the parent checks what it relays (response.not_json)."""
    host = layered.spawn("atk_forge_response")
    codes = frozenset({"response.not_json", "policy.forbidden"})
    _attack(layered, "atk_forge_response", {"forged": forged}, codes, host=host)
    # The fast path the daemon relays must carry a well-formed error envelope too.
    other = layered.spawn("atk_forge_response")
    envelope = other.call_raw(json.dumps({"forged": forged}).encode(), _rid())
    doc = json.loads(envelope)
    assert doc["ok"] is False and doc["error"]["code"] in codes, doc
    layered.assert_benign_still_works()


@pytest.mark.parametrize(
    "payload", [b"\xff\xfe not json", b"{", b'{"a": NaN}', b"", b"[" * 100_000 + b"]" * 100_000]
)
def test_malformed_request_bytes(kit: Any, payload: bytes) -> None:
    """Garbage on the fast path comes back as an error envelope; the host keeps serving."""
    host = kit.spawn("ok_echo")
    envelope = json.loads(host.call_raw(payload, _rid()))
    assert envelope["ok"] is False, envelope
    # The caller's bad input must not be reported as the plugin's bad output
    # (response.*): the daemon counts those against the plugin version.
    area = envelope["error"]["code"].split(".")[0]
    assert area in {"plugin", "request", "policy"}, envelope
    assert host.call({"after": True}, timeout=10.0) == {"echo": {"after": True}, "type": "dict"}


# ---- other processes -------------------------------------------------------------------------


def test_kill_parent(layered: Any) -> None:
    _needs(layered, "privileges", "seccomp", "landlock")
    host = layered.spawn("atk_kill_parent")
    parent = psutil.Process(host.pid).ppid()
    _attack(layered, "atk_kill_parent", {}, REFUSED, host=host)
    assert _alive(parent), "the host's parent was killed"
    layered.assert_benign_still_works()


def test_kill_init(layered: Any) -> None:
    _needs(layered, "privileges", "seccomp", "landlock")
    started = psutil.Process(1).create_time()
    _attack(layered, "atk_kill_init", {}, REFUSED)
    assert psutil.Process(1).create_time() == started
    layered.assert_benign_still_works()


@pytest.mark.parametrize("name", ["atk_signal_peer", "atk_pidfd_signal"])
def test_signal_same_user_process(layered: Any, victim: Any, name: str) -> None:
    """SIGKILL through kill() and through a pidfd, to a process of the sandbox user."""
    _needs(layered, "landlock", "seccomp")
    proc = victim[0]
    _attack(layered, name, {"pid": proc.pid}, REFUSED)
    assert proc.poll() is None, f"the victim was killed (rc {proc.returncode})"
    layered.assert_benign_still_works()


def test_other_plugins_host_is_out_of_reach(layered: Any) -> None:
    """Another plugin's host runs as the same user: no SIGKILL, no ptrace, state intact."""
    _needs(layered, "landlock", "seccomp")
    other = layered.spawn("ok_counter")
    assert other.call({"by": 1}, timeout=10.0) == {"count": 1, "seen": [1]}
    _attack(layered, "atk_signal_peer", {"pid": other.pid}, REFUSED)
    _attack(layered, "atk_ptrace", {"pid": other.pid}, REFUSED)
    tracer, state = _traced(other.pid)
    assert tracer == 0 and state not in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    # The same process, with its in-memory state: it was neither killed nor restarted.
    assert other.call({"by": 2}, timeout=10.0) == {"count": 3, "seen": [1, 2]}
    layered.assert_benign_still_works()


def _traced(pid: int) -> tuple[int, str]:
    status = Path(f"/proc/{pid}/status").read_text()
    tracer = int(status.split("TracerPid:")[1].split()[0])
    return tracer, psutil.Process(pid).status()


@pytest.mark.parametrize("target", ["peer", "parent"])
def test_ptrace_attach_refused(layered: Any, victim: Any, target: str) -> None:
    _needs(layered, "landlock", "seccomp")
    host = layered.spawn("atk_ptrace")
    pid = victim[0].pid if target == "peer" else psutil.Process(host.pid).ppid()
    _attack(layered, "atk_ptrace", {"pid": pid}, REFUSED, host=host)
    tracer, state = _traced(pid)
    assert tracer == 0, f"{target} is traced by {tracer}"
    # PTRACE_ATTACH stops the tracee; it stays stopped even after the tracer exits.
    assert state not in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP), state
    layered.assert_benign_still_works()


def test_pidfd_getfd_cannot_steal_descriptors(layered: Any, victim: Any) -> None:
    """pidfd_getfd() on a process of the sandbox user, then a write through its stdout.

    The victim's stdout is a pipe this test reads: anything written there is seen here.
    """
    _needs(layered, "landlock", "seccomp")
    proc = victim[0]
    _attack(layered, "atk_pidfd_getfd", {"pid": proc.pid, "fd": 1}, REFUSED)
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 0.3)
    assert readable == [], f"wrote through a stolen descriptor: {proc.stdout.readline()!r}"
    layered.assert_benign_still_works()


def test_process_vm_readv_refused(layered: Any, victim: Any) -> None:
    _needs(layered, "landlock", "seccomp")
    proc, addr, size, secret = victim
    host = layered.spawn("atk_vm_readv")
    try:
        result = host.call({"pid": proc.pid, "addr": addr, "len": size}, timeout=10.0)
    except PlugvisorError as exc:
        assert secret.decode() not in str(exc.to_dict())
        assert exc.code in REFUSED, exc
    else:
        read = secret.decode() in str(result)
        pytest.fail(f"process_vm_readv returned {str(result)[:80]!r} (secret read: {read})")
    layered.assert_benign_still_works()


def test_inherited_fds_hold_nothing(layered: Any, make_spawner: Callable[..., Any]) -> None:
    """Descriptors this process holds when a template starts are not readable in a host."""
    _needs(layered, "fds_env")
    token = uuid.uuid4().hex
    read_end, write_end = os.pipe()
    os.write(write_end, f"pipe secret {token}".encode())
    secret_file = layered.scratch_dir(0o700) / "held-open.txt"
    secret_file.write_text(f"file secret {token}", encoding="utf-8")
    file_fd = os.open(secret_file, os.O_RDONLY)
    for fd in (read_end, write_end, file_fd):
        os.set_inheritable(fd, True)
    try:
        spawner = make_spawner(in_process_policy=not layered.os_only)
        host = layered.spawn("atk_read_fds", spawner=spawner)
        try:
            result = host.call({}, request_id=_rid(), timeout=10.0)
        except PlugvisorError as exc:
            assert token not in str(exc.to_dict())
            assert exc.code in REFUSED, exc
        else:
            assert token not in json.dumps(result), f"inherited data readable: {result}"
        host.stop()
        spawner.close()
    finally:
        for fd in (read_end, write_end, file_fd):
            os.close(fd)
    layered.assert_benign_still_works()


def test_log_flood_is_bounded(kit: Any) -> None:
    """5000 records of 100 kB in one request: the parent keeps a bounded number, stays small."""
    sent = 5000
    rss_before = psutil.Process().memory_info().rss
    with structlog.testing.capture_logs() as records:
        host = kit.spawn("atk_log_flood")
        try:
            host.call({"count": sent, "size": 100_000}, request_id=_rid(), timeout=30.0)
        except PlugvisorError as exc:
            assert exc.code in {"budget.time", "plugin.error", "policy.forbidden"}, exc
    floods = [r for r in records if r.get("event") == "flood"]
    assert len(floods) < sent, "every flood record reached the parent's log"
    assert psutil.Process().memory_info().rss - rss_before < 200 * MiB
    kit.assert_benign_still_works()


def test_print_flood_is_bounded(kit: Any) -> None:
    """20,000 printed lines and one 3 MB line: stdout becomes bounded log records."""
    rss_before = psutil.Process().memory_info().rss
    with structlog.testing.capture_logs() as records:
        host = kit.spawn("atk_print_flood")
        try:
            result = host.call({"lines": 20000, "huge": 3_000_000}, timeout=30.0)
        except PlugvisorError as exc:
            assert exc.code in {"budget.time", "plugin.error", "plugin.crashed"}, exc
        else:
            assert result == "printed"
    assert len(records) < 20000, "every printed line reached the parent's log"
    assert psutil.Process().memory_info().rss - rss_before < 200 * MiB
    kit.assert_benign_still_works()


def test_violation_flood_is_bounded(kit: Any) -> None:
    """2000 caught violations in one request do not become 2000 security-log lines."""
    host = kit.spawn("atk_violation_flood")
    rid = _rid()
    try:
        host.call({"count": 2000}, request_id=rid, timeout=10.0)
    except PlugvisorError as exc:
        assert exc.code in REFUSED, exc
    assert kit.wait_for_violation(rid) is not None, "the violations were not logged at all"
    lines = [x for x in kit.security_lines() if x.get("request_id") == rid]
    assert len(lines) <= 100, f"{len(lines)} security-log lines for one request"
    kit.assert_benign_still_works()


def test_dataclass_field_names_do_not_leak_sys(kit: Any) -> None:
    """Code injected through a dataclass field name must not hand the plugin the real sys.

    ``atk_dataclass_leak`` builds a class with ``type()`` that claims ``__module__ = "os"``
    and has a field named with Python source: ``dataclasses`` exec()s it with os's
    globals, and it appends ``sys`` to a list the plugin holds.
    """
    _attack(kit, "atk_dataclass_leak", {"action": "leak"}, frozenset({"policy.forbidden"}))
    kit.assert_benign_still_works()


def test_dataclass_leak_cannot_switch_the_policy_off(layered: Any) -> None:
    """The same leak, then the policy switched off and ``touch CANARY``."""
    _needs(layered, "seccomp")
    canary = layered.scratch_dir(0o777) / "canary"
    codes = REFUSED if layered.os_only else frozenset({"policy.forbidden"})
    request = {"action": "system", "canary": str(canary)}
    _attack(layered, "atk_dataclass_leak", request, codes)
    _assert_stays_absent(canary)
    layered.assert_benign_still_works()


# ---- what the sandbox reports ------------------------------------------------------------------


def test_host_runs_unprivileged(kit: Any) -> None:
    host = kit.spawn("ok_echo")
    proc = psutil.Process(host.pid)
    assert host.pid != os.getpid()
    assert 0 not in proc.uids(), f"plugin host runs with uids {proc.uids()}"
    assert 0 not in proc.gids(), f"plugin host runs with gids {proc.gids()}"
    assert host.call({"x": 1}, timeout=10.0) == {"echo": {"x": 1}, "type": "dict"}


def test_host_holds_only_its_channel_and_code(kit: Any) -> None:
    """Seen from /proc: one socket (its own channel), its code directory, /dev/null.

    In particular none of the root template's descriptors (its control socket would let
    a subverted child send spawn orders to a root process).
    """
    host = kit.spawn("ok_echo")
    template = kit.spawner.template_pid
    template_links = {
        os.readlink(f"/proc/{template}/fd/{fd}") for fd in os.listdir(f"/proc/{template}/fd")
    }
    links = [os.readlink(f"/proc/{host.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{host.pid}/fd")]
    sockets = [x for x in links if x.startswith("socket:")]
    assert len(sockets) == 1, links
    assert not set(sockets) & template_links, f"the host shares a socket with the template: {links}"
    others = [x for x in links if not x.startswith("socket:") and x != "/dev/null"]
    assert all(x == str(host.spec.code_dir) for x in others), links


def test_every_available_layer_is_active_in_a_host(kit: Any) -> None:
    """A layer the machine offers is never silently left out of a host."""
    host = kit.spawn("ok_echo")
    detected = kit.layers()
    missing = [
        layer.name
        for layer in detected
        if layer.available and (layer.name not in host.layers or not host.layers[layer.name].active)
    ]
    assert missing == [], f"available but not active in the host: {missing} ({host.layers})"


def test_violations_are_logged_and_chained(kit: Any) -> None:
    # Imported here: the rest of the suite needs only the log file, not this module.
    security_log_module = importlib.import_module("plugvisor.state.security_log")
    canary = kit.scratch_dir(0o777) / "canary"
    host = kit.spawn("atk_os_system")
    rid = _rid()
    err = kit.call_error(host, {"canary": str(canary)}, request_id=rid, timeout=10.0)
    assert err.code == "policy.forbidden", err
    line = kit.wait_for_violation(rid)
    assert line is not None
    for key in ("time", "plugin", "version", "request_id", "kind", "detail", "action"):
        assert key in line, f"security-log line lacks {key}: {line}"
    assert line["plugin"] == "atk_os_system" and line["version"] == "1.0.0"
    report = security_log_module.verify(kit.layout.security_log)
    assert report.ok, report


def test_profile_is_the_documented_default(kit: Any) -> None:
    """The budgets the tests above rely on are the documented defaults."""
    profile = kit.profile()
    assert profile.max_db_queries == 10
    assert profile.max_files == 50
    assert profile.memory_limit == 64 * MiB
    assert profile.max_execution_time == 5
    assert dataclasses.replace(profile, max_execution_time=1.0).max_execution_time == 1.0
