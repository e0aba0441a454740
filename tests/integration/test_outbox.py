"""Outbox and inbox on the real databases: order, atomicity, idempotency, one relay at a time."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from prometheus_client import REGISTRY
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import make_engine, make_session_factory, transaction
from services.common.inbox import consume_once
from services.common.outbox import (
    Relay,
    append_event,
    create_outbox_tables,
    inbox_table,
    outbox_table,
)
from services.common.service import BusEvent
from tests.support.helpers import wait_until

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


@dataclass
class Db:
    engine: Engine
    factory: sessionmaker[Session]
    outbox: Table
    inbox: Table
    applied: Table  # what a consumer's apply() writes, one row per application


@pytest.fixture()
def db(database_url: str) -> Iterator[Db]:
    engine = make_engine(database_url, service="testsvc")
    metadata = MetaData()
    outbox = outbox_table(metadata)
    inbox = inbox_table(metadata)
    applied = Table(
        "applied",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),  # not unique on purpose: doubles must show
    )
    metadata.create_all(engine)
    yield Db(engine, make_session_factory(engine), outbox, inbox, applied)
    engine.dispose()


def event(n: int, event_type: str = "case_registered") -> BusEvent:
    # The number leads the id so tests can read the append order back from what was published.
    return BusEvent(
        event_id=f"{n:08d}-{uuid.uuid4().hex[:27]}",
        source="testsvc",
        event_type=event_type,
        body=f"{n}".encode(),
    )


def number(e: BusEvent) -> int:
    return int(e.event_id[:8])


def append(db: Db, *events: BusEvent, now: datetime | None = None) -> None:
    with transaction(db.factory) as session:
        for e in events:
            append_event(session, db.outbox, e, case_id=f"511102-20261122-{number(e):06d}", now=now)


def test_only_committed_events_are_published_in_append_order(db: Db) -> None:
    published: list[BusEvent] = []
    relay = Relay(db.factory, db.outbox, published.append, service="testsvc")
    append(db, event(1), event(2))
    with pytest.raises(RuntimeError), transaction(db.factory) as session:
        append_event(session, db.outbox, event(3), case_id=None)
        raise RuntimeError("the business change failed after the event was appended")
    append(db, event(4))

    assert relay.run_once() == 3
    assert [number(e) for e in published] == [1, 2, 4]
    assert published[0].body == b"1" and published[0].source == "testsvc"
    assert relay.run_once() == 0
    assert len(published) == 3


def test_publish_failure_stops_at_that_row_and_the_next_run_resumes_there(db: Db) -> None:
    published: list[int] = []
    fail_once = {3}

    def publish(e: BusEvent) -> None:
        if number(e) in fail_once:
            fail_once.discard(number(e))
            raise ConnectionError("broker went away")
        published.append(number(e))

    relay = Relay(db.factory, db.outbox, publish, service="testsvc")
    append(db, *(event(n) for n in range(1, 6)))

    assert relay.run_once() == 2
    assert isinstance(relay.last_error, ConnectionError)
    assert relay.backlog()[0] == 3
    assert relay.run_once() == 3
    assert relay.last_error is None
    assert published == [1, 2, 3, 4, 5]


def test_batches_continue_in_order(db: Db) -> None:
    published: list[int] = []
    relay = Relay(db.factory, db.outbox, lambda e: published.append(number(e)), batch_size=3, service="testsvc")
    append(db, *(event(n) for n in range(1, 8)))
    assert [relay.run_once() for _ in range(4)] == [3, 3, 1, 0]
    assert published == list(range(1, 8))


def applied_count(db: Db, e: BusEvent) -> int:
    with db.factory() as session:
        return int(session.scalar(select(func.count()).where(db.applied.c.event_id == e.event_id)) or 0)


def test_consume_once_applies_a_duplicate_delivery_once(db: Db) -> None:
    e = event(1)

    def apply(session: Session) -> None:
        session.execute(db.applied.insert().values(event_id=e.event_id))

    assert consume_once(db.factory, db.inbox, "stats", e, apply) is True
    assert consume_once(db.factory, db.inbox, "stats", e, apply) is False
    assert applied_count(db, e) == 1
    # Another consumer of the same event has its own inbox entry.
    assert consume_once(db.factory, db.inbox, "routing", e, apply) is True
    assert applied_count(db, e) == 2


def test_a_failing_apply_leaves_no_inbox_row_so_the_retry_applies(db: Db) -> None:
    e = event(1)
    attempts = []

    def apply(session: Session) -> None:
        attempts.append(1)
        session.execute(db.applied.insert().values(event_id=e.event_id))
        if len(attempts) == 1:
            raise TimeoutError("lock timeout in the consumer's own tables")

    with pytest.raises(TimeoutError):
        consume_once(db.factory, db.inbox, "stats", e, apply)
    assert applied_count(db, e) == 0
    assert consume_once(db.factory, db.inbox, "stats", e, apply) is True
    assert consume_once(db.factory, db.inbox, "stats", e, apply) is False
    assert applied_count(db, e) == 1
    assert len(attempts) == 2


def test_backlog_counts_unpublished_rows_and_ages_the_oldest(db: Db) -> None:
    now = [T0 + timedelta(seconds=60)]
    relay = Relay(db.factory, db.outbox, lambda e: None, service="backlogsvc", clock=lambda: now[0])
    assert relay.backlog() == (0, 0.0)
    append(db, event(1), now=T0)
    append(db, event(2), now=T0 + timedelta(seconds=10))

    count, age = relay.backlog()
    assert count == 2
    assert age == pytest.approx(60.0)
    assert REGISTRY.get_sample_value("lianxin_outbox_backlog", {"service": "backlogsvc"}) == 2
    assert REGISTRY.get_sample_value("lianxin_outbox_oldest_age_seconds", {"service": "backlogsvc"}) == 60

    before = REGISTRY.get_sample_value("lianxin_outbox_published_total", {"service": "backlogsvc"}) or 0
    assert relay.run_once() == 2
    assert REGISTRY.get_sample_value("lianxin_outbox_published_total", {"service": "backlogsvc"}) == before + 2
    assert relay.backlog() == (0, 0.0)


def test_prune_deletes_only_old_published_rows_and_positions_are_never_reused(db: Db) -> None:
    now = [T0]
    relay = Relay(db.factory, db.outbox, lambda e: None, service="testsvc", clock=lambda: now[0])
    append(db, event(1), event(2))
    assert relay.run_once() == 2
    now[0] = T0 + timedelta(days=3)
    append(db, event(3))  # unpublished: never pruned

    assert relay.prune(timedelta(days=7)) == 0
    assert relay.prune(timedelta(days=2)) == 2
    append(db, event(4))
    with db.factory() as session:
        positions = {
            row.event_id: row.position for row in session.execute(select(db.outbox.c.event_id, db.outbox.c.position))
        }
    by_number = {int(k[:8]): v for k, v in positions.items()}
    assert set(by_number) == {3, 4}
    assert by_number[3] == 3 and by_number[4] == 4  # the pruned 1 and 2 are not handed out again


def test_create_outbox_tables_inside_a_migration_matches_the_metadata(database_url: str) -> None:
    engine = make_engine(database_url, service="migsvc")
    try:
        with engine.begin() as conn:
            create_outbox_tables(Operations(MigrationContext.configure(conn)))
        inspector = inspect(engine)
        assert {"outbox", "inbox"} <= set(inspector.get_table_names())
        assert {c["name"] for c in inspector.get_columns("outbox")} == {
            "position",
            "event_id",
            "source",
            "event_type",
            "case_id",
            "body",
            "created_at",
            "published_at",
        }
        assert inspector.get_pk_constraint("inbox")["constrained_columns"] == ["consumer", "event_id"]
        factory = make_session_factory(engine)
        table = outbox_table(MetaData())
        with transaction(factory) as session:
            append_event(session, table, event(1), case_id=None)
        published: list[BusEvent] = []
        assert Relay(factory, table, published.append).run_once() == 1
    finally:
        engine.dispose()


def test_concurrent_relays_never_publish_a_row_twice_and_keep_order(db: Db) -> None:
    total = 150
    lock = threading.Lock()
    everything: list[int] = []
    per_relay: dict[str, list[int]] = {"a": [], "b": []}
    stop = threading.Event()
    errors: list[BaseException] = []

    def publisher(name: str) -> Callable[[BusEvent], None]:
        def publish(e: BusEvent) -> None:
            with lock:
                everything.append(number(e))
                per_relay[name].append(number(e))

        return publish

    def relay_loop(name: str) -> None:
        relay = Relay(db.factory, db.outbox, publisher(name), batch_size=7, service="testsvc")
        try:
            while not stop.is_set():
                relay.run_once()
        except BaseException as exc:
            errors.append(exc)

    def appender() -> None:
        try:
            for n in range(1, total + 1):
                append(db, event(n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=relay_loop, args=(name,)) for name in per_relay]
    threads.append(threading.Thread(target=appender))
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(everything) >= total or errors, 60, "every appended event to be published")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors
    assert sorted(everything) == list(range(1, total + 1)), "lost or doubled events"
    assert everything == sorted(everything), "the relays interleaved out of order"
    for name, seen in per_relay.items():
        assert seen == sorted(seen), f"relay {name} published out of order"


def test_on_postgres_a_later_append_cannot_commit_before_an_earlier_one(postgres_url: str) -> None:
    """Positions are taken in commit order, so the relay never sees position n+1 while n may still commit."""
    engine = make_engine(postgres_url, service="ordersvc")
    metadata = MetaData()
    outbox = outbox_table(metadata)
    metadata.create_all(engine)
    factory = make_session_factory(engine)
    published: list[int] = []
    relay = Relay(factory, outbox, lambda e: published.append(number(e)), service="ordersvc")
    first_appended, release_first, second_done = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with transaction(factory) as session:
            append_event(session, outbox, event(1), case_id=None)
            first_appended.set()
            release_first.wait(30)

    def second() -> None:
        first_appended.wait(30)
        with transaction(factory) as session:
            append_event(session, outbox, event(2), case_id=None)
        second_done.set()

    def second_is_waiting_for_the_append_lock() -> bool:
        with engine.connect() as conn:
            waiting = conn.scalar(
                text(
                    "select count(*) from pg_catalog.pg_locks where locktype = 'advisory' and not granted"
                    " and database = (select oid from pg_database where datname = current_database())"
                )
            )
        return bool(waiting)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    try:
        wait_until(
            lambda: second_done.is_set() or second_is_waiting_for_the_append_lock(),
            10,
            "the second append to finish or wait",
        )
        assert not second_done.is_set(), "a later append committed while an earlier one was open"
        assert relay.run_once() == 0
    finally:
        release_first.set()
        for thread in threads:
            thread.join(30)
    assert relay.run_once() == 2
    assert published == [1, 2]
    engine.dispose()


def test_on_postgres_appends_of_different_cases_do_not_wait_for_each_other(postgres_url: str) -> None:
    """Per-case order is what consumers need; other cases' submits must not queue behind an open one."""
    engine = make_engine(postgres_url, service="ordersvc")
    metadata = MetaData()
    outbox = outbox_table(metadata)
    metadata.create_all(engine)
    factory = make_session_factory(engine)
    published: list[int] = []
    relay = Relay(factory, outbox, lambda e: published.append(number(e)), service="ordersvc")
    first_appended, release_first = threading.Event(), threading.Event()

    def first() -> None:
        with transaction(factory) as session:
            append_event(session, outbox, event(1), case_id="case-A")
            first_appended.set()
            release_first.wait(30)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_appended.wait(10)
        with transaction(factory) as session:  # would block until release_first with one global lock
            append_event(session, outbox, event(2), case_id="case-B")
        assert relay.run_once() == 1
        assert published == [2]
    finally:
        release_first.set()
        thread.join(30)
    # The late-committing lower position is published on the next run, not skipped.
    assert relay.run_once() == 1
    assert published == [2, 1]
    engine.dispose()
