"""video's unit of work on SQLAlchemy (``ports.VideoUnitOfWork``): one transaction that loads and
saves; ``store.VideoStore`` opens one per use case.

Double booking is refused twice: an overlap check inside the transaction, serialised per resource
(SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction-scoped advisory lock on the resource), and the
UNIQUE(resource_id, starts_at) constraint of reservations, both reported as Conflict (ABORTED).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import BindParameter, Connection, String, bindparam, cast, delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.clock import to_utc as aware
from services.common.db import COUNT_LIMIT, bounded_count
from services.common.errors import Conflict
from services.common.events import envelope, write_event
from services.common.outbox import append_event
from services.common.service import BusEvent
from services.video import consult, read_sql
from services.video.consult import Consultation, Interval
from services.video.domain import (
    CaseOwner,
    Hold,
    HoldState,
    RemoteHold,
    RemoteState,
    Room,
    Schedule,
    Visit,
    VisitState,
    owner_for_event,
)
from services.video.envelopes import command_for_owner, payload
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
from services.video.ports import VideoEvent, VisitFilter
from services.video.rows import (
    Sealer,
    consultation_row,
    hold_row,
    schedule_body,
    schedule_from_row,
    seal_representatives,
    to_consultation,
    to_hold,
    to_visit,
    visit_row,
)

# Slots are at most 480 minutes (domain.validate_schedule): a day covers any booked slot.
LONGEST_RESERVATION = timedelta(days=1)
Row = TypeVar("Row", VisitRow, HoldRow, ConsultationRow)
DUE_STATES = (VisitState.BOOKED.value, VisitState.CHECKED_IN.value)  # visits a reminder is for


def inline_state(state: str) -> BindParameter[str]:
    """A transient state written into the statement, not bound: PostgreSQL then plans with the
    column's statistics, where HOLDING is rare, and takes the state index; a generic plan for
    ``state = $1`` guesses the most common state's share and scans the table."""
    return bindparam(None, state, literal_execute=True)


def reserve(s: Session, resource: str, start: datetime, end: datetime, owner: str) -> None:
    """Reserve ``resource`` for [start, end) or raise Conflict (see the module docstring)."""
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


class SharedRead:
    """``VideoStore.reading_together``'s transaction: a ``read_transaction``'s Core connection, and an
    ORM session on that connection only when a read needs the ORM (a leader's next free slot)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._session: Session | None = None

    def session(self) -> Session:
        if self._session is None:
            # Joins the connection's read transaction (read_transaction ends it); the session commits nothing.
            self._session = Session(bind=self.connection)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


class SqlVideoUnitOfWork:
    """One transaction (``ports.VideoUnitOfWork``); representatives are sealed on the way in.

    On a ``SharedRead`` (a case page's GetCaseVideo) the reads by prebuilt statements run on its
    connection and no ORM session is built unless a read needs one."""

    def __init__(
        self, session: Session | SharedRead, *, cipher: Sealer, node: str, clock: Callable[[], datetime]
    ) -> None:
        self._session: Session | None = None if isinstance(session, SharedRead) else session
        self._shared: SharedRead | None = session if isinstance(session, SharedRead) else None
        self._cipher = cipher
        self._node = node
        self._clock = clock
        self.committed = False

    @property
    def _s(self) -> Session:
        if self._session is None:
            assert self._shared is not None
            self._session = self._shared.session()
        return self._session

    def _connection(self) -> Connection:
        """Where the prebuilt Core statements run."""
        return self._shared.connection if self._shared is not None else self._s.connection()

    def commit(self) -> None:
        self.committed = True  # VideoStore.begin commits when the block ends

    def _loaded(self, model: type[Row], key: str) -> Row:
        row = self._s.get(model, key)
        assert row is not None, "saved before it was loaded"
        return row

    # -- rooms and schedules

    def room(self, room_id: str) -> Room | None:
        row = self._s.get(RoomRow, room_id)
        return None if row is None else Room(row.room_id, row.node, row.name)

    def put_room(self, room: Room) -> None:
        row = self._s.get(RoomRow, room.room_id)
        if row is None:
            self._s.add(RoomRow(room_id=room.room_id, node=room.node, name=room.name))
        else:
            row.node, row.name = room.node, room.name

    def rooms(self, node: str) -> list[Room]:
        found = self._connection().execute(read_sql.NODE_ROOMS if node else read_sql.ALL_ROOMS, {"node": node})
        return [Room(r.room_id, r.node, r.name) for r in found]

    def schedule_of(self, leader_id: str) -> Schedule | None:
        row = self._s.scalar(select(ScheduleRow).where(ScheduleRow.leader_id == leader_id))
        return None if row is None else schedule_from_row(row)

    def schedules(self) -> list[Schedule]:
        return [schedule_from_row(r) for r in self._connection().execute(read_sql.ALL_SCHEDULES)]

    def add_schedule(self, schedule: Schedule) -> None:
        self._s.add(
            ScheduleRow(
                schedule_id=schedule.schedule_id,
                leader_id=schedule.leader_id,
                node=schedule.node,
                body=schedule_body(schedule),
                slot_minutes=schedule.slot_minutes,
                buffer_minutes=schedule.buffer_minutes,
                max_per_session=schedule.max_per_session,
                version=schedule.version,
            )
        )
        self._s.flush()

    def save_schedule(self, schedule: Schedule, *, expected_version: int) -> None:
        done = self._s.execute(
            update(ScheduleRow)
            .where(ScheduleRow.schedule_id == schedule.schedule_id, ScheduleRow.version == expected_version)
            .values(
                node=schedule.node,
                body=schedule_body(schedule),
                slot_minutes=schedule.slot_minutes,
                buffer_minutes=schedule.buffer_minutes,
                max_per_session=schedule.max_per_session,
                version=schedule.version,
            )
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict("the schedule changed meanwhile")

    # -- reservations and sessions

    def reserve(self, resource: str, start: datetime, end: datetime, owner: str) -> None:
        reserve(self._s, resource, start, end, owner)

    def free(self, owner: str) -> None:
        self._s.execute(delete(ReservationRow).where(ReservationRow.owner == owner))

    def busy(
        self, resources: list[str], lo: datetime, hi: datetime, *, ignore_owner: str | None = None
    ) -> list[Interval]:
        q = select(ReservationRow.starts_at, ReservationRow.ends_at).where(
            ReservationRow.resource_id.in_(resources),
            ReservationRow.starts_at < hi,
            # A lower bound on the start too, so that the (resource_id, starts_at) index reads the
            # window only, not every earlier reservation of the leader or room (issue 20). A longer
            # reservation (a hold asked for by hand) would be missed here, and a slot it covers be
            # offered; booking it would still fail, since reserve checks without this bound.
            ReservationRow.starts_at > lo - LONGEST_RESERVATION,
            ReservationRow.ends_at > lo,
        )
        if ignore_owner:
            q = q.where(ReservationRow.owner != ignore_owner)
        return [(aware(a), aware(b)) for a, b in self._s.execute(q).all()]

    def session_counts(self, leader_id: str, lo: datetime, hi: datetime) -> dict[datetime, int]:
        rows = self._s.scalars(
            select(SessionCountRow).where(
                SessionCountRow.leader_id == leader_id,
                SessionCountRow.session_start >= lo,
                SessionCountRow.session_start <= hi,
            )
        )
        return {aware(r.session_start): r.booked for r in rows}

    def count_in_session(self, leader_id: str, session_start: datetime, cap: int, delta: int) -> None:
        row = self._s.get(SessionCountRow, (leader_id, session_start))
        if row is None:
            if delta < 0:
                return
            self._s.add(SessionCountRow(leader_id=leader_id, session_start=session_start, booked=1, version=1))
            self._s.flush()
            return
        cond = [SessionCountRow.leader_id == leader_id, SessionCountRow.session_start == session_start]
        if delta > 0:
            cond.append(SessionCountRow.booked < cap)
        done = self._s.execute(
            update(SessionCountRow)
            .where(*cond)
            .values(booked=SessionCountRow.booked + delta, version=SessionCountRow.version + 1)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict(f"the session at {session_start.isoformat()} is full ({cap} receptions)")

    # -- visits

    def lock_case(self, case_id: str) -> None:
        if self._s.get_bind().dialect.name == "postgresql":  # SQLite serialises writers already
            self._s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"video:{case_id}"})

    def get_visit(self, visit_id: str) -> Visit | None:
        row = self._s.get(VisitRow, visit_id)
        return None if row is None else to_visit(self._cipher, row)

    def visits_of_case(self, case_id: str) -> list[Visit]:
        return [to_visit(self._cipher, r) for r in self._s.scalars(select(VisitRow).where(VisitRow.case_id == case_id))]

    def add_visit(self, visit: Visit) -> None:
        self._s.add(visit_row(visit))

    def save_visit(self, visit: Visit) -> None:
        row = self._loaded(VisitRow, visit.visit_id)
        row.state, row.version = visit.state.value, visit.version
        row.representatives = seal_representatives(self._cipher, visit)
        row.checked_in_at = visit.checked_in_at
        row.minutes, row.decisions, row.recording_ref = visit.minutes, visit.decisions, visit.recording_ref

    def save_moved_visit(self, visit: Visit, *, expected_version: int) -> None:
        assert visit.session_start is not None
        done = self._s.execute(
            update(VisitRow)
            .where(VisitRow.visit_id == visit.visit_id, VisitRow.version == expected_version)
            .values(
                starts_at=visit.starts_at,
                ends_at=visit.ends_at,
                session_start=visit.session_start,
                version=visit.version,
                room_ids=list(visit.room_ids),
                hold_ids=list(visit.hold_ids),
            )
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict("the visit changed meanwhile")
        row = self._s.get(VisitRow, visit.visit_id)
        if row is not None:
            self._s.expire(row)

    def page_visits(self, wanted: VisitFilter, *, offset: int, limit: int) -> tuple[list[Visit], int]:
        """Only the page is read, on (leader_id | case_id, starts_at, visit_id); every visit of a leader's
        years was read and sliced here before (issue 20)."""
        if not wanted.room_id:  # every list but a room's: statements built once, Core rows
            return self._page_visits(wanted, offset=offset, limit=limit)
        q = select(VisitRow)
        if wanted.leader_id:
            q = q.where(VisitRow.leader_id == wanted.leader_id)
        if wanted.case_id:
            q = q.where(VisitRow.case_id == wanted.case_id)
        if wanted.room_id:  # the room list is JSON: its text holds the id in quotes
            q = q.where(cast(VisitRow.room_ids, String).contains(json.dumps(wanted.room_id), autoescape=True))
        if wanted.not_before:
            q = q.where(VisitRow.starts_at >= wanted.not_before)
        if wanted.not_after:
            q = q.where(VisitRow.starts_at < wanted.not_after)
        order = (VisitRow.starts_at, VisitRow.visit_id)
        rows = [to_visit(self._cipher, r) for r in self._s.scalars(q.order_by(*order).offset(offset).limit(limit))]
        total = bounded_count(self._s, q.with_only_columns(VisitRow.visit_id).order_by(*order))
        return rows, total

    def _page_visits(self, wanted: VisitFilter, *, offset: int, limit: int) -> tuple[list[Visit], int]:
        page, count = read_sql.visit_statements(
            bool(wanted.leader_id), bool(wanted.case_id), bool(wanted.not_before), bool(wanted.not_after)
        )
        params = {
            "leader_id": wanted.leader_id,
            "case_id": wanted.case_id,
            "not_before": wanted.not_before,
            "not_after": wanted.not_after,
            "offset": offset,
            "limit": limit,
        }
        connection = self._connection()
        rows = [to_visit(self._cipher, r) for r in connection.execute(page, params)]
        if len(rows) < limit and (rows or offset == 0) and offset + len(rows) <= COUNT_LIMIT:
            return rows, offset + len(rows)  # the page ends the list: that is the count (a case's few visits)
        found = connection.execute(count, params).scalar() or 0
        return rows, -1 if found > COUNT_LIMIT else int(found)

    def visits_starting(self, after: datetime, until: datetime) -> list[Visit]:
        q = select(VisitRow).where(
            VisitRow.state.in_(DUE_STATES), VisitRow.starts_at > after, VisitRow.starts_at <= until
        )
        return [to_visit(self._cipher, r) for r in self._s.scalars(q)]

    # A consultation's reminders share video_reminders with visits' (keyed by its id, con-…).

    def reminders_sent(self, booking_ids: list[str]) -> set[tuple[str, str]]:
        q = select(ReminderRow).where(ReminderRow.visit_id.in_(booking_ids))
        return {(r.visit_id, r.kind) for r in self._s.scalars(q)}

    def claim_reminder(self, booking_id: str, kind: str, at: datetime) -> bool:
        # Two sweeps can run at once (the node's timer and an operator's, or two replicas): the
        # insert that finds the key taken waits for the other's commit and then does nothing, so
        # the reminder is emitted once and neither sweep fails on the primary key.
        dialect = postgresql if self._s.get_bind().dialect.name == "postgresql" else sqlite
        claim = dialect.insert(ReminderRow).values(visit_id=booking_id, kind=kind, sent_at=at)
        claimed = claim.on_conflict_do_nothing(index_elements=[ReminderRow.visit_id, ReminderRow.kind])
        # RETURNING, not rowcount: the rowcount of a skipped insert is not 0 through every driver.
        return self._s.execute(claimed.returning(ReminderRow.kind)).first() is not None

    def forget_reminders(self, booking_id: str) -> None:
        self._s.execute(delete(ReminderRow).where(ReminderRow.visit_id == booking_id))

    def stale_holding(self, cutoff: datetime) -> list[str]:
        q = select(VisitRow.visit_id).where(
            VisitRow.state == inline_state(VisitState.HOLDING.value), VisitRow.created_at <= cutoff
        )
        return list(self._s.scalars(q))

    # -- holds asked of other nodes

    def add_remote_holds(self, holds: list[RemoteHold], at: datetime) -> None:
        for h in holds:
            self._s.add(
                RemoteHoldRow(
                    hold_id=h.hold_id, visit_id=h.visit_id, room_id=h.room_id, node=h.node, state=h.state, created_at=at
                )
            )

    def remote_holds(self, booking_id: str | None, states: Collection[RemoteState]) -> list[RemoteHold]:
        wanted = [s.value for s in states]
        q = select(RemoteHoldRow).where(
            RemoteHoldRow.state == wanted[0] if len(wanted) == 1 else RemoteHoldRow.state.in_(wanted)
        )
        if booking_id is not None:
            q = q.where(RemoteHoldRow.visit_id == booking_id)
        return [RemoteHold(r.hold_id, r.visit_id, r.room_id, r.node, r.state) for r in self._s.scalars(q)]

    def set_remote_state(
        self,
        state: RemoteState,
        *,
        booking_id: str | None = None,
        hold_ids: Collection[str] | None = None,
        only_from: Collection[RemoteState] | None = None,
    ) -> int:
        q = update(RemoteHoldRow)
        if booking_id is not None:
            q = q.where(RemoteHoldRow.visit_id == booking_id)
        if hold_ids is not None:
            ids = list(hold_ids)
            q = q.where(RemoteHoldRow.hold_id == ids[0] if len(ids) == 1 else RemoteHoldRow.hold_id.in_(ids))
        if only_from is not None:
            states = [s.value for s in only_from]
            q = q.where(RemoteHoldRow.state == states[0] if len(states) == 1 else RemoteHoldRow.state.in_(states))
        return int(self._s.execute(q.values(state=state.value)).rowcount)  # type: ignore[attr-defined]

    def abandon_stale_moves(self, cutoff: datetime) -> int:
        # Correlated, so each stale hold looks its visit up by key instead of listing every visit.
        # Holds of a HOLDING visit are left to the booking's own clean-up.
        moving = (
            select(VisitRow.visit_id)
            .where(VisitRow.visit_id == RemoteHoldRow.visit_id, VisitRow.state != VisitState.HOLDING.value)
            .exists()
        )
        consultation_moving = (
            select(ConsultationRow.consultation_id)
            .where(
                ConsultationRow.consultation_id == RemoteHoldRow.visit_id,
                ConsultationRow.state != consult.ConsultationState.HOLDING.value,
            )
            .exists()
        )
        moved = 0
        for booking in (moving, consultation_moving):
            done = self._s.execute(
                update(RemoteHoldRow)
                .where(
                    RemoteHoldRow.state.in_([RemoteState.ASKED.value, RemoteState.HELD.value]),
                    RemoteHoldRow.created_at <= cutoff,
                    booking,
                )
                .values(state=RemoteState.RELEASING.value)
            )
            moved += int(done.rowcount)  # type: ignore[attr-defined]
        return moved

    # -- holds granted to other nodes

    def get_hold(self, hold_id: str) -> Hold | None:
        row = self._s.get(HoldRow, hold_id)
        return None if row is None else to_hold(row)

    def add_hold(self, hold: Hold) -> None:
        self._s.add(hold_row(hold))

    def save_hold(self, hold: Hold) -> None:
        row = self._loaded(HoldRow, hold.hold_id)
        row.state, row.reason = hold.state.value, hold.reason

    def lapsed_holds(self, now: datetime) -> list[Hold]:
        q = select(HoldRow).where(HoldRow.state == HoldState.HELD.value, HoldRow.expires_at <= now)
        return [to_hold(r) for r in self._s.scalars(q)]

    # -- consultations

    def get_consultation(self, consultation_id: str) -> Consultation | None:
        row = self._s.get(ConsultationRow, consultation_id)
        return None if row is None else to_consultation(row)

    def consultations_of(self, case_id: str) -> list[Consultation]:
        found = self._connection().execute(read_sql.CASE_CONSULTATIONS, {"case_id": case_id})
        return [to_consultation(r) for r in found]

    def add_consultation(self, consultation: Consultation) -> None:
        self._s.add(consultation_row(consultation))

    def save_consultation(self, consultation: Consultation) -> None:
        c = consultation
        row = self._loaded(ConsultationRow, c.consultation_id)
        row.state, row.version, row.topic = c.state.value, c.version, c.topic
        row.minutes, row.held_at, row.cancel_reason = c.minutes, c.held_at, c.cancel_reason
        row.participants = [{"node": p.node, "unit_id": p.unit_id, "room_id": p.room_id} for p in c.participants]
        row.starts_at, row.ends_at, row.hold_ids = c.starts_at, c.ends_at, list(c.hold_ids)

    def consultations_starting(self, after: datetime, until: datetime) -> list[Consultation]:
        q = select(ConsultationRow).where(
            ConsultationRow.state == consult.ConsultationState.BOOKED.value,
            ConsultationRow.replica.is_(False),
            ConsultationRow.starts_at > after,
            ConsultationRow.starts_at <= until,
        )
        return [to_consultation(r) for r in self._s.scalars(q)]

    def stale_consultations(self, cutoff: datetime) -> list[str]:
        q = select(ConsultationRow.consultation_id).where(
            ConsultationRow.state == consult.ConsultationState.HOLDING.value, ConsultationRow.created_at <= cutoff
        )
        return list(self._s.scalars(q))

    # -- facts on the case

    def owner(self, case_id: str) -> CaseOwner:
        row = self._s.get(CaseOwnerRow, case_id)
        return owner_for_event(CaseOwner(row.owner_node, row.owner_epoch) if row else None, case_id, self._node)

    def emit(self, event: VideoEvent, owner: CaseOwner, *, to_owner: bool = False) -> None:
        # video does not own cases: version 0 marks a fact about the case, not a state change of it.
        # The envelope names the case's owner and epoch as this node knows them, as the owner's own
        # events do, so the tiers above take it as the case's next event (docs/exchange.md).
        field, message = payload(event)
        case_id = event.case_id
        now = aware(self._clock())
        env = envelope(
            payload_field=field,
            payload=message,
            case_id=case_id,
            version=0,
            owner_node=owner.node,
            owner_epoch=owner.epoch,
            origin_node=self._node,
            origin_service="video",
            occurred_at=now,
        )
        write_event(self._s, outbox, env)
        if to_owner:
            command = command_for_owner(event, env, owner, node=self._node, now=now)
            body = command.SerializeToString()
            append_event(
                self._s,
                outbox,
                BusEvent(event_id=command.command_id, source="video", event_type="command", body=body),
                case_id,
            )
