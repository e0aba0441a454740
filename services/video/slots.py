"""Reception sessions and free slots: schedules become concrete sessions on working days, and the
earliest slot free for every participant is found by a sorted sweep over merged busy intervals.

Calendar rule (documented in docs/video.md): a weekly pattern applies on its ISO weekday only when
that date is a working day on the Chinese calendar. Public holidays are skipped; a make-up workday
(调休, e.g. a Saturday) counts as the weekday it is (a "Saturday" pattern applies on it, a
"Monday" pattern does not). One-off days are explicit decisions and apply on any date; a closed
one-off day removes every session that day.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from services.common.calendar import WorkingCalendar
from services.common.clock import CHINA
from services.video.domain import Schedule

Interval = tuple[datetime, datetime]


@dataclass(frozen=True)
class Session:
    """One reception period of a leader on one day."""

    starts_at: datetime
    ends_at: datetime


@dataclass(frozen=True)
class Candidate:
    starts_at: datetime
    ends_at: datetime
    session_start: datetime
    session_capacity: int  # slots the session can hold at most (max_per_session)


def sessions(schedule: Schedule, first: date, last: date, calendar: WorkingCalendar) -> list[Session]:
    """Sessions of ``schedule`` on the dates first..last (inclusive), earliest first."""
    one_offs: dict[date, list[tuple[bool, Session | None]]] = {}
    for d in schedule.one_offs:
        if first <= d.day <= last:
            if d.closed or d.start is None or d.end is None:
                one_offs.setdefault(d.day, []).append((True, None))
            else:
                s = Session(
                    datetime.combine(d.day, d.start, tzinfo=CHINA),
                    datetime.combine(d.day, d.end, tzinfo=CHINA),
                )
                one_offs.setdefault(d.day, []).append((False, s))
    by_weekday: dict[int, list[tuple[int, int, int, int]]] = {}
    for p in schedule.weekly:
        by_weekday.setdefault(p.weekday, []).append((p.start.hour, p.start.minute, p.end.hour, p.end.minute))
    out: list[Session] = []
    day = first
    while day <= last:
        extra = one_offs.get(day, [])
        if any(closed for closed, _ in extra):
            day += timedelta(days=1)
            continue
        patterns = by_weekday.get(day.isoweekday())
        if patterns and calendar.is_workday(day):
            for sh, sm, eh, em in patterns:
                out.append(
                    Session(
                        datetime(day.year, day.month, day.day, sh, sm, tzinfo=CHINA),
                        datetime(day.year, day.month, day.day, eh, em, tzinfo=CHINA),
                    )
                )
        out.extend(s for _, s in extra if s is not None)
        day += timedelta(days=1)
    out.sort(key=lambda s: s.starts_at)
    return out


def candidates(schedule: Schedule, session_list: Iterable[Session]) -> Iterator[Candidate]:
    """Slots on the leader's grid: slot, buffer, slot, ... while a whole slot fits in the session."""
    length = timedelta(minutes=schedule.slot_minutes)
    step = length + timedelta(minutes=schedule.buffer_minutes)
    for s in session_list:
        start = s.starts_at
        while start + length <= s.ends_at:
            yield Candidate(start, start + length, s.starts_at, schedule.max_per_session)
            start += step


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Union of intervals, sorted and non-overlapping (touching intervals are joined)."""
    ordered = sorted(intervals)
    merged: list[Interval] = []
    for start, end in ordered:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def free_slots(
    cands: Iterable[Candidate],
    busy: Sequence[Interval],
    *,
    buffer: timedelta,
    session_counts: dict[datetime, int],
    not_before: datetime,
    not_after: datetime,
    limit: int,
    exclude: frozenset[datetime] = frozenset(),
) -> list[tuple[Candidate, int]]:
    """Earliest ``limit`` candidates starting in [not_before, not_after] that overlap no busy interval
    (widened by ``buffer`` on both sides) and whose session still has room; with the room left.

    ``busy`` must be merged (see ``merge``): one forward pointer sweeps it, so the cost is
    O(candidates + busy intervals).
    """
    out: list[tuple[Candidate, int]] = []
    i = 0
    for c in cands:
        if c.starts_at < not_before:
            continue
        if c.starts_at > not_after:
            break
        if c.starts_at in exclude:
            continue
        left = c.session_capacity - session_counts.get(c.session_start, 0)
        if left <= 0:
            continue
        lo, hi = c.starts_at - buffer, c.ends_at + buffer
        # Skip busy intervals that end before this (and so every later) candidate's window.
        while i < len(busy) and busy[i][1] <= lo:
            i += 1
        if i < len(busy) and busy[i][0] < hi:
            continue
        out.append((c, left))
        if len(out) >= limit:
            break
    return out
