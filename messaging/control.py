"""The control plane's sending side: commands to the daemon and its events, over kombu.

Wire format. A command is ``{"id", "kind", "params", "expires_at"}``: ``kind`` and
``params`` are a :mod:`~plugvisor.messaging.commands` message (``to_dict``), published to
the durable queue ``plugvisor.control`` (direct exchange ``plugvisor.control``, routing
key ``command``) with ``reply_to`` and ``correlation_id``. The daemon
(:mod:`plugvisor.daemon.control`) records each command under its id, applies it, stores
the outcome, acks only then, and publishes the outcome ``{"id", "ok": true, "result"}`` /
``{"id", "ok": false, "error"}`` to ``reply_to``. A repeated id is answered from the
record, so a re-send (or a redelivery) is harmless. A command received after its
``expires_at`` (the sender's timeout: the daemon was down or busy) is dropped unapplied
and unrecorded, so "timed out" never turns into a late surprise and a re-send with the
same id still works.

Events (``plugin, kind, from, to, outcome, reason``) go to the fanout exchange
``plugvisor.events``. The daemon binds the durable queue ``plugvisor.events`` to it so
events outlive a subscriber's absence (capped at 10,000 messages on RabbitMQ, where other
subscribers bind queues of their own). kombu's SQLite transport cannot fan out
(``supports_fanout`` is false: it would drop the message), so there the daemon puts each
event straight into the ``plugvisor.events`` queue, the one subscription on the embedded
broker; :func:`fetch_events` reads it on either broker.

One installation per broker vhost: daemons sharing a vhost share ``plugvisor.control``
and would take each other's commands (the tests give each session a vhost of its own).
"""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

from plugvisor.core.config import Settings
from plugvisor.core.errors import JobError, error_from_dict
from plugvisor.core.log import get_logger
from plugvisor.messaging.broker import CONNECTION_ERRORS as _CONN_ERRORS
from plugvisor.messaging.broker import FIRST_USE_RACE_ERRORS as _RACE_ERRORS
from plugvisor.messaging.broker import connect
from plugvisor.messaging.commands import Command

__all__ = [
    "CONTROL_EXCHANGE",
    "CONTROL_QUEUE",
    "CONTROL_ROUTING_KEY",
    "EVENTS_EXCHANGE",
    "EVENTS_QUEUE",
    "fetch_events",
    "outcome_result",
    "send_command",
    "send_raw_command",
]

_log = get_logger("plugvisor.messaging.control")

# kombu ships no type information: its classes are used as Any here, in one place.
_kombu: Any = importlib.import_module("kombu")
Consumer: Any = _kombu.Consumer
Exchange: Any = _kombu.Exchange
Producer: Any = _kombu.Producer
Queue: Any = _kombu.Queue

CONTROL_ROUTING_KEY = "command"
#: The exchange and durable queue commands travel through (the daemon consumes the queue).
CONTROL_EXCHANGE: Any = Exchange("plugvisor.control", type="direct", durable=True)
CONTROL_QUEUE: Any = Queue(
    "plugvisor.control", CONTROL_EXCHANGE, routing_key=CONTROL_ROUTING_KEY, durable=True
)
#: Where the daemon publishes state changes, and the durable queue bound to it.
EVENTS_EXCHANGE: Any = Exchange("plugvisor.events", type="fanout", durable=True)
EVENTS_QUEUE: Any = Queue(
    "plugvisor.events", EVENTS_EXCHANGE, durable=True, queue_arguments={"x-max-length": 10000}
)


def outcome_result(outcome: Mapping[str, Any]) -> Any:
    """The result of a command outcome, or raise the typed error it carries."""
    if outcome.get("ok"):
        return outcome.get("result")
    err = outcome.get("error")
    raise error_from_dict(dict(err) if isinstance(err, Mapping) else {"code": "job.failed"})


def send_command(
    settings: Settings,
    command: Command,
    timeout: float = 30.0,
    command_id: str | None = None,
) -> dict[str, Any]:
    """Send one command to the daemon and wait for its outcome ``{"id", "ok", ...}``.

    Re-sending with the same ``command_id`` is safe: the daemon answers a repeated id
    from its record. Raises ``JobError("timeout")`` when no outcome arrives in time.
    """
    return send_raw_command(settings, command.kind, command.to_dict(), timeout, command_id)


def send_raw_command(
    settings: Settings,
    kind: str,
    params: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    command_id: str | None = None,
) -> dict[str, Any]:
    """:func:`send_command` with ``kind`` and ``params`` as they are, unchecked.

    The daemon checks every command it receives (the broker is not trusted to carry
    only well-formed ones); this is how its refusals are exercised.
    """
    cid = command_id or uuid.uuid4().hex
    reply = Queue(f"plugvisor.reply.{cid}", durable=False, auto_delete=True)
    got: dict[str, Any] = {}

    def on_reply(body: Any, message: Any) -> None:
        message.ack()
        if message.properties.get("correlation_id") == cid and isinstance(body, dict):
            got.update(body)

    deadline = time.monotonic() + timeout

    def await_reply(conn: Any, channel: Any) -> None:
        with Consumer(channel, queues=[reply], callbacks=[on_reply], accept=["json"]):
            while not got:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise JobError(
                        "timeout", f"no outcome for {kind} command {cid} within {timeout} s "
                        "(is the daemon running?)", command_id=cid,
                    )  # fmt: skip
                try:
                    conn.drain_events(timeout=min(remaining, 1.0))
                except TimeoutError:
                    continue

    for attempt in range(3):
        published = False
        try:
            with connect(settings) as conn:
                conn.ensure_connection(max_retries=3, timeout=min(5.0, timeout))
                channel = conn.channel()
                try:
                    reply(channel).declare()
                    Producer(channel).publish(
                        {"id": cid, "kind": kind, "params": dict(params or {}),
                         "expires_at": time.time() + timeout},
                        exchange=CONTROL_EXCHANGE, routing_key=CONTROL_ROUTING_KEY,
                        declare=[CONTROL_QUEUE], reply_to=reply.name, correlation_id=cid,
                        serializer="json", delivery_mode=2,
                    )  # fmt: skip
                    published = True
                    await_reply(conn, channel)
                finally:
                    try:
                        reply(channel).delete()
                    except _CONN_ERRORS as exc:
                        _log.debug("reply_queue_delete_failed", error=str(exc))
                    channel.close()
            return got
        except _RACE_ERRORS as exc:
            # kombu's SQLite transport creates a queue's row on first use without handling
            # a concurrent creator (UNIQUE constraint): nothing was sent yet, so try again.
            if published or attempt == 2:
                raise
            _log.info("send_command_retry", id=cid, error=str(exc).splitlines()[0])
    return got


def fetch_events(
    settings: Settings, limit: int = 100, timeout: float = 1.0
) -> list[dict[str, Any]]:
    """Take up to ``limit`` events from the durable ``plugvisor.events`` queue (oldest first).

    Returns when ``limit`` events were read or none arrived for ``timeout`` seconds.
    """
    events: list[dict[str, Any]] = []

    def on_event(body: Any, message: Any) -> None:
        message.ack()
        if isinstance(body, dict):
            events.append(body)

    for attempt in range(3):
        try:
            with connect(settings) as conn:
                conn.ensure_connection(max_retries=3, timeout=5)
                channel = conn.channel()
                queues = [EVENTS_QUEUE]
                with Consumer(channel, queues=queues, callbacks=[on_event], accept=["json"]):
                    while len(events) < limit:
                        before = len(events)
                        try:
                            conn.drain_events(timeout=timeout)
                        except TimeoutError:
                            break
                        if len(events) == before:
                            break
                channel.close()
            return events
        except _RACE_ERRORS:
            if events or attempt == 2:  # see send_command: only a first-use race is retried
                raise
    return events
