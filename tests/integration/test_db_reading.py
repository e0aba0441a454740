"""Query RPCs read without taking SQLite's write lock (issue 17: the console's pages at 50 clients).

Every SQLite transaction began with BEGIN IMMEDIATE, so each page's query queued for the file's one
write lock behind the others and behind any writer, polling in the busy handler's sleeps. Inside
``reading()`` (the ``@read_only`` query RPCs) a transaction is a plain WAL read: it answers while a
writer holds the lock, and a write in it is refused instead of silently taking the lock.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, event, insert, select, text
from sqlalchemy.exc import OperationalError

from services.common import db
from services.common.db import make_engine, make_session_factory, read_only, read_transaction, reading

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String(20)))


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'reading.db'}"


def test_a_read_answers_while_a_writer_holds_the_lock(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url, service="reading")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(items).values(id=1, name="before"))
    sessions = make_session_factory(engine)
    writer = make_engine(sqlite_url, service="reading")
    held = writer.connect()
    held.execute(insert(items).values(id=2, name="uncommitted"))  # BEGIN IMMEDIATE: the write lock, held
    answers: list[list[str]] = []

    @read_only
    def query() -> None:
        with sessions() as session, session.begin():
            answers.append(list(session.scalars(select(items.c.name).order_by(items.c.id))))

    try:
        reader = threading.Thread(target=query, daemon=True)
        reader.start()
        reader.join(timeout=20)  # a locking read would wait for the writer (busy timeout 30 s)
        assert answers == [["before"]], "the read waited for the writer or saw its uncommitted row"
    finally:
        held.rollback()
        held.close()
        writer.dispose()
        engine.dispose()


def test_a_write_inside_reading_is_refused_and_the_connection_writes_again_after(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url, service="reading", pool_size=1, max_overflow=0)
    metadata.create_all(engine)
    sessions = make_session_factory(engine)
    try:
        with (
            reading(),
            pytest.raises(OperationalError, match="readonly"),
            sessions() as session,
            session.begin(),
        ):
            session.execute(insert(items).values(id=1, name="stray"))
        with sessions() as session, session.begin():  # the same pooled connection, writing again
            session.execute(insert(items).values(id=2, name="kept"))
        with engine.connect() as conn:
            assert list(conn.execute(select(items.c.name))) == [("kept",)]
    finally:
        engine.dispose()


def test_reading_reads_the_same_on_postgresql(postgres_url: str) -> None:
    engine = make_engine(postgres_url, service="reading", pool_size=1, max_overflow=0)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(items).values(id=1, name="row"))
        with reading(), engine.connect() as conn:
            assert conn.execute(select(items.c.name)).scalar_one() == "row"
    finally:
        engine.dispose()


def test_a_query_on_postgresql_reads_without_a_transaction_block_and_writes_stay_transactional(
    postgres_url: str,
) -> None:
    """Read COMMITTED gives each statement its own snapshot inside a transaction block or not, so a
    query's BEGIN and ROLLBACK were two round trips for nothing (a case page: 6 statements, 6 more
    round trips for them). The pooled connection must come back to writers transactional."""
    engine = make_engine(postgres_url, service="reading", pool_size=1, max_overflow=0)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(items).values(id=1, name="row"))
        with read_transaction(engine) as conn:
            assert conn.execute(select(items.c.name)).scalar_one() == "row"
            status = conn.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
            assert status == psycopg.pq.TransactionStatus.IDLE, "the read opened a transaction block"
        sessions = make_session_factory(engine)
        with reading(), sessions() as session, session.begin():  # a query through the ORM, as the board's
            assert session.scalars(select(items.c.name)).one() == "row"
            dbapi = session.connection().connection.dbapi_connection
            assert dbapi is not None and dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with pytest.raises(RuntimeError), engine.begin() as conn:  # the same pooled connection
            conn.execute(insert(items).values(id=2, name="rolled back"))
            raise RuntimeError("the unit of work failed")
        with pytest.raises(RuntimeError), sessions() as session, session.begin():
            session.execute(insert(items).values(id=3, name="rolled back too"))
            raise RuntimeError("the unit of work failed")
        with engine.connect() as conn:
            assert list(conn.execute(select(items.c.name).order_by(items.c.id))) == [("row",)]
    finally:
        engine.dispose()


def _backend_pid(engine: Any) -> int:
    with read_transaction(engine) as conn:
        return _backend_pid_on(conn)


def _terminate(admin_url: str, pid: int) -> None:
    """What a server restart does to a pooled connection: its backend ends, the client is not told."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    finally:
        admin.dispose()


def test_a_query_whose_connection_died_since_its_last_use_is_answered_on_a_new_one(
    postgres_url: str, postgres_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query does not ping a connection used moments ago (a round trip at every checkout); when that
    connection died meanwhile, the query is asked again on a fresh one, and the caller sees its answer."""
    engine = make_engine(postgres_url, service="reading", pool_size=1, max_overflow=0)
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        pings.append(1)
        return bool(ping(dbapi_conn))

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(items).values(id=1, name="row"))
        pings.clear()
        first = read_only(_backend_pid)(engine)
        assert read_only(_backend_pid)(engine) == first and pings == [], "a query pinged a fresh connection"
        _terminate(postgres_admin_url, first)

        retried: list[str] = []
        monkeypatch.setattr(db.log, "info", lambda message, *a, **k: retried.append(message))

        @read_only
        def query() -> tuple[str, int]:
            with read_transaction(engine) as conn:
                return conn.execute(select(items.c.name)).scalar_one(), _backend_pid_on(conn)

        name, answered_by = query()
        assert (name, retried) == ("row", ["a query's connection had died; asked again"])
        assert answered_by != first
    finally:
        engine.dispose()


def _backend_pid_on(conn: Any) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_writer_still_pings_and_a_dead_connection_is_replaced_before_it_writes(
    postgres_url: str, postgres_admin_url: str
) -> None:
    engine = make_engine(postgres_url, service="reading", pool_size=1, max_overflow=0)
    try:
        metadata.create_all(engine)
        first = read_only(_backend_pid)(engine)
        _terminate(postgres_admin_url, first)
        with engine.begin() as conn:  # not a query: pinged, found dead, replaced; the write is not lost
            conn.execute(insert(items).values(id=1, name="written"))
            assert _backend_pid_on(conn) != first
        with engine.connect() as conn:
            assert list(conn.execute(select(items.c.name))) == [("written",)]
    finally:
        engine.dispose()


def test_an_idle_connection_is_pinged_before_a_query(
    postgres_url: str, postgres_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(postgres_url, service="reading", pool_size=1, max_overflow=0)
    try:
        first = read_only(_backend_pid)(engine)
        _terminate(postgres_admin_url, first)
        monkeypatch.setattr(db, "FRESH_FOR_READS_S", 0.0)  # the connection counts as idle from now on
        retried: list[str] = []
        monkeypatch.setattr(db.log, "info", lambda message, *a, **k: retried.append(message))
        assert read_only(_backend_pid)(engine) != first
        assert retried == [], "the dead idle connection reached the query instead of failing its ping"
    finally:
        engine.dispose()


def test_connections_of_concurrent_threads_stay_open_for_the_next_calls(sqlite_url: str) -> None:
    """A pool smaller than the handler threads closed each connection beyond it on return, so every
    page past the fifth concurrent one opened SQLite afresh (issue 17)."""
    engine = make_engine(sqlite_url, service="reading")
    opened: list[int] = []
    event.listen(engine, "connect", lambda *_: opened.append(1))
    try:
        for _ in range(3):  # three rounds of 12 calls at once, as 12 busy handler threads would make
            held = [engine.connect() for _ in range(12)]
            for conn in held:
                conn.execute(select(1))
                conn.close()
        assert len(opened) == 12  # with the old pool of 5: 5 + 3 × 7 (and a 16th thread waited for one)
    finally:
        engine.dispose()
