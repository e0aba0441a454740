"""Sessions on the working-day calendar and the earliest common free slot (plain domain, no I/O)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pytest

from services.common.calendar import ChineseWorkingCalendar
from services.common.errors import InvalidArgument
from services.common.timeutil import CHINA
from services.video import slots
from services.video.domain import (
    OneOffDay,
    Representative,
    Schedule,
    WeeklyPattern,
    reminders_due,
    validate_representatives,
    validate_schedule,
)

CAL = ChineseWorkingCalendar()


def schedule(*weekly: tuple[int, str, str], one_offs: tuple[OneOffDay, ...] = (), per_session: int = 10) -> Schedule:
    def t(v: str) -> time:
        return time.fromisoformat(v)

    return Schedule(
        "s1",
        "L1",
        "511102",
        tuple(WeeklyPattern(w, t(a), t(b)) for w, a, b in weekly),
        one_offs,
        30,
        10,
        per_session,
        (),
    )


def at(d: date, hh: int, mm: int = 0) -> datetime:
    return datetime(d.year, d.month, d.day, hh, mm, tzinfo=CHINA)


def test_weekly_patterns_skip_holidays_and_apply_on_make_up_saturday() -> None:
    s = schedule((1, "09:00", "12:00"), (6, "14:00", "17:00"))
    days = [x.starts_at.date() for x in slots.sessions(s, date(2026, 10, 1), date(2026, 10, 19), CAL)]
    # Monday 5 Oct is a holiday; Saturday 10 Oct is 调休 (a workday); Saturday 17 Oct is not.
    assert days == [date(2026, 10, 10), date(2026, 10, 12), date(2026, 10, 19)]


def test_one_off_days_add_and_close_sessions() -> None:
    s = schedule(
        (3, "09:00", "12:00"),
        one_offs=(
            OneOffDay(date(2026, 10, 14), None, None, True),
            OneOffDay(date(2026, 10, 17), time(9), time(11), False),
        ),
    )
    days = [x.starts_at.date() for x in slots.sessions(s, date(2026, 10, 12), date(2026, 10, 22), CAL)]
    assert days == [date(2026, 10, 17), date(2026, 10, 21)]


def test_earliest_common_slot_honours_busy_buffers_and_session_cap() -> None:
    s = schedule((3, "09:00", "12:00"), per_session=2)
    wed = date(2026, 10, 14)
    sess = slots.sessions(s, wed, date(2026, 10, 21), CAL)
    busy = slots.merge(
        [(at(wed, 9, 0), at(wed, 9, 30)), (at(wed, 9, 15), at(wed, 9, 45)), (at(wed, 10, 40), at(wed, 10, 45))]
    )
    assert busy[0] == (at(wed, 9, 0), at(wed, 9, 45))
    found = slots.free_slots(
        slots.candidates(s, sess),
        busy,
        buffer=timedelta(minutes=10),
        session_counts={at(wed, 9): 1},
        not_before=at(wed, 0),
        not_after=at(date(2026, 10, 22), 0),
        limit=3,
    )
    starts = [c.starts_at for c, _ in found]
    # 9:40 clashes with the busy 9:00-9:45; 10:20-10:50 overlaps 10:40-10:45;
    # 11:00 keeps the 10-minute buffer after 10:45.
    assert starts[0] == at(wed, 11, 0)
    assert found[0][1] == 1  # one place left in the capped session
    assert starts[1] == at(date(2026, 10, 21), 9, 0)


def test_schedule_and_representative_validation_name_the_field() -> None:
    with pytest.raises(InvalidArgument) as bad:
        validate_schedule(schedule((8, "09:00", "12:00")))
    assert bad.value.field == "schedule.weekly_patterns[0].weekday"
    with pytest.raises(InvalidArgument) as many:
        validate_representatives([Representative("甲", "11010519491231002X")] * 6)
    assert many.value.field == "representatives"


def test_reminders_due_before_the_start_only() -> None:
    start = datetime(2026, 10, 14, 9, tzinfo=CHINA)
    assert reminders_due(start, start - timedelta(hours=25)) == []
    assert reminders_due(start, start - timedelta(hours=2)) == ["24h"]
    assert reminders_due(start, start - timedelta(minutes=5)) == ["24h", "1h"]
    assert reminders_due(start, start) == []
