"""主办/协办 on a real county 511102 linked to its city 511100, SQLite and PostgreSQL.

The lead unit (生态环境局) asks two assisting units; one answers in time, the other misses its
deadline (the county's clock moves past it), is chased by the sweep and answers late. The city's
warehouse counts the case as one with a late assisting unit. That only the lead unit replies to the
citizen is checked in tests/unit/test_assisting.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

from services.common.service import utc_now
from services.common.timeutil import from_timestamp
from services.node import Node
from tests.support.exchange_nodes import Start, linked_nodes
from tests.support.helpers import wait_until
from tests.support.tiers import metrics, refused, register, replica_types, routing
from tests.support.tiers import placed_with_unit as placed


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return utc_now() + self.offset


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def sweep(node: Node) -> None:
    for timer in node.parts["routing"].timers:
        timer.run()


def test_assisting_units_answer_the_lead_a_late_one_is_chased_and_counted(start: Start) -> None:
    clock = Clock()
    city = start("511100")
    county = start("511102", city, clock=clock)
    case = register(county, "511102")
    order = placed(county, case.case_id)
    assert order.unit_id == "lszq-sthjj"
    stub = routing(county)
    wo = order.work_order_id

    def ask(units: list[str], request: str = "请提供排污许可和执法记录") -> routing_pb2.WorkOrder:
        answer = stub.RequestAssist(
            routing_pb2.RequestAssistRequest(work_order_id=wo, actor="lead-1", unit_ids=units, request=request),
            timeout=5,
        )
        asked: routing_pb2.WorkOrder = answer.work_order
        return asked

    # Bad input names the field and changes nothing.
    assert "unit_ids[0]" in refused(lambda: ask(["lszq-sthjj"]), grpc.StatusCode.INVALID_ARGUMENT)
    assert "unit_ids[1]" in refused(lambda: ask(["lszq-zjj", "no-such-unit"]), grpc.StatusCode.INVALID_ARGUMENT)
    assert refused(lambda: ask(["lszq-zjj"], request=" "), grpc.StatusCode.INVALID_ARGUMENT).startswith("request")

    asked = ask(["lszq-zjj", "lszq-jtj"])
    assert [a.unit_id for a in asked.assisting_units] == ["lszq-zjj", "lszq-jtj"]
    assist_due = {d.kind: d.due_at for d in asked.deadlines}["assist"]
    settle_due = {d.kind: d.due_at for d in asked.deadlines}["settle"]
    assert from_timestamp(assist_due) < from_timestamp(settle_due)  # type: ignore[operator]
    inbox = stub.ListWorkOrders(routing_pb2.ListWorkOrdersRequest(assisting_unit_id="lszq-jtj"), timeout=5)
    assert [w.work_order_id for w in inbox.work_orders] == [wo]

    stub.AnswerAssist(
        routing_pb2.AnswerAssistRequest(
            work_order_id=wo, actor="zjj-1", unit_id="lszq-zjj", text="许可证有效，无违规记录"
        ),
        timeout=5,
    )
    # The transport bureau misses its deadline: the sweep warns (already past: chases) and names it.
    due = from_timestamp(assist_due)
    assert due is not None
    clock.offset = due - utc_now() + timedelta(hours=2)
    sweep(county)
    chased = stub.ListSupervisions(routing_pb2.ListSupervisionsRequest(case_id=case.case_id), timeout=5)
    assert any("lszq-jtj" in s.demand and s.level == "chase" for s in chased.supervisions), chased
    late = stub.AnswerAssist(
        routing_pb2.AnswerAssistRequest(work_order_id=wo, actor="jtj-1", unit_id="lszq-jtj", text="运输车辆已查处"),
        timeout=5,
    ).work_order
    assert [(a.unit_id, a.late) for a in late.assisting_units] == [("lszq-zjj", False), ("lszq-jtj", True)]
    assert "assist" not in [d.kind for d in late.deadlines]
    assert "assist_late_answer" in [h.action for h in late.history]

    # Replicated up: the city's warehouse counts a case with a late assisting unit, as the county's does.
    wait_until(lambda: "deadline_warning" in replica_types(city, case.case_id), 30, "the assist chase at the city")
    for node in (county, city):
        wait_until(lambda n=node: metrics(n, "511102", ["assist_late"]) == {"assist_late": 1}, 30, "assist_late")
