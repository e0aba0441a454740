"""video's rows ↔ domain objects (persistence only): schedules keep their patterns as JSON, visits
their representatives sealed, and every time comes back as an aware UTC datetime."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any, Protocol

from services.common.clock import to_utc as aware
from services.video import consult
from services.video.domain import (
    Hold,
    HoldState,
    OneOffDay,
    Representative,
    Schedule,
    Visit,
    VisitState,
    WeeklyPattern,
    parse_hhmm,
)
from services.video.models import ConsultationRow, HoldRow, VisitRow


class Sealer(Protocol):
    """The part of ``services.common.crypto.FieldCipher`` the store uses."""

    def encrypt(self, plaintext: str, *, context: str) -> bytes: ...

    def decrypt(self, blob: bytes, *, context: str) -> str: ...


def representatives_context(visit_id: str) -> str:
    return f"video_visits.representatives:{visit_id}"


def seal_representatives(cipher: Sealer, visit: Visit) -> bytes | None:
    if not visit.representatives:
        return None
    plain = json.dumps([r.__dict__ for r in visit.representatives], ensure_ascii=False)
    return cipher.encrypt(plain, context=representatives_context(visit.visit_id))


def schedule_from_row(row: Any) -> Schedule:
    """``row``: a ``ScheduleRow`` or a Core row of its table (the same names)."""
    body: dict[str, Any] = dict(row.body)
    return Schedule(
        schedule_id=row.schedule_id,
        leader_id=row.leader_id,
        node=row.node,
        weekly=tuple(
            WeeklyPattern(p["weekday"], parse_hhmm(p["start"], "start"), parse_hhmm(p["end"], "end"))
            for p in body.get("weekly", [])
        ),
        one_offs=tuple(
            OneOffDay(
                date.fromisoformat(d["date"]),
                parse_hhmm(d["start"], "start") if d.get("start") else None,
                parse_hhmm(d["end"], "end") if d.get("end") else None,
                bool(d.get("closed")),
            )
            for d in body.get("one_offs", [])
        ),
        slot_minutes=row.slot_minutes,
        buffer_minutes=row.buffer_minutes,
        max_per_session=row.max_per_session,
        room_ids=tuple(body.get("room_ids", [])),
        version=row.version,
        leader_name=str(body.get("leader_name", "")),
    )


def schedule_body(s: Schedule) -> dict[str, object]:
    return {
        "weekly": [{"weekday": p.weekday, "start": f"{p.start:%H:%M}", "end": f"{p.end:%H:%M}"} for p in s.weekly],
        "one_offs": [
            {
                "date": d.day.isoformat(),
                "start": f"{d.start:%H:%M}" if d.start else "",
                "end": f"{d.end:%H:%M}" if d.end else "",
                "closed": d.closed,
            }
            for d in s.one_offs
        ],
        "room_ids": list(s.room_ids),
        "leader_name": s.leader_name,
    }


def visit_row(v: Visit) -> VisitRow:
    assert v.session_start is not None and v.created_at is not None
    return VisitRow(
        visit_id=v.visit_id,
        case_id=v.case_id,
        leader_id=v.leader_id,
        room_ids=list(v.room_ids),
        unit_ids=list(v.unit_ids),
        starts_at=v.starts_at,
        ends_at=v.ends_at,
        session_start=v.session_start,
        state=v.state.value,
        version=v.version,
        representatives=None,
        checked_in_at=None,
        minutes="",
        decisions="",
        recording_ref="",
        hold_ids=list(v.hold_ids),
        created_at=v.created_at,
    )


def to_visit(cipher: Sealer, row: Any) -> Visit:
    """``row``: a ``VisitRow`` or a Core row of its table (the same names)."""
    reps: list[Representative] = []
    if row.representatives:
        raw = cipher.decrypt(row.representatives, context=representatives_context(row.visit_id))
        reps = [Representative(**item) for item in json.loads(raw)]
    return Visit(
        visit_id=row.visit_id,
        case_id=row.case_id,
        leader_id=row.leader_id,
        room_ids=list(row.room_ids),
        unit_ids=list(row.unit_ids),
        starts_at=aware(row.starts_at),
        ends_at=aware(row.ends_at),
        state=VisitState(row.state),
        version=row.version,
        session_start=aware(row.session_start),
        representatives=reps,
        checked_in_at=aware(row.checked_in_at) if row.checked_in_at else None,
        minutes=row.minutes,
        decisions=row.decisions,
        recording_ref=row.recording_ref,
        hold_ids=list(row.hold_ids),
        created_at=aware(row.created_at),
    )


def hold_row(h: Hold) -> HoldRow:
    return HoldRow(
        hold_id=h.hold_id,
        room_id=h.room_id,
        requesting_node=h.requesting_node,
        visit_id=h.visit_id,
        case_id=h.case_id,
        starts_at=h.starts_at,
        ends_at=h.ends_at,
        expires_at=h.expires_at,
        state=h.state.value,
        reason=h.reason,
    )


def to_hold(r: HoldRow) -> Hold:
    return Hold(
        r.hold_id,
        r.room_id,
        r.requesting_node,
        r.visit_id,
        r.case_id,
        aware(r.starts_at),
        aware(r.ends_at),
        aware(r.expires_at),
        HoldState(r.state),
        r.reason,
    )


def consultation_row(c: consult.Consultation) -> ConsultationRow:
    return ConsultationRow(
        consultation_id=c.consultation_id,
        case_id=c.case_id,
        host_node=c.host_node,
        topic=c.topic,
        participants=[{"node": p.node, "unit_id": p.unit_id, "room_id": p.room_id} for p in c.participants],
        starts_at=c.starts_at,
        ends_at=c.ends_at,
        state=c.state.value,
        version=c.version,
        minutes=c.minutes,
        booked_by=c.booked_by,
        held_at=c.held_at,
        hold_ids=list(c.hold_ids),
        replica=c.replica,
        cancel_reason=c.cancel_reason,
        created_at=c.created_at or datetime.now(UTC),
    )


def to_consultation(row: Any) -> consult.Consultation:
    """``row``: a ``ConsultationRow`` or a Core row of its table (the same names)."""
    return consult.Consultation(
        consultation_id=row.consultation_id,
        case_id=row.case_id,
        host_node=row.host_node,
        topic=row.topic,
        participants=[
            consult.Participant(str(p.get("node", "")), str(p.get("unit_id", "")), str(p.get("room_id", "")))
            for p in row.participants
        ],
        starts_at=aware(row.starts_at),
        ends_at=aware(row.ends_at),
        state=consult.ConsultationState(row.state),
        version=row.version,
        minutes=row.minutes,
        booked_by=row.booked_by,
        held_at=aware(row.held_at) if row.held_at else None,
        hold_ids=list(row.hold_ids),
        replica=row.replica,
        cancel_reason=row.cancel_reason,
        created_at=aware(row.created_at),
    )
