"""Session fixtures shared by every suite.

``rabbitmq_url``: a RabbitMQ broker on 127.0.0.1 for the tests that must run on both
brokers (daemon control plane, worker pipeline). It reuses a broker already listening on
127.0.0.1:5672, otherwise starts Debian's ``rabbitmq-server`` on loopback only (the
settings of PLATFORM-NOTES) and stops it, and the epmd it started, at the end. Without
``rabbitmq-server`` installed, the tests that ask for it are skipped LOUDLY
(``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_AMQP_PORT = 5672
_NODE = "rabbit@localhost"


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


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """``amqp://guest:guest@127.0.0.1:5672//`` of a running broker (started if needed)."""
    url = f"amqp://guest:guest@127.0.0.1:{_AMQP_PORT}//"
    if _port_open(_AMQP_PORT):
        yield url  # someone else's broker: use it, never stop it
        return
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
    try:
        yield url
    finally:
        subprocess.run(["rabbitmqctl", "-n", _NODE, "stop"], env=env, timeout=60, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        for pid in _pids_named("epmd") - epmd_before:  # only the epmd this fixture started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
