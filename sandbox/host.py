"""Parent side of the sandbox: :class:`Spawner` (owns the template) and :class:`PluginHost`.

A ``PluginHost`` is one sandboxed process running one plugin version. It serves one
request at a time (a lock); the daemon gets concurrency from several hosts. Every call has
a wall-clock deadline (``profile.max_execution_time`` unless the caller gives less): when it
passes, the child is SIGKILLed through its pidfd, the caller gets ``budget.time`` and the
host is dead -- its owner starts a new one. ``ctx.db`` queries run here, in the parent,
against ``spec.db_path``, counted per request; ``ctx.log`` records are re-emitted here,
tagged with the plugin, version and request id. Every budget breach and policy violation
(including SQL the ``ctx.db`` authorizer refuses: ``policy.forbidden``) goes to the
security log (``.record(plugin, version, request_id, kind, detail, action)``) and to the
optional ``on_violation(plugin, version, kind, detail)`` callback.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import itertools
import json
import os
import pickle
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugvisor.core.config import Settings
from plugvisor.core.errors import (
    BudgetExceeded,
    PluginRuntimeError,
    PlugvisorError,
    SandboxError,
    error_from_dict,
)
from plugvisor.core.log import get_logger
from plugvisor.core.profile import load_profile
from plugvisor.sandbox.layer_status import LayerReport, LayerStatus
from plugvisor.sandbox.lockdown import can_change_identity
from plugvisor.sandbox.monitor import ResourceMonitor
from plugvisor.sandbox.protocol import (
    FRAME_SLACK,
    PROTOCOL_VERSION,
    Frame,
    FrameReader,
    FrameTooLarge,
    FrameType,
    PeerClosed,
    SpawnOrder,
    check_hello,
    error_envelope,
    request_cap,
    send_frame,
)

__all__ = ["CallOutcome", "HostSpec", "PluginHost", "RequestUsage", "Spawner", "ViolationCallback"]

ViolationCallback = Callable[[str, str, str, str], None]

_log = get_logger("plugvisor.sandbox")
_plugin_log = get_logger("plugvisor.plugin")

#: Largest HELLO frame (the layer report).
_HELLO_CAP = 64 * 1024
#: ctx.db file size cap (SQLite max_page_count), so a plugin cannot fill the disk.
_DB_MAX_BYTES = 256 * 1024**2
#: Log records and violations accepted per request; the rest are counted and dropped.
_LOG_PER_REQUEST = 1000
_VIOLATIONS_PER_REQUEST = 20
_RESERVED_LOG_KEYS = frozenset(
    {"event", "level", "ts", "component", "plugin", "version", "request_id", "logger"}
)
_PRAGMAS_ALLOWED = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
     "foreign_key_list", "user_version", "foreign_keys"}
)  # fmt: skip


@dataclass(frozen=True)
class HostSpec:
    """Everything needed to start one plugin version in a sandbox."""

    plugin: str
    version: str
    code_dir: Path  # contains plugin.yaml and the package
    entrypoint: str  # "module:attribute"
    profile: Any  # plugvisor.core.profile.SecurityProfile
    data_dir: Path | None = None
    db_path: Path | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    max_response_bytes: int = 4 * 1024**2


@dataclass(frozen=True)
class CallOutcome:
    """One call's result without parsing the envelope: the daemon's relay needs only this."""

    ok: bool
    envelope: bytes  # b'{"ok":true,"result":...}' or the error envelope
    code: str | None  # error code when not ok
    elapsed: float  # seconds


@dataclass(frozen=True)
class RequestUsage:
    """What the last call used of its budgets (``PluginHost.last_usage``; ``dev run`` prints it).

    ``db_queries`` counts every ``ctx.db`` query tried, refused ones included (the budget
    counts them too); ``files_opened`` is the child's own count (``None`` when the child
    did not report it, e.g. it was killed mid-request).
    """

    elapsed: float  # seconds of wall time, request sent to answer read
    db_queries: int
    files_opened: int | None


class _Violations:
    """Writes violations to the security log and the callback; never raises into a call."""

    def __init__(self, security_log: Any, on_violation: ViolationCallback | None) -> None:
        self.security_log = security_log
        self.on_violation = on_violation

    def record(
        self,
        spec: HostSpec,
        request_id: str | None,
        kind: str,
        detail: str,
        action: str,
    ) -> None:
        _log.warning(
            "sandbox.violation",
            plugin=spec.plugin,
            version=spec.version,
            request_id=request_id,
            kind=kind,
            detail=detail,
            action=action,
        )
        if self.security_log is not None:
            try:
                self.security_log.record(
                    spec.plugin, spec.version, request_id, kind, detail, action
                )
            except Exception:  # the call path must survive a broken log; say so loudly
                _log.exception("sandbox.security_log_failed", kind=kind)
        if self.on_violation is not None:
            try:
                self.on_violation(spec.plugin, spec.version, kind, detail)
            except Exception:  # a tracker bug must not break the call path
                _log.exception("sandbox.on_violation_failed", kind=kind)


class _HostDatabase:
    """The parent-side executor of ``ctx.db``: one connection per host, opened lazily."""

    def __init__(self, path: Path | None, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.conn: sqlite3.Connection | None = None
        self.deadline = 0.0
        # What the authorizer refused in the statement being run (the first), or None:
        # the caller reports it as a policy violation, not as an ordinary SQL error.
        self.refused: str | None = None

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            raise sqlite3.OperationalError("this plugin host has no database (db_path unset)")
        conn = sqlite3.connect(
            self.path, timeout=2.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={_DB_MAX_BYTES // page}")
        # Plugin SQL runs with the daemon's rights: no ATTACH (other files), no
        # pragmas beyond introspection, no extension loading, bounded values.
        conn.set_authorizer(self._authorize)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(self.max_bytes, 1024))
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 1 << 20)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.set_progress_handler(self._progress, 10000)
        self.conn = conn
        return conn

    def _progress(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        refused = _refusal(action, arg1, arg2)
        if refused is None:
            return sqlite3.SQLITE_OK
        if self.refused is None:
            self.refused = refused
        return sqlite3.SQLITE_DENY

    def execute(self, sql: str, params: list[Any] | dict[str, Any], deadline: float) -> bytes:
        """Run one statement; the reply frame payload (rows or error)."""
        self.deadline = deadline
        self.refused = None
        conn = self.conn or self._open()
        cur = conn.execute(sql, params)
        rows: list[list[Any]] = []
        size = 0
        while True:
            batch = cur.fetchmany(256)
            if not batch:
                break
            for row in batch:
                values = [base64.b64encode(v).decode() if isinstance(v, bytes) else v for v in row]
                size += sum(len(v) if isinstance(v, str) else 16 for v in values) + 8
                if size > self.max_bytes:
                    break
                rows.append(values)
            if size > self.max_bytes:
                break
        reply = json.dumps({"rows": rows}, separators=(",", ":")).encode()
        if size > self.max_bytes or len(reply) > self.max_bytes:  # escaping can outgrow size
            raise sqlite3.OperationalError(
                f"query result exceeds {self.max_bytes} bytes; select less"
            )
        return reply

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error as exc:
                _log.warning("sandbox.db_close_failed", error=str(exc))
            self.conn = None


def _pidfd_exited(pidfd: int, timeout: float) -> bool:
    """True once the process behind ``pidfd`` has exited (poll, not select: no fd limit)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    try:
        return bool(poller.poll(timeout * 1000))
    except OSError:
        return True


def _refusal(action: int, arg1: str | None, arg2: str | None) -> str | None:
    """The SQL action the ``ctx.db`` authorizer refuses, named; None when it is allowed."""
    if action == sqlite3.SQLITE_ATTACH:  # VACUUM INTO attaches its target file too
        # A bound ``?`` file name is not known yet when the statement is prepared.
        target = f" {arg1[:200]!r}" if arg1 else ""
        return f"ATTACH of a database file{target} (by ATTACH or VACUUM INTO)"
    if action == sqlite3.SQLITE_DETACH:
        return f"DETACH of {(arg1 or '')[:200]!r}"
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in _PRAGMAS_ALLOWED:
        return f"PRAGMA {(arg1 or '')[:100]} (not an allowed pragma)"
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return "load_extension()"
    return None


class PluginHost:
    """One sandboxed plugin process (built by :meth:`Spawner.spawn`, never directly)."""

    def __init__(
        self,
        spec: HostSpec,
        sock: socket.socket,
        pid: int,
        pidfd: int,
        spawner: Spawner,
    ) -> None:
        self.spec = spec
        self._sock = sock
        self._pid = pid
        self._pidfd = pidfd
        self._spawner = spawner
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._dead = False
        self._stopped = False
        self._kill_reason: str | None = None
        self._kill_detail = ""
        self._db = _HostDatabase(spec.db_path, spec.max_response_bytes)
        self._db_count = 0
        self._log_count = 0
        self._violation_count = 0
        self._request_id: str | None = None
        self._usage_files: int | None = None
        #: The budgets the last call used; ``None`` before the first call.
        self.last_usage: RequestUsage | None = None
        #: Both sides read frames up to request_cap + slack (a ctx.db query may carry
        #: parameters as large as a request); a RESULT is further held to the response cap.
        self._request_cap = request_cap(spec.max_response_bytes)
        self._reader = FrameReader(sock, self._request_cap + FRAME_SLACK)
        self._result_cap = spec.max_response_bytes + FRAME_SLACK
        self._plugin_log = _plugin_log.bind(plugin=spec.plugin, version=spec.version)
        self.layers = LayerReport(())
        self.baseline_rss = 0
        #: Milliseconds: forked (order -> pid known), lockdown and setup (measured in the
        #: child), ready (pid known -> READY), spawn (order -> READY).
        self.timings: dict[str, float] = {}
        #: Milliseconds per lock-down step, as measured in the child.
        self.lockdown_steps: dict[str, float] = {}

    # ---- public ------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self._pid

    @property
    def alive(self) -> bool:
        """True while the process runs and has not been condemned."""
        if self._dead:
            return False
        return not _pidfd_exited(self._pidfd, 0.0)

    @property
    def usable(self) -> bool:
        """False once condemned or stopped; unlike :attr:`alive`, never asks the kernel
        (for the pool, right after the host answered a call)."""
        return not (self._dead or self._stopped)

    @property
    def rss_limit(self) -> int:
        return self.baseline_rss + int(self.spec.profile.memory_limit)

    def call(
        self, request: Any, request_id: str | None = None, timeout: float | None = None
    ) -> Any:
        """Call ``handle(request)``; the result, or a typed error (``budget.time``, ...)."""
        try:
            payload = json.dumps(request, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise PluginRuntimeError("bad_request", f"request is not JSON: {exc}") from None
        reply = self._exchange(FrameType.CALL, payload, request_id, timeout)
        if reply.error is not None:
            raise reply.error
        return reply.value

    def call_raw(
        self, request_json: bytes, request_id: str | None = None, timeout: float | None = None
    ) -> bytes:
        """Fast path: request JSON bytes in, response envelope bytes out (never raises for
        call errors: they come back as an error envelope)."""
        return self.invoke(request_json, request_id, timeout).envelope

    def invoke(
        self, request_json: bytes, request_id: str | None = None, timeout: float | None = None
    ) -> CallOutcome:
        """Like :meth:`call_raw`, with the outcome's status and code already known."""
        t0 = time.monotonic()
        try:
            reply = self._exchange(FrameType.CALL, request_json, request_id, timeout)
        except PlugvisorError as err:
            return CallOutcome(
                False,
                error_envelope(err.code, err.message, **err.details),
                err.code,
                time.monotonic() - t0,
            )
        code = reply.error.code if reply.error is not None else None
        return CallOutcome(reply.error is None, reply.envelope, code, time.monotonic() - t0)

    def health(self, timeout: float | None = None) -> bool:
        """True when the process is up and ``health()`` (if defined) returns truthy in time."""
        if not self.alive:
            return False
        try:
            reply = self._exchange(FrameType.HEALTH, b"", None, timeout, violations=False)
        except PlugvisorError:
            return False
        return reply.error is None and reply.value is True

    def selftest(self, timeout: float | None = None) -> Any:
        """Run the plugin's ``selftest()`` (trials): its result, ``None`` when it has none.

        Violations count as in a call; an exception raises the typed error like
        :meth:`call`. The plugin's contract: ``True`` means passed.
        """
        reply = self._exchange(FrameType.SELFTEST, b"", "selftest", timeout)
        if reply.error is not None:
            raise reply.error
        if reply.value == {"absent": True}:
            return None
        return reply.value

    def stop(self, grace: float = 2.0) -> None:
        """Idempotent: teardown() with ``grace`` seconds -> SIGTERM -> SIGKILL; reaped."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
        deadline = time.monotonic() + grace
        got = self._lock.acquire(timeout=max(grace, 0.0))
        try:
            if got and grace > 0 and not self._dead and self.alive:
                try:
                    self._roundtrip(FrameType.STOP, b"", None, deadline, violations=False)
                except PlugvisorError as exc:
                    _log.info("sandbox.teardown_failed", plugin=self.spec.plugin, error=str(exc))
            # Before any signal, so that a call still in flight reports why it ended.
            self._mark_dead("stopped", "plugin host stopped")
            if not self._wait_exit(deadline):
                self._signal(signal.SIGTERM)
                if not self._wait_exit(time.monotonic() + 0.5):
                    self._signal(signal.SIGKILL)
                    self._wait_exit(time.monotonic() + 5.0)
        finally:
            if got:
                self._lock.release()
            self._close()

    # ---- internals ---------------------------------------------------------------------
    def _close(self) -> None:
        self._spawner.monitor.unregister(self._pid)
        self._spawner.wait_reaped(self._pid, timeout=2.0)
        try:
            self._sock.close()
        finally:
            self._db.close()
            with contextlib.suppress(OSError):
                os.close(self._pidfd)

    def _signal(self, sig: int) -> None:
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass  # already exited
        except OSError as exc:
            _log.error("sandbox.signal_failed", pid=self._pid, signal=sig, error=str(exc))

    def _wait_exit(self, deadline: float) -> bool:
        return _pidfd_exited(self._pidfd, max(0.0, deadline - time.monotonic()))

    def _mark_dead(self, reason: str, detail: str) -> None:
        with self._state_lock:
            if self._kill_reason is None:
                self._kill_reason = reason
                self._kill_detail = detail
            self._dead = True

    def _kill(self, reason: str, detail: str) -> None:
        self._mark_dead(reason, detail)
        self._signal(signal.SIGKILL)

    def kill_for_budget(self, kind: str, detail: str) -> None:
        """Called by the ResourceMonitor: kill now, the in-flight call reports budget.<kind>."""
        if self._dead:
            return
        self._kill(kind, detail)
        self._violation(f"budget.{kind}", detail, "killed")

    def _violation(self, kind: str, detail: str, action: str) -> None:
        self._spawner.violations.record(self.spec, self._request_id, kind, detail, action)

    def _dead_error(self) -> PluginRuntimeError:
        reason = self._kill_reason
        if reason == "stopped" or (reason is None and self._stopped):
            return PluginRuntimeError("crashed", "plugin host stopped", pid=self._pid)
        if reason == "memory":
            return BudgetExceeded(
                "memory",
                f"plugin exceeded its memory limit ({self.spec.profile.memory_limit} bytes): "
                f"{self._kill_detail}",
            )
        code = self._spawner.exit_code(self._pid, timeout=0.2)
        if code == -signal.SIGXCPU:
            return BudgetExceeded(
                "time",
                "plugin used up its CPU time (RLIMIT_CPU, "
                f"{self.spec.profile.max_execution_time}s per request)",
            )
        detail: dict[str, Any] = {"pid": self._pid}
        if code is not None:
            detail["exit_code"] = code
            if code < 0:
                detail["signal"] = signal.Signals(-code).name if -code in signal.valid_signals() \
                    else -code  # fmt: skip
        why = self._kill_detail or (
            f"plugin process exited (code {code})" if code is not None else "plugin process died"
        )
        return PluginRuntimeError("crashed", why, **detail)

    def _exchange(
        self,
        ftype: FrameType,
        payload: bytes,
        request_id: str | None,
        timeout: float | None,
        *,
        violations: bool = True,
    ) -> _Reply:
        if len(payload) > self._request_cap:
            raise error_from_dict(
                {
                    "code": "request.too_large",
                    "message": f"request of {len(payload)} bytes exceeds {self._request_cap}",
                }
            )
        limit = float(self.spec.profile.max_execution_time)
        budget = limit if timeout is None else min(float(timeout), limit)
        with self._lock:
            if self._dead or self._stopped:
                raise self._dead_error()
            t0 = time.monotonic()
            self._usage_files = None
            try:
                return self._roundtrip(
                    ftype, payload, request_id, t0 + budget, violations=violations
                )
            finally:
                if ftype == FrameType.CALL:
                    self.last_usage = RequestUsage(
                        time.monotonic() - t0, self._db_count, self._usage_files
                    )

    def _roundtrip(
        self,
        ftype: FrameType,
        payload: bytes,
        request_id: str | None,
        deadline: float,
        *,
        violations: bool = True,
    ) -> _Reply:
        """Send one request and serve the child's DB/LOG/VIOLATION frames until its RESULT."""
        seq = next(self._seq) & 0xFFFFFFFF
        self._request_id = request_id
        self._db_count = self._log_count = self._violation_count = 0
        sock, reader = self._sock, self._reader
        try:
            # The send is bounded by the deadline too: a child that stops reading must
            # not block the caller on a full socket buffer.
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            send_frame(sock, ftype, seq, payload)
            while True:
                frame = reader.read(deadline)
                if frame.ftype == FrameType.RESULT and frame.seq == seq:
                    if len(frame.payload) > self._result_cap:
                        # The child's runtime checks this before sending: only a
                        # subverted child gets here.
                        raise FrameTooLarge(frame.ftype, len(frame.payload), self._result_cap)
                    return _parse_reply(frame.payload)
                self._aux_frame(frame, seq, deadline, "request")
        except TimeoutError:
            seconds = self.spec.profile.max_execution_time
            self._kill("time", "deadline passed")
            if violations:
                self._violation("budget.time", f"no answer within {seconds}s", "killed")
            raise BudgetExceeded(
                "time", f"plugin did not answer within its time budget ({seconds}s)"
            ) from None
        except FrameTooLarge as exc:
            self._kill("too_large", str(exc))
            if exc.ftype == FrameType.RESULT:
                self._violation("response.too_large", str(exc), "killed")
                raise error_from_dict(
                    {
                        "code": "response.too_large",
                        "message": "response exceeds max_response_bytes "
                        f"({self.spec.max_response_bytes})",
                        "details": {"size": exc.size, "limit": self.spec.max_response_bytes},
                    }
                ) from None
            self._violation("protocol.frame_too_large", str(exc), "killed")
            raise PluginRuntimeError("crashed", f"protocol violation: {exc}") from None
        except (PeerClosed, ConnectionError, OSError):
            self._mark_dead("crashed", "")
            err = self._dead_error()
            if err.code == "budget.time" and violations:
                self._violation("budget.time", err.message, "killed")
            raise err from None
        except _ProtocolViolation as exc:
            self._kill("crashed", f"protocol violation: {exc}")
            self._violation("protocol.violation", str(exc), "killed")
            raise self._dead_error() from None
        except _ForgedReply as exc:
            # Our child runtime only writes what json.dumps made: this one is subverted.
            self._kill("crashed", f"forged response: {exc}")
            self._violation("protocol.forged_response", str(exc), "killed")
            raise error_from_dict(
                {"code": "response.not_json", "message": f"plugin response rejected: {exc}"}
            ) from None

    def _aux_frame(self, frame: Frame, seq: int, deadline: float, phase: str) -> None:
        """Handle a frame that is not the awaited answer (db, log, violation)."""
        if frame.ftype == FrameType.LOG:
            self._on_log(frame)
        elif frame.ftype == FrameType.VIOLATION:
            self._on_violation_frame(frame)
        elif frame.ftype == FrameType.DB and frame.seq == seq:
            send_frame(self._sock, FrameType.DB_RESULT, seq, self._on_db(frame, deadline))
        elif frame.ftype == FrameType.USAGE and frame.seq == seq and phase == "request":
            self._usage_files = _files_opened(frame.payload)
        else:
            raise _ProtocolViolation(f"unexpected {frame!r} during {phase} {seq}")

    def _on_db(self, frame: Frame, deadline: float) -> bytes:
        self._db_count += 1
        budget = int(self.spec.profile.max_db_queries)
        if self._db_count > budget:
            detail = f"query {self._db_count} exceeds max_db_queries ({budget})"
            self._violation("budget.db_queries", detail, "refused")
            return json.dumps({"error": {"code": "budget.db_queries", "message": detail}}).encode()
        sql: Any = ""
        try:
            q = json.loads(frame.payload)
            sql, params = q["sql"], q["params"]
            if not isinstance(sql, str) or not isinstance(params, list | dict):
                raise TypeError("sql must be a string and params a list or a mapping")
            return self._db.execute(sql, params, deadline)
        except (sqlite3.Error, ValueError, KeyError, TypeError, OverflowError) as exc:
            refused, self._db.refused = self._db.refused, None
            if refused is not None:
                # An attempt on the host's rights (other files, schema, extensions), not a
                # bug: logged as a violation; the plugin gets an error it may catch.
                detail = f"ctx.db refused {refused} in {str(sql)[:200]!r}"
                self._violation("policy.forbidden", detail, "refused")
                message = f"not authorized: {refused} is not allowed in ctx.db"
                return json.dumps(
                    {"error": {"code": "policy.forbidden", "message": message}}
                ).encode()
            msg = str(exc)
            if "interrupted" in msg and time.monotonic() > deadline:
                msg = "query interrupted: request deadline passed"
            return json.dumps({"error": {"code": "plugin.db_error", "message": msg}}).encode()

    def _on_log(self, frame: Frame) -> None:
        self._log_count += 1
        if self._log_count > _LOG_PER_REQUEST:
            if self._log_count == _LOG_PER_REQUEST + 1:
                self._plugin_log.warning(
                    "plugin.log_dropped", request_id=self._request_id, limit=_LOG_PER_REQUEST
                )
            return
        try:
            rec = frame.json()
            level = str(rec.get("level", "info"))
            fields = rec.get("fields") or {}
            if level not in ("debug", "info", "warning", "error") or not isinstance(fields, dict):
                raise ValueError("bad log record")
        except (ValueError, AttributeError):
            self._plugin_log.warning("plugin.log_malformed", request_id=self._request_id)
            return
        safe = {(f"field_{k}" if k in _RESERVED_LOG_KEYS else str(k)): v for k, v in fields.items()}
        getattr(self._plugin_log, level)(
            str(rec.get("event", ""))[:200], request_id=self._request_id, **safe
        )

    def _on_violation_frame(self, frame: Frame) -> None:
        self._violation_count += 1
        if self._violation_count > _VIOLATIONS_PER_REQUEST:
            return
        try:
            rec = frame.json()
            kind, detail = str(rec["kind"])[:100], str(rec.get("detail", ""))[:2000]
        except (ValueError, KeyError, TypeError):
            kind, detail = "protocol.malformed_violation", repr(frame.payload[:200])
        self._violation(kind, detail, "blocked")

    def _raise_failed(self, frame: Frame) -> None:
        doc = json.loads(frame.payload)
        err = error_from_dict(doc.get("error") or {})
        _log.error(
            "sandbox.spawn_failed", plugin=self.spec.plugin, version=self.spec.version,
            code=err.code, message=err.message, details=err.details,
        )  # fmt: skip
        # The trace names runtime paths: logged here, not handed to callers.
        err.details.pop("trace", None)
        raise err

    def _handshake(self, deadline: float) -> None:
        """HELLO (protocol check, layers) then setup() until READY; raises on failure."""
        t0 = time.monotonic()
        seq = 0
        self._request_id = "setup"
        try:
            hello_frame = self._reader.read(deadline, _HELLO_CAP)
            if hello_frame.ftype == FrameType.FAILED:
                self._raise_failed(hello_frame)
            if hello_frame.ftype != FrameType.HELLO:
                raise _ProtocolViolation(f"expected HELLO, got {hello_frame!r}")
            hello = hello_frame.json()
            check_hello(hello)
            layers = LayerReport.from_dict(hello.get("layers") or {})
            self.layers = layers.merged(
                LayerStatus("process", True, True, f"pid {self._pid}"),
                LayerStatus(
                    "monitor",
                    True,
                    True,
                    f"psutil RSS watchdog every {self._spawner.monitor.interval}s",
                ),
            )
            self.baseline_rss = int(hello.get("rss", 0))
            self.timings["lockdown_ms"] = float(hello.get("lockdown_ms", 0.0))
            steps = hello.get("lockdown_steps_ms")
            if isinstance(steps, dict):
                self.lockdown_steps = {str(k): float(v) for k, v in steps.items()}
            while True:
                frame = self._reader.read(deadline)
                if frame.ftype == FrameType.READY:
                    self.timings["setup_ms"] = float(frame.json().get("setup_ms", 0.0))
                    break
                if frame.ftype == FrameType.FAILED:
                    self._raise_failed(frame)
                self._aux_frame(frame, seq, deadline, "setup")
        except TimeoutError:
            self._kill("time", "spawn deadline passed")
            raise SandboxError(
                "spawn_timeout", f"plugin host did not become ready in time ({self.spec.plugin})"
            ) from None
        except (PeerClosed, ConnectionError, FrameTooLarge, _ProtocolViolation, ValueError) as exc:
            self._kill("crashed", str(exc))
            code = self._spawner.exit_code(self._pid, timeout=1.0)
            if code == -signal.SIGXCPU:
                detail = f"setup used up its CPU time ({self.spec.profile.max_execution_time}s)"
                self._violation("budget.time", detail, "killed")
                raise BudgetExceeded("time", detail) from None
            raise SandboxError(
                "spawn_failed",
                f"plugin host died during start-up (exit code {code}): {exc}",
                plugin=self.spec.plugin,
                exit_code=code,
            ) from None
        self.timings["ready_ms"] = (time.monotonic() - t0) * 1000
        for layer in self.layers.inactive:
            _log.warning(
                "sandbox.layer_inactive",
                plugin=self.spec.plugin,
                version=self.spec.version,
                layer=layer.name,
                available=layer.available,
                reason=layer.reason,
            )


class _ProtocolViolation(Exception):
    pass


#: The one USAGE payload the child runtime writes (``b'{"files_opened":%d}'``); matched
#: instead of parsed as JSON (a third of the host-side cost of a small call).
_USAGE = re.compile(rb'\{"files_opened":(0|[1-9][0-9]{0,9})\}')


def _files_opened(payload: bytes) -> int:
    """The ``files_opened`` of a USAGE frame; anything else is a protocol violation."""
    match = _USAGE.fullmatch(payload)
    if match is None:
        raise _ProtocolViolation(f"malformed USAGE frame: {payload[:80]!r}")
    return int(match.group(1))


class _ForgedReply(Exception):
    pass


@dataclass(frozen=True)
class _Reply:
    """A validated RESULT: the bytes to relay, and the decoded value or the typed error."""

    envelope: bytes
    value: Any
    error: PlugvisorError | None


_OK_PREFIX = b'{"ok":true,"result":'


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: Strict JSON (no NaN/Infinity), built once: json.loads(..., parse_constant=...) would
#: build a decoder per call.
_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_reply(payload: bytes) -> _Reply:
    """Check a RESULT envelope before it is relayed; raises :class:`_ForgedReply`.

    A success envelope is relayed byte for byte once its result parses as exactly one
    strict JSON value (so ``1,"ok":false`` cannot smuggle a second key); an error envelope
    is small, so it is parsed, checked and re-encoded canonically.
    """
    if payload.startswith(_OK_PREFIX):
        if not payload.endswith(b"}"):
            raise _ForgedReply("success envelope not closed")
        try:
            value = _STRICT_JSON.decode(payload[len(_OK_PREFIX) : -1].decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise _ForgedReply(f"result is not one JSON value: {exc}") from None
        return _Reply(payload, value, None)
    try:
        doc = _STRICT_JSON.decode(payload.decode("utf-8"))
        if not isinstance(doc, dict) or set(doc) != {"ok", "error"} or doc["ok"] is not False:
            raise ValueError("not an error envelope")
        err = doc["error"]
        if not isinstance(err, dict) or not isinstance(err.get("message"), str):
            raise ValueError("error without a message")
        details = err.get("details") or {}
        if not isinstance(details, dict):
            raise ValueError("error details are not an object")
        error = error_from_dict(
            {"code": str(err.get("code")), "message": err["message"], "details": details}
        )
    except (ValueError, RecursionError, TypeError) as exc:
        raise _ForgedReply(f"malformed envelope: {exc}") from None
    return _Reply(error_envelope(error.code, error.message, **error.details), None, error)


class _Pending:
    __slots__ = ("event", "result")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: tuple[dict[str, Any], list[int]] | None = None


def _template_preload(settings: Settings) -> frozenset[str]:
    """The modules the template pre-imports: those of the default profile (most plugins'),
    so their spawns import nothing; other profiles' children import their extras."""
    try:
        return load_profile(settings.default_profile, settings).allowed_modules()
    except PlugvisorError as exc:
        _log.warning("sandbox.preload_skipped", profile=settings.default_profile, error=str(exc))
        return frozenset()


class Spawner:
    """Owns the template process and spawns :class:`PluginHost` s from it."""

    def __init__(
        self,
        settings: Settings,
        security_log: Any = None,
        on_violation: ViolationCallback | None = None,
        *,
        monitor_interval: float = 0.05,
        in_process_policy: bool = True,
    ) -> None:
        self.settings = settings
        #: False runs the OS layers alone (diagnostics, benchmarks); reported per host.
        self.in_process_policy = in_process_policy
        self.violations = _Violations(security_log, on_violation)
        self.monitor = ResourceMonitor(monitor_interval)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._pending: dict[int, _Pending] = {}
        self._exits: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._live: set[int] = set()
        self._seq = itertools.count(1)
        self.template_info: dict[str, Any] = {}

    @property
    def template_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self._ctl is not None

    def start(self, timeout: float = 15.0) -> bool:
        """Start the template if it is not running; True when this call started it."""
        with self._lock:
            if self.running:
                return False
            self._start_locked(timeout)
            return True

    def _start_locked(self, timeout: float) -> None:
        self._shutdown_template()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2"}
        # MALLOC_ARENA_MAX: every thread arena reserves 64 MiB of address space, which
        # RLIMIT_AS would count; the children inherit the setting from the template.
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-m", "plugvisor.sandbox.template",
                 str(child.fileno()), ",".join(sorted(_template_preload(self.settings)))],
                pass_fds=(child.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
                cwd="/",
            )  # fmt: skip
        except OSError as exc:
            parent.close()
            raise SandboxError("template_failed", f"cannot start the sandbox template: {exc}") \
                from exc  # fmt: skip
        finally:
            child.close()
        parent.settimeout(timeout)
        try:
            data = parent.recv(65536)
            info = json.loads(data) if data else {}
            if not info.get("ok"):
                raise SandboxError(
                    "template_failed",
                    f"sandbox template failed: {info.get('error', 'exited during start-up')}",
                )
            check_hello(info)
        except (OSError, ValueError, SandboxError) as exc:
            proc.kill()
            proc.wait(5)
            parent.close()
            if isinstance(exc, SandboxError):
                raise
            raise SandboxError(
                "template_failed", f"sandbox template did not start within {timeout}s: {exc}"
            ) from exc
        parent.settimeout(None)
        self._proc, self._ctl, self.template_info = proc, parent, info
        self._reader = threading.Thread(
            target=self._read_loop, args=(parent,), name="plugvisor-spawner", daemon=True
        )
        self._reader.start()
        self.monitor.start()
        _log.info("sandbox.template_started", **info)
        # A missing layer is a warning at start-up (and again per host), never silent.
        gaps = {
            "landlock": "" if info.get("landlock_abi") else "kernel without Landlock",
            "seccomp": "" if info.get("seccomp") == "ok" else str(info.get("seccomp")),
            "netns": "" if info.get("netns") == "ok" else str(info.get("netns")),
            "privileges": ""
            if can_change_identity()
            else "neither root nor CAP_SETUID+CAP_SETGID: hosts keep the daemon's uid",
        }
        for layer, reason in gaps.items():
            if reason:
                _log.warning("sandbox.layer_unavailable", layer=layer, reason=reason)

    def _read_loop(self, ctl: socket.socket) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(ctl, 65536, 2)
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                break
            try:
                msg = json.loads(data)
            except ValueError:
                _log.error("sandbox.template_garbage", size=len(data))
                continue
            op = msg.get("op")
            if op in ("spawned", "spawn_failed"):
                pending = self._pending.get(int(msg.get("seq", -1)))
                if pending is None:
                    for fd in fds:
                        os.close(fd)
                    if op == "spawn_failed":
                        _log.error("sandbox.spawn_failed", error=msg.get("error"))
                    continue
                pending.result = (msg, fds)
                pending.event.set()
            elif op == "exited":
                with self._cond:
                    pid = int(msg["pid"])
                    self._exits[pid] = int(msg["code"])
                    self._live.discard(pid)
                    while len(self._exits) > 4096:
                        self._exits.popitem(last=False)
                    self._cond.notify_all()
        # EOF: the template is gone; its children die with it (parent-death signal).
        with self._cond:
            self._live.clear()
            self._cond.notify_all()
        for pending in list(self._pending.values()):
            pending.event.set()

    def exit_code(self, pid: int, timeout: float = 0.0) -> int | None:
        """The child's exit code (negative: signal) once the template reaped it."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits, timeout)
            return self._exits.get(pid)

    def wait_reaped(self, pid: int, timeout: float) -> bool:
        """Wait until the template has reaped ``pid`` (True) or the timeout passes."""
        with self._cond:
            return self._cond.wait_for(lambda: pid not in self._live, timeout)

    def spawn(self, spec: HostSpec, timeout: float = 10.0) -> PluginHost:
        """Fork a locked-down child from the template, import the plugin, run setup()."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if not self.running:
                if self._proc is not None:
                    _log.warning("sandbox.template_restart", previous_pid=self._proc.pid)
                self._start_locked(max(1.0, deadline - time.monotonic()))
            ctl = self._ctl
        assert ctl is not None
        profile = spec.profile
        data_dir = (
            str(spec.data_dir)
            if spec.data_dir is not None and getattr(profile, "writable_data_dir", False)
            else None
        )
        seq = next(self._seq)
        order = SpawnOrder(
            seq=seq,
            protocol=PROTOCOL_VERSION,
            plugin=spec.plugin,
            version=spec.version,
            code_dir=str(spec.code_dir),
            entrypoint=spec.entrypoint,
            profile=profile,
            data_dir=data_dir,
            config=dict(spec.config),
            max_response_bytes=int(spec.max_response_bytes),
            sandbox_user=self.settings.sandbox_user,
            in_process_policy=self.in_process_policy,
        )
        t0 = time.monotonic()
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pending = _Pending()
        self._pending[seq] = pending
        try:
            with self._send_lock:
                socket.send_fds(ctl, [pickle.dumps(order)], [child_sock.fileno()])
            child_sock.close()
            if not pending.event.wait(max(0.0, deadline - time.monotonic())):
                parent_sock.close()
                raise SandboxError("spawn_timeout", "sandbox template did not answer in time")
        except OSError as exc:
            parent_sock.close()
            raise SandboxError("template_failed", f"sandbox template unreachable: {exc}") \
                from exc  # fmt: skip
        finally:
            child_sock.close()
            self._pending.pop(seq, None)
        if pending.result is None:
            parent_sock.close()
            raise SandboxError("template_failed", "sandbox template exited during spawn")
        msg, fds = pending.result
        if msg["op"] != "spawned" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            parent_sock.close()
            raise SandboxError("spawn_failed", f"template refused the spawn: {msg.get('error')}")
        pid = int(msg["pid"])
        forked_ms = (time.monotonic() - t0) * 1000
        with self._cond:
            if pid not in self._exits:
                self._live.add(pid)
        host = PluginHost(spec, parent_sock, pid, fds[0], self)
        try:
            host._handshake(deadline)
        except BaseException:
            host.stop(grace=0.0)
            raise
        host.timings["forked_ms"] = forked_ms
        host.timings["spawn_ms"] = (time.monotonic() - t0) * 1000
        self.monitor.register(host)
        return host

    def _shutdown_template(self, timeout: float = 5.0) -> None:
        ctl, proc = self._ctl, self._proc
        self._ctl = None
        if ctl is not None:
            with contextlib.suppress(OSError):
                ctl.shutdown(socket.SHUT_RDWR)
            ctl.close()
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def close(self) -> None:
        """Stop the template (its remaining children get SIGKILL) and the monitor."""
        with self._lock:
            self.monitor.stop()
            self._shutdown_template()

    def __enter__(self) -> Spawner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
