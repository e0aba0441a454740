"""A node's time limits come from its own YAML (LIANXIN_TIME_LIMITS), per category; bad files fail the start."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.settings import Settings
from services.common.timeutil import CHINA, china_date
from services.node import Node
from services.routing.domain.timelimits import PolicyError
from services.routing.provisional import ProvisionalCalendar
from tests.support.helpers import wait_until


def submit_hotline_case(channel: grpc.Channel, ref: str, *, category: str, body: str) -> str:
    """A 12345 hotline case about a matter in 511102; returns its case id."""
    reply = intake_grpc.IntakeServiceStub(channel).SubmitCase(
        intake_pb2.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_HOTLINE,
            channel_ref=ref,
            title=body[:20],
            body=body,
            category=category,
            region_code="511102",
            hotline_operator_id="op-1",
            complainant=common_pb2.Person(phone="13912345678"),
        ),
        timeout=10,
    )
    return str(reply.case.case_id)


@pytest.fixture()
def node_with_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    policy = tmp_path / "time_limits.yaml"
    policy.write_text("categories:\n  环境保护:\n    hotline_complaint: 5 working days\n", encoding="utf-8")
    monkeypatch.setenv("LIANXIN_TIME_LIMITS", str(policy))
    node = Node(Settings(node="511102", data_dir=tmp_path, relay_interval_s=0.05)).start()
    yield node
    node.stop(grace=0.5)


def test_a_category_override_from_the_nodes_file_sets_the_deadline(node_with_policy: Node) -> None:
    channel = grpc.insecure_channel(node_with_policy.address)
    case_id = submit_hotline_case(channel, "tl-1", category="环境保护", body="乐山市市中区某工地夜间施工噪音扰民")
    routing = routing_grpc.RoutingServiceStub(channel)

    def work_order() -> routing_pb2.WorkOrder | None:
        found = routing.ListWorkOrders(routing_pb2.ListWorkOrdersRequest(case_id=case_id), timeout=5).work_orders
        return found[0] if found else None

    wait_until(work_order, 10, "the work order")
    found = work_order()
    assert found is not None
    due = {d.kind: d.due_at.ToDatetime(tzinfo=UTC) for d in found.deadlines}["hotline_complaint"]
    expected_day = ProvisionalCalendar.with_files([]).add_workdays(china_date(datetime.now(UTC)), 5)
    assert due.astimezone(CHINA).date() == expected_day  # 5 working days from the file, not the national 13


def test_a_bad_time_limits_file_fails_the_start_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tmp_path / "time_limits.yaml"
    policy.write_text("categories:\n  环境保护:\n    hotline_complaint: soon\n", encoding="utf-8")
    monkeypatch.setenv("LIANXIN_TIME_LIMITS", str(policy))
    with pytest.raises(PolicyError, match="hotline_complaint"):
        Node(Settings(node="511102", data_dir=tmp_path)).start()


def test_pausing_the_clock_moves_the_deadlines_by_the_paused_working_days(tmp_path: Path) -> None:
    """等待补充材料 / 听证: a pause from Monday to Thursday gives back Tuesday, Wednesday and Thursday."""
    now = [datetime(2026, 11, 23, 9, 0, tzinfo=CHINA).astimezone(UTC)]  # a Monday
    node = Node(Settings(node="511102", data_dir=tmp_path, relay_interval_s=0.05), clock=lambda: now[0]).start()
    try:
        channel = grpc.insecure_channel(node.address)
        case_id = submit_hotline_case(channel, "pause-1", category="城乡建设", body="乐山市市中区某小区连续三天停水")
        routing = routing_grpc.RoutingServiceStub(channel)

        def listed() -> list[routing_pb2.WorkOrder]:
            request = routing_pb2.ListWorkOrdersRequest(case_id=case_id)
            return list(routing.ListWorkOrders(request, timeout=5).work_orders)

        wait_until(listed, 10, "the work order")
        order = listed()[0]
        before = {d.kind: d.due_at.ToDatetime(tzinfo=UTC) for d in order.deadlines}

        with pytest.raises(grpc.RpcError) as no_reason:
            routing.PauseWorkOrder(
                routing_pb2.PauseWorkOrderRequest(work_order_id=order.work_order_id, actor="handler-1"), timeout=5
            )
        assert no_reason.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        routing.PauseWorkOrder(
            routing_pb2.PauseWorkOrderRequest(
                work_order_id=order.work_order_id, actor="handler-1", reason="等待信访人补充材料"
            ),
            timeout=5,
        )
        with pytest.raises(grpc.RpcError) as twice:
            routing.PauseWorkOrder(
                routing_pb2.PauseWorkOrderRequest(work_order_id=order.work_order_id, actor="handler-1", reason="再停"),
                timeout=5,
            )
        assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        now[0] = datetime(2026, 11, 26, 10, 0, tzinfo=CHINA).astimezone(UTC)  # Thursday
        resumed = routing.ResumeWorkOrder(
            routing_pb2.ResumeWorkOrderRequest(work_order_id=order.work_order_id, actor="handler-1"), timeout=5
        ).work_order
        after = {d.kind: d.due_at.ToDatetime(tzinfo=UTC) for d in resumed.deadlines}
        calendar = ProvisionalCalendar.with_files([])
        old_day = before["hotline_complaint"].astimezone(CHINA).date()
        assert after["hotline_complaint"].astimezone(CHINA).date() == calendar.add_workdays(old_day, 3)
        assert [h.action for h in resumed.history][-2:] == ["pause", "resume"]
    finally:
        node.stop(grace=0.5)
