"""The work-order lifecycle over real gRPC on a real node (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as pb
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.settings import Settings
from services.common.timeutil import to_timestamp
from services.node import Node
from services.routing.handlers import work_order_id_for
from tests.support.helpers import wait_until
from tests.support.intake import submit_request


@pytest.fixture()
def node(database_url: str, tmp_path: Path) -> Iterator[Node]:
    url = None if database_url.startswith("sqlite") else database_url
    settings = Settings(node="511102", data_dir=tmp_path, database_url=url, relay_interval_s=0.05)
    started = Node(settings).start()
    yield started
    started.stop(grace=1.0)


@pytest.fixture()
def stub(node: Node) -> Iterator[routing_grpc.RoutingServiceStub]:
    with grpc.insecure_channel(node.address) as ch:
        yield routing_grpc.RoutingServiceStub(ch)


def new_work_order(node: Node, stub: routing_grpc.RoutingServiceStub, ref: str) -> str:
    with grpc.insecure_channel(node.address) as ch:
        case_id = intake_grpc.IntakeServiceStub(ch).SubmitCase(submit_request(ref), timeout=5).case.case_id
    wo = work_order_id_for(case_id, "511102")

    def exists() -> bool:
        node.drain()
        try:
            stub.GetWorkOrder(pb.GetWorkOrderRequest(work_order_id=wo), timeout=5)
            return True
        except grpc.RpcError:
            return False

    wait_until(exists, timeout=10, message="routing to create the work order")
    return wo


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code(), caught.value.details() or ""


def test_whole_lifecycle_through_the_routing_rpcs(node: Node, stub: routing_grpc.RoutingServiceStub) -> None:
    wo = new_work_order(node, stub, "life-0001")
    got = stub.GetWorkOrder(pb.GetWorkOrderRequest(work_order_id=wo), timeout=5).work_order
    assert got.state == common_pb2.CASE_STATE_ASSIGNED and got.unit_id == "lszq-sthjj"
    assert {d.kind for d in got.deadlines} >= {"objection", "hotline_complaint"}

    inbox = stub.ListWorkOrders(pb.ListWorkOrdersRequest(unit_id="lszq-sthjj"), timeout=5)
    assert [w.work_order_id for w in inbox.work_orders] == [wo]
    soon = stub.ListWorkOrders(
        pb.ListWorkOrdersRequest(unit_id="lszq-sthjj", due_within=Duration(seconds=3600)), timeout=5
    )
    assert list(soon.work_orders) == []
    # The console's inbox: the same rows in one call, titled from routing's own copy of the case.
    listed = stub.ListInbox(pb.ListInboxRequest(unit_id="lszq-sthjj"), timeout=5)
    assert [(i.work_order_id, i.case_id, i.title, i.state, i.unit_id, i.category) for i in listed.items] == [
        (wo, got.case_id, "小区门口夜间施工噪音扰民", got.state, "lszq-sthjj", got.category)
    ]
    assert [(d.kind, d.due_at, d.overdue) for d in listed.items[0].deadlines] == [
        (d.kind, d.due_at, d.overdue) for d in got.deadlines
    ]
    assert listed.page.total_size == 1

    v = got.version
    w = stub.AcceptWorkOrder(pb.AcceptWorkOrderRequest(work_order_id=wo, actor="u1", expected_version=v), timeout=5)
    assert w.work_order.state == common_pb2.CASE_STATE_IN_PROGRESS
    w = stub.RequestExtension(
        pb.RequestExtensionRequest(work_order_id=wo, actor="u1", days=10, reason="现场复测"), timeout=5
    )
    before = {d.kind: d.due_at.ToDatetime() for d in w.work_order.deadlines}["hotline_complaint"]
    w = stub.ApproveExtension(pb.ApproveExtensionRequest(work_order_id=wo, actor="office", approve=True), timeout=5)
    assert w.work_order.state == common_pb2.CASE_STATE_EXTENDED and w.work_order.extension_used
    after = {d.kind: d.due_at.ToDatetime() for d in w.work_order.deadlines}["hotline_complaint"]
    assert after > before
    w = stub.ReplyWorkOrder(
        pb.ReplyWorkOrderRequest(work_order_id=wo, actor="u1", text="已责令夜间停工", attachment_refs=["att://1"]),
        timeout=5,
    )
    assert w.work_order.state == common_pb2.CASE_STATE_REPLIED and list(w.work_order.attachment_refs) == ["att://1"]
    w = stub.ReopenWorkOrder(pb.ReopenWorkOrderRequest(work_order_id=wo, actor="citizen", reason="仍有噪音"), timeout=5)
    assert w.work_order.state == common_pb2.CASE_STATE_REOPENED and w.work_order.reopen_count == 1
    stub.AcceptWorkOrder(pb.AcceptWorkOrderRequest(work_order_id=wo, actor="u1"), timeout=5)
    stub.ReplyWorkOrder(pb.ReplyWorkOrderRequest(work_order_id=wo, actor="u1", text="已安装隔音屏"), timeout=5)
    code, details = code_of(
        lambda: stub.ReopenWorkOrder(
            pb.ReopenWorkOrderRequest(work_order_id=wo, actor="citizen", reason="again"), timeout=5
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "only once" in details
    w = stub.CloseWorkOrder(pb.CloseWorkOrderRequest(work_order_id=wo, actor="office"), timeout=5)
    assert w.work_order.state == common_pb2.CASE_STATE_CLOSED
    w = stub.ReviewWorkOrder(
        pb.ReviewWorkOrderRequest(work_order_id=wo, actor="reviewer", decision=pb.REVIEW_DECISION_REDO, reason="复查"),
        timeout=5,
    )
    assert w.work_order.state == common_pb2.CASE_STATE_REOPENED
    history = stub.GetWorkOrder(pb.GetWorkOrderRequest(work_order_id=wo), timeout=5).work_order.history
    assert [h.action for h in history] == [
        "register",
        "accept",
        "assign",
        "start",
        "request_extension",
        "approve_extension",
        "reply",
        "reopen",
        "start",
        "reply",
        "close",
        "review",
    ]
    assert all(h.actor for h in history)
    # A case page asks for the case's work orders with their histories in one call.
    case_id = got.case_id
    both = stub.ListWorkOrders(pb.ListWorkOrdersRequest(case_id=case_id, with_history=True), timeout=5).work_orders
    assert [list(w.history) for w in both] == [list(history)]
    code, details = code_of(
        lambda: stub.ListWorkOrders(pb.ListWorkOrdersRequest(unit_id="lszq-sthjj", with_history=True), timeout=5)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "with_history" in details


def test_illegal_transitions_fail_naming_the_state(node: Node, stub: routing_grpc.RoutingServiceStub) -> None:
    wo = new_work_order(node, stub, "life-0002")
    attempts = {
        "close": lambda: stub.CloseWorkOrder(pb.CloseWorkOrderRequest(work_order_id=wo, actor="a"), timeout=5),
        "reply": lambda: stub.ReplyWorkOrder(
            pb.ReplyWorkOrderRequest(work_order_id=wo, actor="a", text="x"), timeout=5
        ),
        "refuse": lambda: stub.RefuseWorkOrder(
            pb.RefuseWorkOrderRequest(work_order_id=wo, actor="a", reason="x"), timeout=5
        ),
        "reopen": lambda: stub.ReopenWorkOrder(
            pb.ReopenWorkOrderRequest(work_order_id=wo, actor="a", reason="x"), timeout=5
        ),
        "extension": lambda: stub.RequestExtension(
            pb.RequestExtensionRequest(work_order_id=wo, actor="a", days=5, reason="x"), timeout=5
        ),
        "arbitrate": lambda: stub.ArbitrateObjection(
            pb.ArbitrateObjectionRequest(work_order_id=wo, actor="a", decision=pb.ARBITRATION_DECISION_UPHOLD),
            timeout=5,
        ),
    }
    for name, call in attempts.items():
        code, details = code_of(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION, name
        assert "ASSIGNED" in details, (name, details)

    code, _ = code_of(
        lambda: stub.AcceptWorkOrder(
            pb.AcceptWorkOrderRequest(work_order_id=wo, actor="a", expected_version=99), timeout=5
        )
    )
    assert code == grpc.StatusCode.ABORTED
    code, details = code_of(lambda: stub.AcceptWorkOrder(pb.AcceptWorkOrderRequest(work_order_id=wo), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "actor" in details


def test_objection_upheld_cannot_be_raised_again(node: Node, stub: routing_grpc.RoutingServiceStub) -> None:
    wo = new_work_order(node, stub, "life-0003")
    w = stub.ObjectWorkOrder(pb.ObjectWorkOrderRequest(work_order_id=wo, actor="u1", reason="非本单位职责"), timeout=5)
    assert w.work_order.state == common_pb2.CASE_STATE_OBJECTED
    w = stub.ArbitrateObjection(
        pb.ArbitrateObjectionRequest(work_order_id=wo, actor="office", decision=pb.ARBITRATION_DECISION_UPHOLD),
        timeout=5,
    )
    assert w.work_order.state == common_pb2.CASE_STATE_ASSIGNED
    code, details = code_of(
        lambda: stub.ObjectWorkOrder(
            pb.ObjectWorkOrderRequest(work_order_id=wo, actor="u1", reason="再次异议"), timeout=5
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "may not object again" in details
    w2 = new_work_order(node, stub, "life-0004")
    stub.ObjectWorkOrder(pb.ObjectWorkOrderRequest(work_order_id=w2, actor="u1", reason="非本单位职责"), timeout=5)
    w = stub.ArbitrateObjection(
        pb.ArbitrateObjectionRequest(
            work_order_id=w2, actor="office", decision=pb.ARBITRATION_DECISION_REASSIGN, new_unit_id="lszq-zjj"
        ),
        timeout=5,
    )
    assert w.work_order.unit_id == "lszq-zjj" and w.work_order.state == common_pb2.CASE_STATE_ASSIGNED


def test_supervision_is_recorded_and_listed(node: Node, stub: routing_grpc.RoutingServiceStub) -> None:
    wo = new_work_order(node, stub, "life-0005")
    due = datetime.now(UTC) + timedelta(days=3)
    s = stub.Supervise(
        pb.SuperviseRequest(
            work_order_id=wo, actor="sup-1", level="supervise", demand="三日内报告", due_at=to_timestamp(due)
        ),
        timeout=5,
    ).supervision
    assert (s.level, s.by_node, s.state) == ("supervise", "511102", "open")
    listed = stub.ListSupervisions(pb.ListSupervisionsRequest(region_code="511100"), timeout=5).supervisions
    assert [x.supervision_id for x in listed] == [s.supervision_id]
    # A case page reads the case's supervisions with its work orders, in one call; only when asked.
    case_id = stub.GetWorkOrder(pb.GetWorkOrderRequest(work_order_id=wo), timeout=5).work_order.case_id
    asked = pb.ListWorkOrdersRequest(case_id=case_id, with_history=True, with_supervisions=True)
    both = stub.ListWorkOrders(asked, timeout=5)
    assert [w.work_order_id for w in both.work_orders] == [wo] and list(both.supervisions) == [s]
    assert not stub.ListWorkOrders(pb.ListWorkOrdersRequest(case_id=case_id), timeout=5).supervisions
    code, details = code_of(
        lambda: stub.ListWorkOrders(pb.ListWorkOrdersRequest(unit_id="lszq-sthjj", with_supervisions=True), timeout=5)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "with_supervisions" in details
    code, details = code_of(
        lambda: stub.Supervise(
            pb.SuperviseRequest(work_order_id=wo, actor="sup-1", level="shout", demand="x"), timeout=5
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "level" in details
