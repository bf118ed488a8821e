"""The control plane: commands to the daemon and state-change events, over kombu.

Same broker setting as Celery: ``settings.broker_url`` (``amqp://`` for RabbitMQ);
empty means the embedded SQLite broker ``sqla+sqlite:///<state>/broker.sqlite`` through
kombu's SQLAlchemy transport, whose poll interval is the class attribute
``kombu.transport.sqlalchemy.Transport.polling_interval`` (a ``polling_interval``
transport option would reach ``create_engine()`` and raise ``TypeError``). The poll is a
trade-off measured by ``bench/daemon_bench.py``: each poll runs SQLAlchemy code under the
daemon's GIL: on a busy 2-core machine 5 ms polls gave a call p99 of 1.0-2.7 ms against
0.14-1.3 ms at the default 50 ms, which in turn adds up to 50 ms to a command's delivery.

Commands: ``{"id", "kind": activate|rollback|disable|enable|status, "params",
"expires_at"}`` published to the durable queue ``plugvisor.control`` (direct exchange
``plugvisor.control``, routing key ``command``) with ``reply_to`` and ``correlation_id``.
The daemon's consumer thread records each command (``Registry.record_command``; a
repeated id is answered from the record, so redelivery is harmless), applies it, stores
the outcome (``finish_command``), acks only then, and publishes the outcome
``{"id", "ok": true, "result"}`` / ``{"id", "ok": false, "error"}`` to ``reply_to``.
A command received after its ``expires_at`` (the sender's timeout: the daemon was down
or busy) is dropped unapplied and unrecorded, so "timed out" never turns into a late
surprise and a re-send with the same id still works.

Events (``plugin, kind, from, to, outcome, reason``) go to the fanout exchange
``plugvisor.events``. The daemon binds the durable queue ``plugvisor.events`` to it so
events outlive a subscriber's absence (capped at 10,000 messages on RabbitMQ, where
other subscribers bind queues of their own). kombu's SQLite transport cannot fan out
(``supports_fanout`` is false: it would drop the message), so there the daemon puts
each event straight into the ``plugvisor.events`` queue, the one subscription on the
embedded broker; :func:`fetch_events` reads it on either broker.

One installation per broker vhost: daemons sharing a vhost share ``plugvisor.control``
and would take each other's commands (the tests give each session a vhost of its own).

Fleet seam (SPEC §8): a per-host queue bound to a fanout command exchange would let
every host's daemon receive each command and acknowledge it per host; the message shape
and the idempotent command record already allow it.
"""

from __future__ import annotations

import importlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from plugvisor.core.config import Settings
from plugvisor.core.errors import ApiError, JobError, PlugvisorError, error_from_dict
from plugvisor.core.log import get_logger
from plugvisor.messaging.broker import CONNECTION_ERRORS as _CONN_ERRORS
from plugvisor.messaging.broker import FIRST_USE_RACE_ERRORS as _RACE_ERRORS
from plugvisor.messaging.broker import broker_url, connect
from plugvisor.messaging.broker import redact as _redact
from plugvisor.state.registry import Registry

__all__ = [
    "COMMAND_KINDS",
    "CONTROL_QUEUE",
    "EVENTS_EXCHANGE",
    "ControlPlane",
    "broker_url",
    "connect",
    "fetch_events",
    "outcome_result",
    "send_command",
]

_log = get_logger("plugvisor.daemon.control")

# kombu ships no type information: its classes are used as Any here, in one place.
_kombu: Any = importlib.import_module("kombu")
Connection: Any = _kombu.Connection
Consumer: Any = _kombu.Consumer
Exchange: Any = _kombu.Exchange
Producer: Any = _kombu.Producer
Queue: Any = _kombu.Queue

CONTROL_QUEUE = "plugvisor.control"
EVENTS_EXCHANGE = "plugvisor.events"
COMMAND_KINDS = frozenset({"activate", "rollback", "disable", "enable", "status"})

_control_exchange = Exchange(CONTROL_QUEUE, type="direct", durable=True)
_control_queue = Queue(
    CONTROL_QUEUE, _control_exchange, routing_key="command", durable=True
)  # fmt: skip
_events_exchange = Exchange(EVENTS_EXCHANGE, type="fanout", durable=True)
_events_queue = Queue(
    EVENTS_EXCHANGE, _events_exchange, durable=True, queue_arguments={"x-max-length": 10000}
)

#: ``(kind, params) -> result``; raises a PlugvisorError to fail the command.
CommandHandler = Callable[[str, Mapping[str, Any]], Any]


def outcome_result(outcome: Mapping[str, Any]) -> Any:
    """The result of a command outcome, or raise the typed error it carries."""
    if outcome.get("ok"):
        return outcome.get("result")
    err = outcome.get("error")
    raise error_from_dict(dict(err) if isinstance(err, Mapping) else {"code": "job.failed"})


def send_command(
    settings: Settings,
    kind: str,
    params: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    command_id: str | None = None,
) -> dict[str, Any]:
    """Send one command to the daemon and wait for its outcome ``{"id", "ok", ...}``.

    Re-sending with the same ``command_id`` is safe: the daemon answers a repeated id
    from its record. Raises ``JobError("timeout")`` when no outcome arrives in time.
    """
    if kind not in COMMAND_KINDS:
        raise ApiError("invalid_command", f"command kind {kind!r} is not one of "
                       f"{sorted(COMMAND_KINDS)}", kind=kind)  # fmt: skip
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
                        exchange=_control_exchange, routing_key="command",
                        declare=[_control_queue], reply_to=reply.name, correlation_id=cid,
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
                queues = [_events_queue]
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


class ControlPlane:
    """The daemon's consumer thread on ``plugvisor.control`` and its event publisher."""

    def __init__(self, settings: Settings, registry: Registry, handler: CommandHandler) -> None:
        self.settings = settings
        self.registry = registry
        self.handler = handler
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pub_lock = threading.Lock()
        self._pub_conn: Any = None
        self.connected = threading.Event()

    # ---- consumer ------------------------------------------------------------------------
    def prepare(self, timeout: float = 5.0) -> bool:
        """Declare the control and events queues now (bounded); False if the broker is down.

        Called before READY so senders never meet a broker whose tables or queues are
        still being created (kombu's SQLite transport races on first use).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with connect(self.settings) as conn:
                    conn.ensure_connection(max_retries=1, timeout=min(5.0, timeout))
                    channel = conn.channel()
                    _control_queue(channel).declare()
                    _events_queue(channel).declare()
                    channel.close()
                return True
            except _CONN_ERRORS as exc:
                if time.monotonic() > deadline:
                    _log.warning("control_plane_unavailable", error=str(exc).splitlines()[0])
                    return False
                self._stop.wait(0.1)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control-plane", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._consume()
                backoff = 0.5
            except _CONN_ERRORS as exc:
                self.connected.clear()
                _log.warning("control_plane_disconnected", error=str(exc), retry_in_s=backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:  # keep consuming: the daemon has no other command path
                self.connected.clear()
                _log.exception("control_plane_failed", retry_in_s=backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _consume(self) -> None:
        with connect(self.settings) as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
            channel = conn.channel()
            _events_queue(channel).declare()
            consumer = Consumer(
                channel, queues=[_control_queue], callbacks=[self._on_message],
                accept=["json"], prefetch_count=1,
            )  # fmt: skip
            with consumer:
                self.connected.set()
                _log.info("control_plane_ready", broker=_redact(broker_url(self.settings)))
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=0.5)
                    except TimeoutError:
                        continue
                    except socket.timeout:  # noqa: UP041 -- older transports raise this alias
                        continue

    def _on_message(self, body: Any, message: Any) -> None:
        received_at = time.time()
        props = message.properties
        cid = str(body.get("id") or props.get("correlation_id") or "") if isinstance(
            body, dict) else ""  # fmt: skip
        outcome: dict[str, Any]
        expires_at = body.get("expires_at") if isinstance(body, dict) else None
        if isinstance(expires_at, (int, float)) and received_at > expires_at:
            # The sender gave up waiting (daemon down, queue backlog): applying it now
            # would surprise whoever was told it timed out. Not recorded, so a re-send
            # with the same id is applied normally.
            _log.warning("control_command_expired", id=cid, kind=body.get("kind"),
                         late_s=round(received_at - expires_at, 3))  # fmt: skip
            message.ack()
            return
        if not isinstance(body, dict) or not cid or body.get("kind") not in COMMAND_KINDS:
            err = ApiError("invalid_command", "a command needs an id and a kind in "
                           f"{sorted(COMMAND_KINDS)}")  # fmt: skip
            outcome = {"id": cid, "ok": False, "error": err.to_dict()}
        else:
            kind = str(body["kind"])
            params = body.get("params") or {}
            try:
                prior = self.registry.record_command(cid, kind, params)
                if prior is not None:
                    outcome = prior
                    _log.info("control_command_repeated", id=cid, kind=kind)
                else:
                    outcome = self._apply(cid, kind, params if isinstance(params, dict) else {})
                    outcome["received_at"] = received_at  # wall clock, for latency figures
                    self.registry.finish_command(cid, outcome)
            except PlugvisorError as exc:
                # The registry could not record it (locked, unreachable): leave the message
                # unacked for redelivery; a partly applied command is re-applied idempotently.
                _log.error("control_command_unrecorded", id=cid, kind=kind, error=str(exc))
                message.requeue()
                self._stop.wait(0.5)
                return
        message.ack()  # only now: the outcome is recorded
        reply_to = props.get("reply_to")
        if reply_to:
            Producer(message.channel).publish(
                outcome, exchange="", routing_key=reply_to, correlation_id=cid,
                serializer="json", retry=True, retry_policy={"max_retries": 3},
            )  # fmt: skip

    def _apply(self, cid: str, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            result = self.handler(kind, params)
        except PlugvisorError as exc:
            _log.warning("control_command_failed", id=cid, kind=kind, code=exc.code,
                         error=exc.message)  # fmt: skip
            return {"id": cid, "ok": False, "error": exc.to_dict()}
        except Exception as exc:  # a bug must fail this command, not the control plane
            _log.exception("control_command_crashed", id=cid, kind=kind)
            err = PlugvisorError("internal", f"{kind} failed inside the daemon: {exc!r}")
            return {"id": cid, "ok": False, "error": err.to_dict()}
        _log.info("control_command_applied", id=cid, kind=kind,
                  ms=round((time.perf_counter() - t0) * 1000, 3))  # fmt: skip
        return {"id": cid, "ok": True, "result": result}

    # ---- events --------------------------------------------------------------------------
    def publish_event(self, event: Mapping[str, Any]) -> None:
        """Publish one event to the fanout exchange (thread-safe; errors are logged).

        One retry on a fresh connection: a broken connection or kombu's first-use
        queue-creation race must not lose the event.
        """
        with self._pub_lock:
            for attempt in (1, 2):
                try:
                    if self._pub_conn is None:
                        self._pub_conn = connect(self.settings)
                        self._pub_conn.ensure_connection(max_retries=1, timeout=5)
                    channel = self._pub_conn.default_channel
                    # Virtual transports without shared fanout state (the SQLite one) drop
                    # fanout publishes: there the events queue is addressed directly.
                    fanout = getattr(channel, "supports_fanout", True)
                    Producer(channel).publish(
                        dict(event), exchange=_events_exchange if fanout else "",
                        routing_key="" if fanout else EVENTS_EXCHANGE,
                        declare=[_events_queue], serializer="json", retry=True,
                        retry_policy={"max_retries": 2},
                    )  # fmt: skip
                    return
                except _CONN_ERRORS as exc:
                    if self._pub_conn is not None:
                        self._pub_conn.release()
                        self._pub_conn = None
                    if attempt == 2:
                        _log.warning("event_publish_failed", error=str(exc), kind=event.get("kind"))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._pub_lock:
            if self._pub_conn is not None:
                self._pub_conn.release()
                self._pub_conn = None
