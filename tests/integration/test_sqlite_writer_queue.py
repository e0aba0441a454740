"""One writer at a time per SQLite file, waiting in line in the process instead of in SQLite's busy
handler (services/common/db.py ``WriterQueue``): the turn passes on as soon as a writer commits, rolls
back or closes, every engine of the file shares it, and no write is lost. Real SQLite files."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from services.common.db import make_engine, reading, writer_queue
from tests.support.helpers import wait_until


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'service.db'}"


@pytest.fixture
def engine(url: str) -> Engine:
    made = make_engine(url, service="test")
    with made.begin() as conn:
        conn.execute(text("CREATE TABLE item (n INTEGER)"))
    return made


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM item")).scalar_one())


def test_the_turn_is_handed_back_after_commit_rollback_and_close(url: str, engine: Engine) -> None:
    queue = writer_queue(url)
    assert queue is not None
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO item VALUES (1)"))
        assert queue.busy()
    assert not queue.busy()

    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(text("INSERT INTO item VALUES (2)"))
        raise RuntimeError("the handler failed")
    assert not queue.busy() and count(engine) == 1

    conn = engine.connect()
    conn.begin()
    conn.execute(text("INSERT INTO item VALUES (3)"))
    conn.invalidate()  # the connection is dropped mid-transaction: SQLite rolls back, the turn passes on
    conn.close()
    assert not queue.busy() and count(engine) == 1

    # Reads take no turn: they never wait for a writer.
    with reading(), engine.begin() as read:
        assert read.execute(text("SELECT count(*) FROM item")).scalar_one() == 1
        assert not queue.busy()


def test_a_waiting_writer_goes_in_when_the_one_before_commits(url: str, engine: Engine) -> None:
    holding, release, second_done = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO item VALUES (1)"))
            holding.set()
            release.wait(10)

    def second() -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO item VALUES (2)"))
        second_done.set()

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert holding.wait(10)
    threads.append(threading.Thread(target=second))
    threads[1].start()
    assert not second_done.is_set()  # it cannot have written: the first holds the file
    release.set()
    wait_until(second_done.is_set, 10, "the second writer after the first committed")
    for thread in threads:
        thread.join(10)
    assert count(engine) == 2


def test_every_engine_of_a_file_shares_its_queue_and_no_write_is_lost(url: str, engine: Engine, tmp_path: Path) -> None:
    other = make_engine(f"sqlite:///{tmp_path}/../{tmp_path.name}/service.db", service="test")
    assert writer_queue(url) is writer_queue(str(other.url))
    assert writer_queue("sqlite://") is None and writer_queue("postgresql://x/y") is None

    def write(target: Engine, start: int) -> None:
        for n in range(start, start + 50):
            with target.begin() as conn:
                conn.execute(text("INSERT INTO item VALUES (:n)"), {"n": n})

    threads = [threading.Thread(target=write, args=(engine if i % 2 else other, i * 50)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert count(engine) == 400
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(DISTINCT n) FROM item")).scalar_one() == 400
    assert not writer_queue(url).busy()  # type: ignore[union-attr]


def test_a_begin_refused_by_sqlite_is_sqlalchemys_error_and_hands_the_turn_back(url: str, engine: Engine) -> None:
    """BEGIN runs as the dialect's ``do_begin`` on the DB-API connection (not through exec_driver_sql):
    a lock held by another process still fails as SQLAlchemy's OperationalError (UNAVAILABLE to a
    caller), the writer's turn passes on, and the next transaction begins normally."""
    queue = writer_queue(url)
    assert queue is not None
    event.listen(engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA busy_timeout=50"))
    engine.dispose()  # connections made from now on wait 50 ms, not 30 s, for the lock
    other_process = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="database is locked"), engine.begin() as conn:
            conn.execute(text("INSERT INTO item VALUES (1)"))
        assert not queue.busy()
        # A read begins deferred and with query_only: it neither waits for the lock nor can write.
        with reading(), engine.begin() as read:
            assert read.execute(text("SELECT count(*) FROM item")).scalar_one() == 0
            assert read.exec_driver_sql("PRAGMA query_only").scalar_one() == 1
            with pytest.raises(OperationalError, match="readonly"):
                read.execute(text("INSERT INTO item VALUES (2)"))
    finally:
        other_process.execute("ROLLBACK")
        other_process.close()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO item VALUES (3)"))
        assert conn.exec_driver_sql("PRAGMA query_only").scalar_one() == 0
    assert count(engine) == 1 and not queue.busy()


def test_a_sqlite_engine_carries_no_connection_event(engine: Engine) -> None:
    """BEGIN is the dialect's ``do_begin``, not a "begin" listener: with no connection event on the
    engine SQLAlchemy skips its event dispatch around every statement (issue 17: a case page's three
    read handlers took 25-40 % less CPU). A listener added later must be a measured choice."""
    # The engine's own flag, not the class's: a test that listens on the Engine class (the query plan
    # recorder) leaves ``Engine._has_events`` set for every later engine after removing its listener.
    assert vars(engine).get("_has_events", False) is False
    connection_events = ["begin", "commit", "rollback", "engine_connect"]
    connection_events += ["before_cursor_execute", "after_cursor_execute"]
    assert [name for name in connection_events if getattr(engine.dispatch, name)] == []
    seen: list[str] = []
    listener = event.listens_for(engine, "before_cursor_execute")(lambda *args: seen.append(args[2]))
    try:
        with reading(), engine.begin() as read:  # a listener added on purpose (a test's recorder) still sees statements
            read.execute(text("SELECT count(*) FROM item"))
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert seen == ["SELECT count(*) FROM item"]


def test_a_second_write_transaction_of_the_thread_holding_the_turn_fails_at_once(engine: Engine) -> None:
    """A thread that opens a write transaction on a file while its own other one holds the turn can only
    wait for itself (a consumer batch's transaction and a handler's own, say): it is refused at once,
    not after the queue's 30 s and SQLite's busy handler's 30 s."""
    with engine.begin() as holder:
        holder.execute(text("INSERT INTO item VALUES (1)"))
        started = time.monotonic()
        with pytest.raises(OperationalError, match="already has a write transaction"), engine.begin() as second:
            second.execute(text("INSERT INTO item VALUES (2)"))
        assert time.monotonic() - started < 5
    assert count(engine) == 1
    # Another thread still waits for its turn and goes in after the holder commits.
    with engine.begin() as holder:
        holder.execute(text("INSERT INTO item VALUES (3)"))
        other = threading.Thread(target=lambda: _insert(engine, 4))
        other.start()
        wait_until(lambda: other.is_alive(), 5, "the other writer waiting")
    other.join(10)
    assert not other.is_alive() and count(engine) == 3


def _insert(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO item VALUES ({n})"))
