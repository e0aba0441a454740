"""video's storage and the other nodes' video services in memory: its use cases tested without a
database or a network (fast, no I/O)."""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from services.common.calendar import ChineseWorkingCalendar, WorkingCalendar
from services.common.errors import Conflict, FailedPrecondition, Unavailable
from services.video.consult import Consultation, ConsultationState, Interval
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
from services.video.ports import Booking, HoldAnswer, VideoEvent, VisitFilter


@dataclass
class VideoState:
    """Everything a video database holds, as plain objects."""

    rooms: dict[str, Room] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    reservations: list[tuple[str, datetime, datetime, str]] = field(default_factory=list)
    sessions: dict[tuple[str, datetime], int] = field(default_factory=dict)
    visits: dict[str, Visit] = field(default_factory=dict)
    reminders: set[tuple[str, str]] = field(default_factory=set)
    remote: dict[str, tuple[RemoteHold, datetime]] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    consultations: dict[str, Consultation] = field(default_factory=dict)
    owners: dict[str, CaseOwner] = field(default_factory=dict)
    # (event, owner named, whether a command took it to the owner)
    events: list[tuple[VideoEvent, CaseOwner, bool]] = field(default_factory=list)


class FakeVideoUnitOfWork:
    """``VideoUnitOfWork`` over a copy of the state; ``commit`` makes the copy the state."""

    def __init__(self, store: FakeVideoStore) -> None:
        self._store = store
        self.s = copy.deepcopy(store.state)

    def commit(self) -> None:
        self._store.state = copy.deepcopy(self.s)

    def room(self, room_id: str) -> Room | None:
        return self.s.rooms.get(room_id)

    def put_room(self, room: Room) -> None:
        self.s.rooms[room.room_id] = room

    def rooms(self, node: str) -> list[Room]:
        return [r for _, r in sorted(self.s.rooms.items()) if not node or r.node == node]

    def schedule_of(self, leader_id: str) -> Schedule | None:
        return self.s.schedules.get(leader_id)

    def schedules(self) -> list[Schedule]:
        return [s for _, s in sorted(self.s.schedules.items())]

    def add_schedule(self, schedule: Schedule) -> None:
        self.s.schedules[schedule.leader_id] = schedule

    def save_schedule(self, schedule: Schedule, *, expected_version: int) -> None:
        if self.s.schedules[schedule.leader_id].version != expected_version:
            raise Conflict("the schedule changed meanwhile")
        self.s.schedules[schedule.leader_id] = schedule

    def reserve(self, resource: str, start: datetime, end: datetime, owner: str) -> None:
        for r, a, b, _ in self.s.reservations:
            if r == resource and a < end and b > start:
                raise Conflict(f"{resource.split(':', 1)[0]} is already booked at {start.isoformat()}")
        self.s.reservations.append((resource, start, end, owner))

    def free(self, owner: str) -> None:
        self.s.reservations = [r for r in self.s.reservations if r[3] != owner]

    def busy(
        self, resources: list[str], lo: datetime, hi: datetime, *, ignore_owner: str | None = None
    ) -> list[Interval]:
        return [
            (a, b)
            for r, a, b, owner in self.s.reservations
            if r in resources and a < hi and b > lo and owner != ignore_owner
        ]

    def session_counts(self, leader_id: str, lo: datetime, hi: datetime) -> dict[datetime, int]:
        return {start: n for (leader, start), n in self.s.sessions.items() if leader == leader_id and lo <= start <= hi}

    def count_in_session(self, leader_id: str, session_start: datetime, cap: int, delta: int) -> None:
        booked = self.s.sessions.get((leader_id, session_start), 0)
        if delta > 0 and booked >= cap:
            raise Conflict(f"the session at {session_start.isoformat()} is full ({cap} receptions)")
        self.s.sessions[(leader_id, session_start)] = max(0, booked + delta)

    def lock_case(self, case_id: str) -> None:
        return None  # one writer at a time here

    def get_visit(self, visit_id: str) -> Visit | None:
        return self.s.visits.get(visit_id)

    def visits_of_case(self, case_id: str) -> list[Visit]:
        return [v for v in self.s.visits.values() if v.case_id == case_id]

    def add_visit(self, visit: Visit) -> None:
        self.s.visits[visit.visit_id] = visit

    def save_visit(self, visit: Visit) -> None:
        self.s.visits[visit.visit_id] = visit

    def save_moved_visit(self, visit: Visit, *, expected_version: int) -> None:
        if self.s.visits[visit.visit_id].version not in (expected_version, visit.version):
            raise Conflict("the visit changed meanwhile")
        self.s.visits[visit.visit_id] = visit

    def page_visits(self, wanted: VisitFilter, *, offset: int, limit: int) -> tuple[list[Visit], int]:
        found = sorted(
            (
                v
                for v in self.s.visits.values()
                if (not wanted.leader_id or v.leader_id == wanted.leader_id)
                and (not wanted.case_id or v.case_id == wanted.case_id)
                and (not wanted.room_id or wanted.room_id in v.room_ids)
            ),
            key=lambda v: (v.starts_at, v.visit_id),
        )
        return found[offset : offset + limit], len(found)

    def visits_starting(self, after: datetime, until: datetime) -> list[Visit]:
        due = (VisitState.BOOKED, VisitState.CHECKED_IN)
        return [v for v in self.s.visits.values() if v.state in due and after < v.starts_at <= until]

    def reminders_sent(self, booking_ids: list[str]) -> set[tuple[str, str]]:
        return {r for r in self.s.reminders if r[0] in booking_ids}

    def claim_reminder(self, booking_id: str, kind: str, at: datetime) -> bool:
        claimed = (booking_id, kind) not in self.s.reminders
        self.s.reminders.add((booking_id, kind))
        return claimed

    def forget_reminders(self, booking_id: str) -> None:
        self.s.reminders = {r for r in self.s.reminders if r[0] != booking_id}

    def stale_holding(self, cutoff: datetime) -> list[str]:
        return [
            v.visit_id
            for v in self.s.visits.values()
            if v.state == VisitState.HOLDING and v.created_at is not None and v.created_at <= cutoff
        ]

    def add_remote_holds(self, holds: list[RemoteHold], at: datetime) -> None:
        for h in holds:
            self.s.remote[h.hold_id] = (h, at)

    def remote_holds(self, booking_id: str | None, states: Collection[RemoteState]) -> list[RemoteHold]:
        wanted = {s.value for s in states}
        held = (h for h, _ in self.s.remote.values())
        return [h for h in held if h.state in wanted and (booking_id is None or h.visit_id == booking_id)]

    def set_remote_state(
        self,
        state: RemoteState,
        *,
        booking_id: str | None = None,
        hold_ids: Collection[str] | None = None,
        only_from: Collection[RemoteState] | None = None,
    ) -> int:
        moved = 0
        for hold_id, (h, at) in list(self.s.remote.items()):
            if booking_id is not None and h.visit_id != booking_id:
                continue
            if hold_ids is not None and hold_id not in hold_ids:
                continue
            if only_from is not None and h.state not in {s.value for s in only_from}:
                continue
            self.s.remote[hold_id] = (replace(h, state=state.value), at)
            moved += 1
        return moved

    def abandon_stale_moves(self, cutoff: datetime) -> int:
        settled = {v.visit_id for v in self.s.visits.values() if v.state != VisitState.HOLDING}
        settled |= {c.consultation_id for c in self.s.consultations.values() if c.state != ConsultationState.HOLDING}
        stale = [
            h.hold_id
            for h, at in self.s.remote.values()
            if h.state in (RemoteState.ASKED, RemoteState.HELD) and at <= cutoff and h.visit_id in settled
        ]
        return self.set_remote_state(RemoteState.RELEASING, hold_ids=stale)

    def get_hold(self, hold_id: str) -> Hold | None:
        return self.s.holds.get(hold_id)

    def add_hold(self, hold: Hold) -> None:
        self.s.holds[hold.hold_id] = hold

    def save_hold(self, hold: Hold) -> None:
        self.s.holds[hold.hold_id] = hold

    def lapsed_holds(self, now: datetime) -> list[Hold]:
        return [h for h in self.s.holds.values() if h.state == HoldState.HELD and h.expires_at <= now]

    def get_consultation(self, consultation_id: str) -> Consultation | None:
        return self.s.consultations.get(consultation_id)

    def consultations_of(self, case_id: str) -> list[Consultation]:
        found = [c for c in self.s.consultations.values() if c.case_id == case_id]
        return sorted(found, key=lambda c: (c.starts_at, c.consultation_id))

    def add_consultation(self, consultation: Consultation) -> None:
        self.s.consultations[consultation.consultation_id] = consultation

    def save_consultation(self, consultation: Consultation) -> None:
        self.s.consultations[consultation.consultation_id] = consultation

    def consultations_starting(self, after: datetime, until: datetime) -> list[Consultation]:
        return [
            c
            for c in self.s.consultations.values()
            if c.state == ConsultationState.BOOKED and not c.replica and after < c.starts_at <= until
        ]

    def stale_consultations(self, cutoff: datetime) -> list[str]:
        return [
            c.consultation_id
            for c in self.s.consultations.values()
            if c.state == ConsultationState.HOLDING and c.created_at is not None and c.created_at <= cutoff
        ]

    def owner(self, case_id: str) -> CaseOwner:
        return owner_for_event(self.s.owners.get(case_id), case_id, self._store.node)

    def emit(self, event: VideoEvent, owner: CaseOwner, *, to_owner: bool = False) -> None:
        self.s.events.append((copy.deepcopy(event), owner, to_owner))


class FakeVideoStore:
    """``VideoStorage`` in memory, on a clock the test moves."""

    def __init__(
        self, node: str = "511102", now: datetime | None = None, calendar: WorkingCalendar | None = None
    ) -> None:
        self.node = node
        self.calendar: WorkingCalendar = calendar or ChineseWorkingCalendar()
        self.clock = now or datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # Monday 10:00 in Sichuan
        self.state = VideoState()

    def now(self) -> datetime:
        return self.clock

    @contextmanager
    def begin(self) -> Iterator[FakeVideoUnitOfWork]:
        yield FakeVideoUnitOfWork(self)  # left without commit: its copy is dropped

    @contextmanager
    def reading_together(self) -> Iterator[None]:
        yield  # every unit of work reads the one state anyway

    def has_sweep_work(self, horizon: timedelta = timedelta(hours=25)) -> bool:
        return True

    @property
    def events(self) -> list[VideoEvent]:
        return [event for event, _, _ in self.state.events]


@dataclass
class FakeRemoteRooms:
    """The other nodes' video services: each grants, refuses or does not answer, as the test says."""

    refuse: set[str] = field(default_factory=set)  # rooms whose node refuses a hold
    unreachable: set[str] = field(default_factory=set)  # nodes that do not answer
    free: dict[str, list[Interval]] = field(default_factory=dict)  # a remote room's free periods
    held: dict[str, tuple[str, Booking]] = field(default_factory=dict)  # hold id → (room, booking)
    confirmed: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)
    confirm_down: bool = False  # the nodes answer holds, then cannot be reached to confirm them
    lapsed: bool = False  # a hold lapsed there before its confirmation

    def _answer(self, node: str) -> None:
        if node in self.unreachable:
            raise Unavailable(f"node {node} does not answer")

    def hold(
        self, node: str, *, hold_id: str, room_id: str, visit: Booking, ttl: timedelta, unit_id: str = ""
    ) -> HoldAnswer:
        self._answer(node)
        if room_id in self.refuse:
            return HoldAnswer(False, "room is already booked")
        self.held[hold_id] = (room_id, visit)
        return HoldAnswer(True)

    def free_periods(
        self, node: str, *, unit_id: str, room_id: str, not_before: datetime, not_after: datetime
    ) -> tuple[list[Interval], str]:
        self._answer(node)
        return self.free.get(room_id, [(not_before, not_after)]), ""

    def confirm(self, node: str, hold_id: str) -> None:
        self._answer(node)
        if self.confirm_down:
            raise Unavailable(f"node {node} does not answer")
        if self.lapsed:
            raise FailedPrecondition(f"hold {hold_id} is EXPIRED", "EXPIRED")
        self.confirmed.add(hold_id)

    def release(self, node: str, hold_id: str, reason: str) -> None:
        self._answer(node)
        self.released.add(hold_id)
        self.held.pop(hold_id, None)
