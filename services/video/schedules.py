"""Rooms, leaders' reception schedules and the search for the earliest slot free for every participant."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta

from services.common.clock import CHINA, to_utc
from services.common.errors import InvalidArgument, NotFound
from services.video import slots
from services.video.domain import (
    BookRequest,
    FoundSlot,
    Room,
    Schedule,
    check_version,
    slots_calendar_notice,
    validate_room,
    validate_schedule,
)
from services.video.ports import VideoStorage, VideoUnitOfWork


def register_room(video: VideoStorage, room: Room) -> Room:
    """A room of this node, or of another node (so a booking here knows whom to ask for it)."""
    validate_room(room)
    with video.begin() as uow:
        uow.put_room(room)
        uow.commit()
    return room


def room_of(uow: VideoUnitOfWork, room_id: str) -> Room:
    room = uow.room(room_id)
    if room is None:
        raise NotFound("room", room_id)
    return room


def list_rooms(video: VideoStorage, node: str = "") -> list[Room]:
    with video.begin() as uow:
        return uow.rooms(node)


def publish_schedule(video: VideoStorage, schedule: Schedule, expected_version: int) -> Schedule:
    """A leader's schedule, new (expected version 0) or replacing the one at ``expected_version``."""
    validate_schedule(schedule)
    with video.begin() as uow:
        for i, room_id in enumerate(schedule.room_ids):
            if uow.room(room_id) is None:
                raise InvalidArgument(f"schedule.room_ids[{i}]", f"room {room_id} is not registered")
        current = uow.schedule_of(schedule.leader_id)
        if schedule.schedule_id and (current is None or current.schedule_id != schedule.schedule_id):
            raise NotFound("schedule", schedule.schedule_id)
        if current is None:
            check_version(expected_version, 0, "schedule")
            stored = replace(schedule, schedule_id=f"sch-{uuid.uuid4().hex[:12]}", version=1)
            uow.add_schedule(stored)
        else:
            check_version(expected_version, current.version, "schedule")
            stored = replace(schedule, schedule_id=current.schedule_id, version=current.version + 1)
            uow.save_schedule(stored, expected_version=current.version)
        uow.commit()
        return stored


def schedule_of(uow: VideoUnitOfWork, leader_id: str) -> Schedule:
    schedule = uow.schedule_of(leader_id)
    if schedule is None:
        raise NotFound("schedule of leader", leader_id)
    return schedule


def schedules(video: VideoStorage) -> list[Schedule]:
    """Every published schedule of this node, by leader id."""
    with video.begin() as uow:
        return uow.schedules()


def resources(leader_id: str, rooms: list[str], unit_ids: tuple[str, ...] | list[str]) -> list[str]:
    """What a visit reserves: the leader, the local rooms, the units joining."""
    return [f"leader:{leader_id}"] + [f"room:{r}" for r in rooms] + [f"unit:{u}" for u in unit_ids]


def find_slots(
    video: VideoStorage, uow: VideoUnitOfWork, req: BookRequest, limit: int, *, ignore_owner: str | None = None
) -> tuple[Schedule, list[FoundSlot], list[str]]:
    """Free slots for the leader, the leader's rooms, local extra rooms and units (remote rooms are
    checked by their own node when held), and the remote rooms."""
    schedule = schedule_of(uow, req.leader_id)
    local_rooms: list[str] = list(schedule.room_ids)
    remote: list[str] = []
    for i, room_id in enumerate(req.room_ids):
        room = uow.room(room_id)
        if room is None:
            raise InvalidArgument(f"room_ids[{i}]", f"room {room_id} is not registered")
        if room_id in local_rooms:
            continue  # the leader's own room, named again by the clerk: reserved once, not twice
        (local_rooms if room.node == video.node else remote).append(room_id)
    not_before, not_after = req.not_before, req.not_after
    if req.starts_at is not None:
        not_before = not_after = req.starts_at
    first = not_before.astimezone(CHINA).date()
    # Days past the last officially published calendar year offer no slots (rather than failing
    # the whole search): the next year's sessions appear once its holiday notice is loaded.
    last = min(not_after.astimezone(CHINA).date(), video.calendar.known_range()[1])
    session_list = slots.sessions(schedule, first, last, video.calendar)
    lo, hi = not_before - timedelta(days=1), not_after + timedelta(days=1)
    busy = uow.busy(resources(req.leader_id, local_rooms, req.unit_ids), lo, hi, ignore_owner=ignore_owner)
    found = slots.free_slots(
        slots.candidates(schedule, session_list),
        slots.merge(busy),
        buffer=timedelta(minutes=schedule.buffer_minutes),
        session_counts=uow.session_counts(req.leader_id, lo, hi),
        not_before=not_before,
        not_after=not_after,
        limit=limit,
        exclude=req.exclude,
    )
    rooms = tuple(local_rooms + remote)
    return (
        schedule,
        [FoundSlot(to_utc(c.starts_at), to_utc(c.ends_at), to_utc(c.session_start), left, rooms) for c, left in found],
        remote,
    )


def list_slots(video: VideoStorage, req: BookRequest, limit: int) -> list[FoundSlot]:
    with video.begin() as uow:
        return find_slots(video, uow, req, limit)[1]


def calendar_notice(video: VideoStorage, req: BookRequest) -> str:
    """Why a window offers nothing after some day: it runs past the node's official calendar."""
    return slots_calendar_notice(video.calendar.known_range()[1], req)


def next_free_at(video: VideoStorage, leader_id: str, now: datetime, horizon: timedelta) -> tuple[datetime | None, str]:
    """A leader's earliest free slot within ``horizon`` (None: none), and the calendar notice."""
    wanted = BookRequest("", leader_id, (), (), now, now + horizon, None)
    found = list_slots(video, wanted, 1)
    return (found[0].starts_at if found else None), calendar_notice(video, wanted)
