"""Exchange's store on both backends: the link cursors' one-statement upserts, a child's push stored in
bounded transactions, and (SQLite) the read-only use cases never waiting for the database's write lock.

Under a backlog two cities' exchange databases answered pushes "database is locked" after SQLite's
30 s busy timeout: every read of a link (its pending batch, its cursor, a child's PullDown) took the
write lock too, and queued with the pushes for it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lianxin.events.v1 import events_pb2
from sqlalchemy.exc import DBAPIError

from services.common.db import make_engine, make_session_factory
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.exchange.bulk import AsSet
from services.exchange.handlers import RECEIVE_CHUNK
from services.exchange.models import case_epoch
from services.exchange.ports import ENVELOPE, Item
from services.exchange.store import ExchangeStore, SqlExchangeUnitOfWork

CITY, COUNTY = "511100", "511102"
START = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def _store(url: str, clock: Clock) -> ExchangeStore:
    engine = make_engine(url, service="exchange")
    upgrade(engine, "exchange")
    return ExchangeStore(make_session_factory(engine), node=CITY, regions=RegionTree.load(), clock=clock)


def _envelope(n: int, version: int = 1) -> bytes:
    case_id = f"{COUNTY}-20261206-{n:06d}"
    return events_pb2.EventEnvelope(
        event_id=f"{case_id}#{version}",
        case_id=case_id,
        version=version,
        owner_node=COUNTY,
        owner_epoch=1,
        origin_node=COUNTY,
        case_registered=events_pb2.CaseRegistered(),
    ).SerializeToString()


def _pushed(count: int) -> list[Item]:
    return [Item(n, ENVELOPE, _envelope(n), 1) for n in range(1, count + 1)]


def test_a_cursor_never_moves_back_keeps_its_token_and_notes_the_contact(database_url: str) -> None:
    clock = Clock()
    store = _store(database_url, clock)
    assert store.save_cursor("510000", "up", position=5) == 5
    clock.now = START + timedelta(seconds=1)
    assert store.save_cursor("510000", "up", position=3) == 5  # a late acknowledgement
    assert store.save_cursor("national", "national_down", token="t1") == 0
    assert store.save_cursor("national", "national_down") == 0  # only the contact: the token stays
    saved = store.cursor("510000", "up")
    assert (saved.position, saved.token, saved.last_contact) == (5, "", START + timedelta(seconds=1))
    assert store.cursor("national", "national_down").token == "t1"
    assert store.save_cursor("national", "national_down", position=2, token="t2") == 2
    assert (store.cursor("national", "national_down").position, store.cursor("national", "national_down").token) == (
        2,
        "t2",
    )


def test_a_large_push_is_stored_once_in_bounded_transactions_and_a_resend_is_skipped(database_url: str) -> None:
    store = _store(database_url, Clock())
    items = _pushed(RECEIVE_CHUNK * 2 + 50)
    assert store.receive_push(COUNTY, items) == (len(items), [])
    assert store.receive_push(COUNTY, items) == (len(items), [])  # a resend after a lost answer
    assert store.receive_push(COUNTY, items[-10:]) == (len(items), [])
    assert store.cursor(COUNTY, "child_up").position == len(items)
    pending = store.pending_up(0, len(items))
    assert [item.position for item in pending] == list(range(1, len(items) + 1))  # on our up-log, once, in order
    assert store.head_up() == len(items)


def _holding_the_write_lock(path: Path, reads: list[Callable[[], Any]]) -> list[str]:
    """Run ``reads`` in a thread while another connection holds the database's write lock; what finished."""
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    locker.execute("UPDATE link_cursor SET position = position")
    done: list[str] = []

    def run() -> None:
        for read in reads:
            read()
            done.append(getattr(read, "__name__", "read"))

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        thread.join(timeout=10.0)
        return list(done)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        thread.join(timeout=60.0)


def test_a_links_reads_do_not_wait_for_sqlites_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "exchange.db"
    store = _store(f"sqlite:///{path}", Clock())
    store.receive_push(COUNTY, _pushed(3))

    def pending_up() -> None:
        assert len(store.pending_up(0, 10)) == 3

    def cursor() -> None:
        assert store.cursor(COUNTY, "child_up").position == 3

    def pull_down() -> None:
        assert store.pull_down(COUNTY, 0, 10) == ([], 0)

    def backlogs() -> None:
        assert store.up_backlog(0)[0] == 3 and store.head_up() == 3 and store.down_backlog(COUNTY, 0)[0] == 0

    def cursors() -> None:
        assert store.cursors() and store.known_owner("nothing") is None

    reads: list[Callable[[], Any]] = [pending_up, cursor, pull_down, backlogs, cursors]
    assert _holding_the_write_lock(path, reads) == [r.__name__ for r in reads]


def test_a_push_is_judged_against_what_the_node_holds_duplicates_and_gaps(database_url: str) -> None:
    # load_ledgers asks its four questions (stored ids, last sequence, discarded places, epochs) in one
    # statement: the same judgements on both backends.
    store = _store(database_url, Clock())
    first = _pushed(1)[0]
    assert store.receive_push(COUNTY, [first]) == (1, [])
    # The same event again under a new position (the child's log rebuilt): a duplicate, stored once.
    assert store.receive_push(COUNTY, [Item(2, ENVELOPE, first.body, 1)]) == (2, [])
    third = _envelope(1, version=3)
    acked, rejected = store.receive_push(COUNTY, [Item(3, ENVELOPE, third, 3)])  # sequence 2 never came
    assert acked == 3 and [r.position for r in rejected] == [3]
    assert [item.position for item in store.pending_up(0, 10)] == [1]


def test_a_driver_error_of_a_raw_statement_is_raised_as_sqlalchemy_s_without_its_parameters(database_url: str) -> None:
    # The push's statements go to the DB-API cursor; the servicer's error mapping (a locked or lost
    # database answers UNAVAILABLE) and the logs must see what exec_driver_sql raised, no bodies in it.
    engine = make_engine(database_url, service="exchange")
    upgrade(engine, "exchange")
    uow = SqlExchangeUnitOfWork(make_session_factory(engine), node=CITY, clock=Clock())
    with uow, pytest.raises(DBAPIError) as raised:
        uow.bulk().rows("SELECT event_id FROM replica WHERE no_such_column = ?", "secret-body")
    assert "secret-body" not in str(raised.value)
    assert raised.value.orig is not None
    engine.dispose()


def test_an_in_list_matched_as_a_set_finds_what_the_list_finds(database_url: str) -> None:
    # The known epochs of a push's cases are looked up as a set on PostgreSQL (bulk.AsSet: hashed or
    # probed, never each row against the whole array); the rows must be exactly the IN list's.
    engine = make_engine(database_url, service="exchange")
    upgrade(engine, "exchange")
    uow = SqlExchangeUnitOfWork(make_session_factory(engine), node=CITY, clock=Clock())
    with uow:
        bulk = uow.bulk()
        bulk.insert(case_epoch, ["case_id", "owner_epoch", "owner_node"], [(f"c{i}", i, COUNTY) for i in range(600)])
        wanted = [f"c{i}" for i in range(0, 1200, 2)] + ["c4", ""]  # held, not held, repeated, empty
        sql = "SELECT case_id, owner_epoch FROM case_epoch WHERE case_id {} ORDER BY case_id"
        as_set = bulk.rows(sql, lists=[AsSet(wanted)])
        assert as_set == bulk.rows(sql, lists=[wanted])
        assert len(as_set) == 300 and [tuple(row) for row in as_set[:2]] == [("c0", 0), ("c10", 10)]
    engine.dispose()
