"""Translation between video's domain objects and the protobuf contract (adapters only)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.video.v1 import video_service_pb2 as pb

from services.common.errors import InvalidArgument
from services.common.logs import mask_id_number, mask_name
from services.common.timeutil import from_timestamp, to_timestamp
from services.video.consult import Consultation, ConsultationState, Interval
from services.video.domain import (
    DEFAULT_HORIZON,
    MAX_HORIZON,
    FoundSlot,
    Hold,
    OneOffDay,
    Room,
    Schedule,
    Visit,
    WeeklyPattern,
    parse_hhmm,
)

VISIT_STATES = {
    s: getattr(pb, f"VISIT_STATE_{s}") for s in ("HOLDING", "BOOKED", "CHECKED_IN", "COMPLETED", "CANCELLED", "NO_SHOW")
}
_HOLD_STATES = {s: getattr(pb, f"HOLD_STATE_{s}") for s in ("HELD", "CONFIRMED", "RELEASED", "EXPIRED", "REFUSED")}


def time_field(ts: Any, field: str, *, required: bool = False) -> datetime | None:
    value = from_timestamp(ts, field)
    if required and value is None:
        raise InvalidArgument(field, "must be set")
    return value


def window(request: Any, now: datetime) -> tuple[datetime, datetime]:
    not_before = time_field(request.not_before, "not_before") or now
    not_after = time_field(request.not_after, "not_after") or not_before + DEFAULT_HORIZON
    if not_after < not_before:
        raise InvalidArgument("not_after", "must not be before not_before")
    if not_after - not_before > MAX_HORIZON:
        raise InvalidArgument("not_after", f"window longer than {MAX_HORIZON.days} days")
    return not_before, not_after


def visit_message(v: Visit) -> pb.Visit:
    # Representatives leave the service masked: the clerk saw them at the desk; replies are logged.
    return pb.Visit(
        visit_id=v.visit_id,
        case_id=v.case_id,
        leader_id=v.leader_id,
        room_ids=v.room_ids,
        unit_ids=v.unit_ids,
        starts_at=to_timestamp(v.starts_at),
        ends_at=to_timestamp(v.ends_at),
        state=VISIT_STATES[v.state.value],
        version=v.version,
        representatives=[
            common_pb2.Person(name=mask_name(r.name), id_number=mask_id_number(r.id_number)) for r in v.representatives
        ],
        checked_in_at=to_timestamp(v.checked_in_at) if v.checked_in_at else None,
        minutes=v.minutes,
        decisions=v.decisions,
        recording_ref=v.recording_ref,
        hold_ids=v.hold_ids,
    )


_CONSULTATION_STATES = {s: getattr(pb, f"CONSULTATION_STATE_{s.value}") for s in ConsultationState}


def consultation_message(c: Consultation, *, minutes_visible: bool = True) -> pb.Consultation:
    return pb.Consultation(
        consultation_id=c.consultation_id,
        case_id=c.case_id,
        host_node=c.host_node,
        topic=c.topic,
        participants=[
            pb.ConsultationParticipant(node=p.node, unit_id=p.unit_id, room_id=p.room_id) for p in c.participants
        ],
        starts_at=to_timestamp(c.starts_at),
        ends_at=to_timestamp(c.ends_at),
        state=_CONSULTATION_STATES[c.state],
        version=c.version,
        minutes=c.minutes if minutes_visible else "",
        minutes_withheld=bool(c.minutes) and not minutes_visible,
        booked_by=c.booked_by,
        held_at=to_timestamp(c.held_at) if c.held_at else None,
        hold_ids=c.hold_ids,
        replica=c.replica,
        cancel_reason=c.cancel_reason,
    )


def hold_message(h: Hold) -> pb.Hold:
    return pb.Hold(
        hold_id=h.hold_id,
        room_id=h.room_id,
        requesting_node=h.requesting_node,
        visit_id=h.visit_id,
        case_id=h.case_id,
        starts_at=to_timestamp(h.starts_at),
        ends_at=to_timestamp(h.ends_at),
        expires_at=to_timestamp(h.expires_at),
        state=_HOLD_STATES[h.state.value],
        reason=h.reason,
    )


def schedule_message(s: Schedule) -> pb.Schedule:
    return pb.Schedule(
        schedule_id=s.schedule_id,
        leader_id=s.leader_id,
        node=s.node,
        weekly_patterns=[
            pb.WeeklyPattern(weekday=p.weekday, start_time=f"{p.start:%H:%M}", end_time=f"{p.end:%H:%M}")
            for p in s.weekly
        ],
        one_off_days=[
            pb.OneOffDay(
                date=d.day.isoformat(),
                start_time=f"{d.start:%H:%M}" if d.start else "",
                end_time=f"{d.end:%H:%M}" if d.end else "",
                closed=d.closed,
            )
            for d in s.one_offs
        ],
        slot_minutes=s.slot_minutes,
        buffer_minutes=s.buffer_minutes,
        max_per_session=s.max_per_session,
        room_ids=s.room_ids,
        version=s.version,
        leader_name=s.leader_name,
    )


def schedule_from(msg: pb.Schedule) -> Schedule:
    one_offs = []
    for i, d in enumerate(msg.one_off_days):
        try:
            day = date.fromisoformat(d.date)
        except ValueError:
            raise InvalidArgument(f"schedule.one_off_days[{i}].date", f"must be YYYY-MM-DD, got {d.date!r}") from None
        start = None if d.closed else parse_hhmm(d.start_time, f"schedule.one_off_days[{i}].start_time")
        end = None if d.closed else parse_hhmm(d.end_time, f"schedule.one_off_days[{i}].end_time")
        one_offs.append(OneOffDay(day, start, end, d.closed))
    return Schedule(
        schedule_id=msg.schedule_id,
        leader_id=msg.leader_id,
        node=msg.node,
        weekly=tuple(
            WeeklyPattern(
                p.weekday,
                parse_hhmm(p.start_time, f"schedule.weekly_patterns[{i}].start_time"),
                parse_hhmm(p.end_time, f"schedule.weekly_patterns[{i}].end_time"),
            )
            for i, p in enumerate(msg.weekly_patterns)
        ),
        one_offs=tuple(one_offs),
        slot_minutes=msg.slot_minutes,
        buffer_minutes=msg.buffer_minutes,
        max_per_session=msg.max_per_session,
        room_ids=tuple(msg.room_ids),
        leader_name=msg.leader_name.strip(),
    )


def slot_message(leader_id: str, s: FoundSlot) -> pb.Slot:
    return pb.Slot(
        leader_id=leader_id,
        starts_at=to_timestamp(s.starts_at),
        ends_at=to_timestamp(s.ends_at),
        room_ids=s.room_ids,
        remaining_in_session=s.remaining,
    )


def citizen_visit_message(v: Visit, leader_names: Mapping[str, str], *, can_cancel: bool) -> pb.CitizenVisit:
    """A citizen's own visit: the leader by public name, no rooms, units or minutes."""
    return pb.CitizenVisit(
        visit_id=v.visit_id,
        leader_id=v.leader_id,
        leader_name=leader_names.get(v.leader_id) or v.leader_id,
        starts_at=to_timestamp(v.starts_at),
        ends_at=to_timestamp(v.ends_at),
        state=VISIT_STATES[v.state.value],
        can_cancel=can_cancel,
    )


def room_message(r: Room) -> pb.Room:
    return pb.Room(room_id=r.room_id, node=r.node, name=r.name)


def period_message(period: Interval) -> pb.FreePeriod:
    return pb.FreePeriod(starts_at=to_timestamp(period[0]), ends_at=to_timestamp(period[1]))
