"""Remote consultations (远程会商): the earliest common slot across nodes, booked on the same rooms and
units as visits, held (minutes) or cancelled; the rules are ``consult``'s."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from functools import partial

from services.common.clock import CHINA, to_utc
from services.common.errors import Conflict, DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.video import consult, slots
from services.video.consult import (
    Consultation,
    ConsultationBooked,
    ConsultationCancelled,
    ConsultationHeld,
    ConsultationRequest,
    ConsultationState,
    Interval,
)
from services.video.domain import RemoteHold, RemoteState, Room, check_version
from services.video.ports import RemoteRooms, VideoStorage, VideoUnitOfWork
from services.video.remote_holds import confirm_all, hold_all, release_pending, releasing_all
from services.video.visits import MAX_ATTEMPTS

# -- when a unit and a room of this node are free


def consultation_busy(
    video: VideoStorage,
    uow: VideoUnitOfWork,
    unit_id: str,
    room_id: str,
    lo: datetime,
    hi: datetime,
    *,
    ignore_owner: str | None = None,
) -> list[Interval]:
    """What keeps a unit and a room of this node from a consultation in [lo, hi]: everything
    booked for either (but ``ignore_owner``'s: a consultation being moved), and the reception
    sessions of the leaders whose schedules use the room."""
    busy = uow.busy([f"unit:{unit_id}", f"room:{room_id}"], lo, hi, ignore_owner=ignore_owner)
    # Sessions past the official calendar cannot be told (and offer no consultation hours either).
    known_first, known_last = video.calendar.known_range()
    first = max(lo.astimezone(CHINA).date(), known_first)
    last = min(hi.astimezone(CHINA).date(), known_last)
    for schedule in uow.schedules():
        if room_id in schedule.room_ids:
            busy.extend((x.starts_at, x.ends_at) for x in slots.sessions(schedule, first, last, video.calendar))
    return busy


def check_consultation_free(
    video: VideoStorage, uow: VideoUnitOfWork, unit_id: str, room_id: str, start: datetime, end: datetime
) -> None:
    free = consult.free_periods(video.calendar, consultation_busy(video, uow, unit_id, room_id, start, end), start, end)
    if not consult.covered(free, start, end):
        raise Conflict(f"unit {unit_id} or room {room_id} is not free at {start.isoformat()}")


def _own_room(video: VideoStorage, uow: VideoUnitOfWork, room_id: str, field: str) -> Room:
    room = uow.room(room_id)
    if room is None:
        raise InvalidArgument(field, f"room {room_id} is not registered at node {video.node}")
    if room.node != video.node:
        raise InvalidArgument(field, f"room {room_id} belongs to node {room.node}; ask that node")
    return room


def free_periods(
    video: VideoStorage,
    unit_id: str,
    room_id: str,
    not_before: datetime,
    not_after: datetime,
    *,
    ignore_owner: str | None = None,
) -> list[Interval]:
    """When a unit and a room of this node are both free for a consultation (ListFreePeriods)."""
    with video.begin() as uow:
        _own_room(video, uow, room_id, "room_id")
        busy = consultation_busy(video, uow, unit_id, room_id, not_before, not_after, ignore_owner=ignore_owner)
        return consult.free_periods(video.calendar, busy, not_before, not_after)


def check_rooms(video: VideoStorage, participants: tuple[consult.Participant, ...]) -> None:
    """Each participant's room is registered here as a room of the participant's node."""
    with video.begin() as uow:
        for i, p in enumerate(participants):
            room = uow.room(p.room_id)
            if room is None:
                raise InvalidArgument(f"participants[{i}].room_id", f"room {p.room_id} is not registered")
            if room.node != p.node:
                raise InvalidArgument(
                    f"participants[{i}].room_id", f"room {p.room_id} belongs to node {room.node}, not {p.node}"
                )


def calendar_notice(end: date, last: datetime, node: str) -> str:
    if last.astimezone(CHINA).date() <= end:
        return ""
    return (
        f"no slots after {end.isoformat()} at node {node}: the official holiday calendar for {end.year + 1} "
        "is not loaded there (an administrator loads it with `lianxin calendar load`)"
    )


def consultation_slots(
    video: VideoStorage,
    remote: RemoteRooms,
    req: ConsultationRequest,
    *,
    limit: int,
    exclude: frozenset[datetime] = frozenset(),
    ignore_owner: str | None = None,
) -> tuple[list[Interval], str]:
    """The earliest common slots: each participant's free periods from its own node (this node's from
    the store, the others' by ListFreePeriods), intersected; with the first calendar notice met.
    ``ignore_owner``: a consultation being moved, whose own reservations here count free."""
    lo, hi = req.not_before, req.not_after + req.duration
    free: list[list[Interval]] = []
    notice = calendar_notice(video.calendar.known_range()[1], hi, video.node)
    for p in req.participants:
        if p.node == video.node:
            free.append(free_periods(video, p.unit_id, p.room_id, lo, hi, ignore_owner=ignore_owner))
            continue
        periods, remote_notice = remote.free_periods(
            p.node, unit_id=p.unit_id, room_id=p.room_id, not_before=lo, not_after=hi
        )
        free.append(periods)
        notice = notice or remote_notice
    return consult.common_slots(free, req.duration, req.not_before, req.not_after, limit=limit, exclude=exclude), notice


# -- booking, holding and cancelling


def consultation_of(uow: VideoUnitOfWork, consultation_id: str) -> Consultation:
    found = uow.get_consultation(consultation_id)
    if found is None:
        raise NotFound("consultation", consultation_id)
    return found


def emit_with_note(video: VideoStorage, uow: VideoUnitOfWork, event: ConsultationBooked | ConsultationHeld) -> None:
    """Hosted here for a case another node handles: the event also goes to that node as a command,
    whose routing records it in the case's history (a local owner's routing follows the event)."""
    owner = uow.owner(event.consultation.case_id)
    uow.emit(event, owner, to_owner=owner.node != video.node)


def reserve_consultation(
    video: VideoStorage, req: ConsultationRequest, start: datetime, end: datetime
) -> tuple[Consultation, list[RemoteHold]]:
    """Reserve this node's units and rooms for [start, end] and record the holds to ask of the other
    nodes (ASKED). HOLDING until those are confirmed; BOOKED at once when every unit is local."""
    now = video.now()
    start, end = to_utc(start), to_utc(end)  # stored as UTC (SQLite keeps the wall-clock text)
    consultation_id = f"con-{uuid.uuid4().hex[:16]}"
    owner = f"consultation:{consultation_id}"
    with video.begin() as uow:
        holds: list[RemoteHold] = []
        for p in req.participants:
            if p.node != video.node:
                holds.append(
                    RemoteHold(
                        str(uuid.uuid4()), consultation_id, p.room_id, p.node, RemoteState.ASKED.value, p.unit_id
                    )
                )
                continue
            check_consultation_free(video, uow, p.unit_id, p.room_id, start, end)
            uow.reserve(f"unit:{p.unit_id}", start, end, owner)
            uow.reserve(f"room:{p.room_id}", start, end, owner)
        uow.add_remote_holds(holds, now)
        c = Consultation(
            consultation_id=consultation_id,
            case_id=req.case_id,
            host_node=video.node,
            topic=req.topic,
            participants=list(req.participants),
            starts_at=start,
            ends_at=end,
            state=ConsultationState.HOLDING if holds else ConsultationState.BOOKED,
            booked_by=req.actor,
            hold_ids=[h.hold_id for h in holds],
            created_at=now,
        )
        uow.add_consultation(c)
        if not holds:
            emit_with_note(video, uow, ConsultationBooked(c))
        uow.commit()
        return c, holds


def confirm_consultation(video: VideoStorage, consultation_id: str) -> Consultation:
    with video.begin() as uow:
        c = consultation_of(uow, consultation_id)
        c.confirm()
        uow.save_consultation(c)
        uow.set_remote_state(RemoteState.CONFIRMED, booking_id=consultation_id, only_from=[RemoteState.HELD])
        emit_with_note(video, uow, ConsultationBooked(c))
        uow.commit()
        return c


def abandon_consultation(
    video: VideoStorage, consultation_id: str, reason: str, *, expected_version: int = 0, event: bool = False
) -> tuple[Consultation, list[RemoteHold]]:
    """Cancel: free this node's reservations; the other nodes' holds go RELEASING and are returned."""
    with video.begin() as uow:
        c = consultation_of(uow, consultation_id)
        check_version(expected_version, c.version, "consultation")
        c.cancel(reason)
        uow.free(c.owner)
        uow.save_consultation(c)
        pending = releasing_all(uow, consultation_id)
        if event:
            uow.emit(ConsultationCancelled(c, reason), uow.owner(c.case_id))
        uow.commit()
        return c, pending


def record_consultation_minutes(
    video: VideoStorage, consultation_id: str, expected_version: int, minutes: str
) -> Consultation:
    """BOOKED → HELD with the minutes; consultation_held carries them up (and, when another node
    handles the case, a command takes them to its history)."""
    with video.begin() as uow:
        c = consultation_of(uow, consultation_id)
        check_version(expected_version, c.version, "consultation")
        c.hold(minutes, video.now())
        uow.save_consultation(c)
        emit_with_note(video, uow, ConsultationHeld(c))
        uow.commit()
        return c


def get_consultation(video: VideoStorage, consultation_id: str) -> Consultation:
    with video.begin() as uow:
        return consultation_of(uow, consultation_id)


def consultations_of(video: VideoStorage, case_id: str) -> list[Consultation]:
    with video.begin() as uow:
        return uow.consultations_of(case_id)


def note_consultation_replica(uow: VideoUnitOfWork, copy: Consultation) -> None:
    """Keep (or advance) the copy of a consultation booked at a node below, from its event (in the
    consumer's unit of work: the relay's batch shares one transaction)."""
    kept = uow.get_consultation(copy.consultation_id)
    if kept is None:
        uow.add_consultation(copy)
    elif consult.follow_replica(kept, copy):
        uow.save_consultation(kept)
    uow.commit()


def book_consultation(
    video: VideoStorage, remote: RemoteRooms, req: ConsultationRequest, ttl: timedelta
) -> Consultation:
    """The earliest common slot (or ``req.starts_at``), this node's units and rooms reserved, the other
    nodes' held then confirmed; a refusal releases everything and tries the next slot (up to 5)."""
    excluded: set[datetime] = set()
    last_error: DomainError | None = None
    for _ in range(MAX_ATTEMPTS):
        found, notice = consultation_slots(video, remote, req, limit=1, exclude=frozenset(excluded))
        if not found:
            if req.starts_at is not None and not excluded:
                raise Conflict(f"{req.starts_at.isoformat()} is not free for every participant")
            if last_error is not None:
                raise last_error
            raise FailedPrecondition(
                "no slot free for every participant in the window" + (f"; {notice}" if notice else ""), "NO_SLOT"
            )
        start, end = found[0]
        try:
            booked, holds = reserve_consultation(video, req, start, end)
        except Conflict as clash:
            if req.starts_at is not None:
                raise
            excluded.add(start)
            last_error = clash
            continue
        if not holds:
            return booked
        undo = partial(_give_up, video, remote, booked.consultation_id, "hold failed")
        refused = hold_all(video, remote, booked, holds, ttl, undo=undo)
        if refused is None:
            confirm_all(video, remote, holds, give_up=partial(_give_up, video, remote, booked.consultation_id))
            return confirm_consultation(video, booked.consultation_id)
        _give_up(video, remote, booked.consultation_id, refused)
        if req.starts_at is not None:
            raise Conflict(f"not free at {req.starts_at.isoformat()}: {refused}")
        excluded.add(start)
        last_error = Conflict(refused)
    raise last_error or FailedPrecondition("no slot free for every participant", "NO_SLOT")


def _give_up(video: VideoStorage, remote: RemoteRooms, consultation_id: str, reason: str) -> None:
    _, pending = abandon_consultation(video, consultation_id, reason)
    release_pending(video, remote, pending)


def cancel_consultation(
    video: VideoStorage, remote: RemoteRooms, consultation_id: str, expected_version: int, reason: str
) -> Consultation:
    cancelled, pending = abandon_consultation(
        video, consultation_id, reason, expected_version=expected_version, event=True
    )
    release_pending(video, remote, pending)
    return cancelled
