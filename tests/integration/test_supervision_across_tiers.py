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
from lianxin.common.v1 import common_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc

from services.common.timeutil import to_timestamp
from services.node import Node
from tests.support.exchange_nodes import Start, linked_nodes, replicas, submit
from tests.support.helpers import wait_until


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


def supervise_once_known(node: Node, request: routing_pb2.SuperviseRequest) -> routing_pb2.SuperviseResponse:
    """Supervise, retried while the case is NOT_FOUND at ``node`` (nothing is recorded then)."""
    answers: list[routing_pb2.SuperviseResponse] = []

    def supervise() -> bool:
        try:
            answers.append(routing(node).Supervise(request, timeout=5))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        return bool(answers)

    wait_until(supervise, 30, f"{node.settings.node} able to supervise {request.case_id}")
    return answers[0]


def recorded_at_every_tier(nodes: tuple[Node, ...], case_id: str, supervision_id: str) -> None:
    for node in nodes:
        wait_until(
            lambda n=node: [s.supervision_id for s in supervisions(n, case_id)] == [supervision_id],
            30,
            f"督办 at {node.settings.node}",
        )


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
    # The province's routing learns who owns the case from the replicas.
    reply = supervise_once_known(province, request)
    assert reply.forwarded_to_owner
    assert reply.supervision.by_node == "510000" and reply.supervision.case_id == case_id
    sent = reply.supervision.supervision_id

    recorded_at_every_tier((county, city, province), case_id, sent)
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


def test_a_supervision_sent_while_the_case_goes_down_two_tiers_is_recorded_by_the_county(start: Start) -> None:
    """The province 督办s its own case for 市中区 at once: it knows only that it handed it to 乐山市.

    The command reaches the city with (or right after) the hand-off, when the city's routing has
    already handed the case on to the county and its exchange has not yet heard of that, so exchange
    delivers it at the city. The city must send it on: recorded there, it was counted at the city
    and the province while the county that handles the case never heard of it (the day in the life
    saw 乐山市 count 沙湾区's case as supervised and 沙湾区's own warehouse not).
    """
    province = start("510000")
    case_id = submit(province, "supervise-early", region="511102")
    due = datetime.now(UTC) + timedelta(days=5)
    request = routing_pb2.SuperviseRequest(
        case_id=case_id, actor="sheng-duban-2", level="supervise", demand="三日内核实", due_at=to_timestamp(due)
    )
    reply = supervise_once_known(province, request)  # once its routing has placed the registration
    assert reply.forwarded_to_owner  # to 乐山市, all the province knows of
    sent = reply.supervision.supervision_id
    city = start("511100", province)
    wait_until(lambda: _handed_on(city, case_id), 30, "the city handing the case on to 市中区")
    county = start("511102", city)

    recorded_at_every_tier((county, city, province), case_id, sent)
    at_county = supervisions(county, case_id)[0]
    assert (at_county.by_node, at_county.by_actor, at_county.demand) == ("510000", "sheng-duban-2", "三日内核实")
    # Recorded once, by the county (the node that handles the case), and replicated up from there.
    origins = [
        e.origin_node for e in replicas(province, case_id=case_id).entries if e.event_type == "supervision_issued"
    ]
    assert origins == ["511102"]
    for node, region in ((county, "511102"), (city, "511100"), (province, "510000")):
        wait_until(lambda n=node, r=region: supervised(n, r) == 1, 30, f"the case counted supervised at {region}")


def _handed_on(node: Node, case_id: str) -> bool:
    orders = routing(node).ListWorkOrders(routing_pb2.ListWorkOrdersRequest(case_id=case_id), timeout=5).work_orders
    return any(w.node == node.settings.node and w.state == common_pb2.CASE_STATE_TRANSFERRED for w in orders)


def _known_above(province: Node, case_id: str) -> bool:
    with grpc.insecure_channel(province.address) as channel:
        reply = stats_grpc.StatsServiceStub(channel).GetMetrics(
            stats_pb2.GetMetricsRequest(region_code="511102", metrics=["received"], include_case_ids=True), timeout=5
        )
    return case_id in reply.metrics[0].case_ids
