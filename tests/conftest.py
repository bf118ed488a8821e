"""Session fixtures shared by every suite.

``rabbitmq_url``: a RabbitMQ broker on 127.0.0.1 for the tests that must run on both
brokers (daemon control plane, worker pipeline), with a vhost of its own per session. It
reuses a broker already listening on 127.0.0.1:5672, otherwise starts Debian's
``rabbitmq-server`` on loopback only (the settings of PLATFORM-NOTES); the last session
using a broker a fixture started stops it, and the epmd it started. Without
``rabbitmq-server`` installed, the tests that ask for it are skipped LOUDLY
(``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

_AMQP_PORT = 5672
_NODE = "rabbit@localhost"
_USERS = Path("/tmp/plugvisor-rabbitmq-users")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _pids_named(name: str) -> set[int]:
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.add(int(entry.name))
            except OSError:
                continue  # the process exited meanwhile
    return pids


@contextlib.contextmanager
def _users_lock() -> Iterator[Path]:
    _USERS.mkdir(mode=0o700, exist_ok=True)
    with open(_USERS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield _USERS


def _live_users(users: Path) -> list[Path]:
    live = []
    for entry in users.glob("user-*"):
        if Path(f"/proc/{entry.name.removeprefix('user-')}").exists():
            live.append(entry)
        else:
            entry.unlink(missing_ok=True)  # a session that died without tearing down
    return live


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-n", _NODE, *args], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """``amqp://guest:guest@127.0.0.1:5672/<vhost>``: a broker on loopback, a vhost per session.

    Concurrent test sessions share one broker: each gets its own vhost (so their daemons
    never consume each other's commands) and the last session out stops a broker that a
    fixture started (sessions register under /tmp/plugvisor-rabbitmq-users).
    """
    me = _USERS / f"user-{os.getpid()}"
    with _users_lock() as users:
        me.touch()
        if not _port_open(_AMQP_PORT):
            try:
                _start_broker(users)
            except BaseException:  # skipped or failed: this session is no user
                me.unlink(missing_ok=True)
                raise
    vhost = f"pv-{uuid.uuid4().hex[:12]}"
    made = (
        _ctl("add_vhost", vhost).returncode == 0
        and _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*").returncode == 0
    )
    if not made:
        warnings.warn("rabbitmqctl could not add a vhost: using the default vhost '/'",
                      stacklevel=1)  # fmt: skip
    try:
        yield f"amqp://guest:guest@127.0.0.1:{_AMQP_PORT}/{vhost if made else ''}"
    finally:
        if made:
            _ctl("delete_vhost", vhost)
        with _users_lock() as users:
            me.unlink(missing_ok=True)
            marker = users / "started-by-fixture"
            if marker.exists() and not _live_users(users):
                _stop_broker(marker)


def _start_broker(users: Path) -> None:
    server = shutil.which("rabbitmq-server") or (
        "/usr/sbin/rabbitmq-server" if os.path.exists("/usr/sbin/rabbitmq-server") else None
    )
    if server is None:
        pytest.skip(
            "!!! RabbitMQ tests SKIPPED: rabbitmq-server is not installed "
            "(scripts/test.sh installs it: apt-get install rabbitmq-server) !!!"
        )
    epmd_before = _pids_named("epmd")
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": _NODE,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(_AMQP_PORT),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    subprocess.run([server, "-detached"], env=env, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while not _port_open(_AMQP_PORT):
        if time.monotonic() > deadline:
            pytest.fail(f"rabbitmq-server did not open 127.0.0.1:{_AMQP_PORT} within 60 s "
                        "(logs in /var/log/rabbitmq)")  # fmt: skip
        time.sleep(0.2)
    # Only the epmd this fixture started is stopped later.
    epmd = sorted(_pids_named("epmd") - epmd_before)
    (users / "started-by-fixture").write_text(" ".join(map(str, epmd)))


def _stop_broker(marker: Path) -> None:
    _ctl("stop")
    for pid in (int(p) for p in marker.read_text().split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    marker.unlink(missing_ok=True)
