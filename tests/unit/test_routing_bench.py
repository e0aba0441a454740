"""The routing benchmark's code path at a tiny size, and the calendar memo the sweep relies on."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from bench.routing.bench_routing import bench_sweep
from services.common.calendar import OfficialYear
from services.routing.provisional import ProvisionalCalendar


def test_bench_sweep_runs_every_stage_on_sqlite(tmp_path: Path) -> None:
    figures = bench_sweep(f"sqlite:///{tmp_path / 'bench.db'}", 25, 10, chase=True, trace=True)
    # bench_sweep asserts that every work order was warned, chased and then supervised.
    assert figures.warn_s > 0 and figures.chase_s is not None and figures.tracemalloc_mib is not None


def test_a_year_loaded_later_overrides_the_remembered_package_answer() -> None:
    calendar = ProvisionalCalendar()
    national_day = date(2026, 10, 1)
    assert calendar.is_workday(national_day) is False
    assert calendar.is_workday(national_day) is False  # now from the memo
    # An official file for 2026 that (hypothetically) makes 1 Oct a working day wins at once.
    calendar.official.add_year(OfficialYear(year=2026, holidays={}, workdays=frozenset({national_day}), source="test"))
    assert calendar.is_workday(national_day) is True
