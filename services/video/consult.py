"""Remote consultation (远程会商) rules: who takes part, when every participant is free, the states.

A consultation is a video session between units of different tiers about a case, without the citizen
(the county unit handling it, the city's bureau, a provincial department). Each unit joins from a
room of its own node, so each node answers for its own calendar and rooms:

* **Consultation hours** are 09:00-12:00 and 14:30-17:30 Asia/Shanghai on the node's working days
  (its 调休 calendar, ``services/common/calendar.py``), on a 30-minute grid.
* A room is not free during a reception session of a leader whose schedule uses it (视频接访 keeps
  priority: citizens' bookable slots do not vanish), nor while anything is booked in it (a visit, a
  hold for another node, another consultation); a unit is not free while it joins a reception or
  another consultation.
* The earliest common slot is the first grid start whose whole length lies inside every
  participant's free periods (an intersection of sorted interval lists, one forward pass).

Plain Python: no gRPC, SQLAlchemy or nameko.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum

from services.common.calendar import WorkingCalendar
from services.common.clock import CHINA
from services.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from services.video.slots import merge

Interval = tuple[datetime, datetime]

CONSULTATION_HOURS: tuple[tuple[time, time], ...] = ((time(9, 0), time(12, 0)), (time(14, 30), time(17, 30)))
GRID = timedelta(minutes=30)
DEFAULT_DURATION = timedelta(minutes=60)
MIN_DURATION, MAX_DURATION = timedelta(minutes=30), timedelta(minutes=240)
DEFAULT_WINDOW = timedelta(days=30)
MAX_WINDOW = timedelta(days=90)
MAX_FREE_WINDOW = timedelta(days=100)  # ListFreePeriods: the booking window plus the longest consultation
MIN_PARTICIPANTS, MAX_PARTICIPANTS = 2, 8
MAX_TOPIC = 200


class ConsultationState(StrEnum):
    HOLDING = "HOLDING"  # local units and rooms reserved; the other nodes' holds not yet confirmed
    BOOKED = "BOOKED"
    HELD = "HELD"  # the minutes are recorded
    CANCELLED = "CANCELLED"


ACTIVE_STATES = frozenset({ConsultationState.HOLDING, ConsultationState.BOOKED})


@dataclass(frozen=True)
class Participant:
    node: str
    unit_id: str
    room_id: str = ""  # empty in a copy held above (events name nodes and units only)


@dataclass
class Consultation:
    consultation_id: str
    case_id: str
    host_node: str
    topic: str
    participants: list[Participant]
    starts_at: datetime
    ends_at: datetime
    state: ConsultationState
    version: int = 1
    minutes: str = ""
    booked_by: str = ""
    held_at: datetime | None = None
    hold_ids: list[str] = field(default_factory=list)
    replica: bool = False
    cancel_reason: str = ""
    created_at: datetime | None = None

    @property
    def booking_id(self) -> str:
        """The id other nodes' holds name (``video_holds.visit_id``)."""
        return self.consultation_id

    @property
    def owner(self) -> str:
        """Whose reservations are this consultation's (``video_reservations.owner``)."""
        return f"consultation:{self.consultation_id}"

    def _advance(self, state: ConsultationState) -> None:
        self.state, self.version = state, self.version + 1

    def confirm(self) -> None:
        """Every other node's unit and room is confirmed: HOLDING → BOOKED."""
        require_state(self, {ConsultationState.HOLDING}, "confirm")
        self._advance(ConsultationState.BOOKED)

    def cancel(self, reason: str) -> None:
        require_state(self, ACTIVE_STATES, "cancel")
        self.cancel_reason = reason[:1000]
        self._advance(ConsultationState.CANCELLED)

    def require_movable(self) -> None:
        require_state(self, {ConsultationState.BOOKED}, "reschedule")

    def move_to(self, starts_at: datetime, ends_at: datetime, hold_ids: list[str]) -> None:
        """To another slot (version + 1), with the holds at other nodes it now has."""
        self.require_movable()
        self.starts_at, self.ends_at, self.hold_ids = starts_at, ends_at, hold_ids
        self.version += 1

    def hold(self, minutes: str, at: datetime) -> None:
        """Held, with its minutes: BOOKED → HELD."""
        require_state(self, {ConsultationState.BOOKED}, "record the minutes of")
        self.minutes, self.held_at = minutes, at
        self._advance(ConsultationState.HELD)


@dataclass(frozen=True)
class ConsultationRequest:
    case_id: str
    actor: str
    topic: str
    participants: tuple[Participant, ...]
    duration: timedelta
    not_before: datetime
    not_after: datetime
    starts_at: datetime | None = None


def follow_replica(kept: Consultation, copy: Consultation) -> bool:
    """Advance the copy ``kept`` of a consultation booked at a node below to what its event says;
    False when nothing changes: a state never goes back (HELD and CANCELLED stay), and a
    consultation booked here is not a copy."""
    if not kept.replica or kept.state in (ConsultationState.HELD, ConsultationState.CANCELLED):
        return False
    kept.state, kept.version = copy.state, kept.version + 1
    kept.minutes, kept.held_at, kept.cancel_reason = copy.minutes, copy.held_at, copy.cancel_reason
    if copy.topic:
        kept.topic = copy.topic
    if copy.participants:
        kept.participants = list(copy.participants)
    if copy.state is ConsultationState.BOOKED:  # booked again at another slot: moved
        kept.starts_at, kept.ends_at = copy.starts_at, copy.ends_at
    return True


@dataclass(frozen=True)
class ConsultationFact:
    """A fact about a consultation, written on its case."""

    consultation: Consultation

    @property
    def case_id(self) -> str:
        return self.consultation.case_id


@dataclass(frozen=True)
class ConsultationBooked(ConsultationFact):
    moved_from: datetime | None = None  # the start before a move (RescheduleConsultation)


@dataclass(frozen=True)
class ConsultationReminder(ConsultationFact):
    """Every unit taking part is reminded: ``kind`` is one of domain.REMINDERS (24 h, 1 h before)."""

    kind: str


@dataclass(frozen=True)
class ConsultationHeld(ConsultationFact):
    pass


@dataclass(frozen=True)
class ConsultationCancelled(ConsultationFact):
    reason: str


def _six_digits(code: str) -> bool:
    return len(code) == 6 and code.isdigit()


def check_participants(participants: Sequence[Participant], here: str) -> tuple[Participant, ...]:
    """2 to 8 units, each with a node, a unit and a room, from at least two nodes, one of them ``here``."""
    if len(participants) < MIN_PARTICIPANTS:
        raise InvalidArgument("participants", f"give at least {MIN_PARTICIPANTS} units, of two tiers")
    if len(participants) > MAX_PARTICIPANTS:
        raise InvalidArgument("participants", f"at most {MAX_PARTICIPANTS} units, got {len(participants)}")
    seen_units: set[tuple[str, str]] = set()
    seen_rooms: set[str] = set()
    out: list[Participant] = []
    for i, p in enumerate(participants):
        node, unit, room = p.node.strip(), p.unit_id.strip(), p.room_id.strip()
        if not _six_digits(node):
            raise InvalidArgument(f"participants[{i}].node", f"must be a 6-digit region code, got {p.node!r}")
        if not unit:
            raise InvalidArgument(f"participants[{i}].unit_id", "must be set")
        if not room:
            raise InvalidArgument(f"participants[{i}].room_id", "must be set: the room the unit joins from")
        if (node, unit) in seen_units:
            raise InvalidArgument(f"participants[{i}].unit_id", f"unit {unit} of node {node} is named twice")
        if room in seen_rooms:
            raise InvalidArgument(f"participants[{i}].room_id", f"room {room} is named twice")
        seen_units.add((node, unit))
        seen_rooms.add(room)
        out.append(Participant(node, unit, room))
    nodes = {p.node for p in out}
    if len(nodes) < 2:
        raise InvalidArgument("participants", "a remote consultation joins units of at least two nodes")
    if here not in nodes:
        raise InvalidArgument("participants", f"one unit must be of this node ({here}), which hosts the consultation")
    return tuple(out)


def check_duration(minutes: int) -> timedelta:
    if minutes == 0:
        return DEFAULT_DURATION
    length = timedelta(minutes=minutes)
    if not MIN_DURATION <= length <= MAX_DURATION:
        raise InvalidArgument("duration_minutes", "must be between 30 and 240")
    return length


def check_window(
    not_before: datetime | None, not_after: datetime | None, now: datetime, starts_at: datetime | None = None
) -> tuple[datetime, datetime]:
    """The window of starts: not before now, 30 days by default, at most 90 (an exact start: just it)."""
    if starts_at is not None:
        if starts_at <= now:
            raise InvalidArgument("starts_at", "must be in the future")
        if starts_at - now > MAX_WINDOW:
            raise InvalidArgument("starts_at", f"must be within {MAX_WINDOW.days} days")
        return starts_at, starts_at
    if not_before is not None and not_before - now > MAX_WINDOW:
        raise InvalidArgument("not_before", f"must be within {MAX_WINDOW.days} days")
    lo = max(not_before or now, now)
    if not_after is not None and not_after < lo:
        raise InvalidArgument("not_after", "must be after not_before and in the future")
    hi = not_after or lo + DEFAULT_WINDOW
    if hi - lo > MAX_WINDOW:
        raise InvalidArgument("not_after", f"the window may span at most {MAX_WINDOW.days} days")
    return lo, hi


def check_topic(topic: str) -> str:
    text = topic.strip()
    if not text:
        raise InvalidArgument("topic", "must be set: what the units consult on")
    if len(text) > MAX_TOPIC:
        raise InvalidArgument("topic", f"at most {MAX_TOPIC} characters")
    return text


def check_minutes(minutes: str) -> str:
    text = minutes.strip()
    if not text:
        raise InvalidArgument("minutes", "must be set: what was agreed, by whom, by when")
    return text


def require_state(c: Consultation, allowed: Iterable[ConsultationState], action: str) -> None:
    if c.replica:
        raise FailedPrecondition(
            f"consultation {c.consultation_id} is held by node {c.host_node}; {action} it there", "REPLICA"
        )
    if c.state not in set(allowed):
        raise FailedPrecondition(f"cannot {action} a consultation in state {c.state}", c.state.value)


# --------------------------------------------------------------------------- who may act and read


def may_act(roles: frozenset[str], unit: str, node: str, participants: Iterable[Participant]) -> bool:
    """The 信访 office of the node (clerk, supervisor, admin), or an operator of a unit taking part."""
    if roles & {"clerk", "supervisor", "admin"}:
        return True
    return bool(unit) and any(p.unit_id == unit and p.node == node for p in participants)


def may_read_minutes(roles: frozenset[str], unit: str, node: str, participants: Iterable[Participant]) -> bool:
    """Minutes are read by the office (and its auditors) of the nodes holding the consultation and by
    the units that took part; another handling unit sees that it took place, not what was said."""
    return bool(roles & {"auditor"}) or may_act(roles, unit, node, participants)


def check_may_act(roles: frozenset[str], unit: str, node: str, participants: Iterable[Participant]) -> None:
    if not may_act(roles, unit, node, participants):
        raise PermissionDenied("only the 信访 office or a unit taking part books, records or cancels a consultation")


# --------------------------------------------------------------------------- free periods and slots


def office_periods(first: date, last: date, calendar: WorkingCalendar) -> list[Interval]:
    """Consultation hours on the working days first..last (inclusive), earliest first."""
    out: list[Interval] = []
    day = first
    while day <= last:
        if calendar.is_workday(day):
            for start, end in CONSULTATION_HOURS:
                out.append((datetime.combine(day, start, tzinfo=CHINA), datetime.combine(day, end, tzinfo=CHINA)))
        day += timedelta(days=1)
    return out


def subtract(periods: Sequence[Interval], busy: Sequence[Interval]) -> list[Interval]:
    """``periods`` minus the merged ``busy`` intervals (both sorted); one forward pass."""
    out: list[Interval] = []
    i = 0
    for start, end in periods:
        while i < len(busy) and busy[i][1] <= start:
            i += 1
        j, cursor = i, start
        while j < len(busy) and busy[j][0] < end:
            if busy[j][0] > cursor:
                out.append((cursor, busy[j][0]))
            cursor = max(cursor, busy[j][1])
            j += 1
        if cursor < end:
            out.append((cursor, end))
    return out


def clip(periods: Iterable[Interval], lo: datetime, hi: datetime) -> list[Interval]:
    return [(max(a, lo), min(b, hi)) for a, b in periods if b > lo and a < hi]


def free_periods(
    calendar: WorkingCalendar,
    busy: Iterable[Interval],
    not_before: datetime,
    not_after: datetime,
) -> list[Interval]:
    """When a unit and a room of one node are free in [not_before, not_after]: its consultation hours
    on its working days, minus everything ``busy`` (bookings and its leaders' sessions in the room).
    Days past the node's official calendar give nothing (the next year's notice is not loaded)."""
    known_first, known_last = calendar.known_range()
    first = max(not_before.astimezone(CHINA).date(), known_first)
    hours = office_periods(first, min(not_after.astimezone(CHINA).date(), known_last), calendar)
    return clip(subtract(hours, merge(busy)), not_before, not_after)


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """The periods inside both sorted, non-overlapping lists."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _grid_up(moment: datetime) -> datetime:
    """The next grid point at or after ``moment`` (China is UTC+8, so UTC half hours are local ones)."""
    epoch = datetime(2000, 1, 1, tzinfo=moment.tzinfo)
    steps = -((epoch - moment) // GRID)  # ceiling division
    return epoch + steps * GRID


def common_slots(
    free: Sequence[Sequence[Interval]],
    duration: timedelta,
    not_before: datetime,
    not_after: datetime,
    *,
    limit: int,
    exclude: frozenset[datetime] = frozenset(),
) -> list[Interval]:
    """The earliest ``limit`` grid slots of ``duration`` starting in [not_before, not_after] that lie
    inside every participant's free periods (``free``: one sorted list per participant)."""
    if not free:
        return []
    common = list(free[0])
    for other in free[1:]:
        common = intersect(common, other)
    out: list[Interval] = []
    for lo, hi in common:
        start = _grid_up(max(lo, not_before))
        while start + duration <= hi and start <= not_after:
            if start not in exclude:
                out.append((start, start + duration))
                if len(out) >= limit:
                    return out
            start += GRID
    return out


def covered(periods: Sequence[Interval], start: datetime, end: datetime) -> bool:
    """Whether [start, end] lies inside one of ``periods``."""
    return any(a <= start and end <= b for a, b in periods)
