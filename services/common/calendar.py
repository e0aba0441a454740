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

A file overrides the package for its year. Operators check a file with ``lianxin calendar validate``
(``check_calendar_text`` lists every problem) and load it into running nodes with ``lianxin calendar
load`` (kept per node by ``services.common.calendar_store``). A date in no known year raises
``CalendarUnknown`` rather than silently treating it as an ordinary Mon-Fri year: a wrong deadline
is worse than a loud one, and the fix (load next year's notice) is an operator's five-minute job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import chinese_calendar
import yaml
from chinese_calendar import constants as _cc_constants

from services.common.clock import CHINA
from services.common.errors import FailedPrecondition

__all__ = [
    "CalendarCheck",
    "CalendarFileError",
    "CalendarUnknown",
    "ChineseWorkingCalendar",
    "OfficialYear",
    "WorkingCalendar",
    "check_calendar_text",
    "end_of_day",
    "load_calendar_file",
    "load_calendar_text",
    "year_document",
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
            f"`lianxin calendar load calendar_{year}.yaml --node HOST:PORT`, written from the "
            f"State Council's holiday notice for {year} (docs/routing.md, Calendar)"
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
            return date.fromisoformat(value.strip())
        except ValueError as error:
            if _DATE_SHAPE.match(value.strip()):
                raise CalendarFileError(source, key, f"{value.strip()} is not a date ({error})") from None
    raise CalendarFileError(source, key, f"expected a date like 2027-02-05, got {value!r}")


_DATE_SHAPE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class _DatesAsText(yaml.SafeLoader):
    """YAML without implicit timestamps: a date like 2027-04-31 reaches ``_as_date`` as text, so the
    problem is reported at its key instead of failing the whole file."""


_DatesAsText.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# The longest official break (春节 or 国庆) is 8-9 days; a longer one is a typo in ``to``.
MAX_HOLIDAY_DAYS = 15


def _parse_year(raw: Any, source: str, prefix: str, problems: list[CalendarFileError]) -> OfficialYear | None:
    """One year mapping; every problem found is appended to ``problems`` (None when the year is unusable)."""
    if not isinstance(raw, Mapping):
        problems.append(
            CalendarFileError(source, prefix or "(top level)", "expected a mapping with year, holidays, workdays")
        )
        return None
    where = (prefix + ".") if prefix else ""
    for unknown in sorted(map(str, set(raw) - {"year", "holidays", "workdays", "source", "note"})):
        problems.append(CalendarFileError(source, where + unknown, "unknown key"))
    year = raw.get("year")
    if not isinstance(year, int) or isinstance(year, bool) or not 1949 < year < 2200:
        problems.append(CalendarFileError(source, where + "year", f"expected a year like 2027, got {year!r}"))
        return None
    parsing = _YearParsing(source, where, year, problems)
    holidays = parsing.holidays(raw.get("holidays", []))
    workdays = parsing.workdays(raw.get("workdays", []), holidays)
    listed = raw.get("holidays", [])
    if not (isinstance(listed, list) and listed):
        parsing.bad(where + "holidays", f"none listed: every official year has holidays (元旦, 春节, ...) in {year}")
    source_note = raw.get("source", "")
    return OfficialYear(year=year, holidays=holidays, workdays=frozenset(workdays), source=str(source_note or ""))


class _YearParsing:
    """The holidays and make-up workdays of one year, each problem appended with the key it is at."""

    def __init__(self, source: str, where: str, year: int, problems: list[CalendarFileError]) -> None:
        self.source, self.where, self.year, self.problems = source, where, year, problems

    def bad(self, key: str, reason: str) -> None:
        self.problems.append(CalendarFileError(self.source, key, reason))

    def holidays(self, raw_holidays: Any) -> dict[date, str]:
        where = self.where
        holidays: dict[date, str] = {}
        entry_of: dict[date, str] = {}  # which holidays[i] claimed a day, for the overlap message
        if not isinstance(raw_holidays, list):
            self.bad(where + "holidays", "expected a list of {name, from, to}")
            raw_holidays = []
        for i, item in enumerate(raw_holidays):
            key = f"{where}holidays[{i}]"
            span = self._holiday_span(key, item)
            if span is None:
                continue
            name, first, last = span
            taken = next((d for d in _days(first, last) if d in holidays), None)
            if taken is not None:
                self.bad(key, f"{taken} is already a holiday ({holidays[taken]}, {entry_of[taken]}): entries overlap")
                continue
            for day in _days(first, last):
                holidays[day] = name
                entry_of[day] = key.removeprefix(where)
        return holidays

    def _holiday_span(self, key: str, item: Any) -> tuple[str, date, date] | None:
        """(name, from, to) of one holidays[i] entry, or None after appending why it is unusable."""
        if not isinstance(item, Mapping):
            self.bad(key, "expected {name, from, to}")
            return None
        for extra in sorted(map(str, set(item) - {"name", "from", "to"})):
            self.bad(f"{key}.{extra}", "unknown key")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            self.bad(key + ".name", "a holiday needs a name")
            return None
        try:
            first = _as_date(item.get("from"), self.source, key + ".from")
            last = _as_date(item.get("to", item.get("from")), self.source, key + ".to")
        except CalendarFileError as error:
            self.problems.append(error)
            return None
        if last < first:
            self.bad(key + ".to", f"{last} is before from {first}")
            return None
        if first.year != self.year or last.year != self.year:
            outside = first if first.year != self.year else last
            self.bad(key, f"{outside} is not in year {self.year}")
            return None
        if (last - first).days + 1 > MAX_HOLIDAY_DAYS:
            self.bad(key + ".to", f"{name} would last {(last - first).days + 1} days (more than {MAX_HOLIDAY_DAYS})")
            return None
        return name.strip(), first, last

    def workdays(self, raw_workdays: Any, holidays: dict[date, str]) -> set[date]:
        workdays: set[date] = set()
        if not isinstance(raw_workdays, list):
            self.bad(self.where + "workdays", "expected a list of dates")
            raw_workdays = []
        for i, item in enumerate(raw_workdays):
            key = f"{self.where}workdays[{i}]"
            try:
                day = _as_date(item, self.source, key)
            except CalendarFileError as error:
                self.problems.append(error)
                continue
            if day.year != self.year:
                self.bad(key, f"{day} is not in year {self.year}")
            elif day in workdays:
                self.bad(key, f"{day} is listed twice")
            elif day in holidays:
                self.bad(key, f"{day} is also listed as a holiday ({holidays[day]})")
            elif day.weekday() < 5:
                # A make-up workday on a Monday-Friday would change nothing: almost certainly a typo.
                self.bad(key, f"{day} is a {day:%A}; make-up workdays fall on weekends")
            else:
                workdays.add(day)
        return workdays


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


@dataclass(frozen=True)
class CalendarCheck:
    """What ``check_calendar_text`` found: the years it could read and every problem, in file order."""

    years: list[OfficialYear]
    problems: list[CalendarFileError]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_calendar_text(text: str, source: str, *, expect_year: int | None = None) -> CalendarCheck:
    """Parse and check a YAML or JSON calendar (JSON when ``source`` ends in .json), collecting every problem."""
    problems: list[CalendarFileError] = []
    try:
        raw: Any = json.loads(text) if source.lower().endswith(".json") else yaml.load(text, Loader=_DatesAsText)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CalendarCheck([], [CalendarFileError(source, "(file)", f"cannot parse: {first_line}")])
    if raw is None:
        return CalendarCheck([], [CalendarFileError(source, "(file)", "empty")])
    items = list(enumerate(raw)) if isinstance(raw, list) else [(None, raw)]
    years: list[OfficialYear] = []
    for i, item in items:
        parsed = _parse_year(item, source, "" if i is None else f"[{i}]", problems)
        if parsed is None:
            continue
        prefix = "" if i is None else f"[{i}]."
        if any(y.year == parsed.year for y in years):
            problems.append(CalendarFileError(source, prefix + "year", f"{parsed.year} appears twice"))
            continue
        if expect_year is not None and parsed.year != expect_year:
            problems.append(CalendarFileError(source, prefix + "year", f"{parsed.year}, expected {expect_year}"))
        years.append(parsed)
    return CalendarCheck(years, problems)


def load_calendar_text(text: str, source: str) -> list[OfficialYear]:
    """The years of a calendar file's text; raises the first problem (``check_calendar_text`` lists them all)."""
    check = check_calendar_text(text, source)
    if check.problems:
        raise check.problems[0]
    return check.years


def load_calendar_file(path: str | Path) -> list[OfficialYear]:
    """Parse a YAML or JSON calendar file: one year mapping, or a list of them."""
    path = Path(path)
    return load_calendar_text(path.read_text("utf-8"), str(path))


def year_document(year: OfficialYear) -> dict[str, Any]:
    """``year`` in the file format (holidays as runs of consecutive days), so it can be stored and read back."""
    runs: list[dict[str, Any]] = []
    for day in sorted(year.holidays):
        name = year.holidays[day]
        last = runs[-1] if runs else None
        if last is not None and last["name"] == name and date.fromisoformat(last["to"]) + timedelta(days=1) == day:
            last["to"] = day.isoformat()
        else:
            runs.append({"name": name, "from": day.isoformat(), "to": day.isoformat()})
    return {
        "year": year.year,
        "source": year.source,
        "holidays": runs,
        "workdays": [d.isoformat() for d in sorted(year.workdays)],
    }


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
        self.add_years(loaded)
        return [y.year for y in loaded]

    def add_year(self, year: OfficialYear) -> None:
        self.add_years([year])

    def add_years(self, years: Iterable[OfficialYear]) -> None:
        """Add or replace whole years at once; readers on other threads see the old or the new set, never half."""
        self.years = {**self.years, **{y.year: y for y in years}}

    def covered_until(self, today: date) -> date:
        """The last day of the unbroken run of known years from ``today``'s year (the day before it if unknown).

        Limits counted past this day are provisional (routing) or not offered (video slots).
        """
        year = today.year
        while self.knows_year(year):
            year += 1
        return date(year, 1, 1) - timedelta(days=1)

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
