"""What video's use cases need: the unit-of-work Protocol (``unit_of_work.SqlVideoUnitOfWork`` implements it),
the storage that opens one per transaction (``store.VideoStore``), and the client of the other nodes'
video services (``peers.GrpcRemoteRooms``).
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from services.common.calendar import WorkingCalendar
from services.video.consult import (
    Consultation,
    ConsultationBooked,
    ConsultationCancelled,
    ConsultationHeld,
    ConsultationReminder,
    Interval,
)
from services.video.domain import (
    CaseOwner,
    Hold,
    RemoteHold,
    RemoteState,
    Room,
    Schedule,
    Visit,
    VisitBooked,
    VisitCancelled,
    VisitOutcomeRecorded,
    VisitReminder,
)

# The facts video writes on the case (version 0: video does not own cases).
VideoEvent = (
    VisitBooked
    | VisitCancelled
    | VisitOutcomeRecorded
    | VisitReminder
    | ConsultationBooked
    | ConsultationHeld
    | ConsultationCancelled
    | ConsultationReminder
)


@dataclass(frozen=True)
class VisitFilter:
    """ListVisits: by leader, room or case, and a range of starts."""

    leader_id: str = ""
    room_id: str = ""
    case_id: str = ""
    not_before: datetime | None = None
    not_after: datetime | None = None


class VideoUnitOfWork(Protocol):
    """One transaction on video's database. The rules are the handlers'; this loads, saves and keeps
    the one invariant only the database can: a resource is never booked twice for overlapping periods
    (``reserve`` serialises writers per resource, and the UNIQUE(resource_id, starts_at) constraint
    backs it), both reported as Conflict."""

    # -- rooms and schedules
    def room(self, room_id: str) -> Room | None: ...

    def put_room(self, room: Room) -> None: ...

    def rooms(self, node: str) -> list[Room]: ...

    def schedule_of(self, leader_id: str) -> Schedule | None: ...

    def schedules(self) -> list[Schedule]:
        """Every published schedule, by leader id."""
        ...

    def add_schedule(self, schedule: Schedule) -> None: ...

    def save_schedule(self, schedule: Schedule, *, expected_version: int) -> None:
        """Conflict when the stored version is no longer ``expected_version``."""
        ...

    # -- reservations and sessions
    def reserve(self, resource: str, start: datetime, end: datetime, owner: str) -> None:
        """Conflict when the resource is busy in any part of [start, end)."""
        ...

    def free(self, owner: str) -> None:
        """Drop every reservation of ``owner`` (a visit, a consultation, a granted hold)."""
        ...

    def busy(
        self, resources: list[str], lo: datetime, hi: datetime, *, ignore_owner: str | None = None
    ) -> list[Interval]:
        """The reservations of ``resources`` reaching into [lo, hi], unsorted."""
        ...

    def session_counts(self, leader_id: str, lo: datetime, hi: datetime) -> dict[datetime, int]: ...

    def count_in_session(self, leader_id: str, session_start: datetime, cap: int, delta: int) -> None:
        """Add ``delta`` to the session's bookings; Conflict when that would pass ``cap``."""
        ...

    # -- visits
    def lock_case(self, case_id: str) -> None:
        """Until the commit, no other booking of the case passes this point (SQLite: already so)."""
        ...

    def get_visit(self, visit_id: str) -> Visit | None: ...

    def visits_of_case(self, case_id: str) -> list[Visit]: ...

    def add_visit(self, visit: Visit) -> None: ...

    def save_visit(self, visit: Visit) -> None: ...

    def save_moved_visit(self, visit: Visit, *, expected_version: int) -> None:
        """The new slot, rooms and holds; Conflict when the stored version is not ``expected_version``."""
        ...

    def page_visits(self, wanted: VisitFilter, *, offset: int, limit: int) -> tuple[list[Visit], int]:
        """A page by start and how many match (-1: more than the count reads)."""
        ...

    def visits_starting(self, after: datetime, until: datetime) -> list[Visit]:
        """BOOKED and CHECKED_IN visits starting in (after, until]."""
        ...

    # Reminders sent, by (booking id, kind): a visit's or a consultation's.
    def reminders_sent(self, booking_ids: list[str]) -> set[tuple[str, str]]: ...

    def claim_reminder(self, booking_id: str, kind: str, at: datetime) -> bool:
        """Record the reminder as sent; False when another sweep recorded it first (then it is not sent again)."""

    def forget_reminders(self, booking_id: str) -> None: ...

    def stale_holding(self, cutoff: datetime) -> list[str]:
        """Visits still HOLDING that were created at or before ``cutoff``."""
        ...

    # -- holds this node asked of other nodes (for a visit or a consultation: ``booking_id``)
    def add_remote_holds(self, holds: list[RemoteHold], at: datetime) -> None: ...

    def remote_holds(self, booking_id: str | None, states: Collection[RemoteState]) -> list[RemoteHold]: ...

    def set_remote_state(
        self,
        state: RemoteState,
        *,
        booking_id: str | None = None,
        hold_ids: Collection[str] | None = None,
        only_from: Collection[RemoteState] | None = None,
    ) -> int:
        """Move the holds named (by booking, by id, or both) that are in ``only_from`` (None: any) to
        ``state``; how many moved."""
        ...

    def abandon_stale_moves(self, cutoff: datetime) -> int:
        """ASKED/HELD holds created by ``cutoff`` for a visit or consultation that is no longer HOLDING
        (a move that never committed) go RELEASING; how many."""
        ...

    # -- holds this node granted to other nodes
    def get_hold(self, hold_id: str) -> Hold | None: ...

    def add_hold(self, hold: Hold) -> None: ...

    def save_hold(self, hold: Hold) -> None: ...

    def lapsed_holds(self, now: datetime) -> list[Hold]:
        """HELD holds whose time-to-live is over."""
        ...

    # -- consultations
    def get_consultation(self, consultation_id: str) -> Consultation | None: ...

    def consultations_of(self, case_id: str) -> list[Consultation]: ...

    def add_consultation(self, consultation: Consultation) -> None: ...

    def save_consultation(self, consultation: Consultation) -> None: ...

    def consultations_starting(self, after: datetime, until: datetime) -> list[Consultation]:
        """BOOKED consultations hosted here starting in (after, until]."""
        ...

    def stale_consultations(self, cutoff: datetime) -> list[str]:
        """Consultations still HOLDING that were created at or before ``cutoff``."""
        ...

    # -- facts on the case
    def owner(self, case_id: str) -> CaseOwner:
        """The case's owner as this node last heard, else its registering node."""
        ...

    def emit(self, event: VideoEvent, owner: CaseOwner, *, to_owner: bool = False) -> None:
        """Write the event to the outbox naming ``owner``; with ``to_owner`` also a command taking it to
        the owner's routing (held here for a case another node handles)."""
        ...

    def commit(self) -> None: ...


class VideoStorage(Protocol):
    """The video service's storage and the node facts its use cases need (``store.VideoStore``)."""

    node: str
    calendar: WorkingCalendar

    def now(self) -> datetime: ...

    def begin(self) -> AbstractContextManager[VideoUnitOfWork]:
        """One unit of work; leaving it without ``commit`` rolls back."""
        ...

    def reading_together(self) -> AbstractContextManager[None]:
        """Units of work begun inside only read, all in one transaction."""
        ...

    def has_sweep_work(self, horizon: timedelta = ...) -> bool:
        """Whether the sweep has anything to look at (one read, no write lock)."""
        ...


@dataclass(frozen=True)
class HoldAnswer:
    granted: bool
    reason: str = ""


class Booking(Protocol):
    """What a hold at another node names: a visit or a consultation (远程会商)."""

    @property
    def booking_id(self) -> str: ...

    @property
    def case_id(self) -> str: ...

    @property
    def starts_at(self) -> datetime: ...

    @property
    def ends_at(self) -> datetime: ...


class RemoteRooms(Protocol):
    """Calls the video service of the node that owns a room (gRPC in production, with deadlines)."""

    def hold(
        self, node: str, *, hold_id: str, room_id: str, visit: Booking, ttl: timedelta, unit_id: str = ""
    ) -> HoldAnswer: ...

    def free_periods(
        self, node: str, *, unit_id: str, room_id: str, not_before: datetime, not_after: datetime
    ) -> tuple[list[Interval], str]:
        """A unit's and a room's free periods at ``node`` and its calendar notice (ListFreePeriods)."""
        ...

    def confirm(self, node: str, hold_id: str) -> None:
        """Raises FailedPrecondition when the hold lapsed or was released there, Unavailable when
        the node cannot be reached."""
        ...

    def release(self, node: str, hold_id: str, reason: str) -> None: ...
