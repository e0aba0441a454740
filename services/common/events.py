"""Integration events: wrap a payload in an EventEnvelope for the outbox, and read one back off a bus."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from google.protobuf.message import DecodeError, Message
from lianxin.events.v1 import events_pb2
from sqlalchemy import Table
from sqlalchemy.orm import Session

from services.common.ids import new_event_id
from services.common.outbox import append_event
from services.common.service import BusEvent, Subscription
from services.common.telemetry import consumer_span, inject_context
from services.common.timeutil import to_timestamp


def envelope(
    *,
    payload_field: str,
    payload: Message,
    case_id: str,
    version: int,
    owner_node: str,
    owner_epoch: int,
    origin_node: str,
    origin_service: str,
    occurred_at: datetime,
) -> events_pb2.EventEnvelope:
    """A new envelope carrying the current trace context, so one trace follows the case (DESIGN §6)."""
    env = events_pb2.EventEnvelope(
        event_id=new_event_id(),
        case_id=case_id,
        version=version,
        owner_epoch=owner_epoch,
        owner_node=owner_node,
        origin_node=origin_node,
        origin_service=origin_service,
        occurred_at=to_timestamp(occurred_at),
    )
    env.trace_context.update(inject_context())
    getattr(env, payload_field).CopyFrom(payload)
    return env


def to_bus_event(env: events_pb2.EventEnvelope) -> BusEvent:
    event_type = env.WhichOneof("payload")
    if event_type is None:
        raise ValueError(f"event {env.event_id} has no payload")
    return BusEvent(
        event_id=env.event_id,
        source=env.origin_service,
        event_type=event_type,
        body=env.SerializeToString(),
    )


def write_event(session: Session, outbox: Table, env: events_pb2.EventEnvelope) -> None:
    """Append to the outbox inside the caller's transaction (the transactional outbox, DESIGN §4)."""
    append_event(session, outbox, to_bus_event(env), case_id=env.case_id or None)


# Routing's work order events that the registering node's intake follows for the citizen's timeline:
# as replicas from its own subtree, or as ``Command.handling`` updates from an owner elsewhere.
WORK_ORDER_EVENTS = ("work_order_created", "work_order_changed")


def unfolded(env: events_pb2.EventEnvelope) -> list[events_pb2.EventEnvelope]:
    """``env`` as the events it stands for: a ``work_order_created`` carrying its placement (受理 and
    交办 folded in, issue 21) as the creation and one ``work_order_changed`` per step, exactly as they
    were published one by one before; any other envelope as itself.

    Versions: the folded envelope has the last step's; the creation takes ``version - len(steps)``
    and step i (from 1) the creation's plus i. The creation keeps the event id; a step's id derives
    from it, so every reader (and a redelivery) names the same step the same way. Readers expand at
    their adapter, so the domain rules see the three events they always saw.
    """
    if env.WhichOneof("payload") != "work_order_created" or not env.work_order_created.placement:
        return [env]
    steps = list(env.work_order_created.placement)
    created = events_pb2.EventEnvelope()
    created.CopyFrom(env)
    created.work_order_created.ClearField("placement")
    created.version = env.version - len(steps)
    return [created, *(_placement_step(env, number, len(steps)) for number in range(1, len(steps) + 1))]


def last_unfolded(env: events_pb2.EventEnvelope) -> events_pb2.EventEnvelope:
    """``unfolded(env)[-1]`` without building the creation's copy: the state a folded placement leaves
    (readers of the latest state only, such as the case digest)."""
    if env.WhichOneof("payload") != "work_order_created" or not env.work_order_created.placement:
        return env
    count = len(env.work_order_created.placement)
    return _placement_step(env, count, count)


def _placement_step(env: events_pb2.EventEnvelope, number: int, count: int) -> events_pb2.EventEnvelope:
    """Step ``number`` (from 1) of the ``count`` folded into ``env``, as it was published on its own."""
    changed = events_pb2.EventEnvelope(
        event_id=placement_step_id(env.event_id, number),
        case_id=env.case_id,
        version=env.version - count + number,
        owner_epoch=env.owner_epoch,
        owner_node=env.owner_node,
        origin_node=env.origin_node,
        origin_service=env.origin_service,
        occurred_at=env.occurred_at,
        work_order_changed=env.work_order_created.placement[number - 1],
    )
    changed.trace_context.update(env.trace_context)
    return changed


def folded(events: Sequence[events_pb2.EventEnvelope]) -> events_pb2.EventEnvelope:
    """A creation and the placement steps that follow it (``events``, as published one by one) as the
    one envelope routing publishes for them now; ``unfolded`` of it gives them back (but the steps'
    event ids). For tests and benches that hold the three: routing folds its own domain events."""
    created, *steps = events
    out = events_pb2.EventEnvelope()
    out.CopyFrom(created)
    out.version = created.version + len(steps)
    out.work_order_created.placement.extend(step.work_order_changed for step in steps)
    return out


def placement_step_id(event_id: str, number: int) -> str:
    """The event id of step ``number`` (from 1) folded into the creation ``event_id``."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:placement:{event_id}:{number}"))


def decode(event: BusEvent) -> events_pb2.EventEnvelope:
    env = events_pb2.EventEnvelope()
    env.ParseFromString(event.body)
    return env


def parse_envelope(body: bytes) -> events_pb2.EventEnvelope | None:
    """The envelope in ``body``, or None when it does not decode or carries no payload (input from a peer)."""
    env = events_pb2.EventEnvelope()
    try:
        env.ParseFromString(body)
    except DecodeError:
        return None
    return env if env.WhichOneof("payload") else None


def deliver(sub: Subscription, event: BusEvent) -> None:
    """Call ``sub``'s handler inside the trace its event carries (both buses deliver through here), so
    the events a handler writes continue the case's trace (DESIGN §6)."""
    env = events_pb2.EventEnvelope()
    try:
        env.ParseFromString(event.body)
    except DecodeError:
        env.Clear()  # not an envelope: the handler runs outside any trace
    attributes = {"lianxin.event_id": event.event_id, "lianxin.event_type": event.event_type}
    with consumer_span(f"{sub.consumer} handles {event.source}.{event.event_type}", env.trace_context, attributes):
        sub.handle(event)


def parse_command(body: bytes) -> events_pb2.Command | None:
    """The command in ``body``, or None when it does not decode or lacks an id or a body."""
    cmd = events_pb2.Command()
    try:
        cmd.ParseFromString(body)
    except DecodeError:
        return None
    return cmd if cmd.command_id and cmd.WhichOneof("body") else None
