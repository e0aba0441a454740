"""Every tier's warehouse counts by the same rule (docs/stats.md "Where a case counts"), on real linked nodes.

Four nodes (四川省 with the national simulator above it, 乐山市, 市中区, 沙湾区): a county's own
case, two province cases handed down two tiers to 沙湾区, a city case handed down to 市中区 and
national transfers to both counties. Every node's figures must hold the cases it received, and at
the city and the province every numerator and denominator must be the sum over the counties.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.national.v1 import national_service_pb2 as national_pb2
from lianxin.national.v1 import national_service_pb2_grpc as national_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc

from services.exchange import national_sim
from services.node import Node
from services.stats.domain import COUNT_METRICS, REGISTERING_NODE_METRICS
from tests.support.exchange_nodes import Start, linked_nodes, phone_for
from tests.support.helpers import wait_until

# A percentile is not a sum of its parts: its denominator is checked, its numerator is not.
NOT_ADDITIVE = frozenset({"p90_reply_workdays"})
# Counts have the denominator 1 at every node: only their numerators add up.
COUNTS = COUNT_METRICS


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


@pytest.fixture()
def national() -> Iterator[str]:
    server, _sim = national_sim.serve()
    yield server.address
    server.stop(0.5)


def figures(node: Node, region: str) -> dict[str, tuple[int, int]]:
    """(numerator, denominator) of every metric of ``region`` in ``node``'s warehouse."""
    with grpc.insecure_channel(node.address) as channel:
        reply = stats_grpc.StatsServiceStub(channel).GetMetrics(
            stats_pb2.GetMetricsRequest(region_code=region), timeout=10
        )
    return {m.name: (int(m.numerator), int(m.denominator)) for m in reply.metrics}


def summed(parts: list[dict[str, tuple[int, int]]]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for part in parts:
        for name, (num, den) in comparable(part).items():
            before = out.get(name, (0, 0))
            out[name] = (before[0] + num, before[1] + den)
    return out


def comparable(figs: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The parts of each figure that add up over a subtree (the registering node's notices do not: a case
    registered above and handed down has its notices counted above only)."""
    out = {}
    for name, (num, den) in figs.items():
        if name not in REGISTERING_NODE_METRICS:
            out[name] = (0 if name in NOT_ADDITIVE else num, 0 if name in COUNTS else den)
    return out


def submit(node: Node, ref: str, *, region: str, title: str) -> str:
    with grpc.insecure_channel(node.address) as channel:
        reply = intake_grpc.IntakeServiceStub(channel).SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_WEB,
                channel_ref=ref,
                title=title,
                body=f"{title}，请有关部门尽快处理。",
                category="交通运输",
                region_code=region,
                complainant=common_pb2.Person(name="李四", phone=phone_for(ref)),
            ),
            timeout=10,
        )
    return str(reply.case.case_id)


def work_order(node: Node, case_id: str) -> routing_pb2.WorkOrder | None:
    with grpc.insecure_channel(node.address) as channel:
        found = routing_grpc.RoutingServiceStub(channel).ListWorkOrders(
            routing_pb2.ListWorkOrdersRequest(case_id=case_id), timeout=5
        )
    open_here = [w for w in found.work_orders if w.state != common_pb2.CASE_STATE_TRANSFERRED]
    return open_here[0] if open_here else None


def reply_to(node: Node, case_id: str) -> None:
    order = work_order(node, case_id)
    assert order is not None
    with grpc.insecure_channel(node.address) as channel:
        stub = routing_grpc.RoutingServiceStub(channel)
        accepted = stub.AcceptWorkOrder(
            routing_pb2.AcceptWorkOrderRequest(work_order_id=order.work_order_id, actor="handler-1"), timeout=5
        ).work_order
        stub.ReplyWorkOrder(
            routing_pb2.ReplyWorkOrderRequest(
                work_order_id=order.work_order_id,
                actor="handler-1",
                expected_version=accepted.version,
                text="已安排修复。",
            ),
            timeout=5,
        )


def test_every_tier_counts_handed_down_and_national_cases_once(start: Start, national: str) -> None:
    province = start("510000", national=national)
    city = start("511100", province)
    shizhong = start("511102", city)
    shawan = start("511111", city)
    counties = {"511102": shizhong, "511111": shawan}

    own = submit(shizhong, "tiers-own-1", region="511102", title="市中区某路口红绿灯故障")
    from_province = [
        submit(province, f"tiers-prov-{i}", region="511111", title=f"沙湾区某乡道路面塌陷 {i}") for i in range(2)
    ]
    from_city = submit(city, "tiers-city-1", region="511102", title="市中区某小区门前道路积水")
    sim = national_grpc.NationalServiceStub(grpc.insecure_channel(national))
    for region in ("511111", "511102"):
        sim.SubmitTransfer(
            national_pb2.SubmitTransferRequest(
                province_code="510000",
                transfer=national_pb2.NationalTransfer(
                    title="国家转送件", body="反映道路养护问题。", region_code=region, category="交通运输"
                ),
            ),
            timeout=5,
        )

    # Where each case is handled: the counties own all six.
    for case_id in from_province:
        wait_until(lambda c=case_id: work_order(shawan, c) is not None, 30, f"{case_id} handled at 沙湾区")
    wait_until(lambda: work_order(shizhong, from_city) is not None, 30, "the city's case handled at 市中区")
    reply_to(shawan, from_province[0])
    reply_to(shizhong, own)

    expected_received = {"511102": 3, "511111": 3}  # own + city's + national; two province's + national
    for code, node in counties.items():
        # Each county replied to one case (沙湾区: to the province's).
        wait_until(
            lambda n=node, c=code: (
                (figures(n, c)["received"][0], figures(n, c)["reply_rate"][0]) == (expected_received[c], 1)
            ),
            30,
            f"{code}'s own warehouse counting the cases it received and its reply",
        )
    county_figures = {code: figures(node, code) for code, node in counties.items()}
    total = summed(list(county_figures.values()))
    assert total["received"] == (6, 0)

    # The tiers above hold every case once, in the same place.
    for node, region in ((city, "511100"), (province, "510000")):
        wait_until(
            lambda n=node, r=region: comparable(figures(n, r)) == total,
            30,
            f"{region}'s figures equal to the sum over its counties",
        )
        for code, own_figures in county_figures.items():
            assert comparable(figures(node, code)) == comparable(own_figures), (region, code)
