"""Statistical months: what an operator tunes (``StatsConfig``) and the months' names and bounds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from services.common.clock import CHINA, china_date
from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class StatsConfig:
    """What an operator may tune; see docs/stats.md."""

    # Day of the month on which a statistical month starts (1 = calendar months). With d > 1 the
    # month that *ends* on the (d-1)-th names the period: 2026-10-21..2026-11-20 is "2026-11".
    month_start_day: int = 1
    # No rating within this many working days after the reply counts as satisfied (DESIGN §3).
    satisfied_after_workdays: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.month_start_day <= 28:
            raise InvalidArgument("month_start_day", f"must be 1..28, got {self.month_start_day}")
        if self.satisfied_after_workdays < 0:
            raise InvalidArgument("satisfied_after_workdays", "must not be negative")


def parse_month(text: str, field_name: str = "month") -> tuple[int, int]:
    try:
        year_s, month_s = text.split("-")
        year, month = int(year_s), int(month_s)
    except ValueError:
        raise InvalidArgument(field_name, f"expected YYYY-MM, got {text!r}") from None
    if not (1900 < year < 2200 and 1 <= month <= 12) or len(month_s) != 2:
        raise InvalidArgument(field_name, f"expected YYYY-MM, got {text!r}")
    return year, month


def month_name(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def shift_month(name: str, delta: int) -> str:
    year, month = parse_month(name)
    index = year * 12 + (month - 1) + delta
    return month_name(index // 12, index % 12 + 1)


def stat_month_of_date(day: date, start_day: int) -> str:
    """The statistical month a Shanghai calendar day belongs to."""
    if start_day == 1 or day.day < start_day:
        return month_name(day.year, day.month)
    return shift_month(month_name(day.year, day.month), 1)


def stat_month_of(moment: datetime, config: StatsConfig) -> str:
    return stat_month_of_date(china_date(moment), config.month_start_day)


def month_bounds(name: str, config: StatsConfig) -> tuple[datetime, datetime]:
    """[start, end) in UTC of statistical month ``name`` (Shanghai midnights)."""
    year, month = parse_month(name)
    if config.month_start_day == 1:
        first = date(year, month, 1)
    else:
        prev_year, prev_month = parse_month(shift_month(name, -1))
        first = date(prev_year, prev_month, config.month_start_day)
    next_year, next_month = parse_month(shift_month(name, 1))
    last = date(next_year, next_month, 1) if config.month_start_day == 1 else date(year, month, config.month_start_day)
    start = datetime.combine(first, time.min, tzinfo=CHINA).astimezone(UTC)
    end = datetime.combine(last, time.min, tzinfo=CHINA).astimezone(UTC)
    return start, end


def year_months(year: str) -> list[str]:
    try:
        number = int(year)
    except ValueError:
        raise InvalidArgument("year", f"expected YYYY, got {year!r}") from None
    if not 1900 < number < 2200:
        raise InvalidArgument("year", f"expected YYYY, got {year!r}")
    return [month_name(number, m) for m in range(1, 13)]
