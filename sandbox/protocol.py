"""The framed, versioned protocol between the daemon side and one sandboxed plugin host.

A frame is a 9-byte header ``!IBI`` (payload length, frame type, request sequence number)
followed by the payload, over a ``SOCK_STREAM`` Unix socketpair. Payloads are JSON bytes;
call requests and responses are passed through as the bytes the caller gave and the child
produced, so the parent never re-encodes them on the fast path. A reader checks the length
against its cap *before* allocating, so a hostile child cannot make the parent allocate.

The child speaks first: ``HELLO`` carries :data:`PROTOCOL_VERSION` and the lock-down report;
a parent that finds another version refuses the host with ``sandbox.protocol_mismatch``.
"""

from __future__ import annotations

import enum
import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from plugvisor.core.envelope import error_envelope, ok_envelope
from plugvisor.core.errors import SandboxError

__all__ = [
    "FRAME_SLACK",
    "HEADER",
    "PROTOCOL_VERSION",
    "Frame",
    "FrameReader",
    "FrameTooLarge",
    "FrameType",
    "PeerClosed",
    "SpawnOrder",
    "check_hello",
    "encode_frame",
    "error_envelope",
    "ok_envelope",
    "read_frame",
    "request_cap",
    "send_frame",
]

#: Bump when a frame type or payload shape changes incompatibly (2: ``USAGE``).
PROTOCOL_VERSION = 2

HEADER = struct.Struct("!IBI")
_HEADER_SIZE = HEADER.size


class FrameType(enum.IntEnum):
    """Frame types; the direction is fixed per type."""

    #: child -> parent, first frame: ``{"protocol", "pid", "layers", "error"?}``.
    HELLO = 1
    #: child -> parent: setup() finished (``{}``) -- the host is ready for calls.
    READY = 2
    #: parent -> child: request JSON bytes, passed through untouched.
    CALL = 3
    #: child -> parent: a whole response envelope (``{"ok": true, ...}`` or an error one).
    RESULT = 4
    #: child -> parent: ``{"sql", "params"}``; parent -> child: ``DB_RESULT``.
    DB = 5
    #: parent -> child: ``{"rows": [...]}`` or ``{"error": {"code", "message"}}``.
    DB_RESULT = 6
    #: child -> parent: ``{"level", "event", "fields"}``; no answer.
    LOG = 7
    #: child -> parent: ``{"kind", "detail"}`` -- a policy/budget violation seen inside.
    VIOLATION = 8
    #: parent -> child: run health(); answered by ``RESULT``.
    HEALTH = 9
    #: parent -> child: run teardown() and exit; answered by ``RESULT`` then EOF.
    STOP = 10
    #: child -> parent: setup or lock-down failed; an error envelope, then the child exits.
    FAILED = 11
    #: child -> parent, right before a CALL's ``RESULT``: what the request used inside
    #: the child, ``{"files_opened": n}`` (``PluginHost.last_usage``; ``dev run`` prints it).
    USAGE = 12
    #: parent -> child: run selftest() if the plugin defines one; answered by ``RESULT``
    #: (its value, or ``{"absent": true}`` without the method). Workers' trials use it.
    SELFTEST = 13


class PeerClosed(ConnectionError):
    """The other end closed the channel (the child died or exited)."""


class FrameTooLarge(ValueError):
    """A frame header announced more bytes than the reader's cap allows."""

    def __init__(self, ftype: int, size: int, cap: int) -> None:
        super().__init__(f"frame type {ftype} of {size} bytes exceeds the cap of {cap} bytes")
        self.ftype = ftype
        self.size = size
        self.cap = cap


class Frame:
    """One received frame (a plain slotted class: built once per frame on the fast path)."""

    __slots__ = ("ftype", "payload", "seq")

    def __init__(self, ftype: int, seq: int, payload: bytes) -> None:
        self.ftype = ftype
        self.seq = seq
        self.payload = payload

    def json(self) -> Any:
        """The payload decoded as JSON."""
        return json.loads(self.payload)

    def __repr__(self) -> str:
        return f"Frame({FrameType(self.ftype).name}, seq={self.seq}, {len(self.payload)} bytes)"


def encode_frame(ftype: int, seq: int, payload: bytes) -> bytes:
    """Header + payload as one bytes object (one copy of the payload, one send)."""
    return HEADER.pack(len(payload), ftype, seq) + payload


def send_frame(sock: socket.socket, ftype: int, seq: int, payload: bytes = b"") -> None:
    """Send one frame; large payloads go out without being copied behind the header."""
    if len(payload) <= 65536:
        sock.sendall(HEADER.pack(len(payload), ftype, seq) + payload)
    else:
        sock.sendall(HEADER.pack(len(payload), ftype, seq))
        sock.sendall(payload)


class FrameReader:
    """Buffered frame reader over one socket: one ``recv`` usually yields a whole frame.

    The header's length is checked against ``cap`` before any payload is buffered, and
    the buffer never holds more than one capped frame plus one read chunk, so a hostile
    peer cannot make the reader allocate. After :class:`FrameTooLarge` the stream is out
    of sync: drop the channel.
    """

    __slots__ = ("buf", "cap", "scratch", "sock")

    def __init__(self, sock: socket.socket, cap: int) -> None:
        self.sock = sock
        self.cap = cap
        self.buf = bytearray()
        # recv_into a reused buffer: no per-call allocation of the maximum chunk size.
        self.scratch = memoryview(bytearray(65536))

    def read(self, deadline: float | None = None, cap: int | None = None) -> Frame:
        """The next frame; ``TimeoutError`` at ``deadline`` (a ``time.monotonic()`` instant;
        None blocks), :class:`PeerClosed` on EOF, :class:`FrameTooLarge` over ``cap``."""
        limit = self.cap if cap is None else cap
        buf = self.buf
        while True:
            if len(buf) >= _HEADER_SIZE:
                size, ftype, seq = HEADER.unpack_from(buf)
                if size > limit:
                    raise FrameTooLarge(ftype, size, limit)
                end = _HEADER_SIZE + size
                if len(buf) >= end:
                    payload = bytes(buf[_HEADER_SIZE:end])
                    del buf[:end]
                    return Frame(ftype, seq, payload)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("deadline passed while waiting for a frame")
                self.sock.settimeout(remaining)
            n = self.sock.recv_into(self.scratch)
            if not n:
                raise PeerClosed("peer closed the channel")
            buf += self.scratch[:n]


def read_frame(sock: socket.socket, cap: int, deadline: float | None = None) -> Frame:
    """Read one frame with a throw-away reader (only where no bytes can follow it)."""
    return FrameReader(sock, cap).read(deadline)


#: What a frame may carry beyond its payload limit (envelope, DB reply wrapper).
FRAME_SLACK = 64 * 1024


def request_cap(max_response_bytes: int) -> int:
    """Largest request (and ctx.db reply) the child accepts: the caps of both sides agree."""
    return max(max_response_bytes, 1 << 20)


def check_hello(hello: Any) -> None:
    """Refuse a HELLO from another protocol version with a message that says what to do."""
    version = hello.get("protocol") if isinstance(hello, dict) else None
    if version != PROTOCOL_VERSION:
        raise SandboxError(
            "protocol_mismatch",
            f"plugin host speaks protocol {version!r}, this daemon speaks {PROTOCOL_VERSION}: "
            "the sandbox template runs other plugvisor code than the daemon; restart the "
            "daemon (or the process embedding the sandbox) after upgrading plugvisor",
            got=version,
            expected=PROTOCOL_VERSION,
        )


@dataclass(frozen=True)
class SpawnOrder:
    """One spawn request from the parent (pickled over the trusted control channel)."""

    seq: int
    protocol: int
    plugin: str
    version: str
    code_dir: str
    entrypoint: str
    profile: Any  # SecurityProfile
    data_dir: str | None  # only when the profile makes it writable
    config: dict[str, Any]
    max_response_bytes: int
    sandbox_user: str
    #: False only to run the OS layers alone (diagnostics); reported as an inactive layer.
    in_process_policy: bool = True
