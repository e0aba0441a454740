"""The working-day calendar: Chinese holidays, make-up workdays (调休), official files, unknown years."""

from __future__ import annotations

import json
from datetime import date, datetime, time
from pathlib import Path

import pytest

from services.common.calendar import (
    CalendarFileError,
    CalendarUnknown,
    ChineseWorkingCalendar,
    OfficialYear,
    check_calendar_text,
    end_of_day,
    load_calendar_file,
    load_calendar_text,
    year_document,
)
from services.common.errors import FailedPrecondition
from services.common.timeutil import CHINA
from services.routing.domain.timelimits import DeadlineKind, TimeLimitPolicy, deadline_for

FIXTURE_2027 = Path(__file__).parent.parent / "fixtures" / "calendar_2027_fixture.yaml"


@pytest.fixture
def calendar() -> ChineseWorkingCalendar:
    return ChineseWorkingCalendar()


def test_national_day_2026_is_a_holiday_and_its_make_up_saturday_a_workday(
    calendar: ChineseWorkingCalendar,
) -> None:
    assert not calendar.is_workday(date(2026, 10, 1))
    assert not calendar.is_workday(date(2026, 10, 7))
    assert calendar.is_workday(date(2026, 10, 10))  # Saturday, 国庆 调休
    assert calendar.is_workday(date(2026, 9, 20))  # Sunday, 国庆 调休
    assert not calendar.is_workday(date(2026, 10, 11))  # plain Sunday
    assert calendar.is_workday(date(2026, 9, 30))  # plain Wednesday


def test_three_working_days_from_30_september_2026_end_on_the_make_up_saturday(
    calendar: ChineseWorkingCalendar,
) -> None:
    # 30 Sep does not count; 1-7 Oct are holidays; 8 (Thu), 9 (Fri) and 10 Oct (make-up Saturday) count.
    assert calendar.add_workdays(date(2026, 9, 30), 3) == date(2026, 10, 10)
    start = datetime(2026, 9, 30, 16, 30, tzinfo=CHINA)
    deadline = deadline_for(DeadlineKind.HOTLINE_ENQUIRY, start, TimeLimitPolicy.default(), calendar)
    assert deadline == datetime.combine(date(2026, 10, 10), time.max, tzinfo=CHINA)


def test_start_day_never_counts_and_zero_days_is_the_same_day(calendar: ChineseWorkingCalendar) -> None:
    assert calendar.add_workdays(date(2026, 11, 20), 1) == date(2026, 11, 23)  # Friday → Monday
    assert calendar.add_workdays(date(2026, 11, 21), 1) == date(2026, 11, 23)  # Saturday start → Monday
    assert calendar.add_workdays(date(2026, 10, 3), 0) == date(2026, 10, 3)  # same day, even a holiday


def test_counting_backwards_and_between_agree_with_adding(calendar: ChineseWorkingCalendar) -> None:
    assert calendar.add_workdays(date(2026, 10, 8), -1) == date(2026, 9, 30)
    assert calendar.workdays_between(date(2026, 9, 30), date(2026, 10, 10)) == 3
    assert calendar.workdays_between(date(2026, 10, 10), date(2026, 9, 30)) == -3
    for n in range(0, 25):
        assert calendar.workdays_between(date(2026, 9, 18), calendar.add_workdays(date(2026, 9, 18), n)) == n


def test_end_of_day_is_the_last_instant_in_shanghai() -> None:
    eod = end_of_day(date(2026, 10, 10))
    assert eod.utcoffset() is not None and eod.utcoffset().total_seconds() == 8 * 3600  # type: ignore[union-attr]
    assert (eod.hour, eod.minute, eod.second) == (23, 59, 59)


def test_a_date_beyond_the_known_years_raises_calendar_unknown(calendar: ChineseWorkingCalendar) -> None:
    with pytest.raises(CalendarUnknown) as caught:
        calendar.is_workday(date(2028, 3, 1))
    message = str(caught.value)
    assert "no official calendar for 2028" in message
    assert "load one with" in message
    assert isinstance(caught.value, FailedPrecondition)
    # A limit running off the end of the known years fails loudly instead of guessing Monday-Friday.
    last = calendar.known_range()[1]
    with pytest.raises(CalendarUnknown, match=f"no official calendar for {last.year + 1}"):
        calendar.add_workdays(last, 10)


def test_a_calendar_file_teaches_a_year_the_package_does_not_know() -> None:
    calendar = ChineseWorkingCalendar()
    before = calendar.known_range()
    loaded = calendar.load(FIXTURE_2027)
    assert loaded == [2027]
    assert calendar.known_range() == (before[0], date(2027, 12, 31))
    assert not calendar.is_workday(date(2027, 2, 9))  # 春节 in the fixture
    assert calendar.holiday_name(date(2027, 2, 9)) == "春节"
    assert calendar.is_workday(date(2027, 1, 31))  # make-up Sunday in the fixture
    assert calendar.is_workday(date(2027, 2, 15))  # plain Monday after the holiday


def test_fifteen_day_limits_across_spring_festival_from_the_file() -> None:
    calendar = ChineseWorkingCalendar.with_files([FIXTURE_2027])
    policy = TimeLimitPolicy.default()
    # Calendar days: 25 Jan + 15 = 9 Feb, inside 春节 (5-12 Feb), so the limit ends on the next working day.
    notice = deadline_for(DeadlineKind.ACCEPT_NOTICE, datetime(2027, 1, 25, 9, tzinfo=CHINA), policy, calendar)
    assert notice.date() == date(2027, 2, 15)
    # Working days: from Fri 29 Jan, the make-up Sunday 31 Jan and Saturday 20 Feb count, 5-12 Feb do not.
    assert calendar.add_workdays(date(2027, 1, 29), 15) == date(2027, 2, 25)
    # Across the year boundary, package (2026) and file (2027) work together.
    assert calendar.add_workdays(date(2026, 12, 30), 3) == date(2027, 1, 5)


def test_a_file_overrides_the_package_for_its_year(tmp_path: Path) -> None:
    path = tmp_path / "calendar_2026.json"
    path.write_text(
        json.dumps(
            {
                "year": 2026,
                "holidays": [{"name": "test day", "from": "2026-11-23", "to": "2026-11-23"}],
                "workdays": ["2026-11-22"],
            }
        ),
        "utf-8",
    )
    calendar = ChineseWorkingCalendar.with_files([path])
    assert not calendar.is_workday(date(2026, 11, 23))
    assert calendar.is_workday(date(2026, 11, 22))
    # The file replaces the whole year: the package's 国庆 is gone from it.
    assert calendar.is_workday(date(2026, 10, 8))
    assert calendar.is_workday(date(2026, 10, 1))


@pytest.mark.parametrize(
    ("content", "key", "reason"),
    [
        ("year: 27\n", "year", "expected a year"),
        (
            "year: 2027\nholidays: [{name: 春节, from: 2027-02-05, to: 2027-02-01}]\n",
            "holidays[0].to",
            "before",
        ),
        ("year: 2027\nholidays: [{from: 2027-02-05}]\n", "holidays[0].name", "needs a name"),
        ("year: 2027\nholidays: [{name: x, from: 2028-01-01}]\n", "holidays[0]", "not in year 2027"),
        ("year: 2027\nworkdays: [2027-02-15]\n", "workdays[0]", "make-up workdays fall on weekends"),
        ("year: 2027\nworkdays: [not-a-date]\n", "workdays[0]", "expected a date"),
        (
            "year: 2027\nholidays: [{name: x, from: 2027-02-06}]\nworkdays: [2027-02-06]\n",
            "workdays[0]",
            "also listed as a holiday",
        ),
        ("year: 2027\nholliday: []\n", "holliday", "unknown key"),
    ],
)
def test_bad_calendar_files_name_the_file_and_the_key(tmp_path: Path, content: str, key: str, reason: str) -> None:
    path = tmp_path / "calendar_bad.yaml"
    path.write_text(content, "utf-8")
    with pytest.raises(CalendarFileError) as caught:
        load_calendar_file(path)
    assert caught.value.key == key
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)


def test_checking_a_file_lists_every_problem_with_its_key_in_file_order() -> None:
    text = """\
year: 2027
holidays:
  - {name: 春节, from: 2027-02-05, to: 2027-02-12}
  - {name: 元宵, from: 2027-02-11}
  - {name: 清明节, from: 2027-04-31}
  - {name: 国庆节, from: 2027-10-01, to: 2027-12-31}
  - {name: 元旦, from: 2027-12-31, to: 2028-01-02}
  - {name: 端午节, form: 2027-06-09}
workdays: [2027-02-15, 2027-01-31, 2027-01-31, 2026-12-27, 2027-02-06]
"""
    check = check_calendar_text(text, "calendar_2027.yaml")
    assert [str(p) for p in check.problems] == [
        "calendar_2027.yaml: holidays[1]: 2027-02-11 is already a holiday (春节, holidays[0]): entries overlap",
        "calendar_2027.yaml: holidays[2].from: 2027-04-31 is not a date (day is out of range for month)",
        "calendar_2027.yaml: holidays[3].to: 国庆节 would last 92 days (more than 15)",
        "calendar_2027.yaml: holidays[4]: 2028-01-02 is not in year 2027",
        "calendar_2027.yaml: holidays[5].form: unknown key",
        "calendar_2027.yaml: holidays[5].from: expected a date like 2027-02-05, got None",
        "calendar_2027.yaml: workdays[0]: 2027-02-15 is a Monday; make-up workdays fall on weekends",
        "calendar_2027.yaml: workdays[2]: 2027-01-31 is listed twice",
        "calendar_2027.yaml: workdays[3]: 2026-12-27 is not in year 2027",
        "calendar_2027.yaml: workdays[4]: 2027-02-06 is also listed as a holiday (春节)",
    ]
    assert not check.ok


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "(file): empty"),
        ("year: [2027\n", "(file): cannot parse: "),
        ("[" * 100_000, "(file): cannot parse: "),
        ("year: 2027\nworkdays: [2027-01-31]\n", "holidays: none listed: every official year has holidays"),
        ("- year: 2027\n  holidays: [{name: x, from: 2027-01-01}]\n- year: 2027\n", "[1].year: 2027 appears twice"),
    ],
)
def test_an_empty_unreadable_holiday_less_or_doubled_file_is_refused(content: str, problem: str) -> None:
    check = check_calendar_text(content, "calendar.yaml")
    assert any(f"calendar.yaml: {problem}" in str(p) for p in check.problems), check.problems


def test_a_file_for_another_year_than_expected_is_refused() -> None:
    check = check_calendar_text(FIXTURE_2027.read_text("utf-8"), "calendar_2028.yaml", expect_year=2028)
    assert [str(p) for p in check.problems] == ["calendar_2028.yaml: year: 2027, expected 2028"]


def test_a_stored_year_reads_back_as_the_same_arrangement() -> None:
    (year,) = load_calendar_file(FIXTURE_2027)
    (again,) = load_calendar_text(json.dumps(year_document(year), ensure_ascii=False), "stored.json")
    assert again == year
    assert year_document(year)["holidays"][1] == {"name": "春节", "from": "2027-02-05", "to": "2027-02-12"}


def test_the_calendar_covers_the_unbroken_run_of_known_years_from_today() -> None:
    calendar = ChineseWorkingCalendar()
    assert calendar.covered_until(date(2026, 12, 8)) == date(2026, 12, 31)
    calendar.load(FIXTURE_2027)
    assert calendar.covered_until(date(2026, 12, 8)) == date(2027, 12, 31)
    # 2029 without 2028 does not extend it: 2028 deadlines would still be provisional.
    calendar.add_year(OfficialYear(2029, {date(2029, 1, 1): "元旦"}, frozenset()))
    assert calendar.covered_until(date(2026, 12, 8)) == date(2027, 12, 31)
    assert calendar.covered_until(date(2030, 1, 1)) == date(2029, 12, 31)  # today's year unknown: yesterday
