"""The control plane's consuming side: the daemon's command consumer and event publisher.

What a command and an event look like on the wire, and how they are sent, is
:mod:`plugvisor.messaging.control`; here the daemon takes commands off its host's queue
``plugvisor.control.<host id>`` (routed there by ``host.<host id>`` or ``all``), parses
each into its :mod:`~plugvisor.messaging.commands` class, records it under (id, host)
(``Registry.record_command``: a repeated id is answered from the record, so redelivery
is harmless), applies it through the handler registered for its class, stores the
outcome (``finish_command``), acks only then, and replies to ``reply_to`` with its host
id in the outcome.

The embedded broker's poll interval (``broker_polling_interval``) is a trade-off for the
daemon: each poll runs SQLAlchemy code under the daemon's GIL, against the delay it adds
to a command's delivery. ``bench/daemon_bench.py`` measures it.
"""

from __future__ import annotations

import importlib
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from plugvisor.core.config import Settings
from plugvisor.core.errors import ApiError, PlugvisorError
from plugvisor.core.log import get_logger
from plugvisor.messaging.broker import CONNECTION_ERRORS as _CONN_ERRORS
from plugvisor.messaging.broker import broker_url, connect
from plugvisor.messaging.broker import redact as _redact
from plugvisor.messaging.commands import COMMANDS, Command
from plugvisor.messaging.control import EVENTS_EXCHANGE, EVENTS_QUEUE, Producer, host_queue
from plugvisor.state.registry import Registry

__all__ = ["CommandHandlers", "ControlPlane"]

_log = get_logger("plugvisor.daemon.control")

# kombu ships no type information: its classes are used as Any here, in one place.
_kombu: Any = importlib.import_module("kombu")
Consumer: Any = _kombu.Consumer

#: The handler of each command class: ``command -> result``; a PlugvisorError fails it.
CommandHandlers = Mapping[type[Command], Callable[[Any], Any]]


class ControlPlane:
    """The daemon's consumer thread on its host's command queue and its event publisher."""

    def __init__(self, settings: Settings, registry: Registry, handlers: CommandHandlers) -> None:
        missing = sorted(cls.kind for cls in COMMANDS if cls not in handlers)
        if missing:  # a command class without a handler is a bug: refuse at start
            raise ValueError(f"no daemon handler for command kinds {missing}")
        self.settings = settings
        self.registry = registry
        self.handlers = handlers
        self.host = settings.host
        self.queue = host_queue(self.host)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pub_lock = threading.Lock()
        self._pub_conn: Any = None
        self.connected = threading.Event()

    # ---- consumer ------------------------------------------------------------------------
    def prepare(self, timeout: float = 5.0) -> bool:
        """Declare the command and events queues now (bounded); False if the broker is down.

        Called before READY so senders never meet a broker whose tables or queues are
        still being created (kombu's SQLite transport races on first use).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with connect(self.settings) as conn:
                    conn.ensure_connection(max_retries=1, timeout=min(5.0, timeout))
                    channel = conn.channel()
                    self.queue(channel).declare()
                    EVENTS_QUEUE(channel).declare()
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
            EVENTS_QUEUE(channel).declare()
            consumer = Consumer(
                channel, queues=[self.queue], callbacks=[self._on_message],
                accept=["json"], prefetch_count=1,
            )  # fmt: skip
            with consumer:
                self.connected.set()
                _log.info("control_plane_ready", broker=_redact(broker_url(self.settings)),
                          queue=self.queue.name)  # fmt: skip
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
        if not isinstance(body, dict) or not cid or body.get("kind") not in COMMANDS.kinds():
            err = ApiError("invalid_command", "a command needs an id and a kind in "
                           f"{sorted(COMMANDS.kinds())}")  # fmt: skip
            outcome = {"id": cid, "host": self.host, "ok": False, "error": err.to_dict()}
        else:
            kind = str(body["kind"])
            params = body.get("params") or {}
            try:
                prior = self.registry.record_command(cid, self.host, kind, params)
                if prior is not None:
                    outcome = prior
                    _log.info("control_command_repeated", id=cid, kind=kind)
                else:
                    outcome = self._apply(cid, kind, params if isinstance(params, dict) else {})
                    outcome["received_at"] = received_at  # wall clock, for latency figures
                    self.registry.finish_command(cid, self.host, outcome)
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
            command = COMMANDS.parse(kind, params)  # ApiError naming the field
            result = self.handlers[type(command)](command)
        except PlugvisorError as exc:
            _log.warning("control_command_failed", id=cid, kind=kind, code=exc.code,
                         error=exc.message)  # fmt: skip
            return {"id": cid, "host": self.host, "ok": False, "error": exc.to_dict()}
        except Exception as exc:  # a bug must fail this command, not the control plane
            _log.exception("control_command_crashed", id=cid, kind=kind)
            err = PlugvisorError("internal", f"{kind} failed inside the daemon: {exc!r}")
            return {"id": cid, "host": self.host, "ok": False, "error": err.to_dict()}
        _log.info("control_command_applied", id=cid, kind=kind,
                  ms=round((time.perf_counter() - t0) * 1000, 3))  # fmt: skip
        return {"id": cid, "host": self.host, "ok": True, "result": result}

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
                        dict(event), exchange=EVENTS_EXCHANGE if fanout else "",
                        routing_key="" if fanout else EVENTS_QUEUE.name,
                        declare=[EVENTS_QUEUE], serializer="json", retry=True,
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
