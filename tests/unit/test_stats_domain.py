"""Statistical months, percentiles and rankings of the stats service, as plain rules."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest

from services.common.errors import InvalidArgument
from services.stats.domain import (
    DEFINITIONS,
    DEFINITIONS_ZH,
    Aggregates,
    StatsConfig,
    month_bounds,
    p90,
    rank,
    stat_month_of_date,
    year_months,
)


def test_calendar_months_by_default() -> None:
    assert stat_month_of_date(date(2026, 10, 1), 1) == "2026-10"
    assert stat_month_of_date(date(2026, 10, 31), 1) == "2026-10"
    start, end = month_bounds("2026-10", StatsConfig())
    # Shanghai midnight is 16:00 UTC the day before.
    assert start == datetime(2026, 9, 30, 16, tzinfo=UTC)
    assert end == datetime(2026, 10, 31, 16, tzinfo=UTC)


def test_statistical_month_from_21st_to_20th_is_named_after_the_month_it_ends_in() -> None:
    assert stat_month_of_date(date(2026, 10, 20), 21) == "2026-10"
    assert stat_month_of_date(date(2026, 10, 21), 21) == "2026-11"
    assert stat_month_of_date(date(2026, 11, 20), 21) == "2026-11"
    assert stat_month_of_date(date(2026, 12, 21), 21) == "2027-01"  # the year turns with the month
    start, end = month_bounds("2026-11", StatsConfig(month_start_day=21))
    assert start == datetime(2026, 10, 20, 16, tzinfo=UTC)  # 2026-10-21 00:00 Shanghai
    assert end == datetime(2026, 11, 20, 16, tzinfo=UTC)  # 2026-11-21 00:00 Shanghai (exclusive)
    start, _ = month_bounds("2027-01", StatsConfig(month_start_day=21))
    assert start == datetime(2026, 12, 20, 16, tzinfo=UTC)


def test_bad_months_and_settings_are_refused_with_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        month_bounds("2026-13", StatsConfig())
    assert caught.value.field == "month"
    with pytest.raises(InvalidArgument):
        StatsConfig(month_start_day=29)
    with pytest.raises(InvalidArgument):
        year_months("20x6")
    assert year_months("2026")[0] == "2026-01" and year_months("2026")[-1] == "2026-12"


def test_p90_is_the_nearest_rank() -> None:
    assert p90({4: 1, 5: 1, 16: 1}) == 16.0
    assert p90({1: 9, 30: 1}) == 1.0  # 9 of 10 at 1 day: the 9th value
    assert p90({1: 8, 30: 2}) == 30.0
    assert p90({}) == 0.0


def _completion(on_time: int, cases: int) -> Aggregates:
    return Aggregates(received=cases, completion_due=cases, closed=cases, closed_on_time=on_time)


def test_ranking_leaves_out_small_units_and_reports_the_change() -> None:
    current = {"u1": _completion(9, 10), "u2": _completion(5, 10), "tiny": _completion(0, 2)}
    previous = {"u1": _completion(8, 10), "u2": _completion(6, 10)}
    rows = rank("on_time_completion_rate", current, previous, min_cases=5)
    assert [(r.key, r.rank) for r in rows] == [("u1", 1), ("u2", 2), ("tiny", 0)]
    assert rows[0].change_vs_previous == pytest.approx(0.1)
    assert rows[1].change_vs_previous == pytest.approx(-0.1)
    assert not any(r.flagged for r in rows)  # two ranked rows have no "bottom two"


def test_unit_in_the_bottom_two_for_two_months_running_is_flagged() -> None:
    before = {f"u{i}": _completion(on_time, 10) for i, on_time in enumerate([9, 8, 7, 3, 2], start=1)}
    now = {f"u{i}": _completion(on_time, 10) for i, on_time in enumerate([9, 8, 2, 6, 1], start=1)}
    # u6 is the worst but under the minimum: it is not ranked, so it does not shelter the others.
    now["u6"] = _completion(0, 3)
    rows = {r.key: r for r in rank("on_time_completion_rate", now, before, min_cases=5)}
    assert rows["u5"].rank == 5 and rows["u5"].flagged  # bottom two in both months
    assert rows["u3"].rank == 4 and not rows["u3"].flagged  # bottom two only now
    assert not rows["u4"].flagged  # bottom two only before
    assert rows["u6"].rank == 0 and not rows["u6"].flagged


def test_lower_is_better_metrics_rank_ascending() -> None:
    current = {"a": Aggregates(received=10, overdue=1), "b": Aggregates(received=10, overdue=4)}
    rows = rank("overdue", current, {}, min_cases=1)
    assert [r.key for r in rows] == ["a", "b"]


def test_every_metric_is_defined_in_chinese_under_the_same_name() -> None:
    assert DEFINITIONS_ZH.keys() == DEFINITIONS.keys()
    for name, english in DEFINITIONS.items():
        label = english.split(":", 1)[0]
        assert DEFINITIONS_ZH[name].startswith(f"{label}："), name
        # Chinese for the public: no English words (the label's "P90" aside).
        assert not re.search(r"[A-Za-z]{2,}", DEFINITIONS_ZH[name].removeprefix(label)), name
