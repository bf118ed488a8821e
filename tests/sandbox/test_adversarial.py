"""Hostile plugins against the sandbox: each tries one thing; the effect is checked from outside.

Every attack plugin under ``plugins/atk_*`` was checked to succeed when run as the
sandbox user without the sandbox (same uid, same file modes), so a passing test here
means a sandbox layer stopped it, not file permissions. Each test asserts three things:
the error code the caller gets, that the effect is absent (looked at from this process:
files, sockets, processes, the plugin's database), and that a fresh benign host of the
same spawner still answers exactly.
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

#: An operation the policy refuses (audit hook, import policy) or the OS layer makes fail
#: with EPERM/EACCES so that the plugin's own code raises.
REFUSED = frozenset({"policy.forbidden", "plugin.error"})
MiB = 1024 * 1024


def _rid() -> str:
    return f"adv-{uuid.uuid4().hex[:16]}"


def _attack(
    kit: Any,
    name: str,
    request: Any,
    codes: frozenset[str],
    *,
    profile: Any = None,
    host: Any = None,
    timeout: float | None = None,
) -> Any:
    """Spawn ``name`` (unless ``host`` is given), call it, check the code; return the error."""
    host = host or kit.spawn(name, profile=profile)
    rid = _rid()
    err = kit.call_error(host, request, request_id=rid, timeout=timeout)
    assert err.code in codes, (
        f"{name}: got {err.code} ({err.message}); expected one of {sorted(codes)}"
    )
    if err.code.startswith(("policy.", "budget.")):
        line = kit.wait_for_violation(rid)
        assert line is not None, f"{name}: {err.code} but no security-log line for {rid}"
        assert line["plugin"] == name
    return err


def _assert_stays_absent(path: Path, seconds: float = 0.3) -> None:
    """``path`` does not appear within ``seconds`` (a forked or exec'd process may lag)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not path.exists(), f"{path} was created: the attack got through"
        time.sleep(0.02)
    assert not path.exists(), f"{path} was created: the attack got through"


def _host_alive(host: Any) -> bool:
    try:
        return psutil.Process(host.pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _sandbox_uid(kit: Any) -> tuple[int, int]:
    """The uid/gid benign hosts run as (read from outside with psutil)."""
    host = kit.spawn("ok_echo")
    proc = psutil.Process(host.pid)
    ids = proc.uids().real, proc.gids().real
    host.stop()
    return ids


@pytest.fixture
def victim(kit: Any) -> Iterator[tuple[subprocess.Popen[str], int, int, bytes]]:
    """A process of the sandbox user holding a secret in memory: (proc, address, size, secret).

    Same uid as the plugin hosts, so the kernel's uid checks alone would let a plugin
    signal, ptrace or read it; only the sandbox stands in the way.
    """
    uid, gid = _sandbox_uid(kit)
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
def test_command_attack_creates_nothing(kit: Any, name: str) -> None:
    """Each plugin tries to run ``touch CANARY`` by another route; the canary never appears."""
    canary = kit.scratch_dir(0o777) / "canary"
    _attack(kit, name, {"canary": str(canary)}, REFUSED)
    _assert_stays_absent(canary)
    kit.assert_benign_still_works()


def test_fork_leaves_no_child(kit: Any) -> None:
    canary = kit.scratch_dir(0o777) / "forked"
    host = kit.spawn("atk_fork")
    _attack(kit, "atk_fork", {"canary": str(canary)}, REFUSED, host=host)
    if _host_alive(host):
        # The forked child would sleep 3 s: it would be visible right now.
        assert psutil.Process(host.pid).children(recursive=True) == []
    _assert_stays_absent(canary)
    kit.assert_benign_still_works()


def test_setuid_root_fails(kit: Any) -> None:
    root_only = kit.scratch_dir(0o700)
    canary = root_only / "as-root"
    host = kit.spawn("atk_setuid")
    _attack(kit, "atk_setuid", {"canary": str(canary)}, REFUSED, host=host)
    assert not canary.exists()
    if _host_alive(host):
        proc = psutil.Process(host.pid)
        assert 0 not in proc.uids(), f"host uids {proc.uids()} include root"
    kit.assert_benign_still_works()


def test_host_runs_unprivileged(kit: Any) -> None:
    host = kit.spawn("ok_echo")
    proc = psutil.Process(host.pid)
    assert host.pid != os.getpid()
    assert 0 not in proc.uids(), f"plugin host runs with uids {proc.uids()}"
    assert 0 not in proc.gids(), f"plugin host runs with gids {proc.gids()}"
    assert host.call({"x": 1}, timeout=10.0) == {"echo": {"x": 1}, "type": "dict"}


# ---- the file system ------------------------------------------------------------------------

WRITE_ATTACKS = ["atk_write_open", "atk_write_os_open", "atk_write_pathlib", "atk_write_io"]


@pytest.mark.parametrize("target", ["outside", "data_dir"])
@pytest.mark.parametrize("name", WRITE_ATTACKS)
def test_write_refused(kit: Any, name: str, target: str) -> None:
    """No file is written, outside data_dir or (under ``default``) inside it.

    Both directories are made world-writable first: only the sandbox refuses the write.
    """
    if target == "outside":
        directory = kit.scratch_dir(0o777)
    else:
        directory = kit.layout.plugin_files_dir(name)
        kit.layout.ensure_plugin_data(name)
        os.chmod(directory, 0o777)
    path = directory / f"written-{uuid.uuid4().hex[:8]}"
    _attack(kit, name, {"path": str(path)}, REFUSED)
    assert not path.exists(), f"{name} wrote {path}"
    kit.assert_benign_still_works()


def test_own_code_is_not_overwritten(kit: Any) -> None:
    code = kit.code_dir("atk_overwrite_code", writable=True)
    module = code / "atk_overwrite_code" / "__init__.py"
    before = hashlib.sha256(module.read_bytes()).hexdigest()
    _attack(
        kit, "atk_overwrite_code", {}, REFUSED, host=kit.spawn("atk_overwrite_code", code_dir=code)
    )
    assert hashlib.sha256(module.read_bytes()).hexdigest() == before, "own code was rewritten"
    kit.assert_benign_still_works()


@pytest.mark.parametrize("kind", ["root_only", "world_readable"])
def test_secret_file_is_not_read(kit: Any, kind: str) -> None:
    token = uuid.uuid4().hex
    directory = kit.scratch_dir(0o755)
    secret = directory / "secret.txt"
    secret.write_text(f"secret token {token}\n", encoding="utf-8")
    os.chmod(secret, 0o600 if kind == "root_only" else 0o644)
    host = kit.spawn("atk_read_file")
    rid = _rid()
    try:
        result = host.call({"path": str(secret)}, request_id=rid, timeout=10.0)
    except Exception as exc:  # the expected outcome; checked below
        code = getattr(exc, "code", type(exc).__name__)
        assert token not in str(exc), "the secret leaked through the error message"
        assert code in REFUSED, f"got {code}: {exc}"
    else:
        leaked = token in json.dumps(result)
        if leaked and kind == "world_readable" and not kit.layer_available("landlock"):
            pytest.skip("Landlock missing: nothing else confines reads of world-readable files")
        pytest.fail(f"read of a {kind} file outside the plugin succeeded (leaked={leaked})")
    kit.assert_benign_still_works()


# ---- the network ---------------------------------------------------------------------------


def test_tcp_connect_refused(kit: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        _attack(kit, "atk_tcp_connect", {"port": port}, REFUSED)
        # A completed connect sits in the backlog: the listener would be readable.
        readable, _, _ = select.select([listener], [], [], 0.3)
        assert readable == [], "the plugin connected to a TCP listener on 127.0.0.1"
    kit.assert_benign_still_works()


def test_udp_send_refused(kit: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        _attack(kit, "atk_udp_send", {"port": port}, REFUSED)
        readable, _, _ = select.select([sink], [], [], 0.3)
        assert readable == [], f"a datagram arrived: {sink.recv(100)!r}"
    kit.assert_benign_still_works()


def test_unix_socket_connect_refused(kit: Any) -> None:
    """A world-connectable Unix socket (like a daemon's control socket) stays out of reach."""
    path = kit.scratch_dir(0o777) / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        os.chmod(path, 0o777)
        listener.listen(8)
        _attack(kit, "atk_unix_connect", {"path": str(path)}, REFUSED)
        readable, _, _ = select.select([listener], [], [], 0.3)
        assert readable == [], "the plugin connected to a Unix socket outside the sandbox"
    kit.assert_benign_still_works()


# ---- budgets -------------------------------------------------------------------------------


def test_memory_bomb(kit: Any, process_alive: Callable[[int], bool]) -> None:
    host = kit.spawn("atk_memory_bomb")
    parent = psutil.Process(host.pid).ppid()
    _attack(kit, "atk_memory_bomb", {"size": 200 * MiB}, frozenset({"budget.memory"}), host=host)
    assert process_alive(parent), "the host's parent died"
    kit.assert_benign_still_works()


def test_setrlimit_cannot_lift_the_memory_cap(kit: Any) -> None:
    host = kit.spawn("atk_setrlimit")
    proc = psutil.Process(host.pid)
    limits = (psutil.RLIMIT_AS, psutil.RLIMIT_DATA, psutil.RLIMIT_NOFILE, psutil.RLIMIT_NPROC)
    before = {lim: proc.rlimit(lim) for lim in limits}
    _attack(kit, "atk_setrlimit", {}, frozenset({"budget.memory", "policy.forbidden"}), host=host)
    if _host_alive(host):
        after = {lim: proc.rlimit(lim) for lim in limits}
        assert after == before, f"rlimits changed from {before} to {after}"
    kit.assert_benign_still_works()


def test_cpu_loop_hits_the_deadline(kit: Any, process_alive: Callable[[int], bool]) -> None:
    profile = kit.profile(max_execution_time=1.0)
    host = kit.spawn("atk_cpu_loop", profile=profile)
    start = time.monotonic()
    _attack(kit, "atk_cpu_loop", {}, frozenset({"budget.time"}), host=host)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed <= 1.0 + 2.0, f"budget.time after {elapsed:.2f}s for a 1s budget"
    # A spinning host cannot be interrupted: it must be gone, not left burning a core.
    deadline = time.monotonic() + 3.0
    while process_alive(host.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not process_alive(host.pid), "the spinning host was left running"
    kit.assert_benign_still_works()


def test_sleep_past_the_deadline(kit: Any) -> None:
    profile = kit.profile(max_execution_time=1.0)
    host = kit.spawn("atk_sleep", profile=profile)
    start = time.monotonic()
    _attack(kit, "atk_sleep", {"seconds": 30}, frozenset({"budget.time"}), host=host)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed <= 1.0 + 2.0, f"budget.time after {elapsed:.2f}s for a 1s budget"
    kit.assert_benign_still_works()


def test_too_many_files(kit: Any) -> None:
    _attack(kit, "atk_many_files", {"count": 200}, frozenset({"budget.files"}))
    kit.assert_benign_still_works()


def test_few_files_are_fine(kit: Any) -> None:
    """The files budget must not refuse honest code: 10 opens of its own file under 50."""
    host = kit.spawn("atk_many_files")
    assert host.call({"count": 10}, timeout=10.0) == 10


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
        except Exception as exc:
            assert getattr(exc, "code", None) == "budget.db_queries", exc
        else:
            assert result == 50 - budget
        assert kit.wait_for_violation(rid) is not None, "db budget breach not logged"
    else:
        err = kit.call_error(host, {"count": 50}, request_id=rid, timeout=10.0)
        assert err.code == "budget.db_queries", err
        assert kit.wait_for_violation(rid) is not None, "db budget breach not logged"
    new = _hits(db_path)[len(before) :]
    assert all(i < budget for i in new), f"queries beyond the budget ran: {new}"
    assert len(new) <= budget
    kit.assert_benign_still_works()


# ---- responses -----------------------------------------------------------------------------


def test_huge_response_is_refused_without_parent_bloat(kit: Any) -> None:
    """200 MB of JSON from a host allowed 1 GiB: response.too_large; this process stays small."""
    profile = kit.profile(memory_limit=1024 * MiB)
    host = kit.spawn("atk_big_response", profile=profile)
    rss_before = psutil.Process().memory_info().rss
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _attack(
        kit,
        "atk_big_response",
        {"size": 200 * MiB},
        frozenset({"response.too_large"}),
        host=host,
        timeout=30.0,
    )
    rss_after = psutil.Process().memory_info().rss
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert rss_after - rss_before < 100 * MiB, "the parent kept the huge response"
    assert peak_after - peak_before < 100 * MiB, "the parent read the huge response into memory"
    kit.assert_benign_still_works()


@pytest.mark.parametrize("kind", ["set", "bytes", "object", "nan", "tuple_key"])
def test_not_json_response(kit: Any, kind: str) -> None:
    _attack(kit, "atk_not_json", {"kind": kind}, frozenset({"response.not_json"}))
    kit.assert_benign_still_works()


# ---- other processes -----------------------------------------------------------------------


def test_kill_parent(kit: Any, process_alive: Callable[[int], bool]) -> None:
    host = kit.spawn("atk_kill_parent")
    parent = psutil.Process(host.pid).ppid()
    _attack(kit, "atk_kill_parent", {}, REFUSED, host=host)
    assert process_alive(parent), "the host's parent was killed"
    kit.assert_benign_still_works()


def test_kill_init(kit: Any) -> None:
    init = psutil.Process(1)
    started = init.create_time()
    _attack(kit, "atk_kill_init", {}, REFUSED)
    assert psutil.Process(1).create_time() == started
    kit.assert_benign_still_works()


def test_signal_same_user_process(kit: Any, victim: Any) -> None:
    proc, _addr, _size, _secret = victim
    _attack(kit, "atk_signal_peer", {"pid": proc.pid}, REFUSED)
    assert proc.poll() is None, f"the victim was killed (rc {proc.returncode})"
    kit.assert_benign_still_works()


def _traced(pid: int) -> tuple[int, str]:
    status = Path(f"/proc/{pid}/status").read_text()
    tracer = int(status.split("TracerPid:")[1].split()[0])
    return tracer, psutil.Process(pid).status()


@pytest.mark.parametrize("target", ["peer", "parent"])
def test_ptrace_attach_refused(kit: Any, victim: Any, target: str) -> None:
    host = kit.spawn("atk_ptrace")
    pid = victim[0].pid if target == "peer" else psutil.Process(host.pid).ppid()
    _attack(kit, "atk_ptrace", {"pid": pid}, REFUSED, host=host)
    tracer, state = _traced(pid)
    assert tracer == 0, f"{target} is traced by {tracer}"
    # PTRACE_ATTACH stops the tracee; it stays stopped even after the tracer exits.
    assert state not in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP), state
    kit.assert_benign_still_works()


def test_process_vm_readv_refused(kit: Any, victim: Any) -> None:
    proc, addr, size, secret = victim
    host = kit.spawn("atk_vm_readv")
    rid = _rid()
    request = {"pid": proc.pid, "addr": addr, "len": size}
    try:
        result = host.call(request, request_id=rid, timeout=10.0)
    except Exception as exc:
        assert secret.decode() not in str(exc)
        assert getattr(exc, "code", None) in REFUSED, exc
    else:
        pytest.fail(
            f"process_vm_readv returned {str(result)[:80]!r} (secret read: "
            f"{secret.decode() in str(result)})"
        )
    kit.assert_benign_still_works()


def test_inherited_fds_hold_nothing(kit: Any, make_spawner: Callable[[], Any]) -> None:
    """Descriptors this process holds when the template starts are not readable in a host."""
    token = uuid.uuid4().hex
    read_end, write_end = os.pipe()
    os.write(write_end, f"pipe secret {token}".encode())
    secret_file = kit.scratch_dir(0o700) / "held-open.txt"
    secret_file.write_text(f"file secret {token}", encoding="utf-8")
    file_fd = os.open(secret_file, os.O_RDONLY)
    for fd in (read_end, write_end, file_fd):
        os.set_inheritable(fd, True)
    try:
        spawner = make_spawner()
        host = kit.spawn("atk_read_fds", spawner=spawner)
        try:
            result = host.call({}, request_id=_rid(), timeout=10.0)
        except Exception as exc:
            assert token not in str(exc)
            assert getattr(exc, "code", None) in REFUSED, exc
        else:
            assert token not in json.dumps(result), f"inherited data readable: {result}"
        host.stop()
        spawner.close()
    finally:
        for fd in (read_end, write_end, file_fd):
            os.close(fd)
    kit.assert_benign_still_works()


# ---- the security log ----------------------------------------------------------------------


def test_violations_are_logged_and_chained(kit: Any) -> None:
    # Imported here: the module is built in parallel, and the rest of the suite needs none of it.
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
