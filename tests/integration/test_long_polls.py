"""A parent holds the long poll of every direct child, whatever its number of gRPC workers.

A child whose PullDown the parent answers at once (no hold left) asks again every second instead of
every ``LONG_POLL_S``: with the holds capped at half of the server's workers, 56 links of the Sichuan
tree did, most of the tree's idle CPU (issue 21, docs/scale.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2

from services.common.settings import Settings
from services.exchange.servicer import ExchangeServicer
from services.node import Node, long_poll_threads
from tests.support.exchange_nodes import exchange
from tests.support.helpers import wait_until

COUNTIES = ("511102", "511111", "511112")


def _exchange_servicer(node: Node) -> ExchangeServicer:
    (binding,) = node.parts["exchange"].servicers
    assert isinstance(binding.servicer, ExchangeServicer)
    return binding.servicer


def _held(servicer: ExchangeServicer) -> int:
    """The long polls the parent holds now (its semaphore's initial value less what is left)."""
    holds = servicer._long_polls
    assert holds is not None
    return int(holds._initial_value - holds._value)  # type: ignore[attr-defined]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    started: list[Node] = []

    def start(code: str, parent: Node | None) -> Node:
        # Two workers: half of them held one long poll before, so two of the three counties asked every second.
        settings = Settings(
            node=code,
            data_dir=tmp_path / code,
            parent=parent.address if parent is not None else None,
            grpc_workers=2,
            metrics_port=None,
            log_json=False,
        )
        node = Node(settings, services=["exchange"]).start()
        started.append(node)
        return node

    city = start("511100", None)
    for county in COUNTIES:
        start(county, city)
    yield started
    for node in reversed(started):
        node.stop(0.5)


def test_a_city_holds_the_long_poll_of_each_county_on_threads_of_its_own(nodes: list[Node]) -> None:
    city = nodes[0]
    assert long_poll_threads(city.regions, "511100") == len(city.regions.children["511100"]) == 11
    servicer = _exchange_servicer(city)
    wait_until(lambda: _held(servicer) == len(COUNTIES), 20, "the city holding every county's long poll")
    # Three calls held, two workers: the city still answers other calls, on the threads of its own.
    reply = exchange(city).LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5)
    assert {link.peer_node for link in reply.links} >= set(COUNTIES)
