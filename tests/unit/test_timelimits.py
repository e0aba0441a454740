"""Time-limit policy: every kind of limit, pauses, per-tier and per-category overrides, config errors."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from services.common.calendar import ChineseWorkingCalendar
from services.common.regions import Tier
from services.common.timeutil import CHINA
from services.routing.domain.timelimits import (
    DayCount,
    DeadlineKind,
    Limit,
    PolicyError,
    TimeLimitPolicy,
    TimeRules,
    deadline_for,
    supervision_at,
    warning_at,
)

CAL = ChineseWorkingCalendar()
POLICY = TimeLimitPolicy.default()
K = DeadlineKind


def at(y: int, m: int, d: int, hh: int = 10) -> datetime:
    return datetime(y, m, d, hh, tzinfo=CHINA)


def due(kind: DeadlineKind, start: datetime, **kw: Any) -> date:
    return deadline_for(kind, start, POLICY, CAL, **kw).date()


MONDAY = at(2026, 11, 23)


@pytest.mark.parametrize(
    ("tier", "expected"),
    [(Tier.PROVINCE, date(2026, 11, 26)), (Tier.CITY, date(2026, 11, 26)), (Tier.COUNTY, date(2026, 11, 27))],
)
def test_assign_limit_is_the_tiers_share_of_fifteen_days(tier: Tier, expected: date) -> None:
    assert due(K.ASSIGN, MONDAY, tier=tier) == expected


def test_acceptance_notice_is_fifteen_calendar_days() -> None:
    assert due(K.ACCEPT_NOTICE, MONDAY) == date(2026, 12, 8)


def test_objection_window_is_five_working_days() -> None:
    assert due(K.OBJECTION, MONDAY) == date(2026, 11, 30)
    # Across 国庆: 30 Sep, then 8, 9, 10 (make-up Saturday), 12, 13 Oct.
    assert due(K.OBJECTION, at(2026, 9, 30)) == date(2026, 10, 13)


def test_settlement_is_sixty_days_ending_on_a_working_day() -> None:
    # 3 Aug + 60 days = 2 Oct, a 国庆 holiday: the period ends on the next working day (民法典 第二百零三条).
    assert due(K.SETTLE, at(2026, 8, 3)) == date(2026, 10, 8)
    strict = TimeLimitPolicy.from_dict({"calendar_limits_end_on_workday": False})
    assert deadline_for(K.SETTLE, at(2026, 8, 3), strict, CAL).date() == date(2026, 10, 2)


def test_an_approved_extension_lengthens_settlement_from_the_same_start() -> None:
    # 1 Jun + 60 + 30 = 30 Aug, a Sunday → Monday 31 Aug.
    assert due(K.SETTLE, at(2026, 6, 1), extra_days=30) == date(2026, 8, 31)
    with pytest.raises(ValueError, match="extra_days"):
        due(K.SETTLE, at(2026, 6, 1), extra_days=-1)


def test_review_request_and_decision_are_thirty_days_each() -> None:
    assert due(K.REVIEW_REQUEST, at(2026, 3, 2)) == date(2026, 4, 1)
    assert due(K.REVIEW_DECISION, at(2026, 3, 2)) == date(2026, 4, 1)


def test_hotline_classes() -> None:
    sunday = at(2026, 11, 22, 21)
    # 紧急类 in hours, round the clock: 24 hours from Sunday 21:00 (tests/unit/test_hour_limits.py)
    assert deadline_for(K.HOTLINE_EMERGENCY, sunday, POLICY, CAL) == at(2026, 11, 23, 21)
    assert due(K.HOTLINE_ENQUIRY, MONDAY) == date(2026, 11, 26)
    assert due(K.HOTLINE_COMPLAINT, MONDAY) == date(2026, 12, 10)


def test_deadline_is_end_of_day_in_shanghai_even_for_a_utc_start() -> None:
    # 23 Nov 17:00 UTC is already 24 Nov 01:00 in Shanghai: the start day is the 24th.
    deadline = deadline_for(K.HOTLINE_ENQUIRY, datetime(2026, 11, 23, 17, tzinfo=UTC), POLICY, CAL)
    assert deadline.date() == date(2026, 11, 27)
    assert deadline.tzinfo is CHINA and (deadline.hour, deadline.minute) == (23, 59)


def test_a_pause_gives_back_the_working_days_it_covered() -> None:
    start = at(2026, 11, 2)  # Monday; 13 working days → Thursday 19 Nov
    assert due(K.HOTLINE_COMPLAINT, start) == date(2026, 11, 19)
    # Paused Wed 4 Nov 10:00 → Mon 9 Nov 15:00 gives back Thu 5, Fri 6 and Mon 9: three working days.
    pause = (at(2026, 11, 4), at(2026, 11, 9, 15))
    assert due(K.HOTLINE_COMPLAINT, start, paused=[pause]) == date(2026, 11, 24)


def test_a_pause_on_calendar_days_gives_back_calendar_days() -> None:
    start = at(2026, 6, 1)  # 60 days → 31 Jul (Friday)
    assert due(K.SETTLE, start) == date(2026, 7, 31)
    assert due(K.SETTLE, start, paused=[(at(2026, 6, 10), at(2026, 6, 20))]) == date(2026, 8, 10)


def test_pauses_within_a_day_after_the_deadline_or_overlapping_count_sensibly() -> None:
    start = at(2026, 11, 2)
    base = due(K.HOTLINE_COMPLAINT, start)
    same_day = (at(2026, 11, 4, 9), at(2026, 11, 4, 17))
    assert due(K.HOTLINE_COMPLAINT, start, paused=[same_day]) == base
    after = (at(2026, 11, 20), at(2026, 11, 27))
    assert due(K.HOTLINE_COMPLAINT, start, paused=[after]) == base
    overlapping = [(at(2026, 11, 4), at(2026, 11, 9, 15)), (at(2026, 11, 5), at(2026, 11, 6))]
    assert due(K.HOTLINE_COMPLAINT, start, paused=overlapping) == date(2026, 11, 24)
    before_start = (at(2026, 10, 26), at(2026, 11, 3))  # only Tue 3 Nov lies after the start day
    assert due(K.HOTLINE_COMPLAINT, start, paused=[before_start]) == date(2026, 11, 20)
    with pytest.raises(ValueError, match=r"paused\[0\]"):
        due(K.HOTLINE_COMPLAINT, start, paused=[(at(2026, 11, 9), at(2026, 11, 4))])


def test_category_override_beats_tier_override_beats_base() -> None:
    policy = TimeLimitPolicy.from_dict(
        {
            "tiers": {"county": {"assign": "4 working days", "settle": "45 days"}},
            "categories": {"环境保护": {"settle": {"days": 30, "count": "calendar"}}},
        }
    )
    assert policy.limit_for(K.SETTLE) == Limit(60, DayCount.CALENDAR)
    assert policy.limit_for(K.SETTLE, tier=Tier.COUNTY) == Limit(45, DayCount.CALENDAR)
    assert policy.limit_for(K.SETTLE, tier=Tier.COUNTY, category="环境保护") == Limit(30, DayCount.CALENDAR)
    assert policy.limit_for(K.SETTLE, tier=Tier.CITY, category="城乡建设") == Limit(60, DayCount.CALENDAR)
    start = at(2026, 6, 1)
    assert deadline_for(K.SETTLE, start, policy, CAL, category="环境保护").date() == date(2026, 7, 1)
    assert deadline_for(K.SETTLE, start, policy, CAL, category="城乡建设").date() == date(2026, 7, 31)


def test_limits_parse_from_words_or_mappings() -> None:
    assert Limit.parse("3 working days") == Limit(3, DayCount.WORKING)
    assert Limit.parse("1 working day") == Limit(1, DayCount.WORKING)
    assert Limit.parse("60 days") == Limit(60, DayCount.CALENDAR)
    assert Limit.parse({"days": 5}) == Limit(5, DayCount.WORKING)
    assert str(Limit(13, DayCount.WORKING)) == "13 working days"


def test_warning_lead_is_the_larger_of_a_day_and_a_fifth_but_never_the_whole_limit() -> None:
    assert POLICY.warning_lead(Limit(60, DayCount.CALENDAR)) == 12
    assert POLICY.warning_lead(Limit(3, DayCount.WORKING)) == 1
    assert POLICY.warning_lead(Limit(13, DayCount.WORKING)) == 3
    assert POLICY.warning_lead(Limit(1, DayCount.WORKING)) == 0
    assert POLICY.warning_lead(Limit(0, DayCount.WORKING)) == 0


def test_warning_and_supervision_boundaries_follow_the_calendar() -> None:
    deadline = deadline_for(K.OBJECTION, at(2026, 9, 30), POLICY, CAL)  # end of Tue 13 Oct
    warn = warning_at(deadline, Limit(5, DayCount.WORKING), POLICY, CAL)
    assert warn is not None and warn.date() == date(2026, 10, 12)
    # 2 working days after Tue 13 Oct.
    assert supervision_at(deadline, POLICY, CAL).date() == date(2026, 10, 15)
    # Before a long holiday the warning reaches back over it: 1 working day before Thu 8 Oct is 30 Sep.
    eight_oct = deadline_for(K.HOTLINE_ENQUIRY, at(2026, 9, 28), POLICY, CAL)
    assert eight_oct.date() == date(2026, 10, 8)
    warn = warning_at(eight_oct, Limit(3, DayCount.WORKING), POLICY, CAL)
    assert warn is not None and warn.date() == date(2026, 9, 30)


def test_time_rules_bundle_policy_and_calendar() -> None:
    rules = TimeRules(POLICY, CAL)
    assert rules.deadline(K.ASSIGN, MONDAY, tier=Tier.COUNTY) == deadline_for(
        K.ASSIGN, MONDAY, POLICY, CAL, tier=Tier.COUNTY
    )


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"limits": {"setle": "60 days"}}, "limits.setle"),
        ({"limits": {"settle": "sixty days"}}, "limits.settle"),
        ({"limits": {"settle": {"days": -1}}}, "limits.settle.days"),
        ({"limits": {"settle": {"days": 60, "count": "lunar"}}}, "limits.settle.count"),
        ({"limits": {"settle": 60}}, "limits.settle"),
        ({"tiers": {"town": {"assign": "2 working days"}}}, "tiers.town"),
        ({"tiers": {"county": {"asign": "2 working days"}}}, "tiers.county.asign"),
        ({"categories": {"环保": {"settle": "30 days"}}}, "categories.环保"),
        ({"categories": {"环境保护": {"settle": "a month"}}}, "categories.环境保护.settle"),
        ({"warning": {"fraction": 1.5}}, "warning.fraction"),
        ({"warning": {"min_days": -1}}, "warning.min_days"),
        ({"warning": {"lead": 1}}, "warning.lead"),
        ({"settle_extension_max_days": -1}, "settle_extension_max_days"),
        ({"calendar_limits_end_on_workday": "yes"}, "calendar_limits_end_on_workday"),
        ({"supervision_delay": "soon"}, "supervision_delay"),
        ({"deadlines": {}}, "deadlines"),
    ],
)
def test_bad_policy_config_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(PolicyError) as caught:
        TimeLimitPolicy.from_dict(raw, source="routing.yaml")
    assert caught.value.key == key
    assert str(caught.value).startswith(f"routing.yaml: {key}: ")


def test_default_policy_matches_the_design() -> None:
    assert POLICY.limit_for(K.SETTLE) == Limit(60, DayCount.CALENDAR)
    assert POLICY.settle_extension_max_days == 30
    assert POLICY.limit_for(K.ASSIGN, tier=Tier.COUNTY) == Limit(4, DayCount.WORKING)
    assert POLICY.limit_for(K.HOTLINE_EMERGENCY) == Limit(24, DayCount.HOURS)
    assert POLICY.supervision_delay == Limit(2, DayCount.WORKING)
