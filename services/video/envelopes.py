"""video's facts on the case as the contract's events, and the commands that take a fact to the case's
owner at another node (adapters only)."""

from __future__ import annotations

import uuid
from datetime import datetime

from google.protobuf.message import Message
from lianxin.events.v1 import events_pb2

from services.common.timeutil import to_timestamp
from services.video.consult import (
    Consultation,
    ConsultationBooked,
    ConsultationCancelled,
    ConsultationHeld,
    ConsultationReminder,
)
from services.video.domain import (
    CaseOwner,
    VisitBooked,
    VisitCancelled,
    VisitOutcomeRecorded,
    VisitReminder,
)
from services.video.ports import VideoEvent


def _units(c: Consultation) -> list[events_pb2.ConsultationUnit]:
    return [events_pb2.ConsultationUnit(node=p.node, unit_id=p.unit_id) for p in c.participants]


def payload(event: VideoEvent) -> tuple[str, Message]:
    """The envelope's payload field and message for ``event``."""
    match event:
        case VisitBooked():
            return "visit_booked", events_pb2.VisitBooked(
                visit_id=event.visit_id, starts_at=to_timestamp(event.starts_at), leader_id=event.leader_id
            )
        case VisitCancelled():
            return "visit_cancelled", events_pb2.VisitCancelled(
                visit_id=event.visit_id, starts_at=to_timestamp(event.starts_at), reason=event.reason
            )
        case VisitOutcomeRecorded():
            return "visit_outcome_recorded", events_pb2.VisitOutcomeRecorded(
                visit_id=event.visit_id,
                minutes=event.minutes,
                decisions=event.decisions,
                recording_ref=event.recording_ref,
            )
        case VisitReminder():
            return "visit_reminder", events_pb2.VisitReminder(
                visit_id=event.visit_id,
                starts_at=to_timestamp(event.starts_at),
                leader_id=event.leader_id,
                kind=event.kind,
            )
        case ConsultationCancelled():
            c = event.consultation
            return "consultation_cancelled", events_pb2.ConsultationCancelled(
                consultation_id=c.consultation_id, starts_at=to_timestamp(c.starts_at), reason=event.reason
            )
        case ConsultationBooked():
            c = event.consultation
            return "consultation_booked", events_pb2.ConsultationBooked(
                consultation_id=c.consultation_id,
                starts_at=to_timestamp(c.starts_at),
                ends_at=to_timestamp(c.ends_at),
                topic=c.topic,
                units=_units(c),
                host_node=c.host_node,
                moved_from=to_timestamp(event.moved_from) if event.moved_from else None,
            )
        case ConsultationReminder():
            c = event.consultation
            return "consultation_reminder", events_pb2.ConsultationReminder(
                consultation_id=c.consultation_id,
                starts_at=to_timestamp(c.starts_at),
                kind=event.kind,
                units=_units(c),
                host_node=c.host_node,
            )
        case ConsultationHeld():
            c = event.consultation
            return "consultation_held", events_pb2.ConsultationHeld(
                consultation_id=c.consultation_id,
                minutes=c.minutes,
                starts_at=to_timestamp(c.starts_at),
                ends_at=to_timestamp(c.ends_at),
                topic=c.topic,
                units=_units(c),
                host_node=c.host_node,
            )
    raise TypeError(f"not a video event: {event!r}")


def command_for_owner(
    event: VideoEvent, env: events_pb2.EventEnvelope, owner: CaseOwner, *, node: str, now: datetime
) -> events_pb2.Command:
    """The command taking ``event`` to the routing of the node that owns the case: a visit's outcome,
    or a consultation's booking or minutes (its envelope, recorded in the case's history there)."""
    command = events_pb2.Command(
        case_id=env.case_id,
        target_node=owner.node,
        issuing_node=node,
        owner_epoch_seen=owner.epoch,
        issued_at=to_timestamp(now),
    )
    if isinstance(event, VisitOutcomeRecorded):
        # One command per visit: an outcome is recorded once (the visit is COMPLETED after).
        command.command_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:visit-outcome:{event.visit_id}"))
        command.visit_outcome.CopyFrom(
            events_pb2.Command.VisitOutcome(
                visit_id=event.visit_id,
                minutes=event.minutes,
                decisions=event.decisions,
                recording_ref=event.recording_ref,
            )
        )
        return command
    if isinstance(event, ConsultationBooked | ConsultationHeld):
        kind = env.WhichOneof("payload")
        key = f"lianxin:{kind}:{event.consultation.consultation_id}"
        if isinstance(event, ConsultationBooked) and event.moved_from is not None:
            key = f"lianxin:consultation_moved:{event.consultation.consultation_id}:{event.consultation.version}"
        command.command_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
        command.consultation.CopyFrom(events_pb2.Command.ConsultationNote(envelope=env.SerializeToString()))
        return command
    raise TypeError(f"no command takes {type(event).__name__} to the owner")
