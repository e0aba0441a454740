"""The node's calendar database: opened by every process of a node at once, and it keeps what was loaded."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from pathlib import Path

from services.common.calendar import load_calendar_file
from services.common.calendar_store import CalendarStore, NodeCalendar

FIXTURE_2027 = Path(__file__).resolve().parents[1] / "fixtures" / "calendar_2027_fixture.yaml"


def test_processes_opening_the_calendar_database_at_the_same_moment_all_succeed(database_url: str) -> None:
    # The routing, video and stats apis and workers of a node all open it at start; on PostgreSQL
    # concurrent CREATE SCHEMA / CREATE TABLE used to fail all but one of them.
    opened: list[CalendarStore] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def open_store() -> None:
        start.wait()
        try:
            opened.append(CalendarStore.open(database_url))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        (year,) = load_calendar_file(FIXTURE_2027)
        at = datetime(2026, 12, 8, 2, tzinfo=UTC)
        opened[0].save([year], file_name="calendar_2027.yaml", loaded_by="admin-1", at=at)
        (stored,) = opened[-1].years()
        assert (stored.year, stored.file_name, stored.loaded_by) == (year, "calendar_2027.yaml", "admin-1")
        assert stored.loaded_at.astimezone(UTC) == at
    finally:
        for store in opened:
            store.engine.dispose()


def test_a_year_loaded_through_one_process_reaches_another_process_of_the_node(database_url: str) -> None:
    # Production: routing-api takes the LoadCalendar call; the routing worker's sweep and the video
    # api count on their own NodeCalendar over the same calendar database.
    api = NodeCalendar(store=CalendarStore.open(database_url))
    worker = NodeCalendar(store=CalendarStore.open(database_url), refresh_interval_s=0.0)
    try:
        assert not worker.knows_year(2027)
        years = load_calendar_file(FIXTURE_2027)
        api.load_years(years, file_name="calendar_2027.yaml", loaded_by="admin-1", at=datetime.now(UTC))
        assert api.knows_year(2027) and api.origin(2027) == "loaded"
        assert worker.knows_year(2027)  # read from the database at its next look
        assert worker.origin(2027) == "loaded" and not worker.is_workday(date(2027, 2, 9))  # the fixture's 春节
        assert worker.covered_until(date(2026, 12, 8)) == date(2027, 12, 31)
    finally:
        api.close()
        worker.close()
