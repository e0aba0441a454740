"""Hours, not only days: 12345 urgent classes counted in natural hours or office hours (9:00–17:00 on
working days), with the sweep's warning, chase and supervision following, on a fake clock."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from services.common.calendar import ChineseWorkingCalendar
from services.common.regions import Tier
from services.common.timeutil import CHINA
from services.routing.domain import Stage, WorkOrder, sweep
from services.routing.domain.timelimits import (
    DayCount,
    DeadlineKind,
    Limit,
    PolicyError,
    TimeLimitPolicy,
    TimeRules,
    add_hours,
    hour_deadline,
    hours_between,
)

CAL = ChineseWorkingCalendar()
K = DeadlineKind
TICK = timedelta(microseconds=1)


def at(d: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 12, d, hh, mm, tzinfo=CHINA)  # 4 Dec 2026 is a Friday


def test_hour_limits_parse_and_print() -> None:
    assert Limit.parse("4 hours") == Limit(4, DayCount.HOURS)
    assert Limit.parse("1 hour") == Limit(1, DayCount.HOURS)
    assert Limit.parse("8 working hours") == Limit(8, DayCount.WORKING_HOURS)
    assert Limit.parse({"days": 6, "count": "working_hours"}) == Limit(6, DayCount.WORKING_HOURS)
    assert str(Limit(4, DayCount.HOURS)) == "4 hours" and str(Limit(1, DayCount.WORKING_HOURS)) == "1 working hour"
    with pytest.raises(PolicyError, match=r"limits\.hotline_emergency"):
        TimeLimitPolicy.from_dict({"limits": {"hotline_emergency": "4 minutes"}}, source="t.yaml")


def test_natural_hours_run_through_nights_and_weekends() -> None:
    assert add_hours(at(5, 22), 4, DayCount.HOURS, CAL) == at(6, 2)  # Saturday night to Sunday
    assert hour_deadline(Limit(24, DayCount.HOURS), at(4, 16), CAL) == at(5, 16)


def test_working_hours_count_nine_to_five_on_working_days() -> None:
    # Friday 16:00 + 4 office hours: one on Friday, three on Monday morning.
    assert add_hours(at(4, 16), 4, DayCount.WORKING_HOURS, CAL) == at(7, 12)
    # Started at night or on Sunday: counting begins at the next opening.
    assert add_hours(at(6, 20), 2, DayCount.WORKING_HOURS, CAL) == at(7, 11)
    assert add_hours(at(7, 7, 30), 8, DayCount.WORKING_HOURS, CAL) == at(7, 17)  # ends at closing, not next day
    assert add_hours(at(7, 10), -2, DayCount.WORKING_HOURS, CAL) == at(4, 16)  # back over the weekend
    assert hours_between(at(4, 16), at(7, 12), DayCount.WORKING_HOURS, CAL) == timedelta(hours=4)


def test_a_pause_gives_back_the_hours_it_stood_still() -> None:
    limit = Limit(4, DayCount.HOURS)
    assert hour_deadline(limit, at(7, 10), CAL, [(at(7, 11), at(7, 12, 30))]) == at(7, 15, 30)
    assert hour_deadline(limit, at(7, 10), CAL, [(at(7, 15), at(7, 16))]) == at(7, 14)  # after the deadline


POLICY = TimeLimitPolicy.from_dict({"limits": {"hotline_emergency": "4 hours"}})
RULES = TimeRules(POLICY, CAL)


def emergency(start: datetime) -> WorkOrder:
    order, _ = WorkOrder.register(
        id="wo-1",
        case_id="case-1",
        node="511102",
        tier=Tier.COUNTY,
        at=start,
        actor="hotline",
        rules=RULES,
        handling_kind=K.HOTLINE_EMERGENCY,
    )
    order.accept(at=start, actor="clerk", rules=RULES)
    return order


def test_a_four_hour_emergency_warns_one_hour_ahead_and_is_chased_at_the_minute() -> None:
    start = at(5, 21)  # Saturday night: an urgent call runs through the weekend
    order = emergency(start)
    due = order.deadlines[K.HOTLINE_EMERGENCY]
    assert due == at(6, 1)

    def stages(now: datetime) -> list[Stage]:
        return [a.stage for a in sweep([order], now, POLICY, CAL) if a.kind == K.HOTLINE_EMERGENCY]

    assert stages(at(6, 0) - TICK) == []
    assert stages(at(6, 0)) == [Stage.WARNING]  # one hour before (20 % of 4 h, at least 1 h)
    for action in sweep([order], at(6, 0), POLICY, CAL):
        order.record_sweep(action)
    assert stages(due - TICK) == []
    assert stages(due) == [Stage.CHASE]


def test_the_default_emergency_class_is_counted_in_hours() -> None:
    assert TimeLimitPolicy.default().limit_for(K.HOTLINE_EMERGENCY) == Limit(24, DayCount.HOURS)


def test_the_warehouse_counts_a_reply_five_minutes_after_an_hour_deadline_late() -> None:
    from dataclasses import replace

    from services.stats.domain import COUNTERS, CaseFact, counters

    start = at(5, 21)
    due = emergency(start).deadlines[K.HOTLINE_EMERGENCY]  # 4 hours later, Sunday 01:00
    fact = CaseFact(
        case_id="511102-20261205-000001",
        province_code="510000",
        city_code="511100",
        county_code="511102",
        region_code="511102",
        registering_node="511102",
        channel="hotline",
        category="公共安全",
        state="CLOSED",
        version=5,
        submitted_at=start,
        updated_at=start,
        handling_due=due,
    )

    def figures(done: datetime) -> dict[str, int]:
        done_fact = replace(fact, replied_at=done, closed_at=done)
        return dict(zip(COUNTERS, counters(done_fact, done + timedelta(hours=1)), strict=True))

    on_time = figures(due - timedelta(minutes=5))
    late = figures(due + timedelta(minutes=5))
    assert (on_time["closed_on_time"], on_time["overdue"]) == (1, 0)
    assert (late["closed_on_time"], late["overdue"]) == (0, 1)
