"""Holds this node grants on its rooms (and units) to bookings made at other nodes: HoldRoom,
ConfirmHold, ReleaseHold, and the lapse of a hold never confirmed."""

from __future__ import annotations

from dataclasses import replace

from services.common.errors import Conflict, FailedPrecondition, NotFound
from services.video.consultations import check_consultation_free
from services.video.domain import Hold, HoldState, confirmed_hold, hold_owner, released_hold
from services.video.ports import VideoStorage, VideoUnitOfWork
from services.video.schedules import room_of


def _hold_for(uow: VideoUnitOfWork, hold_id: str, requesting_node: str) -> Hold:
    hold = uow.get_hold(hold_id)
    if hold is None or (requesting_node and hold.requesting_node != requesting_node):
        raise NotFound("hold", hold_id)
    return hold


def hold_room(video: VideoStorage, hold: Hold, unit_id: str = "") -> Hold:
    """Hold a room of this node (and, for a remote consultation, one of its units) for a booking
    made at another node; asked again, the hold as it stands. A consultation's hold is refused outside
    this node's consultation hours and its leaders' reception sessions in the room."""
    with video.begin() as uow:
        existing = uow.get_hold(hold.hold_id)
        if existing is not None:
            return existing
        room = room_of(uow, hold.room_id)
        if room.node != video.node:
            raise FailedPrecondition(f"room {hold.room_id} belongs to node {room.node}", room.node)
    # The reservations and the hold commit together; a clash records a REFUSED hold.
    try:
        with video.begin() as uow:
            owner = hold_owner(hold.hold_id)
            if unit_id:
                check_consultation_free(video, uow, unit_id, hold.room_id, hold.starts_at, hold.ends_at)
                uow.reserve(f"unit:{unit_id}", hold.starts_at, hold.ends_at, owner)
            uow.reserve(f"room:{hold.room_id}", hold.starts_at, hold.ends_at, owner)
            uow.add_hold(hold)
            uow.commit()
        return hold
    except Conflict as clash:
        refused = replace(hold, state=HoldState.REFUSED, reason=str(clash))
        with video.begin() as uow:
            if uow.get_hold(hold.hold_id) is None:
                uow.add_hold(refused)
                uow.commit()
        return refused


def confirm_hold(video: VideoStorage, hold_id: str, requesting_node: str) -> Hold:
    with video.begin() as uow:
        hold = _hold_for(uow, hold_id, requesting_node)
        confirmed = confirmed_hold(hold, video.now())
        if confirmed != hold:
            uow.save_hold(confirmed)
            uow.commit()
        return confirmed


def release_hold(video: VideoStorage, hold_id: str, requesting_node: str, reason: str) -> Hold:
    with video.begin() as uow:
        hold = _hold_for(uow, hold_id, requesting_node)
        released = released_hold(hold, reason)
        if released is None:
            return hold
        uow.free(hold_owner(hold_id))
        uow.save_hold(released)
        uow.commit()
        return released


def get_hold(video: VideoStorage, hold_id: str) -> Hold | None:
    with video.begin() as uow:
        return uow.get_hold(hold_id)


def expire_holds(video: VideoStorage) -> int:
    """Sweep: HELD holds past their time-to-live lapse and free the room."""
    with video.begin() as uow:
        lapsed = uow.lapsed_holds(video.now())
        for hold in lapsed:
            uow.free(hold_owner(hold.hold_id))
            uow.save_hold(replace(hold, state=HoldState.EXPIRED))
        uow.commit()
        return len(lapsed)
