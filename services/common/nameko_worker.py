"""The production worker process: a thin nameko service around a service's subscriptions, timers and outbox.

This is the only module that imports nameko (and, through it, eventlet). The process that uses it
must call ``eventlet.monkey_patch()`` before importing anything else (``lianxin worker``, the
nameko test session); the api process never imports this module (DESIGN §4).

The handlers are the plain functions of ``ServiceParts``, shared with the in-process bus; the class
built here only adapts them. A worker that ever needs gRPC must make unary calls through
``eventlet.tpool.execute`` and catch ``grpc.RpcError`` (a grpcio client blocks the hub, and an
escaping exception kills the container).

Failed handlers and acknowledgement. nameko 2.14 acknowledges an event message after the worker
finishes *even when the handler raised*, unless the entrypoint has ``requeue_on_error=True``; then
the message is rejected with requeue and RabbitMQ redelivers it (at the head of its queue). Every
handler here uses ``requeue_on_error=True`` so a transient failure (database restart, lock
timeout) never loses an event, and waits ``handler_retry_delay_s`` before re-raising so a handler
that keeps failing retries at a bounded rate instead of spinning. Redelivery is harmless because
handlers are idempotent (``services.common.inbox.consume_once``). A poison event therefore
retries forever, visible in the logs; it is not dropped silently.

Losing the broker mid-acknowledgement. nameko 2.14 acknowledges (or requeues) on the worker's
connection after the handler returns, and only tolerates ``amqp.exceptions.ConnectionError`` there;
when RabbitMQ restarts, the socket write fails with ``ConnectionResetError``/``BrokenPipeError``
instead, which kills the whole container (the process exits 1; ``lianxin faults`` rabbitmq-restart
found it). ``_EventHandler`` swallows an ``OSError`` from the acknowledgement: the broker requeues
every unacknowledged message of a dead connection anyway, and the redelivery is deduplicated by
the consumer's inbox, so nothing is lost or doubled, and the queue consumer reconnects.

Undeclared queues. An event-handler queue exists once its consumer's worker has started once
(durable, ``reliable_delivery=True``); events dispatched before any consumer ever declared its
queue are dropped by RabbitMQ. ``lianxin migrate`` declares every queue ahead (``declare_queues``);
without it, start (or deploy) consumers' workers before producers' relays.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import eventlet
from eventlet import patcher
from eventlet.queue import Empty, LightQueue
from kombu.connection import Connection
from kombu.entity import Queue
from nameko.constants import AMQP_URI_CONFIG_KEY, SERIALIZER_CONFIG_KEY
from nameko.events import SERVICE_POOL, EventDispatcher, EventHandler
from nameko.runners import ServiceRunner
from nameko.standalone.events import get_event_exchange
from nameko.timer import Timer, timer

from services.common.events import deliver
from services.common.outbox import OutboxListener, Relay
from services.common.service import BusEvent, ServiceParts, Subscription
from services.common.service import Timer as ServiceTimer
from services.common.settings import Settings

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 5.0
# The relay's LISTEN connection is opened again after this pause, doubling to the cap, when it is lost.
LISTEN_RETRY_S = 1.0
LISTEN_RETRY_MAX_S = 30.0


def event_payload(event: BusEvent) -> dict[str, str]:
    """The JSON-safe nameko payload of a bus event (nameko serialises with json)."""
    return {
        "event_id": event.event_id,
        "source": event.source,
        "event_type": event.event_type,
        "body_b64": base64.b64encode(event.body).decode("ascii"),
    }


def event_from_payload(payload: dict[str, Any]) -> BusEvent:
    return BusEvent(
        event_id=str(payload["event_id"]),
        source=str(payload["source"]),
        event_type=str(payload["event_type"]),
        body=base64.b64decode(payload["body_b64"]),
    )


def nameko_config(settings: Settings) -> dict[str, Any]:
    if not settings.amqp_uri:
        raise ValueError("a nameko worker needs settings.amqp_uri (LIANXIN_AMQP_URI)")
    return {AMQP_URI_CONFIG_KEY: settings.amqp_uri, SERIALIZER_CONFIG_KEY: "json"}


class _EventHandler(EventHandler):  # type: ignore[misc]  # nameko is untyped
    """nameko's event handler, except that a broker lost during the acknowledgement keeps the worker alive."""

    def handle_message_processed(self, message: Any, result: Any = None, exc_info: Any = None) -> None:
        try:
            super().handle_message_processed(message, result, exc_info)
        except OSError:
            # The connection died under the ack/requeue: RabbitMQ requeues the unacknowledged
            # message itself and the inbox absorbs the redelivery.
            log.warning("broker connection lost before the acknowledgement; the event will be redelivered")


event_handler = _EventHandler.decorator


def _handler_method(sub: Subscription, retry_delay_s: float) -> Callable[[Any, dict[str, Any]], None]:
    def handle(self: Any, payload: dict[str, Any]) -> None:
        event = event_from_payload(payload)
        try:
            deliver(sub, event)
        except Exception:
            log.exception(
                "event handler failed; the event goes back to the queue",
                extra={"consumer": sub.consumer, "event_id": event.event_id, "event_type": event.event_type},
            )
            # time.sleep is green in a patched worker: only this handler waits, not the process.
            time.sleep(retry_delay_s)
            raise  # requeue_on_error=True turns this into a requeue, not an ack

    return handle


def _timer_method(job: ServiceTimer) -> Callable[[Any], None]:
    def run(self: Any) -> None:
        try:
            job.run()
        except Exception:
            log.exception("timer failed", extra={"timer": job.name})

    return run


class _RelayTimer(Timer):  # type: ignore[misc]  # nameko is untyped
    """nameko's ``@timer`` that also fires when PostgreSQL says a commit wrote the outbox.

    ``listen`` opens an ``OutboxListener`` (or returns None: SQLite, nothing to listen to). A greenlet
    waits on it and queues a wake for each notification; the timer's loop runs the relay on a wake or
    after ``interval`` (then only the safety poll), one run at a time, wakes that came during a run
    making one more run. After (re)connecting it queues a wake: commits made while it was not
    listening are found by that run.
    """

    def __init__(self, interval: float, listen: Callable[[], OutboxListener | None] | None = None, **kw: Any) -> None:
        super().__init__(interval, **kw)
        self._listen = listen
        self._wakes: LightQueue = LightQueue()
        self._listener_gt: Any = None

    def start(self) -> None:
        super().start()
        if self._listen is not None:
            self._listener_gt = self.container.spawn_managed_thread(self._listen_loop)

    def stop(self) -> None:
        self.should_stop.send(True)
        self._wakes.put("stop")
        self.gt.wait()
        if self._listener_gt is not None:
            self._listener_gt.kill()

    def kill(self) -> None:
        super().kill()
        if self._listener_gt is not None:
            self._listener_gt.kill()

    def _run(self) -> None:
        while True:
            with contextlib.suppress(Empty):  # no wake within the interval: the safety poll
                self._wakes.get(timeout=self.interval)
            if self.should_stop.ready():
                return
            while not self._wakes.empty():  # wakes queued before this run are all served by it
                self._wakes.get_nowait()
            self.handle_timer_tick()
            self.worker_complete.wait()
            self.worker_complete.reset()
            if self.should_stop.ready():
                return

    def _listen_loop(self) -> None:
        assert self._listen is not None
        delay = LISTEN_RETRY_S
        while not self.should_stop.ready():
            listener: OutboxListener | None = None
            try:
                listener = self._listen()
                if listener is None:
                    return  # nothing to listen to (SQLite): the timer alone
                delay = LISTEN_RETRY_S
                self._wakes.put("listening")
                while not self.should_stop.ready():
                    if listener.wait(None):
                        self._wakes.put("notified")
            except Exception:
                log.warning("outbox LISTEN connection lost; the relay polls until it is back", exc_info=True)
                eventlet.sleep(delay)
                delay = min(delay * 2, LISTEN_RETRY_MAX_S)
            finally:
                if listener is not None:
                    listener.close()


def _relay_listener(parts: ServiceParts) -> Callable[[], OutboxListener | None]:
    assert parts.session_factory is not None and parts.outbox is not None
    session_factory, table = parts.session_factory, parts.outbox.name

    def listen() -> OutboxListener | None:
        with session_factory() as session:
            engine = session.get_bind().engine
        return OutboxListener(engine, table) if engine.dialect.name == "postgresql" else None

    return listen


def _relay_method(parts: ServiceParts) -> Callable[[Any], None]:
    assert parts.session_factory is not None and parts.outbox is not None
    session_factory, outbox = parts.session_factory, parts.outbox
    next_metrics = [0.0]  # shared by every container of this class: only paces the gauges

    def relay_outbox(self: Any) -> None:
        dispatch = self.dispatch  # a per-worker dependency, so the Relay is made per tick (cheap)
        relay = Relay(
            session_factory,
            outbox,
            lambda event: dispatch(event.event_type, event_payload(event)),
            service=parts.name,
        )
        try:
            # Drain while full batches come back, within one tick (nameko timers never overlap).
            while relay.run_once() >= relay.batch_size and relay.last_error is None:
                pass
            if time.monotonic() >= next_metrics[0]:
                next_metrics[0] = time.monotonic() + METRICS_INTERVAL_S
                relay.backlog()
        except Exception:
            log.exception("outbox relay failed", extra={"service": parts.name})

    return relay_outbox


def _unique(name: str, taken: dict[str, Any]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    return candidate


def handler_methods(parts: ServiceParts, taken: dict[str, Any] | None = None) -> list[tuple[str, Subscription]]:
    """(method name, subscription) of every event handler of the worker class, in class order."""
    names: dict[str, Any] = dict(taken or {})
    out = []
    for sub in parts.subscriptions:
        method = _unique(f"on_{sub.source}__{sub.event_type}", names)
        names[method] = sub
        out.append((method, sub))
    return out


def declare_queues(parts: ServiceParts, settings: Settings) -> list[str]:
    """Declare the worker's durable event queues and their bindings on the broker, as nameko would.

    RabbitMQ drops an event that finds no queue, and a queue exists only once its consumer's worker
    has started. Declaring them ahead (``lianxin migrate``, the deployment's first step) means a
    producer that starts before a consumer loses nothing on a node's first start. The arguments are
    exactly nameko's (service pool, reliable delivery), so the worker's own declaration agrees.
    """
    config = nameko_config(settings)
    declared = []
    with Connection(settings.amqp_uri) as connection:  # type: ignore[no-untyped-call]  # kombu is untyped
        channel = connection.channel()
        for method, sub in handler_methods(parts, taken=_RESERVED):
            name = f"evt-{sub.source}-{sub.event_type}--{parts.name}.{method}"
            queue = Queue(  # type: ignore[no-untyped-call]
                name,
                exchange=get_event_exchange(sub.source, config),
                routing_key=sub.event_type,
                durable=True,
                auto_delete=False,
                exclusive=False,
            )
            queue(channel).declare()  # type: ignore[no-untyped-call]
            declared.append(name)
    return declared


# Members every worker class has before its handlers are named (build_worker_class).
_RESERVED: dict[str, Any] = {"name": None, "__doc__": None, "dispatch": None, "relay_outbox": None}


def build_worker_class(parts: ServiceParts, settings: Settings, *, handler_retry_delay_s: float = 1.0) -> type:
    """A nameko service class named ``parts.name`` that hosts the service's event side.

    Members: ``dispatch`` (EventDispatcher); ``relay_outbox`` (@timer, when the parts have both a
    session factory and an outbox); ``on_<source>__<event_type>`` per subscription (@event_handler,
    service pool, reliable delivery, requeue on error); ``timer_<name>`` per timer. Method names are
    part of the queue names (``evt-<source>-<type>--<service>.<method>``), so they are stable.
    """
    namespace: dict[str, Any] = {
        "name": parts.name,
        "__doc__": f"nameko worker of the {parts.name} service (built by build_worker_class)",
        "dispatch": EventDispatcher(),
    }
    if parts.session_factory is not None and parts.outbox is not None:
        # PostgreSQL: woken by the outbox's NOTIFY, polling only as a safety net; SQLite: polling.
        postgres = _dialect(parts) == "postgresql"
        namespace["relay_outbox"] = _RelayTimer.decorator(
            interval=settings.relay_poll_s(woken_by_commits=postgres),
            listen=_relay_listener(parts) if postgres else None,
        )(_relay_method(parts))
    for method, sub in handler_methods(parts, taken=namespace):
        namespace[method] = event_handler(
            sub.source,
            sub.event_type,
            handler_type=SERVICE_POOL,
            reliable_delivery=True,
            requeue_on_error=True,
        )(_handler_method(sub, handler_retry_delay_s))
    for job in parts.timers:
        method = _unique(f"timer_{job.name}", namespace)
        namespace[method] = timer(interval=job.interval_s)(_timer_method(job))
    return type(parts.name, (), namespace)


def _dialect(parts: ServiceParts) -> str:
    assert parts.session_factory is not None
    with parts.session_factory() as session:
        return str(session.get_bind().dialect.name)


def run_worker(parts: ServiceParts, settings: Settings) -> None:
    """Run the worker until SIGTERM or Ctrl-C, then stop gracefully (in-flight handlers finish)."""
    if not patcher.is_monkey_patched("socket"):
        raise RuntimeError("call eventlet.monkey_patch() first thing in the worker process, before other imports")
    runner = ServiceRunner(nameko_config(settings))
    runner.add_service(build_worker_class(parts, settings))

    def shutdown(_signum: int, _frame: object) -> None:
        # Signal handlers run outside any greenlet and cannot block on eventlet; stop in one.
        eventlet.spawn_n(runner.stop)

    signal.signal(signal.SIGTERM, shutdown)
    runner.start()
    log.info("worker started", extra={"service": parts.name})
    waiter = eventlet.spawn(runner.wait)
    try:
        while True:
            try:
                waiter.wait()
                break
            except InterruptedError:
                continue  # the signal interrupted the hub's wait; the spawned stop carries on
    except KeyboardInterrupt:
        runner.stop()
    finally:
        parts.close()
    log.info("worker stopped", extra={"service": parts.name})
