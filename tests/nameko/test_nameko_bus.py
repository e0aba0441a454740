"""Events through real RabbitMQ with nameko: outbox relay timer → dispatcher → handler → inbox, once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nameko.runners import ServiceRunner
from nameko.standalone.events import event_dispatcher
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import make_engine, make_session_factory, transaction
from services.common.inbox import consume_once
from services.common.nameko_worker import build_worker_class, event_payload, nameko_config
from services.common.outbox import append_event, inbox_table, outbox_table
from services.common.service import BusEvent, ServiceParts, Subscription
from services.common.settings import Settings
from tests.support.helpers import wait_until

EVENT_TYPE = "thing_happened"


def make_event(n: int) -> BusEvent:
    return BusEvent(
        event_id=f"{n:08d}-0000-4000-8000-000000000000",
        source="producer",
        event_type=EVENT_TYPE,
        body=b"%d" % n,
    )


@dataclass
class Producer:
    engine: Engine
    factory: sessionmaker[Session]
    outbox: Table

    def append(self, *numbers: int) -> None:
        for n in numbers:  # one business transaction per event, as the api does
            with transaction(self.factory) as session:
                append_event(session, self.outbox, make_event(n), case_id=None)

    def parts(self) -> ServiceParts:
        return ServiceParts(name="producer", servicers=[], session_factory=self.factory, outbox=self.outbox)


@dataclass
class Consumer:
    engine: Engine
    factory: sessionmaker[Session]
    inbox: Table
    applied: Table
    deliveries: Counter[str] = field(default_factory=Counter)
    fail_first: set[str] = field(default_factory=set)

    def handle(self, event: BusEvent) -> None:
        """The shared handler function: idempotent through the inbox."""
        self.deliveries[event.event_id] += 1
        if event.event_id in self.fail_first:
            self.fail_first.discard(event.event_id)
            raise ConnectionError("consumer database restarting")

        def apply(session: Session) -> None:
            session.execute(self.applied.insert().values(event_id=event.event_id))

        consume_once(self.factory, self.inbox, "consumer", event, apply)

    def parts(self) -> ServiceParts:
        sub = Subscription(consumer="consumer", source="producer", event_type=EVENT_TYPE, handle=self.handle)
        return ServiceParts(name="consumer", servicers=[], subscriptions=[sub])

    def applied_counts(self) -> Counter[str]:
        with self.factory() as session:
            return Counter(session.scalars(select(self.applied.c.event_id)).all())


@pytest.fixture(params=["sqlite", "postgres"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'producer.db'}", f"sqlite:///{tmp_path / 'consumer.db'}"
    url = str(request.getfixturevalue("postgres_url"))
    return url, url  # one database, a schema per service


@pytest.fixture()
def producer(urls: tuple[str, str]) -> Iterator[Producer]:
    engine = make_engine(urls[0], service="producer")
    metadata = MetaData()
    outbox = outbox_table(metadata)
    metadata.create_all(engine)
    yield Producer(engine, make_session_factory(engine), outbox)
    engine.dispose()


@pytest.fixture()
def consumer(urls: tuple[str, str]) -> Iterator[Consumer]:
    made = _consumer(urls[1])
    yield made
    made.engine.dispose()


@pytest.fixture()
def consumer_on() -> Iterator[Any]:
    """A consumer on the database URL the test chooses."""
    made: list[Consumer] = []

    def make(url: str) -> Consumer:
        made.append(_consumer(url))
        return made[-1]

    yield make
    for one in made:
        one.engine.dispose()


def _consumer(url: str) -> Consumer:
    engine = make_engine(url, service="consumer")
    metadata = MetaData()
    inbox = inbox_table(metadata)
    applied = Table(
        "applied",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),  # not unique: a double application must show
    )
    metadata.create_all(engine)
    return Consumer(engine, make_session_factory(engine), inbox, applied)


@pytest.fixture()
def settings(amqp_uri: str) -> Settings:
    return Settings(amqp_uri=amqp_uri, relay_interval_s=0.05)


class Runners:
    """Started nameko runners, stopped at the end of the test whatever happens."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started: list[ServiceRunner] = []

    def start(self, parts: ServiceParts) -> ServiceRunner:
        runner = ServiceRunner(nameko_config(self.settings))
        runner.add_service(build_worker_class(parts, self.settings, handler_retry_delay_s=0.05))
        runner.start()
        self.started.append(runner)
        return runner

    def stop_all(self) -> None:
        for runner in reversed(self.started):
            runner.stop()


@pytest.fixture()
def runners(settings: Settings) -> Iterator[Runners]:
    started = Runners(settings)
    yield started
    started.stop_all()


def all_applied(consumer: Consumer, numbers: range) -> bool:
    counts = consumer.applied_counts()
    return all(counts[make_event(n).event_id] >= 1 for n in numbers)


def test_relay_timer_delivers_each_event_once_including_duplicates_and_retries(
    producer: Producer, consumer: Consumer, runners: Runners, settings: Settings
) -> None:
    consumer.fail_first.add(make_event(3).event_id)
    # Consumer first: its durable queue must exist before events are dispatched (module docstring).
    runners.start(consumer.parts())
    runners.start(producer.parts())
    producer.append(*range(1, 11))

    wait_until(lambda: all_applied(consumer, range(1, 11)), 30, "events 1..10 to be applied")
    assert consumer.deliveries[make_event(3).event_id] == 2, "the failed delivery was not redelivered"

    duplicate = make_event(5)
    dispatch: Any = event_dispatcher(nameko_config(settings))
    dispatch("producer", EVENT_TYPE, event_payload(duplicate))
    dispatch("producer", EVENT_TYPE, event_payload(duplicate))
    wait_until(lambda: consumer.deliveries[duplicate.event_id] == 3, 30, "both duplicate deliveries")

    counts = consumer.applied_counts()
    assert sorted(counts) == sorted(make_event(n).event_id for n in range(1, 11))
    assert set(counts.values()) == {1}
    with producer.factory() as session:
        unpublished = session.scalars(
            select(producer.outbox.c.position).where(producer.outbox.c.published_at.is_(None))
        )
        assert list(unpublished) == []


def test_a_consumer_killed_mid_flow_gets_everything_after_restart_without_doubles(
    producer: Producer, consumer: Consumer, runners: Runners
) -> None:
    consumer_runner = runners.start(consumer.parts())
    runners.start(producer.parts())
    producer.append(*range(1, 41))
    wait_until(lambda: len(consumer.applied_counts()) >= 5, 30, "the consumer to be part-way through")

    consumer_runner.kill()  # no graceful stop: in-flight and prefetched messages were never acked
    runners.started.remove(consumer_runner)
    producer.append(*range(41, 61))  # published while nobody consumes: they wait in the durable queue

    runners.start(consumer.parts())
    wait_until(lambda: all_applied(consumer, range(1, 61)), 60, "all 60 events after the restart")
    counts = consumer.applied_counts()
    assert len(counts) == 60
    assert set(counts.values()) == {1}, "an event was applied twice"


def test_service_timers_run_in_the_worker_and_a_failing_run_does_not_stop_them(runners: Runners) -> None:
    """The routing sweep, video reminders and exchange pump are ServiceParts timers: in production
    they run as nameko @timer methods of the worker, and one failing run must not end them."""
    from services.common.service import Timer

    runs: list[int] = []

    def sweep() -> None:
        runs.append(len(runs))
        if len(runs) == 2:
            raise RuntimeError("a transient failure in one sweep")

    parts = ServiceParts(name="timersvc", servicers=[], timers=[Timer("sweep", 0.05, sweep)])
    runners.start(parts)
    wait_until(lambda: len(runs) >= 4, 15, "the timer to keep running after a failed run")


def test_on_postgresql_a_commit_wakes_the_workers_relay_without_waiting_for_its_poll(
    postgres_url: str, consumer_on: Any, amqp_uri: str
) -> None:
    """The outbox's NOTIFY trigger wakes the relay (docs/exchange.md "Waiting, not polling"): with
    its poll set to an hour, events committed after the worker started still arrive."""
    from services.common.outbox import install_outbox_notify

    engine = make_engine(postgres_url, service="producer", pool_size=2, max_overflow=0)
    metadata = MetaData()
    outbox = outbox_table(metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        install_outbox_notify(conn)
    producer = Producer(engine, make_session_factory(engine), outbox)
    consumer: Consumer = consumer_on(postgres_url)
    runners = Runners(Settings(amqp_uri=amqp_uri, relay_interval_s=3600.0))
    try:
        runners.start(consumer.parts())
        runners.start(producer.parts())
        producer.append(1)
        wait_until(lambda: all_applied(consumer, range(1, 2)), 30, "event 1 without the hourly poll")
        producer.append(2, 3)
        wait_until(lambda: all_applied(consumer, range(1, 4)), 30, "events 2 and 3 without the hourly poll")
        assert set(consumer.applied_counts().values()) == {1}
    finally:
        runners.stop_all()
        engine.dispose()
