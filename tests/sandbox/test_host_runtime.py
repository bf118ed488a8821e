"""Mechanics of the plugin host runtime: spawn/call/stop, deadlines, crashes, caps, leaks.

Real template, real locked-down children, plugins written on the fly. Most hosts run with
the OS layers alone (``in_process_policy=False``) so these tests check the runtime's own
mechanics whatever state the policy layer is in; the policy's behaviour has its own suites.
Code dirs live under pytest's ``tmp_path`` on purpose: its ancestors are 0o700 root-owned
and the child, running as ``nobody``, must still reach the code (through /proc/self/fd).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog

from plugvisor.core.config import Settings, load_settings
from plugvisor.core.errors import BudgetExceeded, PluginRuntimeError, PlugvisorError
from plugvisor.core.profile import SecurityProfile, load_profile
from plugvisor.sandbox import HostSpec, PluginHost, Spawner
from plugvisor.sandbox.monitor import ResourceMonitor
from plugvisor.sandbox.protocol import check_hello

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sandbox only")


class RecordingLog:
    """Stands in for state.security_log.SecurityLog: same ``record`` signature, kept in memory."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def record(
        self,
        plugin: str,
        version: str,
        request_id: str | None,
        kind: str,
        detail: str,
        action: str,
    ) -> dict[str, Any]:
        line = {
            "plugin": plugin,
            "version": version,
            "request_id": request_id,
            "kind": kind,
            "detail": detail,
            "action": action,
        }
        with self.lock:
            self.lines.append(line)
        return line

    def kinds(self, request_id: str) -> list[tuple[str, str]]:
        with self.lock:
            return [(x["kind"], x["action"]) for x in self.lines if x["request_id"] == request_id]


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def gone(pid: int) -> bool:
    """True when ``pid`` no longer exists at all (exited *and* reaped: no zombie)."""
    return not os.path.exists(f"/proc/{pid}")


@dataclasses.dataclass
class Env:
    settings: Settings
    spawner: Spawner
    log: RecordingLog
    violations: list[tuple[str, str, str, str]]
    root: Path
    hosts: list[PluginHost] = dataclasses.field(default_factory=list)
    counter: int = 0

    def profile(self, **changes: Any) -> SecurityProfile:
        base = load_profile("default", self.settings)
        return dataclasses.replace(base, **changes) if changes else base

    def plugin(self, source: str, name: str = "demo") -> Path:
        """A plugin dir (plugin.yaml + package ``name``) readable by the sandbox user."""
        self.counter += 1
        code = self.root / f"code-{self.counter}"
        pkg = code / name
        pkg.mkdir(parents=True)
        (code / "plugin.yaml").write_text(
            f"name: {name}\nversion: 1.0.0\napi: 1\nentrypoint: {name}:Plugin\n"
        )
        (pkg / "__init__.py").write_text(source)
        for p in (code, pkg):
            p.chmod(0o755)
        for p in (code / "plugin.yaml", pkg / "__init__.py"):
            p.chmod(0o644)
        return code

    def spec(self, source: str, **kw: Any) -> HostSpec:
        profile = kw.pop("profile", None) or self.profile()
        data = self.root / f"data-{self.counter + 1}"
        data.mkdir()
        return HostSpec(
            plugin="demo",
            version="1.0.0",
            code_dir=self.plugin(source),
            entrypoint="demo:Plugin",
            profile=profile,
            data_dir=data,
            db_path=self.root / f"db-{self.counter}.sqlite",
            **kw,
        )

    def spawn(self, source: str, **kw: Any) -> PluginHost:
        host = self.spawner.spawn(self.spec(source, **kw), timeout=10.0)
        self.hosts.append(host)
        return host


@pytest.fixture(scope="module")
def env_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("host-runtime")
    settings = load_settings({"state_dir": str(root / "state")}, env={})
    log = RecordingLog()
    violations: list[tuple[str, str, str, str]] = []
    spawner = Spawner(
        settings,
        security_log=log,
        on_violation=lambda *a: violations.append(a),
        in_process_policy=False,
    )
    spawner.start()
    yield Env(settings, spawner, log, violations, root)
    spawner.close()


@pytest.fixture
def env(env_base: Env) -> Iterator[Env]:
    yield env_base
    for host in env_base.hosts:
        host.stop(grace=0.5)
    env_base.hosts.clear()


ECHO = """
class Plugin:
    def setup(self, ctx):
        self.ctx = ctx
    def handle(self, request):
        return {"echo": request}
    def health(self):
        return True
"""


def test_code_under_a_directory_the_sandbox_user_cannot_traverse(env: Env) -> None:
    # pytest's base temp dir is 0o700 and root-owned: nobody could not walk into it.
    ancestors = [p for p in env.root.parents if p != Path("/")]
    assert any(stat.S_IMODE(p.stat().st_mode) & 0o001 == 0 for p in ancestors)
    host = env.spawn(ECHO)
    assert host.call({"a": 1}) == {"echo": {"a": 1}}


def test_spawn_call_health_stop(env: Env) -> None:
    host = env.spawn(ECHO)
    assert host.health()
    assert host.call({"x": [1, 2.5, None, "é"]}) == {"echo": {"x": [1, 2.5, None, "é"]}}
    assert host.call_raw(b'{"k":1}', "r-raw") == b'{"ok":true,"result":{"echo":{"k":1}}}'
    outcome = host.invoke(b"[1]", "r-inv")
    assert outcome.ok and outcome.code is None and outcome.envelope.endswith(b"[1]}}")
    assert {"lockdown_ms", "setup_ms", "spawn_ms"} <= set(host.timings)
    pid = host.pid
    host.stop()
    host.stop()  # idempotent
    assert not host.alive
    assert wait_until(lambda: gone(pid)), "stopped host not reaped"
    with pytest.raises(PluginRuntimeError) as err:
        host.call({})
    assert err.value.code == "plugin.crashed"


def test_teardown_runs_on_stop(env: Env) -> None:
    host = env.spawn(
        """
class Plugin:
    def setup(self, ctx):
        self.ctx = ctx
    def handle(self, request):
        return None
    def teardown(self):
        self.ctx.db.execute("create table bye(x)")
"""
    )
    db = host.spec.db_path
    host.stop()
    assert db is not None
    names = [r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master")]
    assert "bye" in names


def test_plugin_exception_becomes_plugin_error_without_traceback(env: Env) -> None:
    host = env.spawn(
        """
class Plugin:
    def handle(self, request):
        raise KeyError("missing thing")
"""
    )
    with pytest.raises(PluginRuntimeError) as err:
        host.call({})
    assert err.value.code == "plugin.error"
    assert "KeyError" in err.value.message and "missing thing" in err.value.message
    assert "Traceback" not in err.value.message and "/work" not in err.value.message
    assert host.call_raw(b"{}").startswith(b'{"ok":false,"error":{"code":"plugin.error"')
    assert host.alive  # a plugin error does not kill the host


def test_deadline_kills_and_a_replacement_works(env: Env) -> None:
    source = """
class Plugin:
    def handle(self, request):
        if request.get("spin"):
            while True:
                pass
        return "fine"
"""
    host = env.spawn(source, profile=env.profile(max_execution_time=0.5))
    pid = host.pid
    t0 = time.monotonic()
    with pytest.raises(BudgetExceeded) as err:
        host.call({"spin": True}, request_id="spin-1")
    elapsed = time.monotonic() - t0
    assert err.value.code == "budget.time"
    assert 0.45 <= elapsed < 2.0
    assert not host.alive
    assert wait_until(lambda: gone(pid)), "killed host not reaped"
    assert ("budget.time", "killed") in env.log.kinds("spin-1")
    assert any(v[2] == "budget.time" for v in env.violations)
    # The dead host refuses further calls; a new one from the same template serves.
    with pytest.raises(PluginRuntimeError):
        host.call({})
    again = env.spawn(source, profile=env.profile(max_execution_time=0.5))
    assert again.call({}) == "fine"


def test_caller_timeout_shorter_than_profile(env: Env) -> None:
    host = env.spawn(
        """
import time
class Plugin:
    def handle(self, request):
        time.sleep(3)
"""
    )
    t0 = time.monotonic()
    with pytest.raises(BudgetExceeded):
        host.call({}, timeout=0.3)
    assert time.monotonic() - t0 < 1.5


def test_child_death_mid_call_is_crashed_with_exit_code(env: Env) -> None:
    host = env.spawn(
        """
import os
class Plugin:
    def handle(self, request):
        os._exit(7)
"""
    )
    with pytest.raises(PluginRuntimeError) as err:
        host.call({})
    assert err.value.code == "plugin.crashed"
    assert err.value.details.get("exit_code") == 7
    assert not host.alive


def test_response_cap_checked_in_the_child(env: Env) -> None:
    host = env.spawn(
        """
class Plugin:
    def handle(self, request):
        return "x" * request["n"]
""",
        max_response_bytes=1000,
    )
    assert host.call({"n": 900}) == "x" * 900
    with pytest.raises(PluginRuntimeError) as err:
        host.call({"n": 5000}, request_id="big-1")
    assert err.value.code == "response.too_large"
    assert host.alive and host.call({"n": 1}) == "x"  # refused, not killed
    assert ("response.too_large", "blocked") in env.log.kinds("big-1")


def test_parent_never_allocates_an_oversized_frame(env: Env) -> None:
    # A child that bypasses its own runtime and announces a 1 GiB RESULT frame.
    host = env.spawn(
        """
import os, stat, struct, time
class Plugin:
    def handle(self, request):
        for fd in range(3, 64):
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.write(fd, struct.pack("!IBI", 1 << 30, 4, 0))
            except OSError:
                pass
        time.sleep(5)
"""
    )
    me = psutil.Process()
    before = me.memory_info().rss
    with pytest.raises(PluginRuntimeError) as err:
        host.call({}, request_id="frame-1")
    assert err.value.code == "response.too_large"
    assert me.memory_info().rss - before < 64 * 1024**2
    assert not host.alive  # the stream is out of sync: the host is dropped


def test_result_that_is_not_json(env: Env) -> None:
    host = env.spawn(
        """
class Plugin:
    def handle(self, request):
        return {"set": {1, 2}} if request["kind"] == "set" else float("nan")
"""
    )
    for kind in ("set", "nan"):
        with pytest.raises(PluginRuntimeError) as err:
            host.call({"kind": kind})
        assert err.value.code == "response.not_json"
    assert host.alive


def test_db_queries_run_in_the_parent_and_are_budgeted(env: Env) -> None:
    host = env.spawn(
        """
class Plugin:
    def setup(self, ctx):
        self.db = ctx.db
        for i in range(3):  # setup has a budget of its own
            self.db.execute("create table if not exists t%d(x)" % i)
    def handle(self, request):
        if request.get("attach"):
            refused = []
            for sql in ("attach database '/tmp/evil.db' as evil", "vacuum into '/tmp/evil.db'",
                        "pragma journal_mode=off", "select load_extension('/tmp/x')"):
                try:
                    self.db.execute(sql)
                except self.db.Error as exc:
                    refused.append("refused: %s" % exc)
            return refused
        out = []
        for i in range(request["n"]):
            self.db.execute("insert into t0 values (:x)", {"x": i})
        return self.db.execute("select count(*), sum(x) from t0")
""",
        profile=env.profile(max_db_queries=4),
    )
    assert host.call({"n": 2}) == [[2, 1]]
    assert host.call({"n": 3}) == [[5, 4]]  # budget is per request: 4 queries pass
    with pytest.raises(BudgetExceeded) as err:
        host.call({"n": 4}, request_id="db-1")
    assert err.value.code == "budget.db_queries"
    assert ("budget.db_queries", "refused") in env.log.kinds("db-1")
    before = sum(1 for v in env.violations if v[2] == "policy.forbidden")
    refused = host.call({"attach": True, "n": 0}, request_id="db-2")
    assert len(refused) == 4 and all(r.startswith("refused:") for r in refused), refused
    assert not Path("/tmp/evil.db").exists()
    # Caught by the plugin, each refusal is still a violation: security log and callback.
    assert env.log.kinds("db-2") == [("policy.forbidden", "refused")] * 4
    assert sum(1 for v in env.violations if v[2] == "policy.forbidden") == before + 4
    details = [x["detail"] for x in env.log.lines if x["request_id"] == "db-2"]
    for action in ("ATTACH", "PRAGMA journal_mode", "load_extension()"):
        assert any(action in d for d in details), (action, details)


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog record, at every level, whatever another test configured before."""
    config = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(0))
    try:
        with structlog.testing.capture_logs() as records:
            yield records
    finally:
        structlog.configure(**config)


def test_ctx_log_reaches_structlog_tagged(env: Env, logs: list[MutableMapping[str, Any]]) -> None:
    host = env.spawn(
        """
class Plugin:
    def setup(self, ctx):
        self.log = ctx.log
        ctx.log.info("setup.done", n=1)
    def handle(self, request):
        self.log.warning("handled", event_id=5, plugin="spoof")
        print("to stdout")
        return 1
"""
    )
    assert host.call({}, request_id="log-1") == 1
    by_event = {r["event"]: r for r in logs}
    assert by_event["setup.done"]["n"] == 1
    handled = by_event["handled"]
    assert handled["plugin"] == "demo" and handled["version"] == "1.0.0"
    assert handled["request_id"] == "log-1" and handled["field_plugin"] == "spoof"
    assert handled["log_level"] == "warning"
    assert by_event["stdout"]["line"] == "to stdout"


def test_concurrent_spawns_do_not_deadlock(env: Env) -> None:
    results: list[Any] = []
    specs = [env.spec(ECHO) for _ in range(6)]

    def spawn(spec: HostSpec) -> None:
        try:
            results.append(env.spawner.spawn(spec, timeout=20.0))
        except PlugvisorError as exc:
            results.append(exc)

    threads = [threading.Thread(target=spawn, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "spawn threads hung"
    hosts = [r for r in results if isinstance(r, PluginHost)]
    env.hosts.extend(hosts)
    assert len(hosts) == 6, results
    assert len({h.pid for h in hosts}) == 6
    assert all(h.call(i) == {"echo": i} for i, h in enumerate(hosts))


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_zombies_and_no_fd_leaks(env: Env) -> None:
    warm = env.spawn(ECHO)  # the first spawn may open lazily created things
    warm.stop()
    before = _fd_count()
    pids = []
    for i in range(8):
        host = env.spawn(ECHO)
        pids.append(host.pid)
        assert host.call(i) == {"echo": i}
        if i % 2:
            host.stop()
        else:  # killed from outside: the template still reaps it
            os.kill(host.pid, 9)
            with pytest.raises(PluginRuntimeError):
                host.call(i)
            host.stop()
    env.hosts.clear()
    assert wait_until(lambda: all(gone(p) for p in pids)), "zombie or live child left"
    template = psutil.Process(env.spawner.template_pid)
    assert all(c.status() != psutil.STATUS_ZOMBIE for c in template.children())
    assert wait_until(lambda: _fd_count() == before), (before, _fd_count())


def test_failed_setup_is_reported_and_cleaned_up(env: Env) -> None:
    with pytest.raises(PluginRuntimeError) as err:
        env.spawn(
            """
class Plugin:
    def setup(self, ctx):
        raise RuntimeError("no config")
    def handle(self, request):
        return 1
"""
        )
    assert err.value.code == "plugin.error" and "no config" in err.value.message
    template = psutil.Process(env.spawner.template_pid)
    assert wait_until(lambda: not template.children())


def test_stop_kills_a_host_whose_teardown_hangs(env: Env) -> None:
    host = env.spawn(
        """
class Plugin:
    def handle(self, request):
        return 1
    def teardown(self):
        while True:
            pass
"""
    )
    pid = host.pid
    t0 = time.monotonic()
    host.stop(grace=0.3)
    assert time.monotonic() - t0 < 3.0
    assert wait_until(lambda: gone(pid))


def test_memory_error_is_budget_memory(env: Env) -> None:
    host = env.spawn(
        """
class Plugin:
    def handle(self, request):
        blob = bytearray(request["mb"] * 1024 * 1024)
        return len(blob)
"""
    )
    assert host.call({"mb": 8}) == 8 * 1024 * 1024
    with pytest.raises(BudgetExceeded) as err:
        host.call({"mb": 200}, request_id="mem-1")
    assert err.value.code == "budget.memory"
    assert ("budget.memory", "blocked") in env.log.kinds("mem-1")
    assert host.call({"mb": 1}) == 1024 * 1024  # the allocation failed, the host lives


def test_writable_data_dir_only_when_the_profile_allows(env: Env) -> None:
    source = """
import os
class Plugin:
    def setup(self, ctx):
        self.dir = ctx.data_dir
    def handle(self, request):
        if self.dir is None:
            return None
        with open(os.path.join(self.dir, "note.txt"), "w") as fh:
            fh.write("kept")
        try:
            open("/tmp/outside-%d" % os.getpid(), "w").close()
            outside = "allowed"
        except OSError:
            outside = "denied"
        return outside
"""
    base = env.profile()
    writable = dataclasses.replace(
        base, forbidden_operations=base.forbidden_operations - {"file_write"}
    )
    host = env.spawn(source, profile=writable)
    assert host.call({}) == "denied"
    assert host.spec.data_dir is not None
    note = host.spec.data_dir / "note.txt"
    assert note.read_text() == "kept"
    assert note.stat().st_uid == (65534 if os.geteuid() == 0 else os.geteuid())
    default_host = env.spawn(source)
    assert default_host.call({}) is None


def test_monitor_kills_a_host_over_its_rss_limit() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    killed: list[tuple[str, str]] = []

    class FakeHost:
        pid = proc.pid
        rss_limit = 1024  # any real process is above 1 KiB

        def kill_for_budget(self, kind: str, detail: str) -> None:
            killed.append((kind, detail))
            proc.kill()

    monitor = ResourceMonitor(interval=0.02)
    try:
        monitor.register(FakeHost())
        monitor.start()
        assert wait_until(lambda: bool(killed), 5.0)
        assert killed[0][0] == "memory" and "RSS" in killed[0][1]
    finally:
        monitor.stop()
        proc.kill()
        proc.wait(5)


def test_monitor_kill_reports_budget_memory_on_the_inflight_call(env: Env) -> None:
    host = env.spawn(
        """
import time
class Plugin:
    def handle(self, request):
        time.sleep(3)
"""
    )
    timer = threading.Timer(0.3, host.kill_for_budget, args=("memory", "RSS 1 above 0"))
    timer.start()
    try:
        with pytest.raises(BudgetExceeded) as err:
            host.call({}, request_id="mon-1")
    finally:
        timer.cancel()
    assert err.value.code == "budget.memory"


def test_protocol_mismatch_says_what_to_do() -> None:
    with pytest.raises(PlugvisorError) as err:
        check_hello({"protocol": 999})
    assert err.value.code == "sandbox.protocol_mismatch"
    assert "restart" in err.value.message


def test_template_restarts_after_it_died(tmp_path: Path) -> None:
    settings = load_settings({"state_dir": str(tmp_path)}, env={})
    spawner = Spawner(settings, in_process_policy=False)
    try:
        spawner.start()
        env = Env(settings, spawner, RecordingLog(), [], tmp_path)
        first = env.spawn(ECHO)
        old_template = spawner.template_pid
        assert old_template is not None
        os.kill(old_template, 9)
        # Its children die with it (parent-death signal).
        assert wait_until(lambda: not first.alive)
        second = env.spawn(ECHO)
        assert spawner.template_pid != old_template
        assert second.call(1) == {"echo": 1}
        second.stop()
        first.stop()
        current = spawner.template_pid
    finally:
        spawner.close()
    assert current is not None and gone(current)


def test_socket_channel_is_the_only_inherited_fd(env: Env) -> None:
    host = env.spawn(ECHO)
    fds = os.listdir(f"/proc/{host.pid}/fd")
    kinds = sorted(os.readlink(f"/proc/{host.pid}/fd/{fd}").split(":")[0] for fd in fds)
    # stdin/stdout/stderr on /dev/null, the channel socket, the code dir handle.
    assert kinds.count("socket") == 1, kinds
    assert kinds.count("/dev/null") == 3, kinds
    assert len(kinds) == 5, kinds
    assert socket.AF_UNIX  # the channel is a Unix socketpair (checked by the parent's type)


def test_threads_work_under_the_memory_limit(env: Env) -> None:
    # seccomp allows clone(CLONE_THREAD) (clone3 gets ENOSYS and glibc falls back);
    # RLIMIT_AS leaves room for a thread stack; MALLOC_ARENA_MAX keeps arenas in bounds.
    host = env.spawn(
        """
import threading
class Plugin:
    def handle(self, request):
        out = []
        threads = [threading.Thread(target=lambda i=i: out.append(i * i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sorted(out)
"""
    )
    assert host.call({}) == [0, 1, 4, 9]


def test_closing_the_spawner_kills_and_reaps_its_hosts(tmp_path: Path) -> None:
    settings = load_settings({"state_dir": str(tmp_path)}, env={})
    spawner = Spawner(settings, in_process_policy=False)
    spawner.start()
    env = Env(settings, spawner, RecordingLog(), [], tmp_path)
    hosts = [env.spawn(ECHO) for _ in range(3)]
    template = spawner.template_pid
    assert template is not None
    spawner.close()
    assert wait_until(lambda: all(gone(h.pid) for h in hosts)), "hosts left behind"
    assert gone(template)
    for host in hosts:
        assert not host.alive
        host.stop()  # still safe after the template is gone


def test_call_in_flight_when_stopped_reports_the_stop(
    env: Env, logs: list[MutableMapping[str, Any]]
) -> None:
    host = env.spawn(
        """
import time
class Plugin:
    def setup(self, ctx):
        self.log = ctx.log
    def handle(self, request):
        self.log.info("sleeping")
        time.sleep(3)
"""
    )
    errors: list[PlugvisorError] = []

    def call() -> None:
        try:
            host.call({})
        except PlugvisorError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    # The parent emits the plugin's record once the call is running in the child.
    assert wait_until(lambda: any(r["event"] == "sleeping" for r in logs))
    host.stop(grace=0.1)
    caller.join(5)
    assert not caller.is_alive()
    assert errors and errors[0].code == "plugin.crashed"
    assert "stopped" in errors[0].message


def test_oversized_request_is_refused_before_sending(env: Env) -> None:
    host = env.spawn(ECHO, max_response_bytes=1000)
    big = b'"' + b"x" * (2 * 1024**2) + b'"'
    envelope = host.call_raw(big, "req-big")
    assert envelope.startswith(b'{"ok":false,"error":{"code":"request.too_large"')
    assert host.call("small") == {"echo": "small"}  # the stream stayed in sync


def test_db_reply_larger_than_the_cap_is_an_sql_error(env: Env) -> None:
    host = env.spawn(
        """
class Plugin:
    def setup(self, ctx):
        self.db = ctx.db
    def handle(self, request):
        try:
            self.db.execute("select ? from (select 1 union all select 2)", ["\\u0001" * 100000])
        except self.db.Error as exc:
            return "refused: %s" % exc
        return "returned"
""",
        max_response_bytes=1000,
    )
    assert host.call({}).startswith("refused:")
    assert host.call({}).startswith("refused:")  # and the channel is still in sync


def test_network_profile_gets_sockets_default_does_not(env: Env) -> None:
    source = """
import socket
class Plugin:
    def handle(self, request):
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
            return "allowed"
        except OSError as exc:
            return "denied %d" % exc.errno
"""
    base = env.profile()
    networked = dataclasses.replace(
        base, forbidden_operations=base.forbidden_operations - {"network"}
    )
    open_host = env.spawn(source, profile=networked)
    assert open_host.call({}) == "allowed"
    assert not open_host.layers["netns"].active  # the profile allows network: reported
    closed_host = env.spawn(source)
    assert closed_host.call({}) == "denied 1"  # EPERM from seccomp
    assert closed_host.layers["netns"].active


def test_forged_envelope_is_refused_not_relayed(env: Env) -> None:
    # A child whose own encoder is subverted (here: json.dumps replaced, OS layers only)
    # tries to smuggle a second "ok" key into the success envelope.
    host = env.spawn(
        """
import json
class Plugin:
    def handle(self, request):
        json.dumps = lambda *a, **k: '1,"ok":false'
        return 1
"""
    )
    outcome = host.invoke(b"{}", "forge-1")
    assert not outcome.ok and outcome.code == "response.not_json"
    assert outcome.envelope.startswith(b'{"ok":false,"error":{"code":"response.not_json"')
    assert ("protocol.forged_response", "killed") in env.log.kinds("forge-1")
    assert not host.alive


def test_odd_exceptions_are_plugin_errors(env: Env) -> None:
    host = env.spawn(
        """
import sys
class Weird(BaseException):
    def __str__(self):
        raise RuntimeError("no str for you")
class Plugin:
    def handle(self, request):
        if request == "exit":
            sys.exit(3)
        raise Weird()
"""
    )
    for request, kind in (("exit", "SystemExit"), ("weird", "Weird")):
        with pytest.raises(PluginRuntimeError) as err:
            host.call(request)
        assert err.value.code == "plugin.error" and kind in err.value.message
    assert host.alive
