"""The call-socket wire format: :mod:`plugvisor.client` sends, the daemon answers.

Kept free of heavy imports (only ``struct`` and ``socket``) because ``plugvisor call``
and every host application import it.

Every frame is a 4-byte big-endian length followed by that many bytes.

* request payload:  ``u16 name_len | name (UTF-8) | u16 id_len | request id (UTF-8) | JSON``
* response payload: the envelope bytes, ``{"ok": true, "result": ...}`` or
  ``{"ok": false, "error": {"code": ..., "message": ...}}``, passed through from the
  plugin host unchanged.

The JSON request bytes are never parsed by the daemon: the plugin host parses them.
"""

from __future__ import annotations

import socket
import struct

__all__ = [
    "MAX_FRAME_BYTES",
    "FrameStream",
    "ProtocolError",
    "decode_request",
    "encode_request",
    "recv_frame",
    "send_frame",
]

#: Largest frame either side accepts; a bigger length prefix means a broken peer. Plugin
#: responses are capped at ``max_response_bytes`` (4 MiB by default) plus the envelope.
MAX_FRAME_BYTES = 64 * 1024 * 1024

_LEN = struct.Struct(">I")
_SHORT = struct.Struct(">H")


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame (the connection must be dropped)."""


def send_frame(sock: socket.socket, payload: bytes) -> None:
    """Send one length-prefixed frame (one ``sendall`` so small frames are one segment)."""
    sock.sendall(_LEN.pack(len(payload)) + payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError(f"connection closed inside a frame ({len(buf)}/{n} bytes)")
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES) -> bytes | None:
    """Receive one frame; ``None`` on a clean end of stream between frames."""
    head = _recv_exact(sock, _LEN.size)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size > max_bytes:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {max_bytes}")
    if size == 0:
        return b""
    body = _recv_exact(sock, size)
    if body is None:
        raise ProtocolError("connection closed after a frame header")
    return body


class FrameStream:
    """Buffered frames of one stream connection: one ``recv`` usually yields a whole frame
    (:func:`recv_frame` needs two, header then body, as it may not read past its frame).

    The buffer never holds more than one frame of at most ``max_bytes`` plus one chunk,
    checked on the length prefix before the body is read. After :class:`ProtocolError`
    the stream is out of step: drop the connection.
    """

    __slots__ = ("buf", "max_bytes", "scratch", "sock")

    def __init__(self, sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self.sock = sock
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.scratch = memoryview(bytearray(65536))

    def read(self) -> bytes | None:
        """The next frame's payload; ``None`` on a clean end of stream between frames."""
        buf = self.buf
        while True:
            if len(buf) >= _LEN.size:
                (size,) = _LEN.unpack_from(buf)
                if size > self.max_bytes:
                    raise ProtocolError(
                        f"frame of {size} bytes exceeds the limit of {self.max_bytes}"
                    )
                end = _LEN.size + size
                if len(buf) >= end:
                    payload = bytes(buf[_LEN.size : end])
                    del buf[:end]
                    return payload
            n = self.sock.recv_into(self.scratch)
            if not n:
                if buf:
                    raise ProtocolError(f"connection closed inside a frame ({len(buf)} bytes)")
                return None
            buf += self.scratch[:n]


def encode_request(name: str, request_id: str, body: bytes) -> bytes:
    """Build a request payload (without the frame length)."""
    n = name.encode("utf-8")
    r = request_id.encode("utf-8")
    if len(n) > 0xFFFF or len(r) > 0xFFFF:
        raise ValueError("plugin name and request id must each be under 64 KiB")
    return b"".join((_SHORT.pack(len(n)), n, _SHORT.pack(len(r)), r, body))


def decode_request(payload: bytes) -> tuple[str, str, bytes]:
    """Split a request payload into ``(name, request_id, json_bytes)``."""
    try:
        (nlen,) = _SHORT.unpack_from(payload, 0)
        name = payload[2 : 2 + nlen].decode("utf-8")
        off = 2 + nlen
        (rlen,) = _SHORT.unpack_from(payload, off)
        rid = payload[off + 2 : off + 2 + rlen].decode("utf-8")
        off += 2 + rlen
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed request header: {exc}") from exc
    if off > len(payload):
        raise ProtocolError("request header longer than the frame")
    return name, rid, payload[off:]
