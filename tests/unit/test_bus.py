"""The embedded node's bus, relay loop and timer loop: matching, failure semantics, prompt wake-up."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table
from sqlalchemy.orm import Session, sessionmaker

from services.common.bus import DeliveryFailed, InProcessBus, RelayLoop, TimerLoop
from services.common.db import make_engine, make_session_factory, transaction
from services.common.inbox import consume_once
from services.common.outbox import Relay, append_event, inbox_table, outbox_table
from services.common.service import BusEvent, Subscription, Timer
from tests.support.helpers import wait_until


def event(source: str = "intake", event_type: str = "case_registered") -> BusEvent:
    return BusEvent(event_id=str(uuid.uuid4()), source=source, event_type=event_type, body=b"envelope")


def test_publish_calls_only_subscriptions_matching_source_and_type() -> None:
    bus = InProcessBus()
    seen: dict[str, list[str]] = {"routing": [], "stats": [], "video": []}
    bus.subscribe(Subscription("routing", "intake", "case_registered", lambda e: seen["routing"].append(e.event_id)))
    bus.subscribe(Subscription("stats", "intake", "case_registered", lambda e: seen["stats"].append(e.event_id)))
    bus.subscribe(Subscription("video", "routing", "case_registered", lambda e: seen["video"].append(e.event_id)))

    registered = event()
    bus.publish(registered)
    bus.publish(event(event_type="case_evaluated"))

    assert seen == {"routing": [registered.event_id], "stats": [registered.event_id], "video": []}


def test_a_failing_handler_does_not_stop_the_others_but_makes_publish_raise() -> None:
    bus = InProcessBus()
    called: list[str] = []

    def broken(_e: BusEvent) -> None:
        called.append("routing")
        raise ValueError("routing's database is down")

    bus.subscribe(Subscription("routing", "intake", "case_registered", broken))
    bus.subscribe(Subscription("stats", "intake", "case_registered", lambda e: called.append("stats")))

    with pytest.raises(DeliveryFailed) as failure:
        bus.publish(event())
    assert called == ["routing", "stats"]
    assert [sub.consumer for sub, _ in failure.value.failures] == ["routing"]
    assert isinstance(failure.value.__cause__, ValueError)


class Outbox:
    """A SQLite outbox plus a consumer inbox in one file (a unit test needs no server)."""

    def __init__(self, path: Path) -> None:
        self.engine = make_engine(f"sqlite:///{path}", service="intake")
        metadata = MetaData()
        self.outbox: Table = outbox_table(metadata)
        self.inbox: Table = inbox_table(metadata)
        metadata.create_all(self.engine)
        self.factory: sessionmaker[Session] = make_session_factory(self.engine)

    def append(self, e: BusEvent) -> None:
        with transaction(self.factory) as session:
            append_event(session, self.outbox, e, case_id=None)


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Outbox]:
    outbox = Outbox(tmp_path / "intake.db")
    yield outbox
    outbox.engine.dispose()


def test_relay_retries_after_a_failed_handler_and_idempotent_consumers_apply_once(store: Outbox) -> None:
    bus = InProcessBus()
    applied: list[str] = []
    fail_next = [True]

    def stats(e: BusEvent) -> None:
        consume_once(store.factory, store.inbox, "stats", e, lambda s: applied.append("stats"))

    def routing(e: BusEvent) -> None:
        def apply(_s: Session) -> None:
            if fail_next[0]:
                fail_next[0] = False
                raise ConnectionError("transient")
            applied.append("routing")

        consume_once(store.factory, store.inbox, "routing", e, apply)

    bus.subscribe(Subscription("stats", "intake", "case_registered", stats))
    bus.subscribe(Subscription("routing", "intake", "case_registered", routing))
    relay = Relay(store.factory, store.outbox, bus.publish, service="intake")
    store.append(event())

    assert relay.run_once() == 0
    assert applied == ["stats"]
    assert relay.run_once() == 1
    assert applied == ["stats", "routing"]


def test_notify_wakes_the_relay_loop_long_before_its_poll_interval(store: Outbox) -> None:
    bus = InProcessBus()
    received = threading.Event()
    bus.subscribe(Subscription("stats", "intake", "case_registered", lambda e: received.set()))
    loop = RelayLoop([Relay(store.factory, store.outbox, bus.publish, service="intake")], interval_s=30).start()
    try:
        wait_until(lambda: loop.runs >= 1, 5, "the loop's first pass")  # now it sleeps up to 30 s
        store.append(event())
        started = time.monotonic()
        loop.notify()
        wait_until(received.is_set, 5, "the event to be delivered after notify()")
        assert time.monotonic() - started < 5
    finally:
        assert loop.stop(timeout=5), "the relay loop did not stop within its deadline"


def test_relay_loop_survives_a_failing_relay_and_run_now_drains(store: Outbox) -> None:
    published: list[str] = []

    class FlakyRelay(Relay):
        failures = 1

        def run_once(self) -> int:
            if self.failures:
                self.failures -= 1
                raise OSError("database restarting")
            return super().run_once()

    relay = FlakyRelay(store.factory, store.outbox, lambda e: published.append(e.event_id), batch_size=2)
    loop = RelayLoop([relay], interval_s=30).start()
    try:
        wait_until(lambda: loop.runs >= 1, 5, "the failing first pass")
        assert loop._thread.is_alive()
        for _ in range(5):
            store.append(event())
        assert loop.run_now() == 5
        assert len(published) == 5
    finally:
        assert loop.stop(timeout=5)


def test_timer_loop_runs_every_timer_repeatedly_even_when_one_fails() -> None:
    counts = {"sweep": 0, "broken": 0}

    def broken() -> None:
        counts["broken"] += 1
        raise RuntimeError("sweep query failed")

    def sweep() -> None:
        counts["sweep"] += 1

    loop = TimerLoop([Timer("broken", 0.01, broken), Timer("sweep", 0.01, sweep)]).start()
    try:
        wait_until(lambda: counts["sweep"] >= 3 and counts["broken"] >= 3, 5, "both timers to run three times")
    finally:
        assert loop.stop(timeout=5)
