"""video's event subscriptions: the case owner it stamps its events with, and the copies of
consultations booked at nodes below (replicated up through exchange)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.events.v1 import events_pb2

from services.common.events import decode
from services.common.service import BusEvent, Subscription, utc_now
from services.common.timeutil import from_timestamp
from services.video.consult import Consultation, ConsultationState, Participant
from services.video.domain import OWNER_EVENTS, owner_named
from services.video.handlers import note_consultation_replica
from services.video.store import VideoStore

CONSULTATION_EVENTS = ("consultation_booked", "consultation_held", "consultation_cancelled")


def consultation_copy(env: events_pb2.EventEnvelope) -> Consultation | None:
    """The consultation a replicated event describes, as the copy a node above keeps of it."""
    kind = env.WhichOneof("payload")
    at = from_timestamp(env.occurred_at) or utc_now()

    def copy(
        consultation_id: str,
        host: str,
        topic: str,
        units: Iterable[events_pb2.ConsultationUnit],
        starts: Timestamp,
        ends: Timestamp,
        state: ConsultationState,
    ) -> Consultation:
        starts_at = from_timestamp(starts) or at
        return Consultation(
            consultation_id=consultation_id,
            case_id=env.case_id,
            host_node=host or env.origin_node,
            topic=topic,
            participants=[Participant(u.node, u.unit_id) for u in units],
            starts_at=starts_at,
            ends_at=from_timestamp(ends) or starts_at,
            state=state,
            replica=True,
            created_at=at,
        )

    if kind == "consultation_booked":
        b = env.consultation_booked
        return copy(b.consultation_id, b.host_node, b.topic, b.units, b.starts_at, b.ends_at, ConsultationState.BOOKED)
    if kind == "consultation_held":
        h = env.consultation_held
        held = copy(h.consultation_id, h.host_node, h.topic, h.units, h.starts_at, h.ends_at, ConsultationState.HELD)
        return replace(held, minutes=h.minutes, held_at=at)
    if kind == "consultation_cancelled":
        c = env.consultation_cancelled
        gone = copy(c.consultation_id, "", "", (), c.starts_at, c.starts_at, ConsultationState.CANCELLED)
        return replace(gone, cancel_reason=c.reason)
    return None


# Where the case events naming an owner come from: this node's own services, and exchange (replicas
# from the subtree, hand-offs from the parent).
OWNER_SOURCES = ("intake", "routing", "exchange")


class VideoConsumers:
    """Each handler is idempotent by itself (an owner epoch only rises; a copy's state never goes back),
    so they need no inbox row."""

    def __init__(self, store: VideoStore, node: str) -> None:
        self._store = store
        self._node = node

    def follow_owner(self, event: BusEvent) -> None:
        env = decode(event)
        hand_off = env.case_handed_off
        owner = owner_named(
            env.WhichOneof("payload") or "",
            env.owner_node,
            env.owner_epoch,
            hand_off_to=hand_off.to_node,
            hand_off_epoch=hand_off.new_owner_epoch,
        )
        if owner is not None:
            self._store.note_owner(env.case_id, owner)

    def copy_consultation(self, event: BusEvent) -> None:
        # A consultation booked at a node below (its events replicated up through exchange): this node
        # keeps a copy, so its office and the units that took part read it and its minutes here.
        copy = consultation_copy(decode(event))
        if copy is not None and copy.host_node != self._node:
            with self._store.consuming() as uow:
                note_consultation_replica(uow, copy)

    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription("video", source, event_type, self.follow_owner)
            for source in OWNER_SOURCES
            for event_type in OWNER_EVENTS
        ] + [
            Subscription("video", "exchange", event_type, self.copy_consultation) for event_type in CONSULTATION_EVENTS
        ]
