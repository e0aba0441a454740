"""video's SQLAlchemy adapter: every operation is one transaction on the service's own database.

Double booking is refused twice: an overlap check inside the transaction, serialised per resource
(SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction-scoped advisory lock on the resource), and the
UNIQUE(resource_id, starts_at) constraint of reservations, both reported as Conflict (ABORTED).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from google.protobuf.message import Message
from lianxin.events.v1 import events_pb2
from sqlalchemy import BindParameter, String, bindparam, cast, delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.calendar import WorkingCalendar
from services.common.db import bounded_count
from services.common.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from services.common.events import envelope, write_event
from services.common.outbox import append_event
from services.common.service import BusEvent
from services.common.timeutil import CHINA, to_timestamp
from services.video import consult, slots
from services.video.domain import (
    BookRequest,
    CaseOwner,
    FoundSlot,
    Hold,
    HoldState,
    OneOffDay,
    RemoteHold,
    RemoteState,
    Representative,
    Room,
    Schedule,
    Visit,
    VisitState,
    WeeklyPattern,
    check_version,
    ensure_no_active_visit,
    owner_for_event,
    parse_hhmm,
    reminders_due,
    require_state,
    validate_schedule,
)
from services.video.models import (
    CaseOwnerRow,
    ConsultationRow,
    HoldRow,
    ReminderRow,
    RemoteHoldRow,
    ReservationRow,
    RoomRow,
    ScheduleRow,
    SessionCountRow,
    VisitRow,
    outbox,
)

# Slots are at most 480 minutes (domain.validate_schedule): a day covers any booked slot.
LONGEST_RESERVATION = timedelta(days=1)


OWNER_CACHE_SIZE = 100_000  # cases whose owner epoch this process remembers writing


class Sealer(Protocol):
    """The part of ``services.common.crypto.FieldCipher`` this store uses."""

    def encrypt(self, plaintext: str, *, context: str) -> bytes: ...

    def decrypt(self, blob: bytes, *, context: str) -> str: ...


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _inline(state: str) -> BindParameter[str]:
    """A transient state written into the statement, not bound: PostgreSQL then plans with the
    column's statistics, where HOLDING is rare, and takes the state index; a generic plan for
    ``state = $1`` guesses the most common state's share and scans the table."""
    return bindparam(None, state, literal_execute=True)


def _schedule_from_row(row: ScheduleRow) -> Schedule:
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


def _schedule_body(s: Schedule) -> dict[str, object]:
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


class VideoStore:
    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        cipher: Sealer,
        node: str,
        calendar: WorkingCalendar,
        clock: Callable[[], datetime],
    ) -> None:
        self._factory = factory
        self._cipher = cipher
        self.node = node
        self._calendar = calendar
        self._clock = clock
        # Epochs this process already wrote to video_case_owners: most case events repeat the epoch
        # known (every work order change), so they cost no write. The table stays the authority.
        self._owner_epochs: dict[str, int] = {}

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        session = self._factory()
        try:
            with session.begin():
                yield session
        except IntegrityError as error:
            raise Conflict("the resource was booked by someone else meanwhile; pick another slot") from error
        finally:
            session.close()

    def now(self) -> datetime:
        return aware(self._clock())

    # -- rooms and schedules ---------------------------------------------------------------------

    def register_room(self, room: Room) -> Room:
        if not room.room_id.strip():
            raise InvalidArgument("room.room_id", "must be set")
        if len(room.node) != 6 or not room.node.isdigit():
            raise InvalidArgument("room.node", f"must be a 6-digit region code, got {room.node!r}")
        with self._tx() as s:
            row = s.get(RoomRow, room.room_id)
            if row is None:
                s.add(RoomRow(room_id=room.room_id, node=room.node, name=room.name))
            else:
                row.node, row.name = room.node, room.name
        return room

    def room(self, s: Session, room_id: str) -> Room:
        row = s.get(RoomRow, room_id)
        if row is None:
            raise NotFound("room", room_id)
        return Room(row.room_id, row.node, row.name)

    def room_node(self, room_id: str) -> str:
        with self._tx() as s:
            return self.room(s, room_id).node

    def publish_schedule(self, schedule: Schedule, expected_version: int) -> Schedule:
        validate_schedule(schedule)
        with self._tx() as s:
            for i, room_id in enumerate(schedule.room_ids):
                if s.get(RoomRow, room_id) is None:
                    raise InvalidArgument(f"schedule.room_ids[{i}]", f"room {room_id} is not registered")
            row = s.scalar(select(ScheduleRow).where(ScheduleRow.leader_id == schedule.leader_id))
            if schedule.schedule_id and (row is None or row.schedule_id != schedule.schedule_id):
                raise NotFound("schedule", schedule.schedule_id)
            if row is None:
                check_version(expected_version, 0, "schedule")
                row = ScheduleRow(
                    schedule_id=f"sch-{uuid.uuid4().hex[:12]}",
                    leader_id=schedule.leader_id,
                    node=schedule.node,
                    body=_schedule_body(schedule),
                    slot_minutes=schedule.slot_minutes,
                    buffer_minutes=schedule.buffer_minutes,
                    max_per_session=schedule.max_per_session,
                    version=1,
                )
                s.add(row)
            else:
                check_version(expected_version, row.version, "schedule")
                done = s.execute(
                    update(ScheduleRow)
                    .where(ScheduleRow.schedule_id == row.schedule_id, ScheduleRow.version == row.version)
                    .values(
                        node=schedule.node,
                        body=_schedule_body(schedule),
                        slot_minutes=schedule.slot_minutes,
                        buffer_minutes=schedule.buffer_minutes,
                        max_per_session=schedule.max_per_session,
                        version=row.version + 1,
                    )
                )
                if done.rowcount != 1:  # type: ignore[attr-defined]
                    raise Conflict("the schedule changed meanwhile")
                s.expire(row)
            s.flush()
            return _schedule_from_row(row)

    def _schedule(self, s: Session, leader_id: str) -> Schedule:
        row = s.scalar(select(ScheduleRow).where(ScheduleRow.leader_id == leader_id))
        if row is None:
            raise NotFound("schedule of leader", leader_id)
        return _schedule_from_row(row)

    # -- slots ----------------------------------------------------------------------------------

    def _busy(
        self, s: Session, resources: list[str], lo: datetime, hi: datetime, *, ignore_owner: str | None = None
    ) -> list[slots.Interval]:
        q = select(ReservationRow.starts_at, ReservationRow.ends_at).where(
            ReservationRow.resource_id.in_(resources),
            ReservationRow.starts_at < hi,
            # A lower bound on the start too, so that the (resource_id, starts_at) index reads the
            # window only, not every earlier reservation of the leader or room (issue 20). A longer
            # reservation (a hold asked for by hand) would be missed here, and a slot it covers be
            # offered; booking it would still fail, since _reserve checks without this bound.
            ReservationRow.starts_at > lo - LONGEST_RESERVATION,
            ReservationRow.ends_at > lo,
        )
        if ignore_owner:
            q = q.where(ReservationRow.owner != ignore_owner)
        return slots.merge((aware(a), aware(b)) for a, b in s.execute(q).all())

    def _find(
        self, s: Session, req: BookRequest, limit: int, *, ignore_owner: str | None = None
    ) -> tuple[Schedule, list[FoundSlot], list[str]]:
        """Free slots for the leader, the leader's rooms, local extra rooms and units (remote rooms
        are checked by their own node when held)."""
        schedule = self._schedule(s, req.leader_id)
        local_rooms: list[str] = list(schedule.room_ids)
        remote: list[str] = []
        for i, room_id in enumerate(req.room_ids):
            row = s.get(RoomRow, room_id)
            if row is None:
                raise InvalidArgument(f"room_ids[{i}]", f"room {room_id} is not registered")
            if room_id in local_rooms:
                continue  # the leader's own room, named again by the clerk: reserved once, not twice
            (local_rooms if row.node == self.node else remote).append(room_id)
        resources = (
            [f"leader:{req.leader_id}"] + [f"room:{r}" for r in local_rooms] + [f"unit:{u}" for u in req.unit_ids]
        )
        buffer = timedelta(minutes=schedule.buffer_minutes)
        not_before, not_after = req.not_before, req.not_after
        if req.starts_at is not None:
            not_before = not_after = req.starts_at
        first = not_before.astimezone(CHINA).date()
        # Days past the last officially published calendar year offer no slots (rather than failing
        # the whole search): the next year's sessions appear once its holiday notice is loaded.
        last = min(not_after.astimezone(CHINA).date(), self._calendar.known_range()[1])
        session_list = slots.sessions(schedule, first, last, self._calendar)
        lo, hi = not_before - timedelta(days=1), not_after + timedelta(days=1)
        busy = self._busy(s, resources, lo, hi, ignore_owner=ignore_owner)
        counts = {
            aware(r.session_start): r.booked
            for r in s.scalars(
                select(SessionCountRow).where(
                    SessionCountRow.leader_id == req.leader_id,
                    SessionCountRow.session_start >= lo,
                    SessionCountRow.session_start <= hi,
                )
            )
        }
        found = slots.free_slots(
            slots.candidates(schedule, session_list),
            busy,
            buffer=buffer,
            session_counts=counts,
            not_before=not_before,
            not_after=not_after,
            limit=limit,
            exclude=req.exclude,
        )
        rooms = tuple(local_rooms + remote)
        return (
            schedule,
            [FoundSlot(aware(c.starts_at), aware(c.ends_at), aware(c.session_start), left, rooms) for c, left in found],
            remote,
        )

    def list_slots(self, req: BookRequest, limit: int) -> list[FoundSlot]:
        with self._tx() as s:
            return self._find(s, req, limit)[1]

    def calendar_notice(self, req: BookRequest) -> str:
        """Why a window offers nothing after some day: it runs past the node's official calendar."""
        end = self._calendar.known_range()[1]
        last = (req.starts_at or req.not_after).astimezone(CHINA).date()
        if last <= end:
            return ""
        return (
            f"no slots after {end.isoformat()}: the official holiday calendar for {end.year + 1} "
            "is not loaded on this node (an administrator loads it with `lianxin calendar load`)"
        )

    # -- booking --------------------------------------------------------------------------------

    def _reserve(self, s: Session, resource: str, start: datetime, end: datetime, owner: str) -> None:
        if s.get_bind().dialect.name == "postgresql":
            # Serialise writers per resource for the rest of the transaction, so the overlap check
            # below also holds for overlapping slots with different start times (the UNIQUE index
            # only catches identical starts). SQLite's BEGIN IMMEDIATE already serialises writers.
            s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:resource))"), {"resource": resource})
        # A resource's reservations never overlap (each passed this check under the lock), so they
        # end in the order they start: only the last one starting before ``end`` can reach past
        # ``start``. One step back on the (resource_id, starts_at) index, however long the
        # resource's history; ``starts_at < end AND ends_at > start`` read every earlier
        # reservation of the leader or room (issue 20).
        latest = s.execute(
            select(ReservationRow.ends_at)
            .where(ReservationRow.resource_id == resource, ReservationRow.starts_at < end)
            .order_by(ReservationRow.starts_at.desc())
            .limit(1)
        ).scalar_one_or_none()
        if latest is not None and aware(latest) > start:
            raise Conflict(f"{resource.split(':', 1)[0]} is already booked at {start.isoformat()}")
        s.add(ReservationRow(resource_id=resource, starts_at=start, ends_at=end, owner=owner, version=1))
        s.flush()  # the UNIQUE constraint speaks now, inside our error mapping

    def _count_in_session(self, s: Session, leader_id: str, session_start: datetime, cap: int, delta: int) -> None:
        row = s.get(SessionCountRow, (leader_id, session_start))
        if row is None:
            if delta < 0:
                return
            s.add(SessionCountRow(leader_id=leader_id, session_start=session_start, booked=1, version=1))
            s.flush()
            return
        cond = [SessionCountRow.leader_id == leader_id, SessionCountRow.session_start == session_start]
        if delta > 0:
            cond.append(SessionCountRow.booked < cap)
        done = s.execute(
            update(SessionCountRow)
            .where(*cond)
            .values(booked=SessionCountRow.booked + delta, version=SessionCountRow.version + 1)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict(f"the session at {session_start.isoformat()} is full ({cap} receptions)")

    def book(self, req: BookRequest) -> tuple[Visit, list[RemoteHold]]:
        """Reserve every local participant on the earliest fitting slot (or ``starts_at``); with remote
        rooms the visit is HOLDING and the remote holds to ask are returned."""
        now = self.now()
        with self._tx() as s:
            if req.one_per_case:
                # In the booking's own transaction, so two tabs of one citizen cannot both pass the check:
                # SQLite serialises writers; PostgreSQL takes a lock on the case until the commit.
                if s.get_bind().dialect.name == "postgresql":
                    s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"video:{req.case_id}"})
                rows = s.scalars(select(VisitRow).where(VisitRow.case_id == req.case_id))
                ensure_no_active_visit([self._to_visit(r) for r in rows])
            schedule, found, remote = self._find(s, req, 1)
            if not found:
                if req.starts_at is not None:
                    raise Conflict(f"{req.starts_at.isoformat()} is not free for every participant")
                notice = self.calendar_notice(req)
                raise FailedPrecondition(
                    "no slot free for every participant in the window" + (f"; {notice}" if notice else ""), "NO_SLOT"
                )
            slot = found[0]
            visit_id = f"vis-{uuid.uuid4().hex[:16]}"
            owner = f"visit:{visit_id}"
            local_rooms = [r for r in slot.room_ids if r not in remote]
            resources = (
                [f"leader:{req.leader_id}"] + [f"room:{r}" for r in local_rooms] + [f"unit:{u}" for u in req.unit_ids]
            )
            for res in resources:
                self._reserve(s, res, slot.starts_at, slot.ends_at, owner)
            self._count_in_session(s, req.leader_id, slot.session_start, schedule.max_per_session, +1)
            holds = self._ask_remote(s, visit_id, remote, now)
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
            s.add(self._visit_row(visit))
            if not holds:
                self._emit_booked(s, visit)
            return visit, holds

    def confirm_visit(self, visit_id: str) -> Visit:
        with self._tx() as s:
            row = self._visit_row_for(s, visit_id)
            visit = self._to_visit(row)
            require_state(visit, {VisitState.HOLDING}, "confirm")
            row.state, row.version = VisitState.BOOKED.value, row.version + 1
            s.execute(
                update(RemoteHoldRow)
                .where(RemoteHoldRow.visit_id == visit_id, RemoteHoldRow.state == RemoteState.HELD.value)
                .values(state=RemoteState.CONFIRMED.value)
            )
            visit = self._to_visit(row)
            self._emit_booked(s, visit)
            return visit

    def abandon(
        self, visit_id: str, reason: str, *, expected_version: int = 0, event: bool = False
    ) -> tuple[Visit, list[RemoteHold]]:
        """Cancel a visit: free every local reservation and its place in the session; remote holds
        move to RELEASING and are returned so the caller (or the sweep, after a failure) releases them."""
        with self._tx() as s:
            row = self._visit_row_for(s, visit_id)
            visit = self._to_visit(row)
            check_version(expected_version, visit.version, "visit")
            require_state(visit, {VisitState.HOLDING, VisitState.BOOKED}, "cancel")
            s.execute(delete(ReservationRow).where(ReservationRow.owner == f"visit:{visit_id}"))
            self._count_in_session(s, visit.leader_id, aware(row.session_start), 0, -1)
            row.state, row.version = VisitState.CANCELLED.value, row.version + 1
            pending = self._releasing_all(s, visit_id)
            visit = self._to_visit(row)
            if event:
                self._emit(
                    s,
                    visit.case_id,
                    "visit_cancelled",
                    events_pb2.VisitCancelled(
                        visit_id=visit_id, starts_at=to_timestamp(visit.starts_at), reason=reason
                    ),
                )
            return visit, pending

    def _releasing_all(self, s: Session, booking_id: str) -> list[RemoteHold]:
        """Every hold a cancelled visit or consultation still has at other nodes goes RELEASING (returned)."""
        s.execute(
            update(RemoteHoldRow)
            .where(RemoteHoldRow.visit_id == booking_id, RemoteHoldRow.state != RemoteState.RELEASED.value)
            .values(state=RemoteState.RELEASING.value)
        )
        return self._remote(s, booking_id, RemoteState.RELEASING.value)

    def _ask_remote(self, s: Session, visit_id: str, rooms: list[str], now: datetime) -> list[RemoteHold]:
        """Record the holds about to be asked of other nodes first, so a crash can always release them."""
        holds = [
            RemoteHold(str(uuid.uuid4()), visit_id, r, self.room(s, r).node, RemoteState.ASKED.value) for r in rooms
        ]
        for h in holds:
            s.add(
                RemoteHoldRow(
                    hold_id=h.hold_id, visit_id=visit_id, room_id=h.room_id, node=h.node, state=h.state, created_at=now
                )
            )
        return holds

    def _next_slot(self, s: Session, visit: Visit, req: BookRequest) -> tuple[Schedule, FoundSlot, list[str]]:
        """The earliest other slot for every participant of ``visit``; its own reservations count free."""
        schedule = self._schedule(s, visit.leader_id)
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
        _, found, remote = self._find(s, moved, 1, ignore_owner=f"visit:{visit.visit_id}")
        if not found:
            raise FailedPrecondition("no other slot free for every participant in the window", "BOOKED")
        return schedule, found[0], remote

    def _move_local(
        self,
        s: Session,
        row: VisitRow,
        visit: Visit,
        schedule: Schedule,
        slot: FoundSlot,
        remote: list[str],
        hold_ids: list[str],
    ) -> Visit:
        """Move the local reservations, the session counts and the visit to ``slot`` (version + 1)."""
        owner = f"visit:{visit.visit_id}"
        s.execute(delete(ReservationRow).where(ReservationRow.owner == owner))
        self._count_in_session(s, visit.leader_id, aware(row.session_start), 0, -1)
        resources = (
            [f"leader:{visit.leader_id}"]
            + [f"room:{r}" for r in slot.room_ids if r not in remote]
            + [f"unit:{u}" for u in visit.unit_ids]
        )
        for res in resources:
            self._reserve(s, res, slot.starts_at, slot.ends_at, owner)
        self._count_in_session(s, visit.leader_id, slot.session_start, schedule.max_per_session, +1)
        done = s.execute(
            update(VisitRow)
            .where(VisitRow.visit_id == visit.visit_id, VisitRow.version == visit.version)
            .values(
                starts_at=slot.starts_at,
                ends_at=slot.ends_at,
                session_start=slot.session_start,
                version=visit.version + 1,
                room_ids=list(slot.room_ids),
                hold_ids=hold_ids,
            )
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict("the visit changed meanwhile")
        s.expire(row)
        # Reminders are per start time: a moved visit is reminded again.
        s.execute(delete(ReminderRow).where(ReminderRow.visit_id == visit.visit_id))
        moved = self._to_visit(row)
        self._emit_booked(s, moved)
        return moved

    def reschedule(self, visit_id: str, expected_version: int, req: BookRequest) -> Visit:
        """Move a visit with local participants only, in one transaction (its own old slot counts free)."""
        with self._tx() as s:
            row = self._visit_row_for(s, visit_id)
            visit = self._to_visit(row)
            check_version(expected_version, visit.version, "visit")
            require_state(visit, {VisitState.BOOKED}, "reschedule")
            if visit.hold_ids:
                raise FailedPrecondition("a visit with rooms at other nodes is moved with holds", "BOOKED")
            schedule, slot, remote = self._next_slot(s, visit, req)
            return self._move_local(s, row, visit, schedule, slot, remote, [])

    def plan_move(
        self, visit_id: str, expected_version: int, req: BookRequest
    ) -> tuple[Visit, FoundSlot, list[RemoteHold]]:
        """Step 1 of moving a visit with remote rooms: pick the new slot and record the new holds to
        ask (ASKED). Nothing of the visit changes yet."""
        now = self.now()
        with self._tx() as s:
            row = self._visit_row_for(s, visit_id)
            visit = self._to_visit(row)
            check_version(expected_version, visit.version, "visit")
            require_state(visit, {VisitState.BOOKED}, "reschedule")
            unsettled = s.scalar(
                select(RemoteHoldRow.node).where(
                    RemoteHoldRow.visit_id == visit_id,
                    RemoteHoldRow.state.in_([RemoteState.CONFIRMING.value, RemoteState.SUPERSEDED.value]),
                )
            )
            if unsettled is not None:
                raise FailedPrecondition(
                    f"the previous move is still being confirmed with node {unsettled}; try again shortly", "BOOKED"
                )
            _, slot, remote = self._next_slot(s, visit, req)
            return visit, slot, self._ask_remote(s, visit_id, remote, now)

    def commit_move(self, visit: Visit, slot: FoundSlot, holds: list[RemoteHold]) -> Visit:
        """Step 2, once every new hold is HELD: one transaction moves the local reservations and the
        visit; the new holds become CONFIRMING and the old ones SUPERSEDED (released only after the
        new ones are confirmed)."""
        new_ids = [h.hold_id for h in holds]
        with self._tx() as s:
            row = self._visit_row_for(s, visit.visit_id)
            current = self._to_visit(row)
            check_version(visit.version, current.version, "visit")
            require_state(current, {VisitState.BOOKED}, "reschedule")
            done = s.execute(
                update(RemoteHoldRow)
                .where(RemoteHoldRow.hold_id.in_(new_ids), RemoteHoldRow.state == RemoteState.HELD.value)
                .values(state=RemoteState.CONFIRMING.value)
            )
            if done.rowcount != len(new_ids):  # type: ignore[attr-defined]
                raise Conflict("the holds for the new slot were given up meanwhile")
            s.execute(
                update(RemoteHoldRow)
                .where(
                    RemoteHoldRow.hold_id.in_(current.hold_ids),
                    RemoteHoldRow.state == RemoteState.CONFIRMED.value,
                )
                .values(state=RemoteState.SUPERSEDED.value)
            )
            schedule = self._schedule(s, current.leader_id)
            return self._move_local(s, row, current, schedule, slot, [h.room_id for h in holds], new_ids)

    def drop_move(self, hold_ids: list[str]) -> list[RemoteHold]:
        """A move failed before its commit: its new holds (ASKED or HELD) go RELEASING, returned for release."""
        with self._tx() as s:
            s.execute(
                update(RemoteHoldRow)
                .where(
                    RemoteHoldRow.hold_id.in_(hold_ids),
                    RemoteHoldRow.state.in_([RemoteState.ASKED.value, RemoteState.HELD.value]),
                )
                .values(state=RemoteState.RELEASING.value)
            )
            return [h for h in self._remote(s, None, RemoteState.RELEASING.value) if h.hold_id in hold_ids]

    def move_confirmed(self, hold_id: str) -> None:
        """A CONFIRMING hold was confirmed by its node (a cancel meanwhile left it RELEASING: kept so)."""
        self.mark_remote(hold_id, RemoteState.CONFIRMED.value, only_from=RemoteState.CONFIRMING.value)

    def release_superseded(self, visit_id: str) -> list[RemoteHold]:
        """Once no new hold of the visit awaits confirmation, its old (SUPERSEDED) holds go RELEASING."""
        with self._tx() as s:
            if self._remote(s, visit_id, RemoteState.CONFIRMING.value):
                return []
            s.execute(
                update(RemoteHoldRow)
                .where(RemoteHoldRow.visit_id == visit_id, RemoteHoldRow.state == RemoteState.SUPERSEDED.value)
                .values(state=RemoteState.RELEASING.value)
            )
            return self._remote(s, visit_id, RemoteState.RELEASING.value)

    def confirming(self) -> list[RemoteHold]:
        with self._tx() as s:
            return self._remote(s, None, RemoteState.CONFIRMING.value)

    def abandon_stale_moves(self, older_than: timedelta) -> int:
        """Sweep: new holds of a move that never committed (crash between plan and commit) go
        RELEASING. Holds of a HOLDING visit are left to ``abandon`` (the booking's own clean-up)."""
        cutoff = self.now() - older_than
        with self._tx() as s:
            # Correlated, so each stale hold looks its visit up by key instead of listing every visit.
            moving = (
                select(VisitRow.visit_id)
                .where(VisitRow.visit_id == RemoteHoldRow.visit_id, VisitRow.state != VisitState.HOLDING.value)
                .exists()
            )
            done = s.execute(
                update(RemoteHoldRow)
                .where(
                    RemoteHoldRow.state.in_([RemoteState.ASKED.value, RemoteState.HELD.value]),
                    RemoteHoldRow.created_at <= cutoff,
                    moving,
                )
                .values(state=RemoteState.RELEASING.value)
            )
            return int(done.rowcount)  # type: ignore[attr-defined]

    def check_in(self, visit_id: str, expected_version: int, reps: list[Representative]) -> Visit:
        now = self.now()
        sealed = self._cipher.encrypt(
            json.dumps([r.__dict__ for r in reps], ensure_ascii=False),
            context=f"video_visits.representatives:{visit_id}",
        )
        with self._tx() as s:
            row = self._visit_row_for(s, visit_id)
            visit = self._to_visit(row)
            check_version(expected_version, visit.version, "visit")
            require_state(visit, {VisitState.BOOKED, VisitState.CHECKED_IN}, "check in for")
            row.representatives, row.checked_in_at = sealed, now
            row.state, row.version = VisitState.CHECKED_IN.value, row.version + 1
            return self._to_visit(row)

    def record_outcome(self, visit_id: str, expected_version: int, minutes: str, decisions: str, ref: str) -> Visit:
        with self._tx() as s:
            row = self._visit_row_for(s, visit_id)
            visit = self._to_visit(row)
            check_version(expected_version, visit.version, "visit")
            require_state(visit, {VisitState.BOOKED, VisitState.CHECKED_IN}, "record the outcome of")
            row.minutes, row.decisions, row.recording_ref = minutes, decisions, ref
            row.state, row.version = VisitState.COMPLETED.value, row.version + 1
            visit = self._to_visit(row)
            self._emit(
                s,
                visit.case_id,
                "visit_outcome_recorded",
                events_pb2.VisitOutcomeRecorded(
                    visit_id=visit_id, minutes=minutes, decisions=decisions, recording_ref=ref
                ),
            )
            owner = self._owner(s, visit.case_id)
            if owner.node != self.node:
                # Held here for a case another node handles: its routing records the outcome in the
                # case's history when exchange delivers this (a local owner's routing follows the event).
                self._command_owner(s, visit, owner, minutes=minutes, decisions=decisions, ref=ref)
            return visit

    def _command_owner(
        self, s: Session, visit: Visit, owner: CaseOwner, *, minutes: str, decisions: str, ref: str
    ) -> None:
        command = events_pb2.Command(
            # One command per visit: an outcome is recorded once (the visit is COMPLETED after).
            command_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:visit-outcome:{visit.visit_id}")),
            case_id=visit.case_id,
            target_node=owner.node,
            issuing_node=self.node,
            owner_epoch_seen=owner.epoch,
            issued_at=to_timestamp(self.now()),
            visit_outcome=events_pb2.Command.VisitOutcome(
                visit_id=visit.visit_id, minutes=minutes, decisions=decisions, recording_ref=ref
            ),
        )
        append_event(
            s,
            outbox,
            BusEvent(
                event_id=command.command_id, source="video", event_type="command", body=command.SerializeToString()
            ),
            visit.case_id,
        )

    def schedules(self) -> list[Schedule]:
        """Every published schedule of this node, by leader id."""
        with self._tx() as s:
            return [_schedule_from_row(r) for r in s.scalars(select(ScheduleRow).order_by(ScheduleRow.leader_id))]

    def get_visit(self, visit_id: str) -> Visit:
        with self._tx() as s:
            return self._to_visit(self._visit_row_for(s, visit_id))

    def list_visits(
        self,
        *,
        leader_id: str,
        room_id: str,
        case_id: str,
        not_before: datetime | None,
        not_after: datetime | None,
        offset: int,
        limit: int,
    ) -> tuple[list[Visit], int]:
        """A page of the visits, by start, and how many match (-1: more than COUNT_LIMIT). Only the
        page is read, on (leader_id | case_id, starts_at, visit_id); every visit of a leader's years
        was read and sliced here before (issue 20)."""
        q = select(VisitRow)
        if leader_id:
            q = q.where(VisitRow.leader_id == leader_id)
        if case_id:
            q = q.where(VisitRow.case_id == case_id)
        if room_id:  # the room list is JSON: its text holds the id in quotes
            q = q.where(cast(VisitRow.room_ids, String).contains(json.dumps(room_id), autoescape=True))
        if not_before:
            q = q.where(VisitRow.starts_at >= not_before)
        if not_after:
            q = q.where(VisitRow.starts_at < not_after)
        with self._tx() as s:
            order = (VisitRow.starts_at, VisitRow.visit_id)
            rows = [self._to_visit(r) for r in s.scalars(q.order_by(*order).offset(offset).limit(limit))]
            total = bounded_count(s, q.with_only_columns(VisitRow.visit_id).order_by(*order))
        return rows, total

    # -- remote consultations (远程会商) ----------------------------------------------------------

    def list_rooms(self, node: str = "") -> list[Room]:
        q = select(RoomRow).order_by(RoomRow.room_id)
        if node:
            q = q.where(RoomRow.node == node)
        with self._tx() as s:
            return [Room(r.room_id, r.node, r.name) for r in s.scalars(q)]

    def _consultation_busy(
        self, s: Session, unit_id: str, room_id: str, lo: datetime, hi: datetime
    ) -> list[consult.Interval]:
        """What keeps a unit and a room of this node from a consultation in [lo, hi]: everything
        booked for either, and the reception sessions of the leaders whose schedules use the room."""
        busy = self._busy(s, [f"unit:{unit_id}", f"room:{room_id}"], lo, hi)
        # Sessions past the official calendar cannot be told (and offer no consultation hours either).
        known_first, known_last = self._calendar.known_range()
        first = max(lo.astimezone(CHINA).date(), known_first)
        last = min(hi.astimezone(CHINA).date(), known_last)
        for row in s.scalars(select(ScheduleRow)):
            schedule = _schedule_from_row(row)
            if room_id in schedule.room_ids:
                busy.extend((x.starts_at, x.ends_at) for x in slots.sessions(schedule, first, last, self._calendar))
        return busy

    def _own_room(self, s: Session, room_id: str, field: str) -> Room:
        row = s.get(RoomRow, room_id)
        if row is None:
            raise InvalidArgument(field, f"room {room_id} is not registered at node {self.node}")
        if row.node != self.node:
            raise InvalidArgument(field, f"room {room_id} belongs to node {row.node}; ask that node")
        return Room(row.room_id, row.node, row.name)

    def free_periods(
        self, unit_id: str, room_id: str, not_before: datetime, not_after: datetime
    ) -> list[consult.Interval]:
        """When a unit and a room of this node are both free for a consultation (ListFreePeriods)."""
        with self._tx() as s:
            self._own_room(s, room_id, "room_id")
            busy = self._consultation_busy(s, unit_id, room_id, not_before, not_after)
            return consult.free_periods(self._calendar, busy, not_before, not_after)

    def _check_consultation_free(self, s: Session, unit_id: str, room_id: str, start: datetime, end: datetime) -> None:
        free = consult.free_periods(
            self._calendar, self._consultation_busy(s, unit_id, room_id, start, end), start, end
        )
        if not consult.covered(free, start, end):
            raise Conflict(f"unit {unit_id} or room {room_id} is not free at {start.isoformat()}")

    def calendar_end(self) -> date:
        return self._calendar.known_range()[1]

    def check_rooms(self, participants: tuple[consult.Participant, ...]) -> None:
        """Each participant's room is registered here as a room of the participant's node."""
        with self._tx() as s:
            for i, p in enumerate(participants):
                row = s.get(RoomRow, p.room_id)
                if row is None:
                    raise InvalidArgument(f"participants[{i}].room_id", f"room {p.room_id} is not registered")
                if row.node != p.node:
                    raise InvalidArgument(
                        f"participants[{i}].room_id", f"room {p.room_id} belongs to node {row.node}, not {p.node}"
                    )

    def book_consultation(
        self, req: consult.ConsultationRequest, start: datetime, end: datetime
    ) -> tuple[consult.Consultation, list[RemoteHold]]:
        """Reserve this node's units and rooms for [start, end] and record the holds to ask of the other
        nodes (ASKED). HOLDING until those are confirmed; BOOKED at once when every unit is local."""
        now = self.now()
        start, end = aware(start), aware(end)  # stored as UTC (SQLite keeps the wall-clock text)
        consultation_id = f"con-{uuid.uuid4().hex[:16]}"
        owner = f"consultation:{consultation_id}"
        with self._tx() as s:
            holds: list[RemoteHold] = []
            for p in req.participants:
                if p.node != self.node:
                    hold = RemoteHold(
                        str(uuid.uuid4()), consultation_id, p.room_id, p.node, RemoteState.ASKED.value, p.unit_id
                    )
                    holds.append(hold)
                    continue
                self._check_consultation_free(s, p.unit_id, p.room_id, start, end)
                self._reserve(s, f"unit:{p.unit_id}", start, end, owner)
                self._reserve(s, f"room:{p.room_id}", start, end, owner)
            for h in holds:
                s.add(
                    RemoteHoldRow(
                        hold_id=h.hold_id,
                        visit_id=consultation_id,
                        room_id=h.room_id,
                        node=h.node,
                        state=h.state,
                        created_at=now,
                    )
                )
            c = consult.Consultation(
                consultation_id=consultation_id,
                case_id=req.case_id,
                host_node=self.node,
                topic=req.topic,
                participants=list(req.participants),
                starts_at=start,
                ends_at=end,
                state=consult.ConsultationState.HOLDING if holds else consult.ConsultationState.BOOKED,
                booked_by=req.actor,
                hold_ids=[h.hold_id for h in holds],
                created_at=now,
            )
            s.add(self._consultation_row(c))
            if not holds:
                self._emit_consultation_booked(s, c)
            return c, holds

    def confirm_consultation(self, consultation_id: str) -> consult.Consultation:
        with self._tx() as s:
            row = self._consultation_row_for(s, consultation_id)
            c = _to_consultation(row)
            consult.require_state(c, {consult.ConsultationState.HOLDING}, "confirm")
            row.state, row.version = consult.ConsultationState.BOOKED.value, row.version + 1
            s.execute(
                update(RemoteHoldRow)
                .where(RemoteHoldRow.visit_id == consultation_id, RemoteHoldRow.state == RemoteState.HELD.value)
                .values(state=RemoteState.CONFIRMED.value)
            )
            c = _to_consultation(row)
            self._emit_consultation_booked(s, c)
            return c

    def abandon_consultation(
        self, consultation_id: str, reason: str, *, expected_version: int = 0, event: bool = False
    ) -> tuple[consult.Consultation, list[RemoteHold]]:
        """Cancel: free this node's reservations; the other nodes' holds go RELEASING and are returned."""
        with self._tx() as s:
            row = self._consultation_row_for(s, consultation_id)
            c = _to_consultation(row)
            check_version(expected_version, c.version, "consultation")
            consult.require_state(c, consult.ACTIVE_STATES, "cancel")
            s.execute(delete(ReservationRow).where(ReservationRow.owner == f"consultation:{consultation_id}"))
            row.state, row.version = consult.ConsultationState.CANCELLED.value, row.version + 1
            row.cancel_reason = reason[:1000]
            pending = self._releasing_all(s, consultation_id)
            c = _to_consultation(row)
            if event:
                self._emit(
                    s,
                    c.case_id,
                    "consultation_cancelled",
                    events_pb2.ConsultationCancelled(
                        consultation_id=consultation_id, starts_at=to_timestamp(c.starts_at), reason=reason
                    ),
                )
            return c, pending

    def record_consultation_minutes(
        self, consultation_id: str, expected_version: int, minutes: str
    ) -> consult.Consultation:
        """BOOKED → HELD with the minutes; consultation_held carries them up (and, when another node
        handles the case, a command takes them to its history)."""
        with self._tx() as s:
            row = self._consultation_row_for(s, consultation_id)
            c = _to_consultation(row)
            check_version(expected_version, c.version, "consultation")
            consult.require_state(c, {consult.ConsultationState.BOOKED}, "record the minutes of")
            row.minutes, row.held_at = minutes, self.now()
            row.state, row.version = consult.ConsultationState.HELD.value, row.version + 1
            c = _to_consultation(row)
            env = self._emit(
                s,
                c.case_id,
                "consultation_held",
                events_pb2.ConsultationHeld(
                    consultation_id=c.consultation_id,
                    minutes=minutes,
                    starts_at=to_timestamp(c.starts_at),
                    ends_at=to_timestamp(c.ends_at),
                    topic=c.topic,
                    units=_units(c),
                    host_node=c.host_node,
                ),
            )
            self._note_to_owner(s, c, env)
            return c

    def _emit_consultation_booked(self, s: Session, c: consult.Consultation) -> None:
        env = self._emit(
            s,
            c.case_id,
            "consultation_booked",
            events_pb2.ConsultationBooked(
                consultation_id=c.consultation_id,
                starts_at=to_timestamp(c.starts_at),
                ends_at=to_timestamp(c.ends_at),
                topic=c.topic,
                units=_units(c),
                host_node=c.host_node,
            ),
        )
        self._note_to_owner(s, c, env)

    def _note_to_owner(self, s: Session, c: consult.Consultation, env: events_pb2.EventEnvelope) -> None:
        """Hosted here for a case another node handles: the event also goes to that node as a command,
        whose routing records it in the case's history (a local owner's routing follows the event)."""
        owner = self._owner(s, c.case_id)
        if owner.node == self.node:
            return
        kind = env.WhichOneof("payload")
        command = events_pb2.Command(
            command_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:{kind}:{c.consultation_id}")),
            case_id=c.case_id,
            target_node=owner.node,
            issuing_node=self.node,
            owner_epoch_seen=owner.epoch,
            issued_at=to_timestamp(self.now()),
            consultation=events_pb2.Command.ConsultationNote(envelope=env.SerializeToString()),
        )
        append_event(
            s,
            outbox,
            BusEvent(
                event_id=command.command_id, source="video", event_type="command", body=command.SerializeToString()
            ),
            c.case_id,
        )

    def get_consultation(self, consultation_id: str) -> consult.Consultation:
        with self._tx() as s:
            return _to_consultation(self._consultation_row_for(s, consultation_id))

    def consultations_of(self, case_id: str) -> list[consult.Consultation]:
        q = (
            select(ConsultationRow)
            .where(ConsultationRow.case_id == case_id)
            .order_by(ConsultationRow.starts_at, ConsultationRow.consultation_id)
            .limit(200)
        )
        with self._tx() as s:
            return [_to_consultation(r) for r in s.scalars(q)]

    def stale_consultations(self, older_than: timedelta) -> list[str]:
        """Consultations still HOLDING long after their holds were asked: the booking failed half-way."""
        cutoff = self.now() - older_than
        with self._tx() as s:
            return list(
                s.scalars(
                    select(ConsultationRow.consultation_id).where(
                        ConsultationRow.state == consult.ConsultationState.HOLDING.value,
                        ConsultationRow.created_at <= cutoff,
                    )
                )
            )

    def note_consultation_replica(self, c: consult.Consultation) -> None:
        """Keep (or advance) the copy of a consultation booked at a node below, from its event: a state
        never goes back (HELD and CANCELLED stay), and a consultation booked here is left alone."""
        with self._tx() as s:
            row = s.get(ConsultationRow, c.consultation_id)
            if row is None:
                s.add(self._consultation_row(c))
                return
            if not row.replica or row.state in (
                consult.ConsultationState.HELD.value,
                consult.ConsultationState.CANCELLED.value,
            ):
                return
            row.state, row.version = c.state.value, row.version + 1
            row.minutes, row.held_at, row.cancel_reason = c.minutes, c.held_at, c.cancel_reason
            if c.topic:
                row.topic = c.topic
            if c.participants:
                row.participants = [p.__dict__ for p in c.participants]

    def _consultation_row_for(self, s: Session, consultation_id: str) -> ConsultationRow:
        row = s.get(ConsultationRow, consultation_id)
        if row is None:
            raise NotFound("consultation", consultation_id)
        return row

    @staticmethod
    def _consultation_row(c: consult.Consultation) -> ConsultationRow:
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

    # -- holds granted to other nodes -----------------------------------------------------------

    def hold_room(self, hold: Hold, unit_id: str = "") -> Hold:
        """Hold a room of this node (and, for a remote consultation, one of its units) for a booking
        made at another node. A consultation's hold is refused outside this node's consultation hours
        and its leaders' reception sessions in the room (``consult.free_periods``)."""
        with self._tx() as s:
            existing = s.get(HoldRow, hold.hold_id)
            if existing is not None:
                return self._to_hold(existing)
            room = self.room(s, hold.room_id)
            if room.node != self.node:
                raise FailedPrecondition(f"room {hold.room_id} belongs to node {room.node}", room.node)
        # The reservations and the hold row commit together; a clash records a REFUSED hold.
        try:
            with self._tx() as s:
                owner = f"hold:{hold.hold_id}"
                if unit_id:
                    self._check_consultation_free(s, unit_id, hold.room_id, hold.starts_at, hold.ends_at)
                    self._reserve(s, f"unit:{unit_id}", hold.starts_at, hold.ends_at, owner)
                self._reserve(s, f"room:{hold.room_id}", hold.starts_at, hold.ends_at, owner)
                s.add(self._hold_row(hold))
            return hold
        except Conflict as clash:
            refused = Hold(**{**hold.__dict__, "state": HoldState.REFUSED, "reason": str(clash)})
            with self._tx() as s:
                if s.get(HoldRow, hold.hold_id) is None:
                    s.add(self._hold_row(refused))
            return refused

    def confirm_hold(self, hold_id: str, requesting_node: str) -> Hold:
        now = self.now()
        with self._tx() as s:
            row = self._hold_row_for(s, hold_id, requesting_node)
            if row.state == HoldState.CONFIRMED:
                return self._to_hold(row)
            if row.state == HoldState.HELD and aware(row.expires_at) <= now:
                self._expire(s, row)
            if row.state != HoldState.HELD:
                raise FailedPrecondition(f"hold {hold_id} is {row.state}", row.state)
            row.state = HoldState.CONFIRMED.value
            return self._to_hold(row)

    def release_hold(self, hold_id: str, requesting_node: str, reason: str) -> Hold:
        with self._tx() as s:
            row = self._hold_row_for(s, hold_id, requesting_node)
            if row.state in (HoldState.HELD, HoldState.CONFIRMED):
                s.execute(delete(ReservationRow).where(ReservationRow.owner == f"hold:{hold_id}"))
                row.state, row.reason = HoldState.RELEASED.value, reason[:300]
            return self._to_hold(row)

    def get_hold(self, hold_id: str) -> Hold | None:
        with self._tx() as s:
            row = s.get(HoldRow, hold_id)
            return None if row is None else self._to_hold(row)

    def has_sweep_work(self, horizon: timedelta = timedelta(hours=25)) -> bool:
        """Whether the sweep has anything to look at: a hold, a half-done booking, consultation or move, a remote
        hold in flight, or a visit due within ``horizon`` (its reminder). One read, no write lock."""
        now = self.now()
        busy = (
            RemoteState.ASKED.value,
            RemoteState.HELD.value,
            RemoteState.CONFIRMING.value,
            RemoteState.RELEASING.value,
        )
        checks = (
            select(HoldRow.hold_id).where(HoldRow.state == HoldState.HELD.value),
            select(VisitRow.visit_id).where(VisitRow.state == _inline(VisitState.HOLDING.value)),
            select(ConsultationRow.consultation_id).where(
                ConsultationRow.state == consult.ConsultationState.HOLDING.value
            ),
            select(RemoteHoldRow.hold_id).where(RemoteHoldRow.state.in_(busy)),
            select(VisitRow.visit_id).where(
                VisitRow.state.in_([VisitState.BOOKED.value, VisitState.CHECKED_IN.value]),
                VisitRow.starts_at > now,
                VisitRow.starts_at <= now + horizon,
            ),
        )
        with self._factory() as session:
            return any(session.execute(check.limit(1)).first() is not None for check in checks)

    def expire_holds(self) -> int:
        """Sweep: HELD holds past their time-to-live lapse and free the room."""
        now = self.now()
        with self._tx() as s:
            rows = list(
                s.scalars(select(HoldRow).where(HoldRow.state == HoldState.HELD.value, HoldRow.expires_at <= now))
            )
            for row in rows:
                self._expire(s, row)
            return len(rows)

    def _expire(self, s: Session, row: HoldRow) -> None:
        s.execute(delete(ReservationRow).where(ReservationRow.owner == f"hold:{row.hold_id}"))
        row.state = HoldState.EXPIRED.value

    # -- holds asked of other nodes -------------------------------------------------------------

    def mark_remote(self, hold_id: str, state: str, *, only_from: str | None = None) -> None:
        q = update(RemoteHoldRow).where(RemoteHoldRow.hold_id == hold_id)
        if only_from is not None:
            q = q.where(RemoteHoldRow.state == only_from)
        with self._tx() as s:
            s.execute(q.values(state=state))

    def stale_holding(self, older_than: timedelta) -> list[str]:
        """Visits still HOLDING long after their holds were asked: the booking failed half-way."""
        cutoff = self.now() - older_than
        with self._tx() as s:
            return list(
                s.scalars(
                    select(VisitRow.visit_id).where(
                        VisitRow.state == _inline(VisitState.HOLDING.value), VisitRow.created_at <= cutoff
                    )
                )
            )

    def releasing(self) -> list[RemoteHold]:
        with self._tx() as s:
            return self._remote(s, None, RemoteState.RELEASING.value)

    def _remote(self, s: Session, visit_id: str | None, state: str) -> list[RemoteHold]:
        q = select(RemoteHoldRow).where(RemoteHoldRow.state == state)
        if visit_id is not None:
            q = q.where(RemoteHoldRow.visit_id == visit_id)
        return [RemoteHold(r.hold_id, r.visit_id, r.room_id, r.node, r.state) for r in s.scalars(q)]

    # -- reminders ------------------------------------------------------------------------------

    def send_reminders(self, horizon: timedelta = timedelta(hours=25)) -> int:
        """Emit each due reminder once: the (visit, kind) primary key makes a re-run a no-op."""
        now = self.now()
        sent = 0
        with self._tx() as s:
            rows = list(
                s.scalars(
                    select(VisitRow).where(
                        VisitRow.state.in_([VisitState.BOOKED.value, VisitState.CHECKED_IN.value]),
                        VisitRow.starts_at > now,
                        VisitRow.starts_at <= now + horizon,
                    )
                )
            )
            done = {
                (r.visit_id, r.kind)
                for r in s.scalars(select(ReminderRow).where(ReminderRow.visit_id.in_([r.visit_id for r in rows])))
            }
            for row in rows:
                for kind in reminders_due(aware(row.starts_at), now):
                    if (row.visit_id, kind) in done:
                        continue
                    s.add(ReminderRow(visit_id=row.visit_id, kind=kind, sent_at=now))
                    self._emit(
                        s,
                        row.case_id,
                        "visit_reminder",
                        events_pb2.VisitReminder(
                            visit_id=row.visit_id,
                            starts_at=to_timestamp(aware(row.starts_at)),
                            leader_id=row.leader_id,
                            kind=kind,
                        ),
                    )
                    sent += 1
        return sent

    # -- rows and events ------------------------------------------------------------------------

    def note_owner(self, case_id: str, owner: CaseOwner) -> None:
        """Remember the case's owner when ``owner.epoch`` is newer than the one known (idempotent)."""
        if not case_id or len(case_id) > 64 or self._owner_epochs.get(case_id, 0) >= owner.epoch:
            return
        with self._tx() as s:
            dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
            insert = dialect.insert(CaseOwnerRow).values(
                case_id=case_id, owner_node=owner.node, owner_epoch=owner.epoch
            )
            s.execute(
                insert.on_conflict_do_update(
                    index_elements=[CaseOwnerRow.case_id],
                    set_={"owner_node": insert.excluded.owner_node, "owner_epoch": insert.excluded.owner_epoch},
                    where=CaseOwnerRow.owner_epoch < insert.excluded.owner_epoch,
                )
            )
        if len(self._owner_epochs) >= OWNER_CACHE_SIZE:
            self._owner_epochs.clear()  # bounded; forgetting only costs a redundant (raise-only) upsert
        self._owner_epochs[case_id] = owner.epoch

    def _owner(self, s: Session, case_id: str) -> CaseOwner:
        row = s.get(CaseOwnerRow, case_id)
        return owner_for_event(CaseOwner(row.owner_node, row.owner_epoch) if row else None, case_id, self.node)

    def _emit(self, s: Session, case_id: str, field: str, payload: Message) -> events_pb2.EventEnvelope:
        # video does not own cases: version 0 marks a fact about the case, not a state change of it.
        # The envelope names the case's owner and epoch as this node knows them, as the owner's own
        # events do, so the tiers above take it as the case's next event (docs/exchange.md).
        owner = self._owner(s, case_id)
        env = envelope(
            payload_field=field,
            payload=payload,
            case_id=case_id,
            version=0,
            owner_node=owner.node,
            owner_epoch=owner.epoch,
            origin_node=self.node,
            origin_service="video",
            occurred_at=self.now(),
        )
        write_event(s, outbox, env)
        return env

    def _emit_booked(self, s: Session, visit: Visit) -> None:
        self._emit(
            s,
            visit.case_id,
            "visit_booked",
            events_pb2.VisitBooked(
                visit_id=visit.visit_id, starts_at=to_timestamp(visit.starts_at), leader_id=visit.leader_id
            ),
        )

    def _visit_row_for(self, s: Session, visit_id: str) -> VisitRow:
        row = s.get(VisitRow, visit_id)
        if row is None:
            raise NotFound("visit", visit_id)
        return row

    def _hold_row_for(self, s: Session, hold_id: str, requesting_node: str) -> HoldRow:
        row = s.get(HoldRow, hold_id)
        if row is None or (requesting_node and row.requesting_node != requesting_node):
            raise NotFound("hold", hold_id)
        return row

    @staticmethod
    def _visit_row(v: Visit) -> VisitRow:
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

    def _to_visit(self, row: VisitRow) -> Visit:
        reps: list[Representative] = []
        if row.representatives:
            raw = self._cipher.decrypt(row.representatives, context=f"video_visits.representatives:{row.visit_id}")
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

    @staticmethod
    def _hold_row(h: Hold) -> HoldRow:
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

    @staticmethod
    def _to_hold(r: HoldRow) -> Hold:
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


def _units(c: consult.Consultation) -> list[events_pb2.ConsultationUnit]:
    return [events_pb2.ConsultationUnit(node=p.node, unit_id=p.unit_id) for p in c.participants]


def _to_consultation(row: ConsultationRow) -> consult.Consultation:
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
