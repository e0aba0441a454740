"""A node that stops while its link is calling the parent stops cleanly: no crash, no call on a closed channel.

grpc ends the whole process with a segmentation fault when a stub is built or a call started on a
channel another thread is closing; that killed a CI run in the middle of a test that stopped its
nodes while the county's link was applying a PullDown answer. Here a real parent answers real
calls while the link is closed from another thread, many times over.
"""

from __future__ import annotations

import random
import threading
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc

from services.common.channels import ClosableChannel
from services.common.db import make_engine, make_session_factory
from services.common.grpcclient import instrumented_channel
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.exchange.link import LinkClosed, ParentLink
from services.exchange.store import ExchangeStore


class EmptyParent(exchange_grpc.ExchangeServiceServicer):
    """A parent with nothing queued: every PullDown and AckDown answers at once."""

    def __init__(self) -> None:
        self.pulls = 0

    def PullDown(
        self, request: exchange_pb2.PullDownRequest, context: grpc.ServicerContext
    ) -> exchange_pb2.PullDownResponse:
        self.pulls += 1
        return exchange_pb2.PullDownResponse()


def test_closing_a_link_while_another_thread_calls_through_it_never_crashes(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'county.db'}", service="exchange")
    upgrade(engine, "exchange")
    store = ExchangeStore(
        make_session_factory(engine), node="511102", regions=RegionTree.load(), clock=lambda: datetime.now(UTC)
    )
    parent = EmptyParent()  # type: ignore[abstract]  # with nothing queued the link calls only PullDown
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    exchange_grpc.add_ExchangeServiceServicer_to_server(parent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    outcomes: list[str] = []
    try:
        for _ in range(150):
            link = ParentLink(store, parent_node="511100", address=f"127.0.0.1:{port}", deadline_s=5.0)
            started = threading.Event()

            def pull_until_closed(link: ParentLink = link, started: threading.Event = started) -> None:
                try:
                    while True:
                        link.pull_down()
                        started.set()
                except LinkClosed:
                    outcomes.append("closed")
                except Exception as error:  # what the fix must prevent: a call on a closed channel
                    outcomes.append(f"{type(error).__name__}: {error}")
                finally:
                    started.set()

            caller = threading.Thread(target=pull_until_closed)
            caller.start()
            assert started.wait(10), "the link never reached its parent"
            threading.Event().wait(random.uniform(0, 0.002))  # land the close anywhere in a call
            link.close()
            caller.join(10)
            assert not caller.is_alive()
    finally:
        server.stop(None)
        engine.dispose()
    assert parent.pulls >= 150
    assert set(outcomes) == {"closed"}


def test_a_closed_instrumented_channel_refuses_before_reaching_the_freed_core_channel() -> None:
    # grpc's own channel builds a stub on a closed channel by reading the destroyed core channel
    # (undefined behaviour, seen as a rare segmentation fault); ours refuses with grpc's own error.
    plain = grpc.insecure_channel("127.0.0.1:1")
    channel = ClosableChannel(plain)
    channel.close()
    with pytest.raises(ValueError, match="closed channel"):
        exchange_grpc.ExchangeServiceStub(channel)
    traced = instrumented_channel("127.0.0.1:1")
    stub = exchange_grpc.ExchangeServiceStub(traced)
    traced.close()
    with pytest.raises(ValueError, match="closed channel"):
        stub.AckDown(exchange_pb2.AckDownRequest(child_node="511102"), timeout=1)
