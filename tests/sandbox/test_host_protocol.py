"""The framed protocol on its own: real socketpairs, byte-level edge cases."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from plugvisor.core.errors import SandboxError
from plugvisor.sandbox.host import _ForgedReply, _parse_reply
from plugvisor.sandbox.protocol import (
    HEADER,
    PROTOCOL_VERSION,
    FrameReader,
    FrameTooLarge,
    FrameType,
    PeerClosed,
    check_hello,
    encode_frame,
    error_envelope,
    ok_envelope,
    send_frame,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_frames_round_trip_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    send_frame(a, FrameType.CALL, 7, b'{"x":1}')
    send_frame(a, FrameType.LOG, 7, b"")
    send_frame(a, FrameType.RESULT, 8, b"y" * 200_000)  # larger than one read chunk
    reader = FrameReader(b, 1 << 20)
    first, second, third = reader.read(), reader.read(), reader.read()
    assert (first.ftype, first.seq, first.payload) == (FrameType.CALL, 7, b'{"x":1}')
    assert (second.ftype, second.payload) == (FrameType.LOG, b"")
    assert third.seq == 8 and third.payload == b"y" * 200_000


def test_frame_split_across_many_writes(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    data = encode_frame(FrameType.RESULT, 1, b"abcdef")

    def dribble() -> None:
        for i in range(len(data)):
            a.sendall(data[i : i + 1])
            time.sleep(0.001)

    writer = threading.Thread(target=dribble)
    writer.start()
    frame = FrameReader(b, 64).read(deadline=time.monotonic() + 5)
    writer.join()
    assert frame.payload == b"abcdef"


def test_cap_is_checked_before_the_payload_arrives(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.sendall(HEADER.pack(1 << 31, FrameType.RESULT, 1))  # announces 2 GiB, sends nothing
    with pytest.raises(FrameTooLarge) as err:
        FrameReader(b, 1 << 20).read(deadline=time.monotonic() + 5)
    assert err.value.size == 1 << 31 and err.value.ftype == FrameType.RESULT


def test_deadline_and_eof(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    reader = FrameReader(b, 64)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        reader.read(deadline=t0 + 0.1)
    assert time.monotonic() - t0 < 1.0
    a.sendall(HEADER.pack(10, FrameType.RESULT, 1) + b"abc")  # truncated, then EOF
    a.close()
    with pytest.raises(PeerClosed):
        reader.read(deadline=time.monotonic() + 5)


def test_hello_version_check() -> None:
    check_hello({"protocol": PROTOCOL_VERSION})
    hellos: list[object] = [{"protocol": PROTOCOL_VERSION + 1}, {}, [], None]
    for bad in hellos:
        with pytest.raises(SandboxError) as err:
            check_hello(bad)
        assert err.value.code == "sandbox.protocol_mismatch"


def test_reply_validation() -> None:
    ok = _parse_reply(ok_envelope(b'{"a":[1,2]}'))
    assert ok.error is None and ok.value == {"a": [1, 2]}
    failed = _parse_reply(error_envelope("plugin.error", "ValueError: x", type="ValueError"))
    assert failed.error is not None and failed.error.code == "plugin.error"
    assert failed.envelope.startswith(b'{"ok":false,"error":{"code":"plugin.error"')
    forged = [
        b'{"ok":true,"result":1,"ok":false}',
        b'{"ok":true,"result":NaN}',
        b'{"ok":true,"result":[1]',
        b'{"ok":false}',
        b'{"ok":false,"error":{"code":"plugin.error"},"extra":1}',
        b"\xff\xfe",
    ]
    for payload in forged:
        with pytest.raises(_ForgedReply):
            _parse_reply(payload)
