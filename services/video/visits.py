"""Visits (视频接访): book on the earliest slot free for every participant, confirm, cancel, check in,
record the outcome. A booking with rooms at other nodes is HOLDING until each of them is held and
confirmed there; any refusal or error releases what was held (``remote_holds``)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial

from services.common.errors import Conflict, DomainError, FailedPrecondition, NotFound
from services.video.domain import (
    BookRequest,
    RemoteHold,
    RemoteState,
    Representative,
    Visit,
    VisitCancelled,
    VisitOutcomeRecorded,
    VisitState,
    booked,
    check_version,
    ensure_no_active_visit,
)
from services.video.ports import RemoteRooms, VideoStorage, VideoUnitOfWork, VisitFilter
from services.video.remote_holds import ask_remote, confirm_all, hold_all, release_pending, releasing_all
from services.video.schedules import calendar_notice, find_slots, resources

MAX_ATTEMPTS = 5  # candidate slots tried when a remote room or a concurrent clerk takes one


def visit_of(uow: VideoUnitOfWork, visit_id: str) -> Visit:
    visit = uow.get_visit(visit_id)
    if visit is None:
        raise NotFound("visit", visit_id)
    return visit


def get_visit(video: VideoStorage, visit_id: str) -> Visit:
    with video.begin() as uow:
        return visit_of(uow, visit_id)


def list_visits(video: VideoStorage, wanted: VisitFilter, *, offset: int, limit: int) -> tuple[list[Visit], int]:
    """A page of the visits, by start, and how many match (-1: more than the count reads)."""
    with video.begin() as uow:
        return uow.page_visits(wanted, offset=offset, limit=limit)


def reserve_visit(video: VideoStorage, req: BookRequest) -> tuple[Visit, list[RemoteHold]]:
    """Reserve every local participant on the earliest fitting slot (or ``starts_at``); with remote
    rooms the visit is HOLDING and the remote holds to ask are returned."""
    now = video.now()
    with video.begin() as uow:
        if req.one_per_case:
            # In the booking's own transaction, so two tabs of one citizen cannot both pass the check.
            uow.lock_case(req.case_id)
            ensure_no_active_visit(uow.visits_of_case(req.case_id))
        schedule, found, remote = find_slots(video, uow, req, 1)
        if not found:
            if req.starts_at is not None:
                raise Conflict(f"{req.starts_at.isoformat()} is not free for every participant")
            notice = calendar_notice(video, req)
            raise FailedPrecondition(
                "no slot free for every participant in the window" + (f"; {notice}" if notice else ""), "NO_SLOT"
            )
        slot = found[0]
        visit_id = f"vis-{uuid.uuid4().hex[:16]}"
        local_rooms = [r for r in slot.room_ids if r not in remote]
        for resource in resources(req.leader_id, local_rooms, req.unit_ids):
            uow.reserve(resource, slot.starts_at, slot.ends_at, f"visit:{visit_id}")
        uow.count_in_session(req.leader_id, slot.session_start, schedule.max_per_session, +1)
        holds = ask_remote(video, uow, visit_id, remote)
        visit = Visit(
            visit_id=visit_id,
            case_id=req.case_id,
            leader_id=req.leader_id,
            room_ids=list(slot.room_ids),
            unit_ids=list(req.unit_ids),
            starts_at=slot.starts_at,
            ends_at=slot.ends_at,
            state=VisitState.HOLDING if holds else VisitState.BOOKED,
            version=1,
            session_start=slot.session_start,
            hold_ids=[h.hold_id for h in holds],
            created_at=now,
        )
        uow.add_visit(visit)
        if not holds:
            uow.emit(booked(visit), uow.owner(visit.case_id))
        uow.commit()
        return visit, holds


def confirm_visit(video: VideoStorage, visit_id: str) -> Visit:
    """Every remote room is confirmed: the visit is BOOKED, and its holds CONFIRMED."""
    with video.begin() as uow:
        visit = visit_of(uow, visit_id)
        visit.confirm()
        uow.save_visit(visit)
        uow.set_remote_state(RemoteState.CONFIRMED, booking_id=visit_id, only_from=[RemoteState.HELD])
        uow.emit(booked(visit), uow.owner(visit.case_id))
        uow.commit()
        return visit


def abandon_visit(
    video: VideoStorage, visit_id: str, reason: str, *, expected_version: int = 0, event: bool = False
) -> tuple[Visit, list[RemoteHold]]:
    """Cancel a visit: free every local reservation and its place in the session; remote holds
    move to RELEASING and are returned so the caller (or the sweep, after a failure) releases them."""
    with video.begin() as uow:
        visit = visit_of(uow, visit_id)
        check_version(expected_version, visit.version, "visit")
        visit.cancel()
        uow.free(visit.owner)
        assert visit.session_start is not None
        uow.count_in_session(visit.leader_id, visit.session_start, 0, -1)
        uow.save_visit(visit)
        pending = releasing_all(uow, visit_id)
        if event:
            uow.emit(VisitCancelled(visit.case_id, visit_id, visit.starts_at, reason), uow.owner(visit.case_id))
        uow.commit()
        return visit, pending


def check_in(video: VideoStorage, visit_id: str, expected_version: int, reps: list[Representative]) -> Visit:
    with video.begin() as uow:
        visit = visit_of(uow, visit_id)
        check_version(expected_version, visit.version, "visit")
        visit.check_in(reps, video.now())
        uow.save_visit(visit)
        uow.commit()
        return visit


def record_outcome(
    video: VideoStorage, visit_id: str, expected_version: int, minutes: str, decisions: str, ref: str
) -> Visit:
    """COMPLETED with the minutes and decisions; held here for a case another node handles, a command
    also takes the outcome to that node's routing, which records it in the case's history (a local
    owner's routing follows the event)."""
    with video.begin() as uow:
        visit = visit_of(uow, visit_id)
        check_version(expected_version, visit.version, "visit")
        visit.complete(minutes, decisions, ref)
        uow.save_visit(visit)
        owner = uow.owner(visit.case_id)
        outcome = VisitOutcomeRecorded(visit.case_id, visit_id, minutes, decisions, ref)
        uow.emit(outcome, owner, to_owner=owner.node != video.node)
        uow.commit()
        return visit


def book_visit(video: VideoStorage, remote: RemoteRooms, req: BookRequest, ttl: timedelta) -> Visit:
    """Earliest slot for everyone, with remote rooms held then confirmed; see the module docstring."""
    excluded: set[datetime] = set(req.exclude)
    last_error: DomainError | None = None
    for _ in range(MAX_ATTEMPTS):
        attempt = replace(req, exclude=frozenset(excluded))
        try:
            visit, holds = reserve_visit(video, attempt)
        except Conflict as clash:
            # A concurrent clerk took the slot between our read and our write.
            if req.starts_at is not None:
                raise
            last_error = clash
            continue
        if not holds:
            return visit
        undo = partial(give_up, video, remote, visit, "hold failed")
        refused = hold_all(video, remote, visit, holds, ttl, undo=undo)
        if refused is None:
            confirm_all(video, remote, holds, give_up=partial(give_up, video, remote, visit))
            return confirm_visit(video, visit.visit_id)
        give_up(video, remote, visit, refused)
        if req.starts_at is not None:
            raise Conflict(f"a remote room is not free at {req.starts_at.isoformat()}: {refused}")
        excluded.add(visit.starts_at)
        last_error = Conflict(refused)
    raise last_error or FailedPrecondition("no slot free for every participant", "NO_SLOT")


def give_up(video: VideoStorage, remote: RemoteRooms, visit: Visit, reason: str) -> None:
    _, pending = abandon_visit(video, visit.visit_id, reason)
    release_pending(video, remote, pending)


def cancel_visit(video: VideoStorage, remote: RemoteRooms, visit_id: str, expected_version: int, reason: str) -> Visit:
    visit, pending = abandon_visit(video, visit_id, reason, expected_version=expected_version, event=True)
    release_pending(video, remote, pending)
    return visit
