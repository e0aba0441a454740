"""Batched consumption: a relay run's events reach each consumer in one transaction, with the
guarantees of one transaction per event (inbox with the change, a bad event isolated, order kept)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, MetaData, String, Table, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from services.common.bus import DeliveryFailed, InProcessBus
from services.common.db import make_engine, make_session_factory, transaction
from services.common.inbox import after_commit, before_commit, consume_once
from services.common.outbox import Relay, append_event, inbox_table, outbox_table
from services.common.service import BusEvent, Subscription


class Node:
    """One SQLite file holding an outbox, the consumers' inbox and the rows their changes write."""

    def __init__(self, path: Path) -> None:
        self.engine: Engine = make_engine(f"sqlite:///{path}", service="intake")
        metadata = MetaData()
        self.outbox = outbox_table(metadata)
        self.inbox = inbox_table(metadata)
        self.applied = Table(
            "applied", metadata, Column("consumer", String, nullable=False), Column("event_id", String, nullable=False)
        )
        metadata.create_all(self.engine)
        self.factory: sessionmaker[Session] = make_session_factory(self.engine)
        self.commits = 0
        event.listen(self.engine, "commit", self._count)
        self.bus = InProcessBus()
        self.relay = Relay(self.factory, self.outbox, self.bus.publish, publish_many=self.bus.publish_batch)

    def _count(self, _conn: object) -> None:
        self.commits += 1

    def append(self, count: int) -> list[str]:
        ids = [str(uuid.uuid4()) for _ in range(count)]
        with transaction(self.factory) as session:
            for event_id in ids:
                append_event(session, self.outbox, BusEvent(event_id, "intake", "case_registered", b"x"), None)
        return ids

    def consumer(self, name: str, poison: Callable[[str], bool] = lambda _id: False) -> None:
        def handle(e: BusEvent) -> None:
            def apply(session: Session) -> None:
                session.execute(self.applied.insert().values(consumer=name, event_id=e.event_id))
                if poison(e.event_id):
                    raise ValueError("cannot apply this event")

            consume_once(self.factory, self.inbox, name, e, apply)

        self.bus.subscribe(Subscription(name, "intake", "case_registered", handle))

    def applied_by(self, name: str) -> list[str]:
        with self.factory() as session:
            rows = session.execute(select(self.applied.c.event_id).where(self.applied.c.consumer == name))
            return [row.event_id for row in rows]

    def inbox_of(self, name: str) -> int:
        with self.factory() as session:
            return int(session.scalar(select(func.count()).where(self.inbox.c.consumer == name)) or 0)


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    made = Node(tmp_path / "intake.db")
    yield made
    made.relay.close()
    made.engine.dispose()


def test_a_relay_run_reaches_each_consumer_in_one_transaction(node: Node) -> None:
    node.consumer("routing")
    node.consumer("stats")
    ids = node.append(50)
    before = node.commits

    assert node.relay.run_once() == 50

    assert node.applied_by("routing") == ids and node.applied_by("stats") == ids
    assert node.inbox_of("routing") == 50 and node.inbox_of("stats") == 50
    # routing's batch, stats' batch, the relay's read and its marking: not one per event and consumer
    assert node.commits - before <= 4


def test_a_bad_event_stays_behind_alone_and_its_consumer_takes_nothing_after_it(node: Node) -> None:
    bad: set[str] = set()
    node.consumer("routing", poison=lambda event_id: event_id in bad)
    node.consumer("stats")
    ids = node.append(6)
    bad.add(ids[3])

    assert node.relay.run_once() == 3  # the events before the bad one are published
    assert isinstance(node.relay.last_error, DeliveryFailed)
    assert node.relay.last_error.event.event_id == ids[3]
    assert node.applied_by("routing") == ids[:3]  # in order: nothing after the bad event
    assert node.applied_by("stats") == ids  # another consumer is not held back

    assert node.relay.run_once() == 0  # still bad: retried, nothing doubled
    assert node.applied_by("stats") == ids

    bad.clear()
    assert node.relay.run_once() == 3
    assert node.relay.last_error is None
    assert node.applied_by("routing") == ids and node.applied_by("stats") == ids


def test_a_failure_a_handler_swallows_still_keeps_the_batch_from_committing_it(node: Node) -> None:
    ids = node.append(4)

    def handle(e: BusEvent) -> None:
        def apply(session: Session) -> None:
            session.execute(node.applied.insert().values(consumer="intake", event_id=e.event_id))
            if e.event_id == ids[1]:
                raise ValueError("half applied")

        with contextlib.suppress(ValueError):  # a handler that logs and moves on
            consume_once(node.factory, node.inbox, "intake", e, apply)

    node.bus.subscribe(Subscription("intake", "intake", "case_registered", handle))

    assert node.relay.run_once() == 4
    # As with one transaction per event: the swallowed event's half-change and inbox row are gone.
    assert node.applied_by("intake") == [ids[0], ids[2], ids[3]]
    assert node.inbox_of("intake") == 3


def test_after_commit_runs_once_a_batch_committed_and_sees_its_changes(node: Node) -> None:
    seen: list[int] = []

    def wake() -> None:
        seen.append(len(node.applied_by("routing")))

    def handle(e: BusEvent) -> None:
        def apply(session: Session) -> None:
            session.execute(node.applied.insert().values(consumer="routing", event_id=e.event_id))

        if consume_once(node.factory, node.inbox, "routing", e, apply):
            after_commit(wake)

    node.bus.subscribe(Subscription("routing", "intake", "case_registered", handle))
    node.append(5)

    assert node.relay.run_once() == 5
    assert seen == [5]


def test_a_duplicate_in_a_batch_is_skipped_by_the_inbox(node: Node) -> None:
    node.consumer("routing")
    ids = node.append(3)
    # routing already took the middle event (a delivery before a crash, say)
    with transaction(node.factory) as session:
        session.execute(node.inbox.insert().values(consumer="routing", event_id=ids[1], received_at=func.now()))

    assert node.relay.run_once() == 3
    assert node.applied_by("routing") == [ids[0], ids[2]]


def test_before_commit_writes_a_batch_once_inside_it_and_its_failure_keeps_nothing(node: Node) -> None:
    """What a consumer's events add up to is written once per batch, in the batch's transaction; if
    that write fails nothing of the batch is kept, and the events are delivered one by one."""
    written: list[int] = []
    fail_batches = [True]

    def handle(e: BusEvent) -> None:
        def apply(session: Session) -> None:
            gathered = session.info.setdefault("gathered", [])
            gathered.append(e.event_id)

            def write() -> None:
                ids = session.info.pop("gathered")
                if fail_batches[0] and len(ids) > 1:
                    raise ValueError("the batch's write failed")
                for event_id in ids:
                    session.execute(node.applied.insert().values(consumer="stats", event_id=event_id))
                written.append(len(ids))

            before_commit(session, "test", write)

        consume_once(node.factory, node.inbox, "stats", e, apply)

    node.bus.subscribe(Subscription("stats", "intake", "case_registered", handle))
    first = node.append(4)

    assert node.relay.run_once() == 4
    assert written == [1, 1, 1, 1]  # the batch rolled back, then each event in its own transaction
    assert node.applied_by("stats") == first and node.inbox_of("stats") == 4

    fail_batches[0] = False
    second = node.append(5)
    assert node.relay.run_once() == 5
    assert written[4:] == [5]  # once for the batch
    assert node.applied_by("stats") == first + second and node.inbox_of("stats") == 9
