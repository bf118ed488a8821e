"""``plugvisor.client``: call plugins through the daemon's Unix socket.

Light on purpose (standard library plus :mod:`plugvisor.core.errors`): host
applications import it. Connections are reused, one per thread, so a
:class:`Client` can be shared between threads::

    from plugvisor.client import Client
    client = Client("/var/lib/plugvisor/run/daemon.sock", timeout=30.0)
    client.call("greeter", {"name": "Ada"})          # -> the plugin's result
    client.call_raw("greeter", b'{"name":"Ada"}')    # -> envelope bytes

``call`` raises the typed error of the envelope's code (``plugin.disabled`` ->
:class:`~plugvisor.core.errors.PluginRuntimeError`, ``budget.time`` ->
:class:`~plugvisor.core.errors.BudgetExceeded`, ...). A daemon that cannot be
reached gives ``plugin.unavailable``; a call without an answer within ``timeout``
gives ``plugin.timeout``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

from plugvisor.core.errors import ApiError, PluginRuntimeError, error_from_dict
from plugvisor.messaging.calls import FrameStream, ProtocolError, encode_request, send_frame

__all__ = ["Client", "parse_envelope"]


def parse_envelope(envelope: bytes) -> Any:
    """Return the result of an envelope, or raise the typed error it carries."""
    try:
        data = json.loads(envelope)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PluginRuntimeError("protocol", f"daemon sent a non-JSON envelope: {exc}") from exc
    if not isinstance(data, dict) or "ok" not in data:
        raise PluginRuntimeError("protocol", "daemon sent an envelope without 'ok'")
    if data["ok"]:
        return data.get("result")
    err = data.get("error")
    raise error_from_dict(err if isinstance(err, dict) else {"code": "plugin.error"})


class Client:
    """A thread-safe client of the daemon's call socket (one connection per thread)."""

    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.socket_path = str(Path(socket_path))
        self.timeout = timeout
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-{id(self):x}-"
        self._all: list[socket.socket] = []
        self._lock = threading.Lock()

    # ---- connection management ------------------------------------------------
    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise PluginRuntimeError(
                "unavailable",
                f"daemon not reachable at {self.socket_path}: {exc.strerror or exc}",
                socket=self.socket_path,
            ) from exc
        with self._lock:
            self._all.append(sock)
        return sock

    def _open(self) -> socket.socket:
        """Connect this thread (its connection and the frame buffer that goes with it)."""
        sock = self._local.sock = self._connect()
        self._local.frames = FrameStream(sock)
        return sock

    def _drop(self) -> None:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        self._local.sock = None
        self._local.frames = None
        if sock is not None:
            with self._lock:
                if sock in self._all:
                    self._all.remove(sock)
            sock.close()

    def close(self) -> None:
        """Close every connection this client opened (in any thread)."""
        with self._lock:
            socks, self._all = self._all, []
        for sock in socks:
            sock.close()
        self._local = threading.local()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- calls ----------------------------------------------------------------
    def call_raw(self, name: str, request: bytes, request_id: str | None = None) -> bytes:
        """Send JSON ``request`` bytes to plugin ``name``; return the envelope bytes."""
        rid = request_id or f"{self._prefix}{next(self._ids)}"
        payload = encode_request(name, rid, request)
        sock: socket.socket | None = getattr(self._local, "sock", None)
        reused = sock is not None
        if sock is None:
            sock = self._open()
        try:
            send_frame(sock, payload)
        except OSError:
            # A reused connection the daemon closed (restart, idle): nothing was
            # delivered, so sending again on a fresh connection is safe.
            self._drop()
            if not reused:
                raise PluginRuntimeError("unavailable", "daemon closed the connection") from None
            sock = self._open()
            send_frame(sock, payload)
        try:
            frames: FrameStream = self._local.frames
            envelope = frames.read()
        except TimeoutError as exc:
            self._drop()  # the stream is out of step now
            raise PluginRuntimeError(
                "timeout", f"no answer from plugin {name!r} within {self.timeout} s", plugin=name
            ) from exc
        except (OSError, ProtocolError) as exc:
            self._drop()
            raise PluginRuntimeError(
                "unavailable", f"daemon connection failed during the call: {exc}", plugin=name
            ) from exc
        if envelope is None:
            self._drop()
            raise PluginRuntimeError(
                "unavailable", "daemon closed the connection before answering", plugin=name
            )
        return envelope

    def call(self, name: str, request: Any, request_id: str | None = None) -> Any:
        """Call plugin ``name`` with a JSON-compatible ``request``; return its result."""
        try:
            body = json.dumps(request, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ApiError("not_json", f"request is not JSON-compatible: {exc}") from exc
        return parse_envelope(self.call_raw(name, body, request_id))
