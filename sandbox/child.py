"""The plugin runtime inside the locked-down child: ctx, setup, the request loop, teardown.

Runs after :func:`~plugvisor.sandbox.lockdown.lock_down`. Talks to the parent over
the channel only (see ``protocol.py``): one request at a time, every answer a whole
response envelope. Plugin exceptions become ``plugin.error`` with the exception's type and
message (no traceback: it would leak runtime internals); ``MemoryError`` becomes
``budget.memory``; a result that is not JSON ``response.not_json``; a result over
``max_response_bytes`` ``response.too_large`` (checked here, before sending; the parent
caps frames too).
"""

from __future__ import annotations

import _socket
import json
import os
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any, Protocol, cast

from plugvisor.core.errors import BudgetExceeded, PlugvisorError
from plugvisor.sandbox.lockdown import arm_cpu_limit
from plugvisor.sandbox.protocol import (
    FRAME_SLACK,
    PROTOCOL_VERSION,
    FrameReader,
    FrameType,
    PeerClosed,
    encode_frame,
    error_envelope,
    ok_envelope,
    request_cap,
    send_frame,
)

__all__ = ["ChildConfig", "DatabaseError", "PluginContext", "serve"]

_LOG_LEVELS = ("debug", "info", "warning", "error")
_MAX_LOG_FRAME = 16 * 1024
_MAX_MESSAGE = 1000


class DatabaseError(Exception):
    """An SQL error from ``ctx.db.execute`` (the query ran in the host and failed)."""


class PolicyHandle(Protocol):
    """What ``policy.install_policy`` returns (written in ``policy.py``)."""

    files_opened: int

    def begin_request(self, request_id: str) -> None: ...

    def end_request(self) -> None: ...

    def load_plugin(self, entrypoint: str) -> object: ...


#: ``install_policy(profile, plugin_root, report, *, data_dir=None) -> PolicyHandle``
InstallPolicy = Callable[..., PolicyHandle]


@dataclass(frozen=True)
class ChildConfig:
    """What the child runtime needs besides the channel (built by the template)."""

    plugin: str
    version: str
    entrypoint: str
    profile: Any  # SecurityProfile
    plugin_root: str  # /proc/self/fd/N: reachable whatever the ancestors' modes
    data_dir: str | None
    config: dict[str, Any]
    max_response_bytes: int


class _Channel:
    """The child's end: blocking socket, frames in order, the current request's seq."""

    def __init__(self, sock: socket.socket, cap: int) -> None:
        self.sock = sock
        self.reader = FrameReader(sock, cap)
        self.seq = 0
        # A plugin's own threads may log (or print) while the runtime answers: frames
        # must not interleave, or the parent drops the host for a protocol violation.
        self.lock = threading.RLock()

    def send(self, ftype: FrameType, payload: bytes = b"") -> None:
        with self.lock:
            send_frame(self.sock, ftype, self.seq, payload)

    def send_json(self, ftype: FrameType, obj: Any) -> None:
        self.send(ftype, json.dumps(obj, separators=(",", ":"), default=str).encode())


class _Database:
    """``ctx.db``: queries run in the host against the plugin's own SQLite file.

    ``execute(sql, params=()) -> list[list]``; ``params`` a sequence (``?``) or a mapping
    (``:name``) of JSON values. BLOB values come back base64-encoded.
    A budget breach raises :class:`BudgetExceeded` (``budget.db_queries``), an SQL error
    :class:`DatabaseError`; the plugin may catch either (the breach is logged anyway).
    """

    Error = DatabaseError

    def __init__(self, chan: _Channel, limit: int) -> None:
        self._chan = chan
        self._limit = limit

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[list[Any]]:
        if not isinstance(sql, str):
            raise TypeError("ctx.db.execute: sql must be a str")
        args: Any = dict(params) if isinstance(params, Mapping) else list(params)
        try:
            payload = json.dumps({"sql": sql, "params": args}, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"ctx.db.execute: params must be JSON values: {exc}") from None
        data = payload.encode()
        if len(data) > self._limit:
            raise DatabaseError(f"query and parameters exceed {self._limit} bytes")
        with self._chan.lock:
            self._chan.send(FrameType.DB, data)
            frame = self._chan.reader.read()
        if frame.ftype != FrameType.DB_RESULT:
            raise PeerClosed(f"expected DB_RESULT, got frame type {frame.ftype}")
        reply = frame.json()
        err = reply.get("error")
        if err:
            if err.get("code") == "budget.db_queries":
                raise BudgetExceeded("db_queries", str(err.get("message", "")))
            raise DatabaseError(str(err.get("message", "")))
        rows: list[list[Any]] = reply["rows"]
        return rows


class _Log:
    """``ctx.log``: structured records forwarded to the host, tagged with plugin and version."""

    def __init__(self, chan: _Channel) -> None:
        self._chan = chan

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        payload = json.dumps(
            {"level": level, "event": str(event)[:200], "fields": fields},
            separators=(",", ":"),
            default=str,
        ).encode()
        if len(payload) > _MAX_LOG_FRAME:
            payload = json.dumps(
                {"level": level, "event": str(event)[:200], "fields": {"truncated": True}}
            ).encode()
        self._chan.send(FrameType.LOG, payload)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


class _PluginDatabase:
    """``ctx.db`` as the plugin holds it: ``execute`` only, a function closing over the runtime.

    No attribute path leads to the channel (a plugin holding the socket could forge
    frames): the function's closure and globals are refused by the policy, and there is
    no ``__dict__``. Same call and errors as :meth:`_Database.execute`.
    """

    __slots__ = ("execute",)
    Error = DatabaseError
    execute: Callable[..., list[list[Any]]]

    def __init__(self, db: _Database) -> None:
        def execute(sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[list[Any]]:
            return db.execute(sql, params)

        execute.__doc__ = _Database.__doc__
        self.execute = execute


class _PluginLog:
    """``ctx.log`` as the plugin holds it: ``debug/info/warning/error(event, **fields)``.

    Functions closing over the runtime's :class:`_Log` (see :class:`_PluginDatabase`).
    """

    __slots__ = _LOG_LEVELS
    debug: Callable[..., None]
    info: Callable[..., None]
    warning: Callable[..., None]
    error: Callable[..., None]

    def __init__(self, log: _Log) -> None:
        for level in _LOG_LEVELS:
            object.__setattr__(self, level, _log_method(log, level))


def _log_method(log: _Log, level: str) -> Callable[..., None]:
    def emit(event: str, **fields: Any) -> None:
        log._emit(level, event, fields)

    emit.__name__ = emit.__qualname__ = level
    return emit


class _StdStream:
    """sys.stdout/sys.stderr: lines become ``ctx.log`` records instead of vanishing."""

    def __init__(self, log: _PluginLog, name: str) -> None:
        self._log = log
        self._name = name
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += str(text)
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._log.info(self._name, line=line[:2000])
        if len(self._buf) > 2000:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._buf:
            self._log.info(self._name, line=self._buf[:2000])
            self._buf = ""

    def isatty(self) -> bool:
        return False


@dataclass(frozen=True)
class PluginContext:
    """``ctx`` passed to ``setup()``: the plugin's only ways out of its process."""

    db: _PluginDatabase
    log: _PluginLog
    data_dir: str | None
    config: dict[str, Any]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _describe(exc: BaseException) -> str:
    try:
        msg = str(exc)
    except Exception:  # a plugin's __str__ may itself raise: the type still says enough
        msg = "<unprintable>"
    if len(msg) > _MAX_MESSAGE:
        msg = msg[:_MAX_MESSAGE] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class _Runtime:
    def __init__(self, chan: _Channel, cfg: ChildConfig, policy: PolicyHandle) -> None:
        self.chan = chan
        self.cfg = cfg
        self.policy = policy
        self.instance: Any = None

    def report(self, kind: str, detail: str) -> None:
        # Encoded with the C string encoder bound at import, not json.dumps: the policy
        # reports with its audit hook quiet, and json's classes are the plugin's to
        # monkeypatch (a patched JSONEncoder.encode would run plugin code unwatched).
        kind_json = _json_string(str.__str__(kind))
        detail_json = _json_string(str.__str__(detail)[:2000])
        payload = f'{{"kind":{kind_json},"detail":{detail_json}}}'
        self.chan.send(FrameType.VIOLATION, payload.encode())

    def _run(self, fn: Callable[[], Any], request_id: str) -> bytes:
        """Run plugin code for one request; always returns a whole envelope."""
        arm_cpu_limit(float(self.cfg.profile.max_execution_time) + 1.0)
        self.policy.begin_request(request_id)
        try:
            result = fn()
            try:
                out = json.dumps(result, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError, RecursionError) as exc:
                return error_envelope(
                    "response.not_json", f"plugin returned a value that is not JSON: {exc}"
                )
        except MemoryError:
            self.report("budget.memory", "MemoryError: allocation refused by RLIMIT_AS")
            return error_envelope(
                "budget.memory",
                f"plugin exceeded its memory limit ({self.cfg.profile.memory_limit} bytes)",
            )
        except PlugvisorError as exc:
            return error_envelope(exc.code, exc.message, **exc.details)
        except BaseException as exc:  # plugin code may raise anything, SystemExit included
            return error_envelope("plugin.error", _describe(exc), type=type(exc).__name__)
        finally:
            self.policy.end_request()
        if len(out) > self.cfg.max_response_bytes:
            self.report("response.too_large", f"{len(out)} bytes > {self.cfg.max_response_bytes}")
            return error_envelope(
                "response.too_large",
                f"response of {len(out)} bytes exceeds max_response_bytes "
                f"({self.cfg.max_response_bytes})",
                size=len(out),
                limit=self.cfg.max_response_bytes,
            )
        return ok_envelope(out)

    def files_opened(self) -> int:
        """Files the last request opened, as the policy counted them."""
        return int(getattr(self.policy, "files_opened", 0))

    def handle(self, payload: bytes) -> bytes:
        try:
            request = _STRICT_JSON.decode(payload.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            # The caller's bad input, not the plugin's fault (no response.* code).
            return error_envelope("request.invalid_json", f"request is not valid JSON: {exc}")
        return self._run(lambda: self.instance.handle(request), str(self.chan.seq))

    def health(self) -> bytes:
        fn = getattr(self.instance, "health", None)
        return self._run((lambda: bool(fn())) if fn is not None else (lambda: True), "health")

    def selftest(self) -> bytes:
        fn = getattr(self.instance, "selftest", None)
        return self._run(fn if fn is not None else (lambda: {"absent": True}), "selftest")

    def teardown(self) -> bytes:
        fn = getattr(self.instance, "teardown", None)
        return self._run((fn) if fn is not None else (lambda: None), "teardown")


def serve(
    sock: socket.socket,
    cfg: ChildConfig,
    hello: dict[str, Any],
    install_policy: InstallPolicy,
) -> int:
    """Say HELLO, install the policy, import the plugin, run setup(), serve; the exit code.

    The runtime talks through a C ``_socket.socket`` on the same descriptor:
    ``socket.socket`` is a Python class whose methods a plugin allowed ``socket`` could
    replace, and its replacement would be handed the channel as ``self``.
    """
    # Family, type and protocol given: no getsockopt() after the lock-down.
    raw = _socket.socket(sock.family, sock.type, sock.proto, sock.fileno())
    try:
        # The C type has every method the frames use (sendall, recv_into, settimeout).
        return _serve(cast(socket.socket, raw), cfg, hello, install_policy)
    finally:
        raw.detach()  # the descriptor stays the caller's (it reports failures on it)


def _serve(
    sock: socket.socket,
    cfg: ChildConfig,
    hello: dict[str, Any],
    install_policy: InstallPolicy,
) -> int:
    cap = request_cap(cfg.max_response_bytes) + FRAME_SLACK
    chan = _Channel(sock, cap)
    hello = {"protocol": PROTOCOL_VERSION, "pid": os.getpid(), "rss": _rss(), **hello}
    chan.send_json(FrameType.HELLO, hello)

    holder: list[_Runtime] = []

    def report(kind: str, detail: str) -> None:
        if holder:
            holder[0].report(kind, detail)

    t0 = time.perf_counter()
    try:
        policy = install_policy(cfg.profile, cfg.plugin_root, report, data_dir=cfg.data_dir)
    except Exception as exc:  # the policy layer failing is a lock-down failure
        chan.send(
            FrameType.FAILED,
            error_envelope("sandbox.lockdown_failed", f"policy: {_describe(exc)}"),
        )
        return 3
    rt = _Runtime(chan, cfg, policy)
    holder.append(rt)
    log = _PluginLog(_Log(chan))
    sys.dont_write_bytecode = True  # the code dir is read-only: no __pycache__ attempts
    sys.stdout = _StdStream(log, "stdout")
    sys.stderr = _StdStream(log, "stderr")
    # The plugin gets the thin facades only: nothing it holds leads to the channel.
    db = _PluginDatabase(_Database(chan, request_cap(cfg.max_response_bytes)))
    ctx = PluginContext(db, log, cfg.data_dir, dict(cfg.config))

    def load_and_setup() -> Any:
        target = policy.load_plugin(cfg.entrypoint)
        rt.instance = target() if isinstance(target, type) else target
        if not callable(getattr(rt.instance, "handle", None)):
            raise TypeError(f"entrypoint {cfg.entrypoint!r} has no handle(request) method")
        setup = getattr(rt.instance, "setup", None)
        if setup is not None:
            setup(ctx)
        return None

    env = rt._run(load_and_setup, "setup")
    if not env.startswith(b'{"ok":true'):
        chan.send(FrameType.FAILED, env)
        return 4
    chan.send_json(FrameType.READY, {"setup_ms": round((time.perf_counter() - t0) * 1000, 3)})

    while True:
        try:
            frame = chan.reader.read()
        except PeerClosed:
            return 0  # the parent went away: nothing left to serve
        chan.seq = frame.seq
        if frame.ftype == FrameType.CALL:
            envelope = rt.handle(frame.payload)
            # Usage first, so the parent has it when the RESULT ends the request; both in
            # one write, so the parent usually reads them in one recv.
            usage = b'{"files_opened":%d}' % rt.files_opened()
            with chan.lock:
                chan.sock.sendall(
                    encode_frame(FrameType.USAGE, chan.seq, usage)
                    + encode_frame(FrameType.RESULT, chan.seq, envelope)
                )
        elif frame.ftype == FrameType.HEALTH:
            chan.send(FrameType.RESULT, rt.health())
        elif frame.ftype == FrameType.SELFTEST:
            chan.send(FrameType.RESULT, rt.selftest())
        elif frame.ftype == FrameType.STOP:
            chan.send(FrameType.RESULT, rt.teardown())
            return 0
        else:
            return 5  # protocol error: the parent will see EOF and treat us as crashed


def _rss() -> int:
    # Peak RSS so far (the runtime before the plugin); /proc is outside the Landlock rules.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
