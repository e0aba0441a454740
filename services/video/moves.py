"""Moving a visit to another slot (RescheduleVisit), also when it holds rooms at other nodes.

Local-only visits move in one transaction. With rooms at other nodes: plan the slot and record new
holds (ASKED), hold each remote room for the new period, then in one local transaction move the
reservations and the visit (version + 1; new holds CONFIRMING, old ones SUPERSEDED), then confirm the
new holds and only then release the old ones. A refusal or an unreachable node before the commit
releases the new holds and leaves the visit as it was; a crash half-way leaves holds the sweeps of
both nodes clean up, and a room is never given up before its replacement is confirmed.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial

from services.common.errors import Conflict, DomainError, FailedPrecondition, NotFound, Unavailable
from services.video.consultations import abandon_consultation
from services.video.domain import (
    BookRequest,
    FoundSlot,
    RemoteHold,
    RemoteState,
    Schedule,
    Visit,
    booked,
    check_version,
)
from services.video.ports import RemoteRooms, VideoStorage, VideoUnitOfWork
from services.video.remote_holds import ask_remote, hold_all, mark_remote, release_pending
from services.video.schedules import find_slots, resources, schedule_of
from services.video.visits import MAX_ATTEMPTS, abandon_visit, get_visit, visit_of

log = logging.getLogger(__name__)


def _next_slot(
    video: VideoStorage, uow: VideoUnitOfWork, visit: Visit, req: BookRequest
) -> tuple[Schedule, FoundSlot, list[str]]:
    """The earliest other slot for every participant of ``visit``; its own reservations count free."""
    schedule = schedule_of(uow, visit.leader_id)
    extra = tuple(r for r in visit.room_ids if r not in schedule.room_ids)
    moved = BookRequest(
        visit.case_id,
        visit.leader_id,
        extra,
        tuple(visit.unit_ids),
        req.not_before,
        req.not_after,
        req.starts_at,
        frozenset({visit.starts_at}) | req.exclude,
    )
    _, found, remote = find_slots(video, uow, moved, 1, ignore_owner=visit.owner)
    if not found:
        raise FailedPrecondition("no other slot free for every participant in the window", "BOOKED")
    return schedule, found[0], remote


def _move_local(
    uow: VideoUnitOfWork, visit: Visit, schedule: Schedule, slot: FoundSlot, remote: list[str], hold_ids: list[str]
) -> Visit:
    """Move the local reservations, the session counts and the visit to ``slot`` (version + 1)."""
    uow.free(visit.owner)
    assert visit.session_start is not None
    uow.count_in_session(visit.leader_id, visit.session_start, 0, -1)
    local_rooms = [r for r in slot.room_ids if r not in remote]
    for resource in resources(visit.leader_id, local_rooms, visit.unit_ids):
        uow.reserve(resource, slot.starts_at, slot.ends_at, visit.owner)
    uow.count_in_session(visit.leader_id, slot.session_start, schedule.max_per_session, +1)
    was = visit.version
    visit.move_to(slot, hold_ids)
    uow.save_moved_visit(visit, expected_version=was)
    # Reminders are per start time: a moved visit is reminded again.
    uow.forget_reminders(visit.visit_id)
    uow.emit(booked(visit), uow.owner(visit.case_id))
    return visit


def move_local_visit(video: VideoStorage, visit_id: str, expected_version: int, req: BookRequest) -> Visit:
    """Move a visit with local participants only, in one transaction (its own old slot counts free)."""
    with video.begin() as uow:
        visit = visit_of(uow, visit_id)
        check_version(expected_version, visit.version, "visit")
        visit.require_movable()
        if visit.hold_ids:
            raise FailedPrecondition("a visit with rooms at other nodes is moved with holds", "BOOKED")
        schedule, slot, remote = _next_slot(video, uow, visit, req)
        moved = _move_local(uow, visit, schedule, slot, remote, [])
        uow.commit()
        return moved


def plan_move(
    video: VideoStorage, visit_id: str, expected_version: int, req: BookRequest
) -> tuple[Visit, FoundSlot, list[RemoteHold]]:
    """Step 1 of moving a visit with remote rooms: pick the new slot and record the new holds to
    ask (ASKED). Nothing of the visit changes yet."""
    with video.begin() as uow:
        visit = visit_of(uow, visit_id)
        check_version(expected_version, visit.version, "visit")
        visit.require_movable()
        unsettled = uow.remote_holds(visit_id, [RemoteState.CONFIRMING, RemoteState.SUPERSEDED])
        if unsettled:
            raise FailedPrecondition(
                f"the previous move is still being confirmed with node {unsettled[0].node}; try again shortly",
                "BOOKED",
            )
        _, slot, remote = _next_slot(video, uow, visit, req)
        holds = ask_remote(video, uow, visit_id, remote)
        uow.commit()
        return visit, slot, holds


def commit_move(video: VideoStorage, visit: Visit, slot: FoundSlot, holds: list[RemoteHold]) -> Visit:
    """Step 2, once every new hold is HELD: one transaction moves the local reservations and the
    visit; the new holds become CONFIRMING and the old ones SUPERSEDED (released only after the
    new ones are confirmed)."""
    new_ids = [h.hold_id for h in holds]
    with video.begin() as uow:
        current = visit_of(uow, visit.visit_id)
        check_version(visit.version, current.version, "visit")
        current.require_movable()
        held = uow.set_remote_state(RemoteState.CONFIRMING, hold_ids=new_ids, only_from=[RemoteState.HELD])
        if held != len(new_ids):
            raise Conflict("the holds for the new slot were given up meanwhile")
        uow.set_remote_state(RemoteState.SUPERSEDED, hold_ids=current.hold_ids, only_from=[RemoteState.CONFIRMED])
        schedule = schedule_of(uow, current.leader_id)
        moved = _move_local(uow, current, schedule, slot, [h.room_id for h in holds], new_ids)
        uow.commit()
        return moved


def drop_move(video: VideoStorage, hold_ids: list[str]) -> list[RemoteHold]:
    """A move failed before its commit: its new holds (ASKED or HELD) go RELEASING, returned for release."""
    with video.begin() as uow:
        uow.set_remote_state(RemoteState.RELEASING, hold_ids=hold_ids, only_from=[RemoteState.ASKED, RemoteState.HELD])
        dropped = [h for h in uow.remote_holds(None, [RemoteState.RELEASING]) if h.hold_id in hold_ids]
        uow.commit()
        return dropped


def release_superseded(video: VideoStorage, visit_id: str) -> list[RemoteHold]:
    """Once no new hold of the visit awaits confirmation, its old (SUPERSEDED) holds go RELEASING."""
    with video.begin() as uow:
        if uow.remote_holds(visit_id, [RemoteState.CONFIRMING]):
            return []
        uow.set_remote_state(RemoteState.RELEASING, booking_id=visit_id, only_from=[RemoteState.SUPERSEDED])
        releasing = uow.remote_holds(visit_id, [RemoteState.RELEASING])
        uow.commit()
        return releasing


def reschedule_visit(
    video: VideoStorage, remote: RemoteRooms, visit_id: str, expected_version: int, req: BookRequest, ttl: timedelta
) -> Visit:
    """Move a visit to the earliest slot free for every participant (or exactly ``req.starts_at``);
    see the module docstring."""
    if not get_visit(video, visit_id).hold_ids:
        return move_local_visit(video, visit_id, expected_version, req)
    excluded: set[datetime] = set(req.exclude)
    last_error: DomainError | None = None
    for _ in range(MAX_ATTEMPTS):
        visit, slot, holds = plan_move(video, visit_id, expected_version, replace(req, exclude=frozenset(excluded)))
        undo = partial(drop_and_release, video, remote, [h.hold_id for h in holds])
        target = replace(visit, starts_at=slot.starts_at, ends_at=slot.ends_at)
        refused = hold_all(video, remote, target, holds, ttl, undo=undo)
        if refused is not None:
            undo()
            if req.starts_at is not None:
                raise Conflict(f"a remote room is not free at {req.starts_at.isoformat()}: {refused}")
            excluded.add(slot.starts_at)
            last_error = Conflict(refused)
            continue
        try:
            moved = commit_move(video, visit, slot, holds)
        except DomainError:
            undo()  # the visit changed or a local participant was taken meanwhile: nothing moved
            raise
        complete_move(video, remote, moved.visit_id, holds)
        return moved
    raise last_error or FailedPrecondition("no other slot free for every participant", "BOOKED")


def drop_and_release(video: VideoStorage, remote: RemoteRooms, hold_ids: list[str]) -> None:
    release_pending(video, remote, drop_move(video, hold_ids))


def _abandon_moved(video: VideoStorage, booking_id: str, hold: RemoteHold, why: DomainError) -> list[RemoteHold]:
    """A moved visit or consultation lost ``hold``'s room at its new slot: cancelled (with its event)."""
    with video.begin() as uow:
        is_visit = uow.get_visit(booking_id) is not None
    what = "visit" if is_visit else "consultation"
    reason = f"room {hold.room_id} at node {hold.node} was lost while moving the {what}: {why}"
    if is_visit:
        return abandon_visit(video, booking_id, reason, event=True)[1]
    return abandon_consultation(video, booking_id, reason, event=True)[1]


def complete_move(video: VideoStorage, remote: RemoteRooms, visit_id: str, holds: list[RemoteHold]) -> int:
    """Confirm a committed move's new holds, then release the old ones; returns holds released.
    ``visit_id``: the visit's or the consultation's id (their moves take the same steps).

    Unreachable node: the hold stays CONFIRMING and the sweep retries (the owning node keeps it for
    its time-to-live). A hold that lapsed there meanwhile means the visit lost its room at the new
    slot: the visit is cancelled (visit_cancelled) and everything it still holds is released."""
    for h in holds:
        try:
            remote.confirm(h.node, h.hold_id)
        except Unavailable:
            log.warning("move confirmation failed; retried by the sweep", extra={"hold_id": h.hold_id})
            return 0
        except (FailedPrecondition, NotFound) as lapsed:
            try:
                pending = _abandon_moved(video, visit_id, h, lapsed)
            except (Conflict, FailedPrecondition):
                return 0  # cancelled or checked in meanwhile: the sweep releases what is RELEASING
            return release_pending(video, remote, pending)
        # A cancel meanwhile left it RELEASING: kept so.
        mark_remote(video, h.hold_id, RemoteState.CONFIRMED, only_from=RemoteState.CONFIRMING)
    return release_pending(video, remote, release_superseded(video, visit_id))
