"""The call socket ``run/daemon.sock``: threads and blocking sockets, one thread per client.

A threads + blocking-sockets relay costs less per call than an asyncio-streams one
(PLATFORM-NOTES "Relay cost"; ``bench/daemon_bench.py`` measures the call path against
its peers), so each client connection gets a thread that reads a frame, hands it to the
supervisor (which relays the JSON bytes to a plugin host untouched) and writes the
envelope back. The socket is mode 0660 so a service group can call plugins; the daemon's
own user owns it.

Stopping: :meth:`CallServer.stop_accepting` closes the listening socket, then
:meth:`CallServer.drain` waits for calls in progress (bounded) and closes every idle
connection.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from plugvisor.core.envelope import error_envelope
from plugvisor.core.errors import PluginRuntimeError, StateError
from plugvisor.core.log import get_logger
from plugvisor.messaging.calls import (
    FrameStream,
    ProtocolError,
    decode_request,
    send_frame,
)

__all__ = ["CallServer", "Dispatch"]

_log = get_logger("plugvisor.daemon.callserver")

#: ``(plugin name, request id, JSON bytes) -> envelope bytes``.
Dispatch = Callable[[str, str, bytes], bytes]


class CallServer:
    """Accepts client connections on a Unix socket and serves framed calls."""

    def __init__(
        self, path: Path, dispatch: Dispatch, *, mode: int = 0o660, backlog: int = 128
    ) -> None:
        self.path = path
        self.dispatch = dispatch
        self.mode = mode
        self.backlog = backlog
        self._listener: socket.socket | None = None
        self._accepting = threading.Event()
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, bool] = {}  # connection -> call in progress
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._ids = 0
        self._draining = False

    def start(self) -> None:
        """Bind (replacing a stale socket file) and start the accept thread."""
        if self.path.exists() or self.path.is_symlink():
            if _socket_answers(self.path):
                raise StateError(
                    "daemon_running", f"another daemon is listening on {self.path}",
                    path=str(self.path),
                )  # fmt: skip
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bind under a tight umask so the socket is never reachable with wider modes.
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        sock.listen(self.backlog)
        self._listener = sock
        self._accepting.set()
        self._thread = threading.Thread(target=self._accept_loop, name="call-accept", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while self._accepting.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._accepting.is_set():
                    _log.exception("accept_failed")
                    time.sleep(0.01)  # e.g. EMFILE: do not spin
                    continue
                return
            with self._lock:
                self._conns[conn] = False
                self._ids += 1
                n = self._ids
            threading.Thread(
                target=self._serve, args=(conn,), name=f"call-conn-{n}", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        frames = FrameStream(conn)
        try:
            while True:
                try:
                    payload = frames.read()
                except (OSError, ProtocolError) as exc:
                    if self._accepting.is_set():
                        _log.debug("client_connection_closed", error=str(exc))
                    return
                if payload is None:
                    return
                with self._lock:
                    self._conns[conn] = True
                try:
                    try:
                        name, rid, body = decode_request(payload)
                    except ProtocolError as exc:
                        err = PluginRuntimeError("protocol", f"malformed request frame: {exc}")
                        envelope = error_envelope(err.code, err.message, **err.details)
                    else:
                        envelope = self._dispatch(name, rid, body)
                    send_frame(conn, envelope)
                except OSError as exc:
                    _log.debug("client_went_away", error=str(exc))
                    return
                finally:
                    with self._lock:
                        if conn in self._conns:
                            self._conns[conn] = False
                        if self._draining:  # nobody waits for idle connections otherwise
                            self._idle.notify_all()
                if not self._accepting.is_set():
                    return  # answered the last call; the daemon is stopping
        finally:
            with self._lock:
                self._conns.pop(conn, None)
                self._idle.notify_all()
            conn.close()

    def _dispatch(self, name: str, rid: str, body: bytes) -> bytes:
        try:
            return self.dispatch(name, rid, body)
        except Exception as exc:  # a daemon bug answers this call, it must not drop the client
            _log.exception("dispatch_failed", plugin=name, request_id=rid)
            err = PluginRuntimeError("internal", f"daemon failed to route the call: {exc!r}")
            return error_envelope(err.code, err.message, **err.details)

    def stop_accepting(self) -> None:
        """Close the listening socket and remove its file; connections stay until drain."""
        self._accepting.clear()
        bound = self._listener is not None
        if self._listener is not None:
            # A listening socket may refuse shutdown (not connected); closing suffices then.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        if bound:  # never remove the socket of another daemon we refused to replace
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def drain(self, timeout: float) -> bool:
        """Wait until no call is in progress (or ``timeout``); close every connection."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._draining = True
            while any(self._conns.values()) and time.monotonic() < deadline:
                self._idle.wait(max(0.001, deadline - time.monotonic()))
            drained = not any(self._conns.values())
            conns = list(self._conns)
        for conn in conns:
            # Wakes the thread blocked in recv; OSError means its thread closed it already.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        return drained

    def healthy(self) -> bool:
        """The accept thread is running (for the watchdog)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)


def _socket_answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
