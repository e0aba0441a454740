"""人工交办: a clerk at the province hands a case it owns straight to a county, two tiers down.

Three real nodes (province 510000 ← city 511100 ← county 511102) linked over gRPC. The province's
work order closes as TRANSFERRED, the hand-off travels down through the city to the county, whose
routing queues it for its clerk (the matter's region is the province's, not the county's); the
county clerk assigns one of its units. Bad requests name the field and change nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as pb
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.settings import Settings
from services.node import Node
from services.routing.handlers import work_order_id_for
from tests.support.helpers import wait_until


def start(code: str, tmp_path: Path, parent: Node | None = None) -> Node:
    settings = Settings(
        node=code,
        data_dir=tmp_path / code,
        parent=parent.address if parent is not None else None,
        relay_interval_s=0.05,
        log_json=False,
    )
    return Node(settings).start()


@pytest.fixture()
def three_tiers(tmp_path: Path) -> Iterator[tuple[Node, Node, Node]]:
    province = start("510000", tmp_path)
    city = start("511100", tmp_path, parent=province)
    county = start("511102", tmp_path, parent=city)
    yield province, city, county
    for node in (county, city, province):
        node.stop(grace=0.5)


def routing(node: Node) -> routing_grpc.RoutingServiceStub:
    return routing_grpc.RoutingServiceStub(grpc.insecure_channel(node.address))


def work_order(node: Node, case_id: str) -> pb.WorkOrder | None:
    wo_id = work_order_id_for(case_id, node.settings.node)
    try:
        found: pb.WorkOrder = (
            routing(node).GetWorkOrder(pb.GetWorkOrderRequest(work_order_id=wo_id), timeout=5).work_order
        )
        return found
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def submit_at_province(province: Node) -> str:
    reply = intake_grpc.IntakeServiceStub(grpc.insecure_channel(province.address)).SubmitCase(
        intake_pb2.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_WEB,
            channel_ref=uuid.uuid4().hex[:12],
            title="河道漂浮垃圾长期无人清理",
            body="河道里漂浮垃圾长期无人清理，夏天气味很大，希望有关部门尽快处理。",
            category="环境保护",
            region_code="510000",
            complainant=common_pb2.Person(name="王五", phone="13900005678"),
        ),
        timeout=5,
    )
    case_id: str = reply.case.case_id
    return case_id


def assign(at: Node, **fields: Any) -> pb.AssignManuallyResponse:
    reply: pb.AssignManuallyResponse = routing(at).AssignManually(pb.AssignManuallyRequest(**fields), timeout=5)
    return reply


def test_province_hands_a_case_down_two_tiers_by_hand(three_tiers: tuple[Node, Node, Node]) -> None:
    province, city, county = three_tiers
    case_id = submit_at_province(province)
    wait_until(lambda: work_order(province, case_id) is not None, 10, "the province's work order")
    before = work_order(province, case_id)
    assert before is not None and before.state == common_pb2.CASE_STATE_ASSIGNED

    # Bad requests: each names its field, and the province keeps the case as it was.
    bad_requests = [
        ({"node": "510000", "reason": "留在本级"}, "unit_id"),  # its own node: assigning here needs a unit
        ({"node": "999999", "reason": "x"}, "node"),
        ({"node": "511102"}, "reason"),
        ({"node": "511102", "reason": "x", "unit_id": "lszq-sthjj"}, "unit_id"),
        ({"node": "511102", "reason": "x", "actor": ""}, "actor"),
    ]
    for fields, field in bad_requests:
        request = {"case_id": case_id, "actor": "prov-clerk", **fields}
        with pytest.raises(grpc.RpcError) as bad:
            assign(province, **request)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (fields, bad.value.details())
        assert (bad.value.details() or "").startswith(f"{field}:"), (fields, bad.value.details())
    unchanged = work_order(province, case_id)
    assert unchanged is not None and unchanged.state == before.state and unchanged.version == before.version

    reply = assign(province, case_id=case_id, actor="prov-clerk", node="511102", reason="请市中区核实后办理")
    assert not reply.HasField("work_order")  # handed off: no work order of this node to show
    moved = work_order(province, case_id)
    assert moved is not None and moved.state == common_pb2.CASE_STATE_TRANSFERRED
    assert "511102" in moved.history[-1].reason and "请市中区核实后办理" in moved.history[-1].reason

    # It passes the city (no work order there: the hand-off only travels through) to the county.
    wait_until(lambda: work_order(county, case_id) is not None, 20, "the county's work order")
    arrived = work_order(county, case_id)
    assert arrived is not None and arrived.state == common_pb2.CASE_STATE_REGISTERED
    queue = routing(county).ListManualQueue(pb.ListManualQueueRequest(), timeout=5).items
    assert case_id in [item.work_order.case_id for item in queue]
    assert work_order(city, case_id) is None

    placed = assign(county, case_id=case_id, actor="county-clerk", unit_id="lszq-sthjj", reason="生态环境局办理")
    assert placed.work_order.state == common_pb2.CASE_STATE_ASSIGNED and placed.work_order.unit_id == "lszq-sthjj"

    # The province no longer owns it: a second hand-off from there is refused as stale.
    with pytest.raises(grpc.RpcError) as stale:
        assign(province, case_id=case_id, actor="prov-clerk", node="511102", reason="再次交办")
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION, stale.value.details()
