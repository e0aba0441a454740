"""video's note of a case's owner: kept when the epoch is newer, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from services.common.calendar import ChineseWorkingCalendar
from services.common.crypto import cipher_from_env
from services.common.db import make_engine, make_session_factory
from services.common.migrations import upgrade
from services.video.domain import CaseOwner
from services.video.models import CaseOwnerRow
from services.video.store import VideoStore


def test_an_owner_is_noted_once_and_raised_only_by_a_newer_epoch(database_url: str) -> None:
    engine = make_engine(database_url, service="video")
    upgrade(engine, "video")
    factory = make_session_factory(engine)
    try:

        def store() -> VideoStore:  # a fresh process's store: no owner cached
            return VideoStore(
                factory,
                cipher=cipher_from_env(),
                node="510000",
                calendar=ChineseWorkingCalendar(),
                clock=lambda: datetime(2026, 12, 6, tzinfo=UTC),
            )

        def known() -> tuple[str, int] | None:
            with factory() as session:
                row = session.scalar(select(CaseOwnerRow).where(CaseOwnerRow.case_id == "511102-20261206-000001"))
                return None if row is None else (row.owner_node, row.owner_epoch)

        store().note_owner("511102-20261206-000001", CaseOwner("511102", 1))
        assert known() == ("511102", 1)
        store().note_owner("511102-20261206-000001", CaseOwner("511100", 1))  # not newer: kept as it is
        assert known() == ("511102", 1)
        store().note_owner("511102-20261206-000001", CaseOwner("511100", 2))
        assert known() == ("511100", 2)
        store().note_owner("511102-20261206-000001", CaseOwner("511102", 1))
        assert known() == ("511100", 2)
    finally:
        engine.dispose()
