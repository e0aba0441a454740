"""Two bookings of one resource whose slots overlap but start at different times can never both commit."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from services.common.calendar import ChineseWorkingCalendar
from services.common.crypto import cipher_from_env
from services.common.db import make_engine, make_session_factory
from services.common.errors import Conflict
from services.common.migrations import upgrade
from services.video.store import VideoStore


def video_store(database_url: str) -> tuple[Engine, VideoStore]:
    engine = make_engine(database_url, service="video")
    upgrade(engine, "video")
    store = VideoStore(
        make_session_factory(engine),
        cipher=cipher_from_env(),
        node="511102",
        calendar=ChineseWorkingCalendar(),
        clock=lambda: datetime(2026, 11, 23, tzinfo=UTC),
    )
    return engine, store


def test_overlapping_reservations_with_different_starts_cannot_both_commit(database_url: str) -> None:
    engine, store = video_store(database_url)
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


def test_two_sweeps_claiming_one_reminder_send_it_once_and_neither_fails(database_url: str) -> None:
    # The node's timer and an operator's sweep (or two replicas) find the same reminder due at once.
    engine, store = video_store(database_url)
    at = datetime(2026, 11, 23, tzinfo=UTC)
    first_claimed = threading.Event()
    release_first = threading.Event()
    outcomes: dict[str, bool] = {}

    def first() -> None:
        with store.begin() as uow:
            outcomes["first"] = uow.claim_reminder("con-1", "24h", at)
            first_claimed.set()
            assert release_first.wait(10)
            uow.commit()

    def second() -> None:
        with store.begin() as uow:
            outcomes["second"] = uow.claim_reminder("con-1", "24h", at)  # waits for the first on PostgreSQL
            uow.commit()

    one = threading.Thread(target=first)
    one.start()
    assert first_claimed.wait(10)
    two = threading.Thread(target=second)
    two.start()
    release_first.set()
    one.join(10)
    two.join(10)
    assert outcomes == {"first": True, "second": False}
    with store.begin() as uow:
        assert uow.reminders_sent(["con-1"]) == {("con-1", "24h")}
        assert uow.claim_reminder("con-1", "1h", at) is True  # another kind is another reminder
    engine.dispose()


def test_a_unit_of_work_may_not_commit_inside_a_shared_read(database_url: str) -> None:
    """GetCaseVideo's four lists read in one transaction (``reading_together``); a write there would
    ride on that read, so its commit is refused."""
    engine, store = video_store(database_url)
    try:
        with store.reading_together():
            with store.begin() as reader:
                assert reader.schedules() == []
            with pytest.raises(RuntimeError, match="reading_together"), store.begin() as writer:
                writer.commit()
    finally:
        engine.dispose()
