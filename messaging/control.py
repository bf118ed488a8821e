"""The control plane's sending side: commands to the daemons and their events, over kombu.

Wire format. A command is ``{"id", "kind", "params", "expires_at"}``: ``kind`` and
``params`` are a :mod:`~plugvisor.messaging.commands` message (``to_dict``), published to
the topic exchange ``plugvisor.commands`` with ``reply_to`` and ``correlation_id``.

Addressing. Every daemon consumes its own durable queue ``plugvisor.control.<host id>``
(:func:`host_queue`), bound with the routing keys ``host.<host id>`` and ``all``: a
command goes to one host, to a list of hosts (one publish each), or to every host (one
publish with ``all``). On one machine -- the embedded default -- that is the one daemon
of ``settings.host``. The sender declares the queues of the hosts it addresses: kombu's
SQLite transport keeps bindings in each process's memory, and on RabbitMQ the declare
of an existing queue is a no-op.

Each daemon (:mod:`plugvisor.daemon.control`) records each command under (id, its host
id), applies it, stores the outcome, acks only then, and publishes the outcome
``{"id", "host", "ok": true, "result"}`` / ``{"id", "host", "ok": false, "error"}`` to
``reply_to``; the sender gathers one outcome per addressed host. A repeated id is
answered from that host's record, so a re-send (or a redelivery) is harmless. A command
received after its ``expires_at`` (the sender's timeout: the daemon was down or busy) is
dropped unapplied and unrecorded, so "timed out" never turns into a late surprise and a
re-send with the same id still works; RabbitMQ drops it from the queue of a host that
never came back (the message's TTL).

Events (``plugin, kind, from, to, outcome, reason``) go to the fanout exchange
``plugvisor.events``. The daemon binds the durable queue ``plugvisor.events`` to it so
events outlive a subscriber's absence (capped at 10,000 messages on RabbitMQ, where other
subscribers bind queues of their own). kombu's SQLite transport cannot fan out
(``supports_fanout`` is false: it would drop the message), so there the daemon puts each
event straight into the ``plugvisor.events`` queue, the one subscription on the embedded
broker; :func:`fetch_events` reads it on either broker.
"""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from plugvisor.core.config import Settings
from plugvisor.core.errors import JobError, error_from_dict
from plugvisor.core.log import get_logger
from plugvisor.messaging.broker import CONNECTION_ERRORS as _CONN_ERRORS
from plugvisor.messaging.broker import FIRST_USE_RACE_ERRORS as _RACE_ERRORS
from plugvisor.messaging.broker import connect
from plugvisor.messaging.commands import Command

__all__ = [
    "ALL_HOSTS",
    "COMMAND_EXCHANGE",
    "EVENTS_EXCHANGE",
    "EVENTS_QUEUE",
    "broadcast_command",
    "fetch_events",
    "host_queue",
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
binding: Any = _kombu.binding

#: The exchange every command is published to; each host's queue is bound to it.
COMMAND_EXCHANGE: Any = Exchange("plugvisor.commands", type="topic", durable=True)
#: The routing key that reaches every host (each also has ``host.<host id>``).
ALL_HOSTS = "all"


def host_queue(host_id: str) -> Any:
    """The durable command queue of ``host_id``'s daemon (its id and ``all`` route to it)."""
    return Queue(
        f"plugvisor.control.{host_id}",
        bindings=[
            binding(COMMAND_EXCHANGE, routing_key=f"host.{host_id}"),
            binding(COMMAND_EXCHANGE, routing_key=ALL_HOSTS),
        ],
        durable=True,
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
    *,
    host: str | None = None,
) -> dict[str, Any]:
    """Send one command to one daemon (default: this host's) and wait for its outcome.

    The outcome is ``{"id", "host", "ok", ...}``. Re-sending with the same
    ``command_id`` is safe: the daemon answers a repeated id from its record. Raises
    ``JobError("timeout")`` when no outcome arrives in time.
    """
    return send_raw_command(
        settings, command.kind, command.to_dict(), timeout, command_id, host=host
    )


def send_raw_command(
    settings: Settings,
    kind: str,
    params: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    command_id: str | None = None,
    *,
    host: str | None = None,
) -> dict[str, Any]:
    """:func:`send_command` with ``kind`` and ``params`` as they are, unchecked.

    The daemon checks every command it receives (the broker is not trusted to carry
    only well-formed ones); this is how its refusals are exercised.
    """
    target = host or settings.host
    cid = command_id or uuid.uuid4().hex
    got = _exchange(settings, kind, params, timeout, cid=cid, hosts=[target], every=False)
    if target not in got:
        raise _no_outcome(kind, cid, target, timeout)
    return got[target]


def broadcast_command(
    settings: Settings,
    command: Command,
    hosts: Sequence[str] | None = None,
    timeout: float = 30.0,
    command_id: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Send ``command`` to several daemons at once; each one's outcome, by host id.

    ``hosts`` None means every host: one publish routed by ``all``, waited for from the
    hosts the registry has heard from within ``host_down_after_s`` (this host alone
    when none has registered yet). A host that does not answer within ``timeout`` gets
    an outcome with the error ``job.timeout``; the command stays applicable there only
    until it expires.
    """
    cid = command_id or uuid.uuid4().hex
    targets = list(dict.fromkeys(hosts)) if hosts is not None else _up_hosts(settings)
    got = _exchange(settings, command.kind, command.to_dict(), timeout, cid=cid, hosts=targets,
                    every=hosts is None)  # fmt: skip
    for host in targets:
        if host not in got:
            err = _no_outcome(command.kind, cid, host, timeout)
            got[host] = {"id": cid, "host": host, "ok": False, "error": err.to_dict()}
    return {h: got[h] for h in targets}


def _no_outcome(kind: str, cid: str, host: str, timeout: float) -> JobError:
    return JobError(
        "timeout", f"no outcome for {kind} command {cid} from host {host} within {timeout} s "
        "(is its daemon running?)", command_id=cid, host=host,
    )  # fmt: skip


def _up_hosts(settings: Settings) -> list[str]:
    from plugvisor.state.registry import Registry  # noqa: PLC0415 -- only a broadcast reads it

    with Registry.open(settings) as registry:
        hosts = registry.up_hosts(down_after_s=settings.host_down_after_s)
    return hosts or [settings.host]


def _exchange(
    settings: Settings,
    kind: str,
    params: Mapping[str, Any] | None,
    timeout: float,
    *,
    cid: str,
    hosts: Sequence[str],
    every: bool,
) -> dict[str, dict[str, Any]]:
    """Publish one command (to every host, or to each of ``hosts``); outcomes by host.

    Returns when each of ``hosts`` answered or ``timeout`` passed (missing hosts are
    absent from the result).
    """
    reply = Queue(f"plugvisor.reply.{cid}", durable=False, auto_delete=True)
    queues = [host_queue(h) for h in hosts]
    got: dict[str, dict[str, Any]] = {}
    wanted = set(hosts)

    def on_reply(body: Any, message: Any) -> None:
        message.ack()
        if message.properties.get("correlation_id") == cid and isinstance(body, dict):
            got[str(body.get("host") or "")] = body

    deadline = time.monotonic() + timeout

    def await_replies(conn: Any, channel: Any) -> None:
        with Consumer(channel, queues=[reply], callbacks=[on_reply], accept=["json"]):
            while not wanted <= got.keys():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    conn.drain_events(timeout=min(remaining, 1.0))
                except TimeoutError:
                    continue

    body = {"id": cid, "kind": kind, "params": dict(params or {}),
            "expires_at": time.time() + timeout}  # fmt: skip
    routes = [ALL_HOSTS] if every else [f"host.{h}" for h in hosts]
    for attempt in range(3):
        published = False
        try:
            with connect(settings) as conn:
                conn.ensure_connection(max_retries=3, timeout=min(5.0, timeout))
                channel = conn.channel()
                try:
                    reply(channel).declare()
                    for queue in queues:
                        queue(channel).declare()
                    producer = Producer(channel)
                    for route in routes:
                        producer.publish(
                            body, exchange=COMMAND_EXCHANGE, routing_key=route,
                            reply_to=reply.name, correlation_id=cid, serializer="json",
                            delivery_mode=2, expiration=timeout,
                        )  # fmt: skip
                        published = True
                    await_replies(conn, channel)
                finally:
                    try:
                        reply(channel).delete()
                    except _CONN_ERRORS as exc:
                        _log.debug("reply_queue_delete_failed", error=str(exc))
                    channel.close()
            return {h: o for h, o in got.items() if h in wanted}
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
