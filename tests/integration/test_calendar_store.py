"""The node's calendar database: opened by every process of a node at once, and it keeps what was loaded."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from services.common.calendar import load_calendar_file
from services.common.calendar_store import CalendarStore

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
