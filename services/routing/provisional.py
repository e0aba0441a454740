"""A working-day calendar that never refuses: official years as known, other years weekday-only and provisional.

Registration must not fail because the State Council has not yet published (or the operator has
not yet loaded) next year's holiday notice: a 60-day settlement limit counted in late November
always lands in the next year. So for a year the official calendar does not know, this calendar
counts Monday-Friday as working days (no holidays, no 调休), logs one WARNING per year, and the
work order marks every deadline falling in such a year as *provisional*. Once the year is loaded
(``lianxin calendar load`` into the running node, or ``LIANXIN_CALENDAR_FILES`` at start:
comma-separated YAML/JSON files as in ``services.common.calendar``) those deadlines are recomputed
from their clock starts (``handlers.recompute_provisional_deadlines``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from services.common.calendar import CalendarUnknown, ChineseWorkingCalendar, add_workdays, workdays_between
from services.common.clock import china_date

log = logging.getLogger(__name__)

CALENDAR_FILES_ENV = "LIANXIN_CALENDAR_FILES"

__all__ = ["CALENDAR_FILES_ENV", "ProvisionalCalendar"]


@dataclass
class ProvisionalCalendar:
    """``WorkingCalendar`` over an official calendar, with a weekday-only fallback for unknown years."""

    official: ChineseWorkingCalendar = field(default_factory=ChineseWorkingCalendar)
    _warned: set[int] = field(default_factory=set)
    # Answers of the bundled chinese_calendar package, which never change but cost ~20 µs each (it
    # validates every date against its whole table): the sweep asks for the same few hundred days
    # millions of times. Years from official files and fallback years are not cached, so loading a
    # file (also straight into ``official``) takes effect at once.
    _package_days: dict[date, bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def with_files(cls, files: Iterable[str]) -> ProvisionalCalendar:
        return cls(official=ChineseWorkingCalendar.with_files(files))

    def knows_year(self, year: int) -> bool:
        return self.official.knows_year(year)

    def is_provisional(self, moment: datetime) -> bool:
        """True when ``moment``'s day (Asia/Shanghai) was counted with the weekday-only fallback."""
        return not self.knows_year(china_date(moment).year)

    def is_workday(self, d: date) -> bool:
        from_package = d.year not in self.official.years
        if from_package:
            cached = self._package_days.get(d)
            if cached is not None:
                return cached
        try:
            answer = self.official.is_workday(d)
        except CalendarUnknown:
            self._warn(d.year)
            return d.weekday() < 5
        if from_package:
            self._package_days[d] = answer
        return answer

    def add_workdays(self, start: date, n: int) -> date:
        return add_workdays(self.is_workday, start, n)

    def workdays_between(self, a: date, b: date) -> int:
        return workdays_between(self.is_workday, a, b)

    def known_range(self) -> tuple[date, date]:
        return self.official.known_range()

    def _warn(self, year: int) -> None:
        with self._lock:
            if year in self._warned:
                return
            self._warned.add(year)
        log.warning(
            "no official calendar for %d: deadlines are provisional until one is loaded (lianxin calendar load, or %s)",
            year,
            CALENDAR_FILES_ENV,
        )
