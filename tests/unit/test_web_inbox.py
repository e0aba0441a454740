"""The console's inbox titles its rows from routing's copy of each case and asks intake only for the rest."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

from services.web.console.inbox import titled_rows


class _Intake:
    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def ListCases(self, request: intake_pb2.ListCasesRequest) -> intake_pb2.ListCasesResponse:
        self.asked.append(list(request.case_ids))
        return intake_pb2.ListCasesResponse(
            cases=[common_pb2.Case(case_id=case_id, title=f"intake's {case_id}") for case_id in request.case_ids]
        )


def _page(intake: _Intake) -> Any:
    gateway = SimpleNamespace(workdays_until=lambda _today, _due: 3)
    return SimpleNamespace(
        gateway=gateway, client=SimpleNamespace(intake=intake), call=lambda method, request: method(request)
    )


def _item(case_id: str, title: str) -> routing_pb2.InboxItem:
    due = common_pb2.Deadline(kind="settle", overdue=False)
    due.due_at.FromDatetime(datetime(2026, 12, 20))
    return routing_pb2.InboxItem(work_order_id=f"WO-{case_id}", case_id=case_id, title=title, deadlines=[due])


def test_rows_with_routing_s_title_ask_intake_nothing_and_the_others_are_asked_in_one_call() -> None:
    intake = _Intake()
    rows = titled_rows(_page(intake), [_item("c1", "噪音扰民"), _item("c2", ""), _item("c3", "")])
    assert [r.title for r in rows] == ["噪音扰民", "intake's c2", "intake's c3"]
    assert intake.asked == [["c2", "c3"]]
    deadline = rows[0].deadline
    assert deadline is not None and deadline.workdays == 3 and deadline.kind == "办理时限" and deadline.day == "12-20"

    intake.asked.clear()
    titled_rows(_page(intake), [_item("c1", "噪音扰民")])
    assert intake.asked == []


def test_a_queue_s_work_orders_are_titled_by_intake() -> None:
    intake = _Intake()
    orders = [routing_pb2.WorkOrder(work_order_id="WO-c9", case_id="c9")]
    assert [r.title for r in titled_rows(_page(intake), orders)] == ["intake's c9"]
    assert intake.asked == [["c9"]]
