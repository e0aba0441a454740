"""The event-driven link reads its up-log once per push: after a push that took everything pending it
stops (what is appended later wakes it), instead of reading the log again only to find it empty.

At Sichuan's rate a county sees a case every 9 s, so each of a case's pushes paid a second read of
the up-log, a transaction of its own, for nothing.
"""

from __future__ import annotations

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
from services.exchange.link import ParentLink
from services.exchange.ports import Item
from services.exchange.store import ExchangeStore
from tests.support.helpers import wait_until

CITY, COUNTY = "511100", "511102"


class AckingParent(exchange_grpc.ExchangeServiceServicer):
    """Acknowledges every push whole; has nothing to send down."""

    def __init__(self) -> None:
        self.pushed: list[int] = []

    def PushEvents(self, request: exchange_pb2.PushEventsRequest, context: Any) -> exchange_pb2.PushEventsResponse:
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
