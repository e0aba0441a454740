"""领导批转 on a real county 511102 linked to its city 511100, SQLite and PostgreSQL.

The county lists a class of matters its Party secretary instructs personally (LIANXIN_LEADER_CLASSES).
A matching case waits in the leader's queue (nobody may accept or assign it), with a time limit the
sweep chases; once the instruction is recorded (leader's name, time, text on the case, the name masked
in logs) the case goes to the unit placement chose. Both warehouses count the instructed case.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

from services.common.service import utc_now
from services.common.timeutil import from_timestamp
from services.node import Node
from tests.support.exchange_nodes import Start, linked_nodes
from tests.support.helpers import wait_until
from tests.support.tiers import metrics, refused, register, replica_types, routing, work_order

CLASSES = """
classes:
  - id: river-pollution
    name: 重点流域污染
    leader: 区委书记
    keywords: [河道]
  - id: collapse
    name: 坍塌事故隐患
    leader: 区长
    categories: [安全生产]
"""
LEADER = "李明华"


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return utc_now() + self.offset


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    classes = tmp_path / "leader_classes.yaml"
    classes.write_text(CLASSES, encoding="utf-8")
    monkeypatch.setenv("LIANXIN_LEADER_CLASSES", str(classes))
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def queued(node: Node, case_id: str) -> routing_pb2.WorkOrder:
    found: list[routing_pb2.WorkOrder] = []

    def in_queue() -> bool:
        order = work_order(node, case_id)
        if order is not None and order.leader_class:
            found.append(order)
        return bool(found)

    wait_until(in_queue, 30, f"case {case_id} in the leader's queue")
    return found[0]


def test_a_leaders_class_waits_for_the_instruction_which_follows_the_case(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    city = start("511100")
    county = start("511102", city, clock=clock)
    case = register(county, "511102")  # 河道漂浮垃圾…: the river class
    order = queued(county, case.case_id)
    assert order.state == common_pb2.CASE_STATE_REGISTERED and not order.unit_id
    assert order.leader_class == "river-pollution"
    assert "instruct" in [d.kind for d in order.deadlines]
    stub = routing(county)
    queue = stub.ListLeaderQueue(routing_pb2.ListLeaderQueueRequest(), timeout=5)
    assert [(i.work_order.case_id, i.class_name, i.leader) for i in queue.items] == [
        (case.case_id, "重点流域污染", "区委书记")
    ]
    wo = order.work_order_id
    assert "leader's instruction" in refused(
        lambda: stub.AcceptWorkOrder(routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="clerk"), timeout=5),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    def instruct(name: str, text: str) -> routing_pb2.WorkOrder:
        request = routing_pb2.RecordInstructionRequest(
            work_order_id=wo, actor="mishu-1", leader_name=name, instruction=text
        )
        answer: routing_pb2.RecordInstructionResponse = stub.RecordInstruction(request, timeout=5)
        return answer.work_order

    assert refused(lambda: instruct(" ", "请生态环境局牵头"), grpc.StatusCode.INVALID_ARGUMENT).startswith(
        "leader_name"
    )
    assert refused(lambda: instruct(LEADER, ""), grpc.StatusCode.INVALID_ARGUMENT).startswith("instruction")

    # The queue's time limit: the sweep warns, then chases (催办) once it has passed.
    due = from_timestamp(next(d.due_at for d in order.deadlines if d.kind == "instruct"))
    assert due is not None
    clock.offset = due - utc_now() + timedelta(hours=2)
    for timer in county.parts["routing"].timers:
        timer.run()
    chased = stub.ListSupervisions(routing_pb2.ListSupervisionsRequest(case_id=case.case_id), timeout=5)
    assert any(s.level == "chase" and s.demand.startswith("instruct deadline") for s in chased.supervisions)

    done = instruct(LEADER, "请区生态环境局牵头，三日内清理并报结果")
    assert done.state == common_pb2.CASE_STATE_ASSIGNED and done.unit_id == "lszq-sthjj"
    assert (done.instruction.leader_name, done.instruction.recorded_by) == (LEADER, "mishu-1")
    assert done.instruction.text == "请区生态环境局牵头，三日内清理并报结果"
    assert "instruct" not in [d.kind for d in done.deadlines]
    assert "instruct" in [h.action for h in done.history]
    assert not stub.ListLeaderQueue(routing_pb2.ListLeaderQueueRequest(), timeout=5).items
    assert "already instructed" in refused(lambda: instruct(LEADER, "再批"), grpc.StatusCode.FAILED_PRECONDITION)
    assert LEADER not in caplog.text and "leader instruction recorded" in caplog.text

    wait_until(lambda: any("领导已批示" in e.summary for e in case.track().timeline), 30, "领导已批示 on TrackCase")
    wait_until(lambda: "deadline_warning" in replica_types(city, case.case_id), 30, "the queue's chase at the city")
    for node in (county, city):
        wait_until(lambda n=node: metrics(n, "511102", ["instructed"]) == {"instructed": 1}, 30, "instructed")
