"""The call-socket wire format and sd_notify, over real sockets."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
from pathlib import Path

import pytest

from plugvisor.client import parse_envelope
from plugvisor.core.envelope import error_envelope
from plugvisor.core.errors import BudgetExceeded, PluginRuntimeError
from plugvisor.daemon.notify import Notifier, watchdog_interval
from plugvisor.messaging.calls import (
    FrameStream,
    ProtocolError,
    decode_request,
    encode_request,
    recv_frame,
    send_frame,
)


def test_request_roundtrip_over_a_socketpair():
    a, b = socket.socketpair()
    with a, b:
        payload = encode_request("grëeter", "req-1", b'{"x": [1, 2]}')
        send_frame(a, payload)
        send_frame(a, b"")
        frame = recv_frame(b)
        assert frame is not None
        assert decode_request(frame) == ("grëeter", "req-1", b'{"x": [1, 2]}')
        assert recv_frame(b) == b""
        a.close()
        assert recv_frame(b) is None  # clean end of stream between frames


def test_broken_frames_are_refused():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", 1 << 30))
        with pytest.raises(ProtocolError, match="exceeds"):
            recv_frame(b, max_bytes=1024)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", 10) + b"abc")
        a.close()
        with pytest.raises(ProtocolError, match="inside a frame"):
            recv_frame(b)
    with pytest.raises(ProtocolError):
        decode_request(b"\x00\x09ab")


def test_frame_stream_splits_coalesced_and_fragmented_frames():
    a, b = socket.socketpair()
    with a, b:
        frames = FrameStream(b, max_bytes=200_000)
        big = bytes(range(256)) * 600  # 153,600 bytes: several recv chunks
        # Three frames in one write, then one frame a byte at a time.
        a.sendall(b"".join(struct.pack(">I", len(p)) + p for p in (b"one", b"", big)))
        assert [frames.read(), frames.read(), frames.read()] == [b"one", b"", big]
        for byte in struct.pack(">I", 4) + b"four":
            a.send(bytes([byte]))
        assert frames.read() == b"four"
        a.sendall(struct.pack(">I", 200_001))
        with pytest.raises(ProtocolError, match="exceeds"):
            frames.read()
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", 3) + b"abc" + struct.pack(">I", 9) + b"par")
        a.close()
        frames = FrameStream(b)
        assert frames.read() == b"abc"
        with pytest.raises(ProtocolError, match="inside a frame"):
            frames.read()
    a, b = socket.socketpair()
    with a, b:
        a.close()
        assert FrameStream(b).read() is None  # clean end between frames


def test_envelopes_become_results_or_typed_errors():
    assert parse_envelope(b'{"ok":true,"result":[1]}') == [1]
    with pytest.raises(BudgetExceeded) as exc:
        parse_envelope(error_envelope("budget.time", "too slow"))
    assert exc.value.code == "budget.time"
    with pytest.raises(PluginRuntimeError) as exc2:
        parse_envelope(b"not json")
    assert exc2.value.code == "plugin.protocol"


def test_notifier_sends_ready_and_watchdog_pings():
    d = Path(tempfile.mkdtemp())
    path = d / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == pytest.approx(0.05)
    assert watchdog_interval({"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}) is None
    n = Notifier(env)
    assert n.ready("2/2 plugins running")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2/2 plugins running"
    healthy = threading.Event()
    healthy.set()
    n.start_watchdog(healthy.is_set)
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.close()
    sock.close()
    assert not Notifier({}).ready()  # outside systemd: a no-op
