"""Remote consultation (远程会商) rules: participants, window, free periods on each node's calendar and
the earliest common slot across nodes (plain domain, no I/O)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from services.common.calendar import ChineseWorkingCalendar
from services.common.errors import InvalidArgument, PermissionDenied
from services.common.timeutil import CHINA
from services.video import consult, slots
from services.video.consult import Participant

CAL = ChineseWorkingCalendar()


def at(day: str, hhmm: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}:00").replace(tzinfo=CHINA)


COUNTY = Participant("511102", "lszq-sthjj", "511102-R1")
CITY = Participant("511100", "lsj-sthjj", "511100-R1")
PROVINCE = Participant("510000", "sthjt", "510000-R1")


def test_participants_need_two_nodes_one_of_them_the_host() -> None:
    assert consult.check_participants([COUNTY, CITY], "511102") == (COUNTY, CITY)
    with pytest.raises(InvalidArgument) as one:
        consult.check_participants([COUNTY], "511102")
    assert one.value.field == "participants"
    same_node = Participant("511102", "lszq-xfj", "511102-R2")
    with pytest.raises(InvalidArgument, match="at least two nodes"):
        consult.check_participants([COUNTY, same_node], "511102")
    with pytest.raises(InvalidArgument, match="this node"):
        consult.check_participants([CITY, PROVINCE], "511102")


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (Participant("5111", "u", "r"), "participants[1].node"),
        (Participant("511100", " ", "r"), "participants[1].unit_id"),
        (Participant("511100", "u", ""), "participants[1].room_id"),
        (Participant("511102", "lszq-sthjj", "R9"), "participants[1].unit_id"),
        (Participant("511100", "u", "511102-R1"), "participants[1].room_id"),
    ],
)
def test_each_participant_names_its_node_unit_and_room_once(bad: Participant, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        consult.check_participants([COUNTY, bad], "511102")
    assert refused.value.field == field


def test_duration_window_topic_and_minutes_are_checked() -> None:
    now = at("2026-12-07", "08:00")
    assert consult.check_duration(0) == timedelta(minutes=60)
    with pytest.raises(InvalidArgument, match="between 30 and 240"):
        consult.check_duration(20)
    assert consult.check_window(None, None, now) == (now, now + timedelta(days=30))
    assert consult.check_window(now - timedelta(days=3), None, now)[0] == now  # never in the past
    with pytest.raises(InvalidArgument) as long:
        consult.check_window(now, now + timedelta(days=91), now)
    assert long.value.field == "not_after"
    with pytest.raises(InvalidArgument) as past:
        consult.check_window(None, None, now, starts_at=now - timedelta(hours=1))
    assert past.value.field == "starts_at"
    with pytest.raises(InvalidArgument) as topic:
        consult.check_topic("  ")
    assert topic.value.field == "topic"
    with pytest.raises(InvalidArgument) as minutes:
        consult.check_minutes("")
    assert minutes.value.field == "minutes"


def test_free_periods_are_consultation_hours_on_working_days_minus_what_is_busy() -> None:
    # Wednesday 2026-09-30, then the National Day holiday (Thursday 10-01).
    busy = [(at("2026-09-30", "10:00"), at("2026-09-30", "11:00"))]
    free = consult.free_periods(CAL, busy, at("2026-09-30", "00:00"), at("2026-10-02", "00:00"))
    assert free == [
        (at("2026-09-30", "09:00"), at("2026-09-30", "10:00")),
        (at("2026-09-30", "11:00"), at("2026-09-30", "12:00")),
        (at("2026-09-30", "14:30"), at("2026-09-30", "17:30")),
    ]


def test_a_weekend_has_no_consultation_hours_and_the_window_clips() -> None:
    saturday = at("2026-12-05", "00:00")
    assert consult.free_periods(CAL, [], saturday, saturday + timedelta(days=1, hours=23)) == []
    free = consult.free_periods(CAL, [], at("2026-12-07", "10:15"), at("2026-12-07", "15:00"))
    assert free == [
        (at("2026-12-07", "10:15"), at("2026-12-07", "12:00")),
        (at("2026-12-07", "14:30"), at("2026-12-07", "15:00")),
    ]


def test_no_periods_past_the_official_calendar() -> None:
    last = CAL.known_range()[1]
    beyond = datetime(last.year + 1, 1, 4, tzinfo=CHINA)
    assert consult.free_periods(CAL, [], beyond, beyond + timedelta(days=5)) == []


def test_the_earliest_common_slot_is_the_first_grid_start_free_for_every_participant() -> None:
    day = "2026-12-07"  # a Monday
    county = consult.free_periods(CAL, [(at(day, "09:00"), at(day, "10:00"))], at(day, "00:00"), at(day, "23:59"))
    city = consult.free_periods(CAL, [(at(day, "10:30"), at(day, "11:00"))], at(day, "00:00"), at(day, "23:59"))
    province = consult.free_periods(CAL, [(at(day, "14:30"), at(day, "15:10"))], at(day, "00:00"), at(day, "23:59"))
    hour = timedelta(hours=1)
    # 10:00-10:30 is common but too short; 11:00-12:00 fits everyone.
    found = consult.common_slots([county, city, province], hour, at(day, "00:00"), at(day, "23:59"), limit=3)
    assert found == [
        (at(day, "11:00"), at(day, "12:00")),
        (at(day, "15:30"), at(day, "16:30")),  # 15:10 rounds up to the 30-minute grid
        (at(day, "16:00"), at(day, "17:00")),
    ]
    excluded = consult.common_slots(
        [county, city], hour, at(day, "00:00"), at(day, "23:59"), limit=1, exclude=frozenset({at(day, "11:00")})
    )
    assert excluded == [(at(day, "14:30"), at(day, "15:30"))]


def test_no_common_slot_when_one_participant_is_never_free() -> None:
    day = "2026-12-07"
    county = consult.free_periods(CAL, [], at(day, "00:00"), at(day, "23:59"))
    assert consult.common_slots([county, []], timedelta(hours=1), at(day, "00:00"), at(day, "23:59"), limit=1) == []


def test_intersect_and_subtract_keep_sorted_disjoint_periods() -> None:
    d = date(2026, 12, 7)

    def h(hour: float) -> datetime:
        return datetime(d.year, d.month, d.day, tzinfo=CHINA) + timedelta(hours=hour)

    a = [(h(9), h(12)), (h(14), h(18))]
    b = [(h(8), h(10)), (h(11), h(15)), (h(17), h(20))]
    assert consult.intersect(a, b) == [(h(9), h(10)), (h(11), h(12)), (h(14), h(15)), (h(17), h(18))]
    assert consult.subtract(a, slots.merge([(h(10), h(11)), (h(10.5), h(14.5))])) == [
        (h(9), h(10)),
        (h(14.5), h(18)),
    ]


def test_the_office_and_the_units_taking_part_act_and_read_minutes() -> None:
    units = [COUNTY, CITY]
    assert consult.may_act(frozenset({"clerk"}), "", "511102", units)
    assert consult.may_act(frozenset({"handler"}), "lszq-sthjj", "511102", units)
    assert not consult.may_act(frozenset({"handler"}), "lszq-sthjj", "511100", units)  # same id, other node
    assert not consult.may_act(frozenset({"handler"}), "lszq-jtj", "511102", units)
    assert consult.may_read_minutes(frozenset({"auditor"}), "", "511102", units)
    assert not consult.may_read_minutes(frozenset({"handler"}), "lszq-jtj", "511102", units)
    with pytest.raises(PermissionDenied):
        consult.check_may_act(frozenset({"handler"}), "lszq-jtj", "511102", units)
