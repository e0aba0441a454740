"""Moving a remote consultation (远程会商) to another common slot (RescheduleConsultation).

The steps of a visit's move (``moves``): the new slot is the earliest common one of every participant,
each asked on its own node again (this node's units and rooms with the consultation's own reservations
counted free); the other nodes' units and rooms are held for it (ASKED, then HELD); one local
transaction moves this node's reservations and the consultation (version + 1; new holds CONFIRMING,
old ones SUPERSEDED) and writes consultation_booked with ``moved_from``, which puts the move on the
case's history; then the new holds are confirmed and only then the old ones released. A refusal tries
the next slot; anything failing before the commit releases the new holds and leaves the consultation
as it was. At another node the consultation's current hold still counts busy, so a new slot there does
not overlap the old one.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial

from services.common.errors import Conflict, DomainError, FailedPrecondition
from services.video.consult import Consultation, ConsultationBooked, ConsultationRequest
from services.video.consultations import (
    check_consultation_free,
    consultation_of,
    consultation_slots,
    emit_with_note,
    get_consultation,
)
from services.video.domain import RemoteHold, RemoteState, check_version
from services.video.moves import complete_move, drop_and_release
from services.video.ports import RemoteRooms, VideoStorage
from services.video.remote_holds import hold_all
from services.video.visits import MAX_ATTEMPTS


def _ask_holds(video: VideoStorage, consultation_id: str) -> list[RemoteHold]:
    """Record the holds to ask of the other nodes for the new slot (ASKED), before asking."""
    with video.begin() as uow:
        c = consultation_of(uow, consultation_id)
        unsettled = uow.remote_holds(consultation_id, [RemoteState.CONFIRMING, RemoteState.SUPERSEDED])
        if unsettled:
            raise FailedPrecondition(
                f"the previous move is still being confirmed with node {unsettled[0].node}; try again shortly",
                "BOOKED",
            )
        holds = [
            RemoteHold(str(uuid.uuid4()), consultation_id, p.room_id, p.node, RemoteState.ASKED.value, p.unit_id)
            for p in c.participants
            if p.node != video.node
        ]
        uow.add_remote_holds(holds, video.now())
        uow.commit()
        return holds


def _commit_move(
    video: VideoStorage, consultation_id: str, version: int, start: datetime, end: datetime, holds: list[RemoteHold]
) -> Consultation:
    """Once every new hold is HELD: this node's units and rooms move to [start, end), and so does the
    consultation; the new holds become CONFIRMING and the old ones SUPERSEDED."""
    new_ids = [h.hold_id for h in holds]
    with video.begin() as uow:
        c = consultation_of(uow, consultation_id)
        check_version(version, c.version, "consultation")
        c.require_movable()
        held = uow.set_remote_state(RemoteState.CONFIRMING, hold_ids=new_ids, only_from=[RemoteState.HELD])
        if held != len(new_ids):
            raise Conflict("the holds for the new slot were given up meanwhile")
        uow.set_remote_state(RemoteState.SUPERSEDED, hold_ids=c.hold_ids, only_from=[RemoteState.CONFIRMED])
        uow.free(c.owner)
        for p in c.participants:
            if p.node == video.node:
                check_consultation_free(video, uow, p.unit_id, p.room_id, start, end)
                uow.reserve(f"unit:{p.unit_id}", start, end, c.owner)
                uow.reserve(f"room:{p.room_id}", start, end, c.owner)
        was = c.starts_at
        c.move_to(start, end, new_ids)
        uow.save_consultation(c)
        uow.forget_reminders(consultation_id)  # reminded again for the new start
        emit_with_note(video, uow, ConsultationBooked(c, moved_from=was))
        uow.commit()
        return c


def reschedule_consultation(
    video: VideoStorage,
    remote: RemoteRooms,
    consultation_id: str,
    expected_version: int,
    window: tuple[datetime, datetime, datetime | None],
    ttl: timedelta,
) -> Consultation:
    """Move the consultation to the earliest other common slot in ``window`` (not_before, not_after,
    or an exact start); see the module docstring."""
    current = get_consultation(video, consultation_id)
    check_version(expected_version, current.version, "consultation")
    current.require_movable()
    lo, hi, starts_at = window
    req = ConsultationRequest(
        current.case_id,
        "",
        current.topic,
        tuple(current.participants),
        current.ends_at - current.starts_at,
        lo,
        hi,
        starts_at,
    )
    excluded: set[datetime] = {current.starts_at}
    last_error: DomainError | None = None
    for _ in range(MAX_ATTEMPTS):
        found, notice = consultation_slots(
            video, remote, req, limit=1, exclude=frozenset(excluded), ignore_owner=current.owner
        )
        if not found:
            if starts_at is not None and last_error is None:
                raise Conflict(f"{starts_at.isoformat()} is not free for every participant")
            raise last_error or FailedPrecondition(
                "no other common slot free for every participant in the window" + (f"; {notice}" if notice else ""),
                "BOOKED",
            )
        start, end = found[0]
        holds = _ask_holds(video, consultation_id)
        undo = partial(drop_and_release, video, remote, [h.hold_id for h in holds])
        refused = hold_all(video, remote, replace(current, starts_at=start, ends_at=end), holds, ttl, undo=undo)
        if refused is not None:
            undo()
            if starts_at is not None:
                raise Conflict(f"not free at {starts_at.isoformat()}: {refused}")
            excluded.add(start)
            last_error = Conflict(refused)
            continue
        try:
            moved = _commit_move(video, consultation_id, current.version, start, end, holds)
        except DomainError:
            undo()  # the consultation changed or a unit or room here was taken meanwhile: nothing moved
            raise
        complete_move(video, remote, consultation_id, holds)
        return moved
    raise last_error or FailedPrecondition("no other common slot free for every participant", "BOOKED")
