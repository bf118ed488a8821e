"""A RabbitMQ on loopback for the test suite and the benchmarks (Debian's rabbitmq-server).

Started the way PLATFORM-NOTES measured to work: node ``rabbit@localhost``, AMQP and the
clustering port on 127.0.0.1 only, polled for its port (``rabbitmqctl await_startup``
fails right after ``-detached``). Processes that use it register under
:data:`USERS_DIR`, so a pytest session and a bench run share one broker and the last one
out stops a broker that one of them started (and the epmd it started), never one that
was running before.

::

    with loopback_rabbitmq() as url:      # None when rabbitmq-server is not installed
        ...                               # amqp://guest:guest@127.0.0.1:5672/<own vhost>
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
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "AMQP_PORT",
    "USERS_DIR",
    "BrokerUnavailable",
    "loopback_rabbitmq",
    "port_open",
    "rabbitmqctl",
]

AMQP_PORT = 5672
NODE = "rabbit@localhost"
USERS_DIR = Path("/tmp/plugvisor-rabbitmq-users")


class BrokerUnavailable(Exception):
    """rabbitmq-server is not installed, or did not come up (the message says which)."""


def port_open(port: int = AMQP_PORT) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    """``rabbitmqctl -n rabbit@localhost ARGS`` (not checked; ~0.7 s a call)."""
    return subprocess.run(["rabbitmqctl", "-n", NODE, *args], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


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
    USERS_DIR.mkdir(mode=0o700, exist_ok=True)
    with open(USERS_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield USERS_DIR


def _live_users(users: Path) -> list[Path]:
    live = []
    for entry in users.glob("user-*"):
        if Path(f"/proc/{entry.name.split('-')[1]}").exists():  # user-<pid>-<tag>
            live.append(entry)
        else:
            entry.unlink(missing_ok=True)  # a process that died without tearing down
    return live


def _start(users: Path) -> None:
    server = shutil.which("rabbitmq-server") or (
        "/usr/sbin/rabbitmq-server" if os.path.exists("/usr/sbin/rabbitmq-server") else None
    )
    if server is None:
        raise BrokerUnavailable(
            "rabbitmq-server is not installed (scripts/test.sh installs it: "
            "apt-get install rabbitmq-server)"
        )
    epmd_before = _pids_named("epmd")
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": NODE,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(AMQP_PORT),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    subprocess.run([server, "-detached"], env=env, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while not port_open(AMQP_PORT):
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"rabbitmq-server did not open 127.0.0.1:{AMQP_PORT} within "
                                    "60 s (logs in /var/log/rabbitmq)")  # fmt: skip
        time.sleep(0.2)
    # Only the epmd started here is stopped later.
    epmd = sorted(_pids_named("epmd") - epmd_before)
    (users / "started-by-us").write_text(" ".join(map(str, epmd)))


def _stop(marker: Path) -> None:
    rabbitmqctl("stop")
    for pid in (int(p) for p in marker.read_text().split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    marker.unlink(missing_ok=True)


@contextlib.contextmanager
def loopback_rabbitmq(vhost_prefix: str = "pv") -> Iterator[str]:
    """A broker on 127.0.0.1 (started if none listens) and a vhost of this caller's own.

    Raises :class:`BrokerUnavailable` when there is none and none can be started. Falls
    back to the default vhost when ``rabbitmqctl`` cannot add one (a broker not ours).
    """
    me = USERS_DIR / f"user-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    with _users_lock() as users:
        me.touch()
        if not port_open(AMQP_PORT):
            try:
                _start(users)
            except BaseException:  # failed: this caller is no user
                me.unlink(missing_ok=True)
                raise
    vhost = f"{vhost_prefix}-{uuid.uuid4().hex[:12]}"
    made = (
        rabbitmqctl("add_vhost", vhost).returncode == 0
        and rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*").returncode == 0
    )
    try:
        yield f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}/{vhost if made else ''}"
    finally:
        if made:
            rabbitmqctl("delete_vhost", vhost)
        with _users_lock() as users:
            me.unlink(missing_ok=True)
            marker = users / "started-by-us"
            if marker.exists() and not _live_users(users):
                _stop(marker)
