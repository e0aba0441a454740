"""A citizen's evaluation at the node that registered the case, when a node below handles it.

Three real nodes (province 510000 ← city 511100 ← county 511102), all five services each, linked over
gRPC. The case is registered at the province (the citizen's tracking code is the province's) and handed
down by hand (交办) to the county, whose unit accepts and replies. The province's intake follows that
handling from the replicas exchange republishes on its bus (TrackCase shows the reply), records the
citizen's rating there and sends it, as an ``events.v1.Command``, to the county, whose routing applies it
as a local rating: unsatisfied with a first reply reopens the work order (退回重办). Redelivery of the
command (by the province's relay or the county's) does not apply it twice.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.service import BusEvent, Subscription
from services.node import Node
from services.routing.handlers import work_order_id_for
from services.routing.models import inbox as routing_inbox
from tests.helpers import wait_until
from tests.integration.exchange_nodes import Start, exchange, linked_nodes, phone_for


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


class Seen:
    """Bus events of one (source, type) on a node, in arrival order (redeliveries included)."""

    def __init__(self, node: Node, source: str, event_type: str) -> None:
        self.events: list[BusEvent] = []
        self._lock = threading.Lock()
        node.bus.subscribe(Subscription("probe", source, event_type, self._seen))

    def _seen(self, event: BusEvent) -> None:
        with self._lock:
            self.events.append(event)

    def ids(self) -> list[str]:
        with self._lock:
            return [e.event_id for e in self.events]


def intake(node: Node) -> intake_grpc.IntakeServiceStub:
    return intake_grpc.IntakeServiceStub(grpc.insecure_channel(node.address))


def routing(node: Node) -> routing_grpc.RoutingServiceStub:
    return routing_grpc.RoutingServiceStub(grpc.insecure_channel(node.address))


def work_order(node: Node, case_id: str) -> routing_pb2.WorkOrder | None:
    wo_id = work_order_id_for(case_id, node.settings.node)
    try:
        return routing(node).GetWorkOrder(routing_pb2.GetWorkOrderRequest(work_order_id=wo_id), timeout=5).work_order
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def state_of(node: Node, case_id: str) -> int | None:
    found = work_order(node, case_id)
    return None if found is None else int(found.state)


def down_settled(node: Node) -> bool:
    links = exchange(node).LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links
    return all(link.lag_events == 0 for link in links)


def test_a_rating_at_the_registering_province_reaches_the_county_that_handles_the_case(start: Start) -> None:
    province = start("510000")
    city = start("511100", province)
    county = start("511102", city)
    issued_at_province = Seen(province, "intake", "command")
    delivered_at_county = Seen(county, "exchange", "command")

    ref = f"eval-{uuid.uuid4().hex[:10]}"
    phone = phone_for(ref)
    submitted = intake(province).SubmitCase(
        intake_pb2.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_WEB,
            channel_ref=ref,
            title="河道漂浮垃圾长期无人清理",
            body="河道里漂浮垃圾长期无人清理，夏天气味很大，希望有关部门尽快处理。",
            category="环境保护",
            region_code="510000",
            complainant=common_pb2.Person(name="王五", phone=phone),
        ),
        timeout=5,
    )
    case_id, code, last4 = submitted.case.case_id, submitted.tracking_code, phone[-4:]

    # 交办: the province hands the case two tiers down; the county's clerk places it with a unit.
    wait_until(lambda: work_order(province, case_id) is not None, 15, "the province's work order")
    routing(province).AssignManually(
        routing_pb2.AssignManuallyRequest(case_id=case_id, actor="prov-clerk", node="511102", reason="请市中区办理"),
        timeout=5,
    )
    wait_until(lambda: work_order(county, case_id) is not None, 20, "the county's work order")
    placed = (
        routing(county)
        .AssignManually(
            routing_pb2.AssignManuallyRequest(
                case_id=case_id, actor="county-clerk", unit_id="lszq-sthjj", reason="生态环境局办理"
            ),
            timeout=5,
        )
        .work_order
    )
    county_stub = routing(county)
    county_stub.AcceptWorkOrder(
        routing_pb2.AcceptWorkOrderRequest(work_order_id=placed.work_order_id, actor="lszq-sthjj-1"), timeout=5
    )
    county_stub.ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(
            work_order_id=placed.work_order_id, actor="lszq-sthjj-1", text="已组织清理河道垃圾，并安排每周巡查。"
        ),
        timeout=5,
    )

    # The province follows the county's handling: the reply shows, and may be rated, where the citizen registered.
    def track() -> intake_pb2.TrackCaseResponse:
        reply: intake_pb2.TrackCaseResponse = intake(province).TrackCase(
            intake_pb2.TrackCaseRequest(tracking_code=code, phone_last4=last4), timeout=5
        )
        return reply

    wait_until(lambda: track().can_evaluate, 30, "the county's reply in the province's TrackCase")
    tracked = track()
    assert tracked.state == common_pb2.CASE_STATE_REPLIED
    summaries = [entry.summary for entry in tracked.timeline]
    assert summaries[0] == "已登记 registered" and summaries[-1] == "已答复 replied"
    assert "已转送 transferred" in summaries
    known = intake(province).GetCase(intake_pb2.GetCaseRequest(case_id=case_id), timeout=5).case
    assert (known.owner_node, known.owner_epoch) == ("511102", 2)
    replied = work_order(county, case_id)
    assert replied is not None and replied.state == common_pb2.CASE_STATE_REPLIED and replied.reopen_count == 0

    rated = intake(province).EvaluateCase(
        intake_pb2.EvaluateCaseRequest(
            tracking_code=code, phone_last4=last4, satisfaction=common_pb2.SATISFACTION_UNSATISFIED, comment="垃圾还在"
        ),
        timeout=5,
    )
    assert rated.evaluation_id == f"{case_id}-E1"
    assert rated.forwarded_to_owner  # the citizen is told the rating went on to the handling node

    # At the county, routing does what it does with a local unsatisfied rating of a first reply: 退回重办.
    wait_until(lambda: state_of(county, case_id) == common_pb2.CASE_STATE_REOPENED, 30, "the reopen at the county")
    reopened = work_order(county, case_id)
    assert reopened is not None and reopened.reopen_count == 1
    last = reopened.history[-1]
    # (routing may add a note on provisional deadlines after the citizen's words)
    assert (last.actor, last.action) == ("citizen", "reopen") and last.reason.startswith("垃圾还在")
    (issued,) = issued_at_province.events
    (delivered,) = delivered_at_county.events
    command = events_pb2.Command()
    command.ParseFromString(delivered.body)
    assert delivered.event_id == issued.event_id == command.command_id
    assert (command.case_id, command.target_node, command.issuing_node, command.owner_epoch_seen) == (
        case_id,
        "511102",
        "510000",
        2,
    )
    assert command.evaluate.satisfaction == common_pb2.SATISFACTION_UNSATISFIED
    assert command.evaluate.comment == "垃圾还在"
    # The province's own (transferred) work order is not touched by the rating.
    province_order = work_order(province, case_id)
    assert province_order is not None and province_order.state == common_pb2.CASE_STATE_TRANSFERRED

    # Redelivered by the province's relay (exchange routes it once per leg) and by the county's (routing's
    # inbox keeps each command id once): the rating is not applied a second time.
    province.bus.publish(issued)
    county.bus.publish(delivered)
    wait_until(lambda: down_settled(province) and down_settled(city), 15, "the down links to drain")
    again = work_order(county, case_id)
    assert again is not None
    assert (again.version, again.reopen_count, len(again.history)) == (
        reopened.version,
        1,
        len(reopened.history),
    )
    assert delivered_at_county.ids() == [command.command_id, command.command_id]  # only the one republished here
    with county.engines["routing"].connect() as conn:
        kept = conn.execute(
            sa.select(sa.func.count()).select_from(routing_inbox).where(routing_inbox.c.event_id == command.command_id)
        ).scalar_one()
    assert kept == 1  # routing's inbox: the command id, once

    # The reopen travels back up: the citizen sees it at the province, with the rating.
    wait_until(lambda: track().state == common_pb2.CASE_STATE_REOPENED, 30, "the reopen in the province's TrackCase")
    final = track()
    summaries = [entry.summary for entry in final.timeline]
    assert summaries[-2:] == ["已评价 rated", "重新办理 reopened"]
    assert final.satisfaction == common_pb2.SATISFACTION_UNSATISFIED and not final.can_evaluate
    assert all(
        not exchange(n).ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5).items
        for n in (province, city, county)
    )
