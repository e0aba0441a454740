"""Working-day calendar for legal time limits: Chinese public holidays and make-up workdays (调休).

Counting rule (used by every time limit in Lianxin, routing and video alike):

* A limit of N working days starting on day D ends at the end of the N-th working day *after* D;
  the start day itself never counts, whatever time of day the clock started (信访工作条例 practice,
  and 民法典 第二百零一条 "开始的当日不计入"). ``add_workdays(D, N)`` is that day.
* N = 0 means "the same day": ``add_workdays(D, 0) == D`` even when D is a holiday, so a
  same-day limit (hotline emergencies) is never pushed past a weekend.
* Deadlines are end-of-day timestamps in Asia/Shanghai (``end_of_day``), so "on time" is simply
  ``done_at <= deadline``.

Which days are working days comes from the ``chinese_calendar`` package (holidays AND 调休, from
the State Council's yearly notices) and, for years the package does not know yet, from official
calendar files (YAML or JSON)::

    year: 2027
    source: 国务院办公厅关于2027年部分节假日安排的通知 (国办发明电〔2026〕N号)
    holidays:
      - {name: 春节, from: 2027-02-05, to: 2027-02-11}
    workdays: [2027-02-14]          # make-up working days (weekend days that are worked)

A file overrides the package for its year. A date in no known year raises ``CalendarUnknown``
rather than silently treating it as an ordinary Mon-Fri year: a wrong deadline is worse than
a loud one, and the fix (load next year's notice) is an operator's five-minute job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import chinese_calendar
import yaml
from chinese_calendar import constants as _cc_constants

from services.common.errors import FailedPrecondition
from services.common.timeutil import CHINA

__all__ = [
    "CalendarFileError",
    "CalendarUnknown",
    "ChineseWorkingCalendar",
    "OfficialYear",
    "WorkingCalendar",
    "end_of_day",
    "load_calendar_file",
]


class WorkingCalendar(Protocol):
    """What time-limit code needs to know about days; see the module docstring for the counting rule."""

    def is_workday(self, d: date) -> bool: ...

    def add_workdays(self, start: date, n: int) -> date: ...

    def workdays_between(self, a: date, b: date) -> int: ...

    def known_range(self) -> tuple[date, date]: ...


def add_workdays(is_workday: Callable[[date], bool], start: date, n: int) -> date:
    """The n-th day after ``start`` for which ``is_workday`` holds (before it for negative n)."""
    step = 1 if n >= 0 else -1
    remaining = abs(n)
    day = start
    while remaining:
        day += timedelta(days=step)
        if is_workday(day):
            remaining -= 1
    return day


def workdays_between(is_workday: Callable[[date], bool], a: date, b: date) -> int:
    """Days d with a < d <= b for which ``is_workday`` holds (negative when b < a)."""
    if b < a:
        return -workdays_between(is_workday, b, a)
    count = 0
    day = a
    while day < b:
        day += timedelta(days=1)
        if is_workday(day):
            count += 1
    return count


class CalendarUnknown(FailedPrecondition):
    """The calendar has no official arrangement for the year of a date it was asked about.

    A FailedPrecondition (not a client error): the request is fine, the node lacks data an
    operator must load.
    """

    def __init__(self, year: int, known: tuple[date, date] | None = None) -> None:
        span = "" if known is None else f" (known: {known[0].isoformat()} to {known[1].isoformat()})"
        super().__init__(
            f"no official calendar for {year}{span}: load one with "
            f"ChineseWorkingCalendar.load('calendar_{year}.yaml'), written from the "
            f"State Council's holiday notice for {year} (see services/common/calendar.py)"
        )
        self.year = year


class CalendarFileError(ValueError):
    """A calendar file is malformed; the message names the file and the key."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


def end_of_day(d: date) -> datetime:
    """The last instant of ``d`` in Asia/Shanghai: the timestamp a deadline on day ``d`` stands for."""
    return datetime.combine(d, time.max, tzinfo=CHINA)


@dataclass(frozen=True)
class OfficialYear:
    """One year's official arrangement: holidays by date (with the festival's name) and make-up workdays."""

    year: int
    holidays: Mapping[date, str]
    workdays: frozenset[date]
    source: str = ""

    def is_workday(self, d: date) -> bool:
        if d in self.workdays:
            return True
        if d in self.holidays:
            return False
        return d.weekday() < 5


def _as_date(value: Any, source: str, key: str) -> date:
    # YAML already gives dates for unquoted ISO dates; JSON and quoted YAML give strings.
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise CalendarFileError(source, key, f"expected a date like 2027-02-05, got {value!r}")


def _parse_year(raw: Any, source: str, prefix: str) -> OfficialYear:
    if not isinstance(raw, Mapping):
        raise CalendarFileError(source, prefix or "(top level)", "expected a mapping with year, holidays, workdays")
    where = (prefix + ".") if prefix else ""
    unknown = set(raw) - {"year", "holidays", "workdays", "source", "note"}
    if unknown:
        raise CalendarFileError(source, where + sorted(map(str, unknown))[0], "unknown key")
    year = raw.get("year")
    if not isinstance(year, int) or isinstance(year, bool) or not 1949 < year < 2200:
        raise CalendarFileError(source, where + "year", f"expected a year like 2027, got {year!r}")

    holidays: dict[date, str] = {}
    raw_holidays = raw.get("holidays", [])
    if not isinstance(raw_holidays, list):
        raise CalendarFileError(source, where + "holidays", "expected a list of {name, from, to}")
    for i, item in enumerate(raw_holidays):
        key = f"{where}holidays[{i}]"
        if not isinstance(item, Mapping):
            raise CalendarFileError(source, key, "expected {name, from, to}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CalendarFileError(source, key + ".name", "a holiday needs a name")
        first = _as_date(item.get("from"), source, key + ".from")
        last = _as_date(item.get("to", item.get("from")), source, key + ".to")
        if last < first:
            raise CalendarFileError(source, key + ".to", f"{last} is before from {first}")
        day = first
        while day <= last:
            if day.year != year:
                raise CalendarFileError(source, key, f"{day} is not in year {year}")
            if day in holidays:
                raise CalendarFileError(source, key, f"{day} is already a holiday ({holidays[day]})")
            holidays[day] = name.strip()
            day += timedelta(days=1)

    workdays: set[date] = set()
    raw_workdays = raw.get("workdays", [])
    if not isinstance(raw_workdays, list):
        raise CalendarFileError(source, where + "workdays", "expected a list of dates")
    for i, item in enumerate(raw_workdays):
        key = f"{where}workdays[{i}]"
        day = _as_date(item, source, key)
        if day.year != year:
            raise CalendarFileError(source, key, f"{day} is not in year {year}")
        if day in holidays:
            raise CalendarFileError(source, key, f"{day} is also listed as a holiday ({holidays[day]})")
        # A make-up workday on a Monday-Friday would change nothing: almost certainly a typo.
        if day.weekday() < 5:
            raise CalendarFileError(source, key, f"{day} is a {day:%A}; make-up workdays fall on weekends")
        workdays.add(day)
    source_note = raw.get("source", "")
    return OfficialYear(year=year, holidays=holidays, workdays=frozenset(workdays), source=str(source_note or ""))


def load_calendar_file(path: str | Path) -> list[OfficialYear]:
    """Parse a YAML or JSON calendar file: one year mapping, or a list of them."""
    path = Path(path)
    source = str(path)
    text = path.read_text("utf-8")
    try:
        raw: Any = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise CalendarFileError(source, "(file)", f"cannot parse: {exc}") from None
    if isinstance(raw, list):
        years = [_parse_year(item, source, f"[{i}]") for i, item in enumerate(raw)]
    else:
        years = [_parse_year(raw, source, "")]
    seen: set[int] = set()
    for y in years:
        if y.year in seen:
            raise CalendarFileError(source, "year", f"{y.year} appears twice")
        seen.add(y.year)
    return years


@cache
def _package_years() -> tuple[int, int]:
    # chinese_calendar raises NotImplementedError outside its data; its tables say which years those are.
    years = {d.year for d in _cc_constants.holidays} | {d.year for d in _cc_constants.workdays}
    return min(years), max(years)


@dataclass
class ChineseWorkingCalendar:
    """``WorkingCalendar`` backed by ``chinese_calendar`` plus official files that override it per year."""

    years: dict[int, OfficialYear] = field(default_factory=dict)

    @classmethod
    def with_files(cls, files: Iterable[str | Path] = ()) -> ChineseWorkingCalendar:
        calendar = cls()
        for path in files:
            calendar.load(path)
        return calendar

    def load(self, path: str | Path) -> list[int]:
        """Add (or replace) the years in an official calendar file; returns the years loaded."""
        loaded = load_calendar_file(path)
        for y in loaded:
            self.years[y.year] = y
        return [y.year for y in loaded]

    def add_year(self, year: OfficialYear) -> None:
        self.years[year.year] = year

    def knows_year(self, year: int) -> bool:
        first, last = _package_years()
        return year in self.years or first <= year <= last

    def is_workday(self, d: date) -> bool:
        official = self.years.get(d.year)
        if official is not None:
            return official.is_workday(d)
        if not self.knows_year(d.year):
            raise CalendarUnknown(d.year, self.known_range())
        return bool(chinese_calendar.is_workday(d))

    def holiday_name(self, d: date) -> str | None:
        """The festival a holiday belongs to (for notices), or None on working days and plain weekends."""
        official = self.years.get(d.year)
        if official is not None:
            return official.holidays.get(d)
        if not self.knows_year(d.year):
            raise CalendarUnknown(d.year, self.known_range())
        on_holiday, name = chinese_calendar.get_holiday_detail(d)
        return str(name) if on_holiday and name else None

    def add_workdays(self, start: date, n: int) -> date:
        """The n-th working day after ``start`` (before it, for negative n); ``start`` itself for 0."""
        return add_workdays(self.is_workday, start, n)

    def workdays_between(self, a: date, b: date) -> int:
        """Working days d with a < d <= b (negative when b < a), so add_workdays(a, n) gives back n."""
        return workdays_between(self.is_workday, a, b)

    def known_range(self) -> tuple[date, date]:
        """First and last day with an official arrangement (package years plus loaded files).

        A year missing inside the span (a file for 2028 without 2027) still raises CalendarUnknown.
        """
        first, last = _package_years()
        years = {*self.years, first, last}
        return date(min(years), 1, 1), date(max(years), 12, 31)
