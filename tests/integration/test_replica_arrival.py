"""ListReplicas says when each event reached this node (``appended_at``), so a benchmark can read how
long a case took to climb the tree afterwards instead of asking the parent while it is busiest.
A real county 511102 linked to its city 511100, SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2

from services.node import Node
from tests.support.exchange_nodes import Start, exchange, linked_nodes
from tests.support.helpers import wait_until
from tests.support.tiers import register


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def seconds(at: Timestamp) -> float:
    return at.seconds + at.nanos / 1e9


def entries(node: Node, **where: str) -> list[exchange_pb2.ReplicaEntry]:
    request = exchange_pb2.ListReplicasRequest(max_items=1000, **where)
    return list(exchange(node).ListReplicas(request, timeout=10).entries)


def test_each_held_event_says_when_it_reached_this_node(start: Start) -> None:
    city = start("511100")
    county = start("511102", city)
    before = time.time()
    case = register(county, "511102")
    wait_until(lambda: len(entries(city, case_id=case.case_id)) > 0, 30, "the case's events at the city")
    at_city = entries(city, case_id=case.case_id)
    # Read after the city's: every event the city holds was on the county's up-log first.
    at_county = {e.event_id: seconds(e.appended_at) for e in entries(county, case_id=case.case_id)}
    after = time.time()
    for entry in at_city:
        arrived = seconds(entry.appended_at)
        # Within the test's own window, and never before the county appended the same event.
        assert before - 1 <= arrived <= after + 1, entry.event_type
        assert arrived >= at_county[entry.event_id], entry.event_type
    # Filtered by the county's subtree, as the benchmark reads them, the same entries and times.
    by_subtree = {e.event_id: e.appended_at for e in entries(city, subtree_node="511102")}
    assert all(by_subtree[e.event_id] == e.appended_at for e in at_city)
