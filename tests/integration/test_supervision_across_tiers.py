"""A provincial supervisor's 督办 of a county case (issue 16 item 4), on three real linked nodes.

The province does not own the case, so its Supervise goes to the owner as an ``events.v1.Command``
(the way a citizen's rating registered elsewhere does); the county's routing records it once and
announces it, and the replicated ``supervision_issued`` puts the same record at the city and the
province, where every warehouse counts the case as supervised.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc

from services.common.timeutil import to_timestamp
from services.node import Node
from tests.helpers import wait_until
from tests.integration.exchange_nodes import Start, linked_nodes, submit


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def routing(node: Node) -> routing_grpc.RoutingServiceStub:
    return routing_grpc.RoutingServiceStub(grpc.insecure_channel(node.address))


def supervisions(node: Node, case_id: str) -> list[routing_pb2.Supervision]:
    reply = routing(node).ListSupervisions(routing_pb2.ListSupervisionsRequest(case_id=case_id), timeout=5)
    return list(reply.supervisions)


def supervised(node: Node, region: str) -> int:
    with grpc.insecure_channel(node.address) as channel:
        reply = stats_grpc.StatsServiceStub(channel).GetMetrics(
            stats_pb2.GetMetricsRequest(region_code=region, metrics=["supervised"]), timeout=5
        )
    return int(reply.metrics[0].numerator)


def test_a_provincial_supervisor_supervises_a_county_case_recorded_once_at_every_tier(start: Start) -> None:
    province = start("510000")
    city = start("511100", province)
    county = start("511102", city)
    case_id = submit(county, "supervise-1")
    wait_until(lambda: _known_above(province, case_id), 30, "the county's case replicated to the province")

    due = datetime.now(UTC) + timedelta(days=5)
    request = routing_pb2.SuperviseRequest(
        case_id=case_id, actor="sheng-duban-1", level="supervise", demand="五日内报告处理结果", due_at=to_timestamp(due)
    )
    answers: list[routing_pb2.SuperviseResponse] = []

    def supervise() -> bool:
        # The province's routing learns who owns the case from the replicas: until the first one
        # arrives the case is NOT_FOUND there (and nothing is recorded).
        try:
            answers.append(routing(province).Supervise(request, timeout=5))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        return bool(answers)

    wait_until(supervise, 30, "the province able to supervise the county's case")
    reply = answers[0]
    assert reply.forwarded_to_owner
    assert reply.supervision.by_node == "510000" and reply.supervision.case_id == case_id
    sent = reply.supervision.supervision_id

    for node in (county, city, province):
        wait_until(lambda n=node: [s.supervision_id for s in supervisions(n, case_id)] == [sent], 30, f"督办 at {node}")
    at_county = supervisions(county, case_id)[0]
    assert (at_county.by_node, at_county.by_actor, at_county.level) == ("510000", "sheng-duban-1", "supervise")
    assert at_county.demand == "五日内报告处理结果"
    for node, region in ((county, "511102"), (city, "511100"), (province, "510000")):
        wait_until(lambda n=node, r=region: supervised(n, r) == 1, 30, f"the case counted supervised at {region}")

    # An unknown case is still NOT_FOUND, and nothing was recorded twice.
    with pytest.raises(grpc.RpcError) as refused:
        routing(province).Supervise(
            routing_pb2.SuperviseRequest(
                case_id="511102-20261201-999999", actor="s", level="supervise", demand="x", due_at=to_timestamp(due)
            ),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(supervisions(county, case_id)) == 1


def _known_above(province: Node, case_id: str) -> bool:
    with grpc.insecure_channel(province.address) as channel:
        reply = stats_grpc.StatsServiceStub(channel).GetMetrics(
            stats_pb2.GetMetricsRequest(region_code="511102", metrics=["received"], include_case_ids=True), timeout=5
        )
    return case_id in reply.metrics[0].case_ids
