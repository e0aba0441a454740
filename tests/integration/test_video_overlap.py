"""Two bookings of one resource whose slots overlap but start at different times can never both commit."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from services.common.calendar import ChineseWorkingCalendar
from services.common.crypto import cipher_from_env
from services.common.db import make_engine, make_session_factory
from services.common.errors import Conflict
from services.common.migrations import upgrade
from services.video.store import VideoStore


def test_overlapping_reservations_with_different_starts_cannot_both_commit(database_url: str) -> None:
    engine = make_engine(database_url, service="video")
    upgrade(engine, "video")
    store = VideoStore(
        make_session_factory(engine),
        cipher=cipher_from_env(),
        node="511102",
        calendar=ChineseWorkingCalendar(),
        clock=lambda: datetime(2026, 11, 23, tzinfo=UTC),
    )
    barrier = threading.Barrier(2)

    def book(begin: datetime, end: datetime, owner: str, outcomes: list[str]) -> None:
        try:
            with store._tx() as session:
                barrier.wait(timeout=5)
                store._reserve(session, "room:511102-T1", begin, end, owner)
            outcomes.append("booked")
        except Conflict:
            outcomes.append("conflict")

    # A race is a matter of luck in one round; many rounds make an unserialised check lose.
    for round_ in range(40):
        start = datetime(2026, 11, 25, 1, 0, tzinfo=UTC) + timedelta(hours=2 * round_)
        # Two leaders' slot grids that share room T1: 9:00-9:30 and 9:15-9:45.
        intervals = [
            (start, start + timedelta(minutes=30)),
            (start + timedelta(minutes=15), start + timedelta(minutes=45)),
        ]
        outcomes: list[str] = []
        threads = [
            threading.Thread(target=book, args=(*iv, f"visit-{round_}-{i}", outcomes)) for i, iv in enumerate(intervals)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(outcomes) == ["booked", "conflict"], f"round {round_}"
    engine.dispose()
