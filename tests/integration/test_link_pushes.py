"""The event-driven link reads its up-log once per push: after a push that took everything pending it
stops (what is appended later wakes it), instead of reading the log again only to find it empty.

At Sichuan's rate a county sees a case every 9 s, so each of a case's pushes paid a second read of
the up-log, a transaction of its own, for nothing.

A node's own events gather for ``LOCAL_GATHER_S`` after the first that found the link idle, so a
case's burst (its registration, the placement's three events, the notice's settlement) crosses in
one push; what a child pushed (``wake``) is sent on at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from lianxin.events.v1 import events_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc

from services.common.db import make_engine, make_session_factory
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.common.waiting import LinkDriver
from services.exchange import link as link_module
from services.exchange.link import ParentLink
from services.exchange.ports import Item
from services.exchange.store import ExchangeStore
from tests.support.helpers import wait_until

CITY, COUNTY = "511100", "511102"


class AckingParent(exchange_grpc.ExchangeServiceServicer):
    """Acknowledges every push whole; has nothing to send down."""

    def __init__(self) -> None:
        self.pushed: list[int] = []
        self.requests: list[list[int]] = []  # the positions of each push with items

    def PushEvents(self, request: exchange_pb2.PushEventsRequest, context: Any) -> exchange_pb2.PushEventsResponse:
        if request.items:
            self.requests.append([item.position for item in request.items])
        self.pushed += [item.position for item in request.items]
        return exchange_pb2.PushEventsResponse(acked_position=self.pushed[-1] if self.pushed else 0)

    def PullDown(self, request: exchange_pb2.PullDownRequest, context: Any) -> exchange_pb2.PullDownResponse:
        return exchange_pb2.PullDownResponse()


class CountingStore(ExchangeStore):
    reads = 0

    def pending_up(self, after: int, limit: int, **kwargs: Any) -> list[Item]:
        self.reads += 1
        return super().pending_up(after, limit, **kwargs)


@pytest.fixture()
def parent() -> Iterator[tuple[AckingParent, str]]:
    servicer = AckingParent()  # type: ignore[abstract]  # the link calls only PushEvents and PullDown
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    exchange_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def _event(n: int) -> tuple[events_pb2.EventEnvelope, bytes]:
    env = events_pb2.EventEnvelope(
        event_id=f"{COUNTY}-20261206-{n:06d}#1",
        case_id=f"{COUNTY}-20261206-{n:06d}",
        version=1,
        owner_node=COUNTY,
        owner_epoch=1,
        origin_node=COUNTY,
        case_registered=events_pb2.CaseRegistered(),
    )
    return env, env.SerializeToString()


def test_a_push_that_took_everything_is_not_followed_by_another_read_of_the_up_log(
    tmp_path: Path, parent: tuple[AckingParent, str]
) -> None:
    servicer, address = parent
    engine = make_engine(f"sqlite:///{tmp_path / 'county.db'}", service="exchange")
    upgrade(engine, "exchange")
    store = CountingStore(
        make_session_factory(engine), node=COUNTY, regions=RegionTree.load(), clock=lambda: datetime.now(UTC)
    )
    driver = LinkDriver(workers=2)
    link = ParentLink(store, parent_node=CITY, address=address)
    store.wake_link = link.wake
    try:
        link.start(driver)
        wait_until(lambda: store.reads >= 1 and not link.pushing, 10, "the first look at an empty up-log")
        for n in (1, 2, 3):
            reads = store.reads
            store.record_local(*_event(n))
            wait_until(lambda n=n: servicer.pushed[-1:] == [n] and not link.pushing, 10, f"push {n} acknowledged")
            assert store.reads - reads == 1  # the push's own read, none after it
        assert servicer.pushed == [1, 2, 3]  # each once, in order
        assert store.cursor(CITY, "up").position == 3
    finally:
        link.close()
        driver.stop()
        engine.dispose()


@pytest.fixture()
def county_store(tmp_path: Path) -> Iterator[CountingStore]:
    engine = make_engine(f"sqlite:///{tmp_path / 'county.db'}", service="exchange")
    upgrade(engine, "exchange")
    yield CountingStore(
        make_session_factory(engine), node=COUNTY, regions=RegionTree.load(), clock=lambda: datetime.now(UTC)
    )
    engine.dispose()


def test_a_nodes_own_events_appended_within_the_gather_cross_in_one_push(
    county_store: CountingStore, parent: tuple[AckingParent, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, address = parent
    monkeypatch.setattr(link_module, "LOCAL_GATHER_S", 1.0)  # longer than three appends take here
    store = county_store
    driver = LinkDriver(workers=2)
    link = ParentLink(store, parent_node=CITY, address=address)
    store.wake_link, store.wake_link_local = link.wake, link.wake_local
    try:
        link.start(driver)
        wait_until(lambda: store.reads >= 1 and not link.pushing, 10, "the first look at an empty up-log")
        for n in (1, 2, 3):  # each its own commit, each waking the link
            store.record_local(*_event(n))
        wait_until(lambda: servicer.pushed == [1, 2, 3] and not link.pushing, 10, "the gathered push acknowledged")
        assert servicer.requests == [[1, 2, 3]]  # one push, not the first event alone and then the rest
        assert store.cursor(CITY, "up").position == 3
    finally:
        link.close()
        driver.stop()


def test_an_append_woken_as_a_childs_push_is_sent_on_at_once(
    county_store: CountingStore, parent: tuple[AckingParent, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, address = parent
    monkeypatch.setattr(link_module, "LOCAL_GATHER_S", 60.0)  # were it applied, the wait below would fail
    store = county_store
    driver = LinkDriver(workers=2)
    link = ParentLink(store, parent_node=CITY, address=address)
    store.wake_link = link.wake  # no wake_link_local: every append wakes as a child's stored push does
    try:
        link.start(driver)
        wait_until(lambda: store.reads >= 1 and not link.pushing, 10, "the first look at an empty up-log")
        store.record_local(*_event(1))
        wait_until(lambda: servicer.pushed == [1], 10, "the push sent without the local gather")
    finally:
        link.close()
        driver.stop()


class HoldsTheFirstPush(AckingParent):
    """Answers the first push with items only after its caller's deadline (as if the link were cut)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def PushEvents(self, request: exchange_pb2.PushEventsRequest, context: Any) -> exchange_pb2.PushEventsResponse:
        if request.items and not self.requests:
            self.requests.append([item.position for item in request.items])
            self.release.wait(30)  # past the caller's deadline: the call ends DEADLINE_EXCEEDED there
            return exchange_pb2.PushEventsResponse()
        return super().PushEvents(request, context)


def test_a_push_that_waited_its_whole_deadline_is_sent_again_without_a_pause(
    county_store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A push that waited its whole deadline for the parent (a cut link) is followed by the next at once:
    # that one waits for the channel too. With a pause, the catch-up after a cut began up to the
    # backoff's ceiling after the link came back (issue 21). The backoff here is a minute: only an
    # immediate resend can arrive within the test's wait.
    monkeypatch.setattr(link_module, "CALL_MARGIN_S", 0.2)  # a push's deadline: 0.3 + 0.2 s
    servicer = HoldsTheFirstPush()  # type: ignore[abstract]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    exchange_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    driver = LinkDriver(workers=2)
    link = ParentLink(county_store, parent_node=CITY, address=address, deadline_s=0.3)
    county_store.wake_link = link.wake
    try:
        link.start(driver)
        link.backoff.base_s = link.backoff.cap_s = 60.0
        county_store.record_local(*_event(1))
        # The first push ends DEADLINE_EXCEEDED after 0.5 s; the second must follow it at once.
        wait_until(lambda: servicer.pushed == [1], 20, "the push sent again and acknowledged")
        assert servicer.requests == [[1], [1]]
        wait_until(lambda: county_store.cursor(CITY, "up").position == 1, 10, "the cursor moved")
    finally:
        servicer.release.set()
        link.close()
        driver.stop()
        server.stop(None)
