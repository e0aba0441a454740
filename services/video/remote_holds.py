"""Holds this node asks of other nodes for a booking (a visit or a consultation): hold each, confirm
all, or release all. A hold is recorded (ASKED) before it is asked, so a crash can always release it;
one that cannot be released now stays RELEASING for the sweep."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection
from datetime import timedelta

from services.common.errors import DomainError, Unavailable
from services.video.domain import RemoteHold, RemoteState
from services.video.ports import Booking, RemoteRooms, VideoStorage, VideoUnitOfWork
from services.video.schedules import room_of

log = logging.getLogger(__name__)


def mark_remote(video: VideoStorage, hold_id: str, state: RemoteState, *, only_from: RemoteState | None = None) -> None:
    with video.begin() as uow:
        uow.set_remote_state(state, hold_ids=[hold_id], only_from=None if only_from is None else [only_from])
        uow.commit()


def ask_remote(video: VideoStorage, uow: VideoUnitOfWork, booking_id: str, rooms: list[str]) -> list[RemoteHold]:
    """Record the holds about to be asked of other nodes first, so a crash can always release them."""
    holds = [RemoteHold(str(uuid.uuid4()), booking_id, r, room_of(uow, r).node, RemoteState.ASKED.value) for r in rooms]
    uow.add_remote_holds(holds, video.now())
    return holds


def releasing_all(uow: VideoUnitOfWork, booking_id: str) -> list[RemoteHold]:
    """Every hold a cancelled visit or consultation still has at other nodes goes RELEASING (returned)."""
    unreleased = [s for s in RemoteState if s != RemoteState.RELEASED]
    uow.set_remote_state(RemoteState.RELEASING, booking_id=booking_id, only_from=unreleased)
    return uow.remote_holds(booking_id, [RemoteState.RELEASING])


def remote_in(video: VideoStorage, state: RemoteState) -> list[RemoteHold]:
    with video.begin() as uow:
        return uow.remote_holds(None, [state])


def hold_all(
    video: VideoStorage,
    remote: RemoteRooms,
    booking: Booking,
    holds: list[RemoteHold],
    ttl: timedelta,
    *,
    undo: Callable[[], None],
) -> str | None:
    """Hold every remote room for ``booking``'s period; the reason of the first refusal, or None when
    all are held. A node that does not answer runs ``undo`` (give back what was taken) and raises
    Unavailable: the hold may have been granted before the deadline, so it is released too."""
    for h in holds:
        try:
            answer = remote.hold(
                h.node, hold_id=h.hold_id, room_id=h.room_id, visit=booking, ttl=ttl, unit_id=h.unit_id
            )
        except DomainError as error:
            undo()
            raise Unavailable(f"node {h.node} did not answer for room {h.room_id}: {error}") from error
        if not answer.granted:
            return f"room {h.room_id} at node {h.node}: {answer.reason}"
        mark_remote(video, h.hold_id, RemoteState.HELD, only_from=RemoteState.ASKED)
    return None


def confirm_all(
    video: VideoStorage, remote: RemoteRooms, holds: list[RemoteHold], *, give_up: Callable[[str], None]
) -> None:
    """Confirm every held room (and unit); a failure gives the whole booking up and is UNAVAILABLE."""
    for h in holds:
        try:
            remote.confirm(h.node, h.hold_id)
            mark_remote(video, h.hold_id, RemoteState.CONFIRMED)
        except DomainError as error:
            give_up(f"confirm failed: {error}")
            raise Unavailable(f"room {h.room_id} at node {h.node} could not be confirmed: {error}") from error


def release_pending(video: VideoStorage, remote: RemoteRooms, pending: Collection[RemoteHold]) -> int:
    """Release remote holds; one that cannot be reached now stays RELEASING for the next sweep."""
    released = 0
    for h in pending:
        try:
            remote.release(h.node, h.hold_id, "booking abandoned")
            mark_remote(video, h.hold_id, RemoteState.RELEASED)
            released += 1
        except DomainError:
            log.warning("remote hold release failed; retried by the sweep", extra={"hold_id": h.hold_id})
    return released
