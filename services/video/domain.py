"""Video reception (视频接访) business rules: schedules, visits, holds and their states.

Plain Python: no gRPC, SQLAlchemy or nameko. Times are aware datetimes; schedules speak local
Asia/Shanghai wall-clock times ("09:00").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from enum import StrEnum

from services.common.clock import CHINA
from services.common.errors import Conflict, FailedPrecondition, InvalidArgument, PermissionDenied
from services.common.identity import check_id_number
from services.common.ids import registering_node

MAX_REPRESENTATIVES = 5  # 信访工作条例: a group visit sends at most 5 representatives
DEFAULT_HORIZON = timedelta(days=90)
MAX_HORIZON = timedelta(days=366)
DEFAULT_HOLD_TTL = timedelta(seconds=60)
MAX_HOLD_TTL = timedelta(minutes=15)
REMINDERS: tuple[tuple[str, timedelta], ...] = (("24h", timedelta(hours=24)), ("1h", timedelta(hours=1)))

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class VisitState(StrEnum):
    HOLDING = "HOLDING"
    BOOKED = "BOOKED"
    CHECKED_IN = "CHECKED_IN"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    NO_SHOW = "NO_SHOW"


class HoldState(StrEnum):
    HELD = "HELD"
    CONFIRMED = "CONFIRMED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"
    REFUSED = "REFUSED"


class RemoteState(StrEnum):
    """A hold this node asked of another node (``video_remote_holds.state``)."""

    ASKED = "ASKED"  # recorded before HoldRoom is called, so a crash can still release it
    HELD = "HELD"  # granted by the owning node, with a time-to-live there
    CONFIRMED = "CONFIRMED"  # the room is booked for the visit
    CONFIRMING = "CONFIRMING"  # a move committed here; ConfirmHold still to be done (retried by the sweep)
    SUPERSEDED = "SUPERSEDED"  # the visit moved away; released once the new holds are CONFIRMED
    RELEASING = "RELEASING"  # to be released (retried by the sweep)
    RELEASED = "RELEASED"


ACTIVE_VISIT_STATES = frozenset({VisitState.HOLDING, VisitState.BOOKED, VisitState.CHECKED_IN})


def parse_hhmm(value: str, field_name: str) -> time:
    match = _HHMM.match(value.strip())
    if not match:
        raise InvalidArgument(field_name, f"must be HH:MM, got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class WeeklyPattern:
    weekday: int  # ISO: 1 = Monday
    start: time
    end: time


@dataclass(frozen=True)
class OneOffDay:
    day: date
    start: time | None
    end: time | None
    closed: bool


@dataclass(frozen=True)
class Schedule:
    schedule_id: str
    leader_id: str
    node: str
    weekly: tuple[WeeklyPattern, ...]
    one_offs: tuple[OneOffDay, ...]
    slot_minutes: int
    buffer_minutes: int
    max_per_session: int
    room_ids: tuple[str, ...]
    version: int = 0
    leader_name: str = ""  # public name and title (王某某（区长）), shown to citizens


def validate_schedule(s: Schedule) -> None:
    """Raise InvalidArgument naming the first bad field; a valid schedule changes nothing here."""
    if not s.leader_id.strip():
        raise InvalidArgument("schedule.leader_id", "must be set")
    if len(s.node) != 6 or not s.node.isdigit():
        raise InvalidArgument("schedule.node", f"must be a 6-digit region code, got {s.node!r}")
    if not 5 <= s.slot_minutes <= 480:
        raise InvalidArgument("schedule.slot_minutes", "must be between 5 and 480")
    if not 0 <= s.buffer_minutes <= 240:
        raise InvalidArgument("schedule.buffer_minutes", "must be between 0 and 240")
    if not 1 <= s.max_per_session <= 100:
        raise InvalidArgument("schedule.max_per_session", "must be between 1 and 100")
    if not s.weekly and not any(not d.closed for d in s.one_offs):
        raise InvalidArgument("schedule.weekly_patterns", "give at least one weekly pattern or one-off day")
    for i, p in enumerate(s.weekly):
        if not 1 <= p.weekday <= 7:
            raise InvalidArgument(f"schedule.weekly_patterns[{i}].weekday", "must be 1 (Monday) to 7 (Sunday)")
        if p.end <= p.start:
            raise InvalidArgument(f"schedule.weekly_patterns[{i}].end_time", "must be after start_time")
    for i, d in enumerate(s.one_offs):
        if not d.closed and (d.start is None or d.end is None or d.end <= d.start):
            raise InvalidArgument(f"schedule.one_off_days[{i}].end_time", "must be after start_time")


@dataclass(frozen=True)
class Representative:
    name: str
    id_number: str
    phone: str = ""


def validate_representatives(reps: list[Representative]) -> list[Representative]:
    """1 to 5 representatives, each with a name and a valid resident ID number (GB 11643 check digit)."""
    if not reps:
        raise InvalidArgument("representatives", "give at least one representative")
    if len(reps) > MAX_REPRESENTATIVES:
        raise InvalidArgument(
            "representatives", f"at most {MAX_REPRESENTATIVES} representatives may check in, got {len(reps)}"
        )
    checked: list[Representative] = []
    for i, rep in enumerate(reps):
        if not rep.name.strip():
            raise InvalidArgument(f"representatives[{i}].name", "must be set")
        number = check_id_number(rep.id_number, field=f"representatives[{i}].id_number")
        checked.append(Representative(name=rep.name.strip(), id_number=number, phone=rep.phone.strip()))
    if len({r.id_number for r in checked}) != len(checked):
        raise InvalidArgument("representatives", "the same ID number appears twice")
    return checked


@dataclass
class Visit:
    visit_id: str
    case_id: str
    leader_id: str
    room_ids: list[str]
    unit_ids: list[str]
    starts_at: datetime
    ends_at: datetime
    state: VisitState
    version: int = 1
    session_start: datetime | None = None
    representatives: list[Representative] = field(default_factory=list)
    checked_in_at: datetime | None = None
    minutes: str = ""
    decisions: str = ""
    recording_ref: str = ""
    hold_ids: list[str] = field(default_factory=list)
    created_at: datetime | None = None

    @property
    def booking_id(self) -> str:
        """The id other nodes' holds name (``video_holds.visit_id``)."""
        return self.visit_id

    @property
    def owner(self) -> str:
        """Whose reservations are this visit's (``video_reservations.owner``)."""
        return f"visit:{self.visit_id}"

    def _advance(self, state: VisitState) -> None:
        self.state, self.version = state, self.version + 1

    def confirm(self) -> None:
        """Every remote room is confirmed: HOLDING → BOOKED."""
        require_state(self, {VisitState.HOLDING}, "confirm")
        self._advance(VisitState.BOOKED)

    def cancel(self) -> None:
        """HOLDING or BOOKED → CANCELLED (the caller frees the reservations and the session place)."""
        require_state(self, {VisitState.HOLDING, VisitState.BOOKED}, "cancel")
        self._advance(VisitState.CANCELLED)

    def check_in(self, representatives: list[Representative], at: datetime) -> None:
        """The representatives at the terminal (checked again when a second group arrives)."""
        require_state(self, {VisitState.BOOKED, VisitState.CHECKED_IN}, "check in for")
        self.representatives, self.checked_in_at = representatives, at
        self._advance(VisitState.CHECKED_IN)

    def complete(self, minutes: str, decisions: str, recording_ref: str) -> None:
        require_state(self, {VisitState.BOOKED, VisitState.CHECKED_IN}, "record the outcome of")
        self.minutes, self.decisions, self.recording_ref = minutes, decisions, recording_ref
        self._advance(VisitState.COMPLETED)

    def require_movable(self) -> None:
        require_state(self, {VisitState.BOOKED}, "reschedule")

    def move_to(self, slot: FoundSlot, hold_ids: list[str]) -> None:
        """To ``slot`` (version + 1), with the holds at other nodes it now has."""
        self.require_movable()
        self.starts_at, self.ends_at, self.session_start = slot.starts_at, slot.ends_at, slot.session_start
        self.room_ids, self.hold_ids = list(slot.room_ids), hold_ids
        self.version += 1


@dataclass(frozen=True)
class Room:
    room_id: str
    node: str
    name: str = ""


@dataclass(frozen=True)
class Hold:
    hold_id: str
    room_id: str
    requesting_node: str
    visit_id: str
    case_id: str
    starts_at: datetime
    ends_at: datetime
    expires_at: datetime
    state: HoldState
    reason: str = ""


def validate_room(room: Room) -> None:
    if not room.room_id.strip():
        raise InvalidArgument("room.room_id", "must be set")
    if len(room.node) != 6 or not room.node.isdigit():
        raise InvalidArgument("room.node", f"must be a 6-digit region code, got {room.node!r}")


def hold_owner(hold_id: str) -> str:
    """Whose reservations are a granted hold's (``video_reservations.owner``)."""
    return f"hold:{hold_id}"


def confirmed_hold(hold: Hold, now: datetime) -> Hold:
    """The requesting node confirms: HELD → CONFIRMED (again: unchanged); a lapsed hold cannot be."""
    if hold.state == HoldState.CONFIRMED:
        return hold
    state = HoldState.EXPIRED if hold.state == HoldState.HELD and hold.expires_at <= now else hold.state
    if state != HoldState.HELD:
        raise FailedPrecondition(f"hold {hold.hold_id} is {state}", state)
    return replace(hold, state=HoldState.CONFIRMED)


def released_hold(hold: Hold, reason: str) -> Hold | None:
    """The requesting node gives the hold up; None when there is nothing left to free."""
    if hold.state not in (HoldState.HELD, HoldState.CONFIRMED):
        return None
    return replace(hold, state=HoldState.RELEASED, reason=reason[:300])


@dataclass(frozen=True)
class FoundSlot:
    starts_at: datetime
    ends_at: datetime
    session_start: datetime
    remaining: int
    room_ids: tuple[str, ...]


@dataclass(frozen=True)
class BookRequest:
    case_id: str
    leader_id: str
    room_ids: tuple[str, ...]  # extra rooms asked for (local or remote)
    unit_ids: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    starts_at: datetime | None
    exclude: frozenset[datetime] = frozenset()
    one_per_case: bool = False  # a citizen's own booking: refused while the case has an active visit


@dataclass(frozen=True)
class RemoteHold:
    hold_id: str
    visit_id: str  # the visit, or the consultation (远程会商), the hold is for
    room_id: str
    node: str
    state: str
    unit_id: str = ""  # a consultation holds the unit of that node with its room


@dataclass(frozen=True)
class CaseOwner:
    """The node that owns a case and the ownership epoch it holds it with (DESIGN §3)."""

    node: str
    epoch: int


# The case events on a node's bus that name the case's owner: video follows them (from this node's
# intake and routing, and as replicas or hand-offs from exchange) to stamp its own events.
OWNER_EVENTS: tuple[str, ...] = ("case_registered", "work_order_created", "work_order_changed", "case_handed_off")


def owner_named(
    event_type: str, owner_node: str, owner_epoch: int, *, hand_off_to: str = "", hand_off_epoch: int = 0
) -> CaseOwner | None:
    """The owner a case event says the case has: a hand-off's new owner, else the envelope's owner."""
    if event_type == "case_handed_off" and hand_off_to and hand_off_epoch:
        return CaseOwner(hand_off_to, hand_off_epoch)
    if not owner_node or owner_epoch <= 0:
        return None
    return CaseOwner(owner_node, owner_epoch)


def owner_for_event(known: CaseOwner | None, case_id: str, here: str) -> CaseOwner:
    """Whom video's event about ``case_id`` names as owner: the owner last heard of, else the registrar.

    Not heard of yet (a visit booked right after the registration, before its events reached video)
    means the case has not moved: its registering node owns it with the first epoch.
    """
    if known is not None:
        return known
    return CaseOwner(registering_node(case_id) or here, 1)


def require_state(visit: Visit, allowed: frozenset[VisitState] | set[VisitState], action: str) -> None:
    if visit.state not in allowed:
        raise FailedPrecondition(f"cannot {action} a visit in state {visit.state}", visit.state.value)


def check_version(expected: int, current: int, what: str) -> None:
    if expected and expected != current:
        raise Conflict(f"{what} is at version {current}, expected {expected}")


def slots_calendar_notice(known_end: date, req: BookRequest) -> str:
    """Why a window offers nothing after some day: it runs past the node's official calendar."""
    last = (req.starts_at or req.not_after).astimezone(CHINA).date()
    if last <= known_end:
        return ""
    return (
        f"no slots after {known_end.isoformat()}: the official holiday calendar for {known_end.year + 1} "
        "is not loaded on this node (an administrator loads it with `lianxin calendar load`)"
    )


def reminders_due(starts_at: datetime, now: datetime) -> list[str]:
    """Reminder kinds whose moment has come and the visit has not started yet."""
    if now >= starts_at:
        return []
    return [kind for kind, before in REMINDERS if now >= starts_at - before]


def clamp_ttl(requested: timedelta | None) -> timedelta:
    if requested is None or requested <= timedelta(0):
        return DEFAULT_HOLD_TTL
    return min(requested, MAX_HOLD_TTL)


# --------------------------------------------------------------------------- citizens' own bookings

# A citizen may cancel their own visit up to a day before: later, the leader's time is hard to give
# to another citizen, and the 信访 office cancels on the citizen's call instead.
CITIZEN_CANCEL_NOTICE = timedelta(hours=24)


def ensure_no_active_visit(visits: list[Visit]) -> None:
    """One booked visit per case at a time (the citizen cancels it to choose another slot)."""
    for visit in visits:
        if visit.state in ACTIVE_VISIT_STATES:
            raise FailedPrecondition(
                f"the case already has a video visit booked at {visit.starts_at.isoformat()}; cancel it first",
                "VISIT_ALREADY_BOOKED",
            )


def citizen_may_cancel(visit: Visit, now: datetime) -> bool:
    return visit.state in (VisitState.HOLDING, VisitState.BOOKED) and visit.starts_at - now >= CITIZEN_CANCEL_NOTICE


def check_citizen_cancel(visit: Visit, case_id: str, now: datetime) -> None:
    if visit.case_id != case_id:
        raise PermissionDenied("the visit belongs to another case")
    if not citizen_may_cancel(visit, now):
        if visit.state not in (VisitState.HOLDING, VisitState.BOOKED):
            raise FailedPrecondition(f"the visit is {visit.state.value}, not booked", visit.state.value)
        raise FailedPrecondition(
            "a visit can be cancelled online until 24 hours before it starts; call the 信访 office", "TOO_LATE"
        )


def check_citizen_start(starts_at: datetime | None, now: datetime) -> datetime:
    """The slot a citizen chose: set, in the future and within the booking horizon."""
    if starts_at is None:
        raise InvalidArgument("starts_at", "must be set: choose one of the free slots")
    if starts_at <= now:
        raise InvalidArgument("starts_at", "must be in the future")
    if starts_at - now > DEFAULT_HORIZON:
        raise InvalidArgument("starts_at", f"must be within {DEFAULT_HORIZON.days} days")
    return starts_at


# --------------------------------------------------------------------------- facts about the case


@dataclass(frozen=True)
class VisitBooked:
    """Booked, or moved to another slot (the event names the new start)."""

    case_id: str
    visit_id: str
    starts_at: datetime
    leader_id: str


@dataclass(frozen=True)
class VisitCancelled:
    case_id: str
    visit_id: str
    starts_at: datetime
    reason: str


@dataclass(frozen=True)
class VisitOutcomeRecorded:
    case_id: str
    visit_id: str
    minutes: str
    decisions: str
    recording_ref: str


@dataclass(frozen=True)
class VisitReminder:
    case_id: str
    visit_id: str
    starts_at: datetime
    leader_id: str
    kind: str  # REMINDERS: "24h", "1h"


def booked(visit: Visit) -> VisitBooked:
    return VisitBooked(visit.case_id, visit.visit_id, visit.starts_at, visit.leader_id)
