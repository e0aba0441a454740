"""Time-limit policy (时限) for work orders: which limit applies, and when a deadline falls due.

The limits are those of DESIGN §3 (信访工作条例 2022 and 12345 practice) and are configurable per
node tier and per category. A node loads its policy from YAML; ``DEFAULT_POLICY`` is the same
shape as that YAML::

    limits:   {settle: 60 days, objection: 5 working days, ...}   # base for every tier
    tiers:    {county: {assign: 4 working days}}                  # override by the node's tier
    categories: {环境保护: {settle: 30 days}}                       # override by category (wins)
    settle_extension_max_days: 30
    calendar_limits_end_on_workday: true
    warning: {min_days: 1, fraction: 0.2}
    supervision_delay: 2 working days

Counting (see ``services.common.calendar``): the start day never counts; a working-day limit of N
ends at the end of the N-th working day after the start; a calendar-day limit of N ends at the
end of the N-th day after it, moved to the next working day when that day is a holiday or a
weekend (民法典 第二百零三条: 期间的最后一日是法定休假日的，以法定休假日结束的次日为期间的最后一日),
unless ``calendar_limits_end_on_workday`` is off.

Pauses (the clock stops while waiting for the citizen's supplement or during a hearing 听证):
a pause from P0 to P1 gives back the days d with date(P0) < d <= date(P1), counted the way the
limit counts (working days or calendar days). The day the pause starts has already been partly
used, and the day it ends is handed back whole, exactly as if the clock restarted on P1's day
(whose rest does not count, like any start day). A pause that starts after the deadline has
passed gives nothing back; overlapping pauses count once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from services.common.calendar import WorkingCalendar, end_of_day
from services.common.categories import CATEGORIES
from services.common.clock import CHINA, china_date, to_utc
from services.common.regions import Tier

__all__ = [
    "CATEGORIES",
    "DEFAULT_POLICY",
    "DayCount",
    "DeadlineKind",
    "Limit",
    "PolicyError",
    "TimeLimitPolicy",
    "TimeRules",
    "deadline_for",
    "due_date",
    "supervision_at",
    "warning_at",
]


class DeadlineKind(StrEnum):
    """Kinds of time limit; the values are the ``Deadline.kind`` strings of the proto contract."""

    ASSIGN = "assign"  # forward or assign within the tier's share of 15 days (交办/转送)
    ACCEPT_NOTICE = "accept_notice"  # written notice of acceptance or refusal (书面告知)
    OBJECTION = "objection"  # a unit's window to say "not ours" (异议), a right rather than a duty
    SETTLE = "settle"  # settlement of a petition (办结), extensible once
    REVIEW_REQUEST = "review_request"  # the citizen's window to ask for 复查 after the reply
    REVIEW_DECISION = "review_decision"  # the reviewing body's limit to decide the 复查
    HOTLINE_EMERGENCY = "hotline_emergency"  # 12345 紧急类: in hours (default 24 natural hours)
    HOTLINE_ENQUIRY = "hotline_enquiry"  # 12345 咨询类
    HOTLINE_COMPLAINT = "hotline_complaint"  # 12345 投诉/求助类
    ASSIST = "assist"  # 协办: an assisting unit answers the lead unit, within less than the lead's limit
    INSTRUCT = "instruct"  # 领导批转: a leader's instruction (批示) on a matter of the leader's classes


class DayCount(StrEnum):
    """How a limit counts: working or calendar days, or (12345 urgent classes) hours."""

    WORKING = "working"
    CALENDAR = "calendar"
    HOURS = "hours"  # natural hours, round the clock (紧急类: the centre works nights and holidays)
    WORKING_HOURS = "working_hours"  # hours of WORKDAY_HOURS on working days of the calendar


# Office hours a "working hours" limit counts, Asia/Shanghai (9:00–17:00 on the calendar's working
# days, 调休 Saturdays included; the lunch break counts, as most 12345 centres count it).
WORKDAY_HOURS = (9, 17)
HOUR_COUNTS = frozenset({DayCount.HOURS, DayCount.WORKING_HOURS})


class PolicyError(ValueError):
    """The time-limit configuration is invalid; the message names the source and the key."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


_LIMIT_TEXT = re.compile(r"^\s*(\d+)\s*(working\s+days?|workdays?|days?|working\s+hours?|hours?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Limit:
    """A number of days (or, with an hour count, of hours) and how they are counted."""

    days: int  # the amount: hours when ``count`` is HOURS or WORKING_HOURS
    count: DayCount

    @property
    def in_hours(self) -> bool:
        return self.count in HOUR_COUNTS

    @classmethod
    def parse(cls, value: Any, *, source: str = "policy", key: str = "limit") -> Limit:
        """Accept ``"3 working days"``, ``"60 days"``, ``"4 hours"``, ``"8 working hours"`` or
        ``{days: 60, count: calendar}`` (count: working, calendar, hours, working_hours)."""
        if isinstance(value, Limit):
            return value
        if isinstance(value, str):
            match = _LIMIT_TEXT.match(value)
            if not match:
                raise PolicyError(
                    source, key, f'expected "N working days", "N days", "N hours" or "N working hours", got {value!r}'
                )
            unit = match.group(2).lower()
            working = not unit.startswith(("day", "hour"))
            if "hour" in unit:
                return cls(int(match.group(1)), DayCount.WORKING_HOURS if working else DayCount.HOURS)
            return cls(int(match.group(1)), DayCount.WORKING if working else DayCount.CALENDAR)
        if isinstance(value, Mapping):
            extra = set(value) - {"days", "count"}
            if extra:
                raise PolicyError(source, f"{key}.{sorted(map(str, extra))[0]}", "unknown key")
            days = value.get("days")
            if not isinstance(days, int) or isinstance(days, bool) or days < 0:
                raise PolicyError(source, f"{key}.days", f"expected a whole number >= 0, got {days!r}")
            try:
                count = DayCount(value.get("count", "working"))
            except ValueError:
                raise PolicyError(
                    source,
                    f"{key}.count",
                    f"expected working, calendar, hours or working_hours, got {value.get('count')!r}",
                ) from None
            return cls(days, count)
        raise PolicyError(source, key, f"expected a limit like '3 working days', got {value!r}")

    def __str__(self) -> str:
        unit = {
            DayCount.WORKING: "working day",
            DayCount.CALENDAR: "day",
            DayCount.HOURS: "hour",
            DayCount.WORKING_HOURS: "working hour",
        }[self.count]
        return f"{self.days} {unit}{'' if self.days == 1 else 's'}"


DEFAULT_POLICY: Mapping[str, Any] = MappingProxyType(
    {
        "limits": {
            "assign": "3 working days",
            "accept_notice": "15 days",
            "objection": "5 working days",
            "settle": "60 days",
            "review_request": "30 days",
            "review_decision": "30 days",
            "hotline_emergency": "24 hours",  # 12345 紧急类: round the clock, counted in hours
            "hotline_enquiry": "3 working days",
            "hotline_complaint": "13 working days",
            "assist": "5 working days",
            "instruct": "2 working days",
        },
        # The national 15 days to forward or assign are split 5/3/3/4 (national/province/city/county).
        "tiers": {
            "province": {"assign": "3 working days"},
            "city": {"assign": "3 working days"},
            "county": {"assign": "4 working days"},
        },
        "categories": {},
        "settle_extension_max_days": 30,
        "calendar_limits_end_on_workday": True,
        "warning": {"min_days": 1, "fraction": 0.2},
        "supervision_delay": "2 working days",
    }
)

_TOP_KEYS = {
    "limits",
    "tiers",
    "categories",
    "settle_extension_max_days",
    "calendar_limits_end_on_workday",
    "warning",
    "supervision_delay",
}


def _parse_limits(raw: Any, source: str, key: str) -> dict[DeadlineKind, Limit]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PolicyError(source, key, "expected a mapping of deadline kind to limit")
    out: dict[DeadlineKind, Limit] = {}
    for name, value in raw.items():
        try:
            kind = DeadlineKind(name)
        except ValueError:
            known = ", ".join(k.value for k in DeadlineKind)
            raise PolicyError(source, f"{key}.{name}", f"unknown deadline kind (known: {known})") from None
        out[kind] = Limit.parse(value, source=source, key=f"{key}.{name}")
    return out


def _frozen(d: Mapping[DeadlineKind, Limit]) -> Mapping[DeadlineKind, Limit]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class TimeLimitPolicy:
    """The limits a node applies; ``limit_for`` resolves category over tier over base."""

    limits: Mapping[DeadlineKind, Limit]
    tiers: Mapping[Tier, Mapping[DeadlineKind, Limit]] = field(default_factory=dict)
    categories: Mapping[str, Mapping[DeadlineKind, Limit]] = field(default_factory=dict)
    settle_extension_max_days: int = 30
    calendar_limits_end_on_workday: bool = True
    warning_min_days: int = 1
    warning_fraction: float = 0.2
    supervision_delay: Limit = Limit(2, DayCount.WORKING)

    @classmethod
    def default(cls) -> TimeLimitPolicy:
        return cls.from_dict(DEFAULT_POLICY, source="DEFAULT_POLICY")

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "policy") -> TimeLimitPolicy:
        """Build from a YAML/JSON mapping; keys left out keep the defaults of ``DEFAULT_POLICY``."""
        if not isinstance(raw, Mapping):
            raise PolicyError(source, "(top level)", "expected a mapping")
        unknown = set(raw) - _TOP_KEYS
        if unknown:
            raise PolicyError(source, sorted(map(str, unknown))[0], "unknown key")

        limits = _parse_limits(DEFAULT_POLICY["limits"], "DEFAULT_POLICY", "limits")
        limits.update(_parse_limits(raw.get("limits"), source, "limits"))

        raw_tiers = raw.get("tiers", DEFAULT_POLICY["tiers"])
        if not isinstance(raw_tiers, Mapping):
            raise PolicyError(source, "tiers", "expected a mapping of tier to limits")
        tiers: dict[Tier, Mapping[DeadlineKind, Limit]] = {}
        for name, value in raw_tiers.items():
            try:
                tier = Tier(name)
            except ValueError:
                known = ", ".join(t.value for t in Tier)
                raise PolicyError(source, f"tiers.{name}", f"unknown tier (known: {known})") from None
            tiers[tier] = _frozen(_parse_limits(value, source, f"tiers.{name}"))

        raw_categories = raw.get("categories") or {}
        if not isinstance(raw_categories, Mapping):
            raise PolicyError(source, "categories", "expected a mapping of category to limits")
        categories: dict[str, Mapping[DeadlineKind, Limit]] = {}
        for name, value in raw_categories.items():
            if name not in CATEGORIES:
                raise PolicyError(source, f"categories.{name}", f"unknown category (known: {', '.join(CATEGORIES)})")
            categories[name] = _frozen(_parse_limits(value, source, f"categories.{name}"))

        max_ext = raw.get("settle_extension_max_days", DEFAULT_POLICY["settle_extension_max_days"])
        if not isinstance(max_ext, int) or isinstance(max_ext, bool) or not 0 <= max_ext <= 366:
            raise PolicyError(source, "settle_extension_max_days", f"expected 0..366, got {max_ext!r}")

        roll = raw.get("calendar_limits_end_on_workday", DEFAULT_POLICY["calendar_limits_end_on_workday"])
        if not isinstance(roll, bool):
            raise PolicyError(source, "calendar_limits_end_on_workday", f"expected true or false, got {roll!r}")

        warning = raw.get("warning", DEFAULT_POLICY["warning"])
        if not isinstance(warning, Mapping):
            raise PolicyError(source, "warning", "expected {min_days, fraction}")
        extra = set(warning) - {"min_days", "fraction"}
        if extra:
            raise PolicyError(source, f"warning.{sorted(map(str, extra))[0]}", "unknown key")
        min_days = warning.get("min_days", 1)
        if not isinstance(min_days, int) or isinstance(min_days, bool) or min_days < 0:
            raise PolicyError(source, "warning.min_days", f"expected a whole number >= 0, got {min_days!r}")
        fraction = warning.get("fraction", 0.2)
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
            raise PolicyError(source, "warning.fraction", f"expected a number in [0, 1), got {fraction!r}")

        delay = Limit.parse(
            raw.get("supervision_delay", DEFAULT_POLICY["supervision_delay"]),
            source=source,
            key="supervision_delay",
        )
        return cls(
            limits=_frozen(limits),
            tiers=MappingProxyType(tiers),
            categories=MappingProxyType(categories),
            settle_extension_max_days=max_ext,
            calendar_limits_end_on_workday=roll,
            warning_min_days=min_days,
            warning_fraction=float(fraction),
            supervision_delay=delay,
        )

    def limit_for(self, kind: DeadlineKind, *, tier: Tier | None = None, category: str | None = None) -> Limit:
        """Category override, else tier override, else the base limit."""
        if category is not None and kind in self.categories.get(category, {}):
            return self.categories[category][kind]
        if tier is not None and kind in self.tiers.get(tier, {}):
            return self.tiers[tier][kind]
        return self.limits[kind]

    def warning_lead(self, limit: Limit) -> int:
        """Days (counted like the limit) before the due day that the warning fires; 0 means no warning.

        The larger of ``min_days`` and ``fraction`` of the limit, but never the whole limit, so a
        60-day settlement warns 12 days ahead and a 3-working-day assignment 1 working day ahead.
        """
        if limit.in_hours:
            # Hours: the fraction of the limit, at least one hour, never the whole limit (4 h warns 1 h ahead).
            return min(max(1, math.ceil(limit.days * self.warning_fraction)), max(limit.days - 1, 0))
        lead = max(self.warning_min_days, math.ceil(limit.days * self.warning_fraction))
        return min(lead, max(limit.days - 1, 0)) if limit.days > 1 else 0


def _merged_pauses(paused: Iterable[tuple[datetime, datetime]], start: date) -> list[tuple[date, date]]:
    spans: list[tuple[date, date]] = []
    for i, (begin, end) in enumerate(paused):
        if end < begin:
            raise ValueError(f"paused[{i}]: ends {end.isoformat()} before it begins {begin.isoformat()}")
        first, last = max(china_date(begin), start), china_date(end)
        if last > first:
            spans.append((first, last))
    spans.sort()
    merged: list[tuple[date, date]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _advance(day: date, n: int, count: DayCount, calendar: WorkingCalendar) -> date:
    return calendar.add_workdays(day, n) if count is DayCount.WORKING else day + timedelta(days=n)


def _between(a: date, b: date, count: DayCount, calendar: WorkingCalendar) -> int:
    return calendar.workdays_between(a, b) if count is DayCount.WORKING else (b - a).days


def due_date(
    limit: Limit,
    start: datetime,
    policy: TimeLimitPolicy,
    calendar: WorkingCalendar,
    paused: Iterable[tuple[datetime, datetime]] = (),
    *,
    extra_days: int = 0,
) -> date:
    """The Asia/Shanghai day on whose end a limit started at ``start`` falls due."""
    if extra_days < 0:
        raise ValueError(f"extra_days must be >= 0, got {extra_days}")
    start_day = china_date(start)
    days = limit.days + extra_days
    due = _advance(start_day, days, limit.count, calendar)
    for first, last in _merged_pauses(paused, start_day):
        if first > due:
            break  # the clock had already run out when this pause began
        due = _advance(due, _between(first, last, limit.count, calendar), limit.count, calendar)
    if (
        limit.count is DayCount.CALENDAR
        and days > 0
        and policy.calendar_limits_end_on_workday
        and not calendar.is_workday(due)
    ):
        due = calendar.add_workdays(due, 1)
    return due


def deadline_for(
    kind: DeadlineKind,
    start: datetime,
    policy: TimeLimitPolicy,
    calendar: WorkingCalendar,
    paused: Iterable[tuple[datetime, datetime]] = (),
    *,
    tier: Tier | None = None,
    category: str | None = None,
    extra_days: int = 0,
) -> datetime:
    """End-of-day Asia/Shanghai deadline of ``kind`` for a clock started at ``start``.

    ``paused`` are closed (begin, end) intervals during which the clock stood still;
    ``extra_days`` lengthens the limit in its own unit (an approved settlement extension).
    """
    limit = policy.limit_for(kind, tier=tier, category=category)
    if limit.in_hours:
        return hour_deadline(limit, start, calendar, paused, extra_hours=extra_days)
    return end_of_day(due_date(limit, start, policy, calendar, paused, extra_days=extra_days))


def _working_spans(start: datetime, calendar: WorkingCalendar, *, forward: bool) -> Iterable[tuple[datetime, datetime]]:
    """The office-hour spans (WORKDAY_HOURS on working days) from ``start`` on, forward or backward in time."""
    opens, closes = WORKDAY_HOURS
    local = to_utc(start).astimezone(CHINA)
    day = local.date()
    step = timedelta(days=1 if forward else -1)
    for _ in range(3660):  # ten years of days: a calendar without working days is a configuration error
        if calendar.is_workday(day):
            begin = datetime.combine(day, time(opens), tzinfo=CHINA)
            end = datetime.combine(day, time(closes), tzinfo=CHINA)
            if forward:
                begin = max(begin, local)
            else:
                end = min(end, local)
            if begin < end:
                yield begin, end
        day += step
    raise ValueError("no working day within ten years of the start: check the calendar")


def add_hours(start: datetime, hours: float, count: DayCount, calendar: WorkingCalendar) -> datetime:
    """``start`` moved by ``hours`` (negative: back) of natural hours or of office hours on working days.

    Moving forward from outside office hours starts at the next opening; a result that lands exactly
    on a closing time stays there (the limit ends at 17:00, not at 9:00 the next working day).
    """
    if count is DayCount.HOURS:
        return to_utc(start) + timedelta(hours=hours)
    left = timedelta(hours=abs(hours))
    forward = hours >= 0
    if not left:
        return to_utc(start)
    for begin, end in _working_spans(start, calendar, forward=forward):
        if left <= end - begin:
            return to_utc(begin + left if forward else end - left)
        left -= end - begin
    raise AssertionError("unreachable: _working_spans raises first")


def hours_between(a: datetime, b: datetime, count: DayCount, calendar: WorkingCalendar) -> timedelta:
    """Natural or office time from ``a`` to ``b`` (zero when b is not after a)."""
    if b <= a:
        return timedelta(0)
    if count is DayCount.HOURS:
        return b - a
    total = timedelta(0)
    for begin, end in _working_spans(a, calendar, forward=True):
        if begin >= b:
            break
        total += min(end, b) - begin
    return total


def hour_deadline(
    limit: Limit,
    start: datetime,
    calendar: WorkingCalendar,
    paused: Iterable[tuple[datetime, datetime]] = (),
    *,
    extra_hours: int = 0,
) -> datetime:
    """The exact deadline of an hour limit started at ``start`` (12345 urgent classes).

    Pauses give back the hours (counted like the limit) that the clock stood still before the
    deadline; a pause that starts after it gives nothing back.
    """
    if extra_hours < 0:
        raise ValueError(f"extra_hours must be >= 0, got {extra_hours}")
    due = add_hours(start, limit.days + extra_hours, limit.count, calendar)
    for begin, end in sorted((to_utc(b), to_utc(e)) for b, e in paused):
        if end < begin:
            raise ValueError(f"paused: ends {end.isoformat()} before it begins {begin.isoformat()}")
        if begin >= due:
            break
        given = hours_between(max(begin, to_utc(start)), end, limit.count, calendar)
        due = add_hours(due, given.total_seconds() / 3600, limit.count, calendar)
    return due


def warning_at(deadline: datetime, limit: Limit, policy: TimeLimitPolicy, calendar: WorkingCalendar) -> datetime | None:
    """When the warning for ``deadline`` fires (end of the day ``lead`` days before the due day), if any."""
    lead = policy.warning_lead(limit)
    if lead == 0:
        return None
    if limit.in_hours:
        return add_hours(deadline, -lead, limit.count, calendar)
    due = china_date(deadline)
    return end_of_day(_advance(due, -lead, limit.count, calendar))


def supervision_at(deadline: datetime, policy: TimeLimitPolicy, calendar: WorkingCalendar) -> datetime:
    """When the tier above takes up supervision of a missed deadline (督办): ``supervision_delay`` later."""
    delay = policy.supervision_delay
    return end_of_day(_advance(china_date(deadline), delay.days, delay.count, calendar))


@dataclass(frozen=True)
class TimeRules:
    """A node's policy and calendar, handed together to domain code that computes deadlines."""

    policy: TimeLimitPolicy
    calendar: WorkingCalendar

    def deadline(
        self,
        kind: DeadlineKind,
        start: datetime,
        *,
        tier: Tier | None = None,
        category: str | None = None,
        paused: Iterable[tuple[datetime, datetime]] = (),
        extra_days: int = 0,
    ) -> datetime:
        return deadline_for(
            kind,
            start,
            self.policy,
            self.calendar,
            paused,
            tier=tier,
            category=category,
            extra_days=extra_days,
        )
