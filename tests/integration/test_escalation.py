"""上报 (escalation up) between two real nodes: county 511102 gives a case to its parent city 511100.

The hand-off travels through the real up link (child's exchange → parent's PushEvents → the
parent's bus as ``exchange / case_handed_off``); the parent's routing places it with one of its
own units, the county's old work order refuses writes, and a late write from the county under
its old epoch is quarantined at the city as ``stale owner``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as pb
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.events import envelope, to_bus_event
from services.common.service import BusEvent
from services.common.settings import Settings
from services.common.timeutil import to_timestamp
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
def city_and_county(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    city = start("511100", tmp_path)
    county = start("511102", tmp_path, parent=city)
    yield city, county
    county.stop(grace=0.5)
    city.stop(grace=0.5)


def routing(node: Node) -> routing_grpc.RoutingServiceStub:
    return routing_grpc.RoutingServiceStub(grpc.insecure_channel(node.address))


def work_orders(node: Node, case_id: str) -> list[pb.WorkOrder]:
    reply = routing(node).ListWorkOrders(pb.ListWorkOrdersRequest(case_id=case_id), timeout=5)
    return list(reply.work_orders)


def submit(node: Node) -> str:
    ref = uuid.uuid4().hex[:12]
    reply = intake_grpc.IntakeServiceStub(grpc.insecure_channel(node.address)).SubmitCase(
        intake_pb2.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_HOTLINE,
            channel_ref=ref,
            title="化工厂夜间偷排废水",
            body="市中区某化工厂夜间向河道偷排废水，气味刺鼻，多次反映未解决。",
            category="环境保护",
            region_code="511102",
            hotline_operator_id="op-007",
            complainant=common_pb2.Person(name="李四", phone="13900001234"),
        ),
        timeout=5,
    )
    case_id: str = reply.case.case_id
    return case_id


def quarantined(node: Node, peer: str) -> list[exchange_pb2.QuarantinedItem]:
    stub = exchange_grpc.ExchangeServiceStub(grpc.insecure_channel(node.address))
    return list(stub.ListQuarantine(exchange_pb2.ListQuarantineRequest(peer_node=peer), timeout=5).items)


def test_escalation_moves_ownership_to_the_parent_and_the_old_owner_is_stale(
    city_and_county: tuple[Node, Node],
) -> None:
    city, county = city_and_county
    case_id = submit(county)
    wait_until(lambda: work_orders(county, case_id), 10, "the county's work order")
    (old,) = work_orders(county, case_id)
    assert old.state == common_pb2.CASE_STATE_ASSIGNED

    # Bad input changes nothing.
    with pytest.raises(grpc.RpcError) as bad:
        routing(county).EscalateCase(pb.EscalateCaseRequest(case_id=case_id, actor="clerk-1"), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reason" in (bad.value.details() or "")

    reply = routing(county).EscalateCase(
        pb.EscalateCaseRequest(case_id=case_id, actor="clerk-1", reason="涉及跨区企业，县级无法处理"), timeout=5
    )
    assert reply.to_node == "511100" and reply.new_owner_epoch >= 1

    moved = routing(county).GetWorkOrder(pb.GetWorkOrderRequest(work_order_id=old.work_order_id), timeout=5).work_order
    assert moved.state == common_pb2.CASE_STATE_TRANSFERRED
    assert moved.history[-1].action == "escalate_up" and "511100" in moved.history[-1].reason

    def parent_assigned() -> bool:
        return any(w.node == "511100" and w.state == common_pb2.CASE_STATE_ASSIGNED for w in work_orders(city, case_id))

    wait_until(parent_assigned, 15, "an assigned work order at the city")
    (placed,) = work_orders(city, case_id)
    assert placed.work_order_id == work_order_id_for(case_id, "511100")
    assert placed.unit_id == "lsj-sthjj"  # the city's unit for 环境保护, not handed back down to the county

    # The county is no longer the owner: its old work order refuses writes, naming the epoch.
    with pytest.raises(grpc.RpcError) as stale:
        routing(county).AcceptWorkOrder(
            pb.AcceptWorkOrderRequest(work_order_id=old.work_order_id, actor="u1"), timeout=5
        )
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"owner epoch {reply.new_owner_epoch}" in (stale.value.details() or "")
    with pytest.raises(grpc.RpcError) as again:
        routing(county).EscalateCase(
            pb.EscalateCaseRequest(case_id=case_id, actor="clerk-1", reason="再次上报"), timeout=5
        )
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # A late write of the county's routing under its old epoch (a reply it had no right to give any
    # more) travels up and is refused there as a stale owner. (A citizen's rating recorded at the
    # county is not an owner's write: exchange judges it by its origin, test_exchange_rules.)
    late = envelope(
        payload_field="work_order_changed",
        payload=events_pb2.WorkOrderChanged(
            work_order_id="511102-late",
            from_state=common_pb2.CASE_STATE_ACCEPTED,
            to_state=common_pb2.CASE_STATE_REPLIED,
            action="reply",
            actor="county-unit",
        ),
        case_id=case_id,
        version=50,
        owner_node="511102",
        owner_epoch=reply.new_owner_epoch - 1,
        origin_node="511102",
        origin_service="routing",
        occurred_at=datetime.now(UTC),
    )
    county.bus.publish(to_bus_event(late))
    wait_until(
        lambda: any(q.reason.startswith("stale owner") for q in quarantined(city, "511102")),
        15,
        "the county's stale write quarantined at the city",
    )
    # Only the late write was refused: everything the county sent before the escalation landed. A
    # progress notice the county settled after it (its citizen told of the hand-on) waits behind it.
    kinds = [q.payload_summary.split()[0] for q in quarantined(city, "511102")]
    assert kinds[0] == "work_order_changed" and set(kinds[1:]) <= {"progress_notice_settled"}, kinds
    assert [w.work_order_id for w in work_orders(city, case_id)] == [placed.work_order_id]


def hand_off_replica(case_id: str, *, kind: str, from_node: str, to_node: str, epoch: int) -> BusEvent:
    """A case_handed_off as an ancestor's exchange republishes a replica: source exchange, original type."""
    payload = events_pb2.CaseHandedOff(
        from_node=from_node,
        to_node=to_node,
        new_owner_epoch=epoch + 1,
        kind=kind,
        reason="test",
        case=common_pb2.Case(case_id=case_id, region_code="511102", category="环境保护", title="噪音"),
        from_work_order_id=work_order_id_for(case_id, from_node),
    )
    env = envelope(
        payload_field="case_handed_off",
        payload=payload,
        case_id=case_id,
        version=5,
        owner_node=from_node,
        owner_epoch=epoch,
        origin_node=from_node,
        origin_service="routing",
        occurred_at=datetime.now(UTC),
    )
    bus_event = to_bus_event(env)
    return BusEvent(event_id=bus_event.event_id, source="exchange", event_type="case_handed_off", body=bus_event.body)


def test_an_ancestor_ignores_replicated_hand_offs_between_its_descendants(tmp_path: Path) -> None:
    province = start("510000", tmp_path)
    try:
        between = "511100-20261122-000777"
        province.bus.publish(
            hand_off_replica(between, kind="assign_down", from_node="511100", to_node="511102", epoch=1)
        )
        # An escalation addressed to the province, published after it, shows the first was processed.
        mine = "511100-20261122-000778"
        province.bus.publish(hand_off_replica(mine, kind="escalate_up", from_node="511100", to_node="510000", epoch=1))
        wait_until(lambda: work_orders(province, mine), 10, "the escalated case's work order at the province")
        (placed,) = work_orders(province, mine)
        assert placed.node == "510000" and placed.state == common_pb2.CASE_STATE_ASSIGNED
        assert work_orders(province, between) == []
    finally:
        province.stop(grace=0.5)


def test_a_case_handed_down_and_escalated_back_is_taken_back_by_the_same_work_order(tmp_path: Path) -> None:
    city = start("511100", tmp_path)
    try:
        case_id = "510000-20261122-000901"
        # The province hands it to the city (epoch 2), which hands it on to the county (epoch 3) …
        city.bus.publish(hand_off_replica(case_id, kind="assign_down", from_node="510000", to_node="511100", epoch=1))
        wait_until(lambda: work_orders(city, case_id), 10, "the city's work order")
        (down,) = work_orders(city, case_id)
        assert down.state == common_pb2.CASE_STATE_TRANSFERRED
        # … and the county escalates it back up (epoch 4): the city's own work order takes it back.
        city.bus.publish(hand_off_replica(case_id, kind="escalate_up", from_node="511102", to_node="511100", epoch=3))
        wait_until(
            lambda: work_orders(city, case_id)[0].state == common_pb2.CASE_STATE_ASSIGNED,
            10,
            "the city's work order assigned again",
        )
        (back,) = work_orders(city, case_id)
        assert (back.work_order_id, back.unit_id) == (down.work_order_id, "lsj-sthjj")
        # An older escalation (epoch 3, another event) changes nothing.
        city.bus.publish(hand_off_replica(case_id, kind="escalate_up", from_node="511102", to_node="511100", epoch=2))
        full = routing(city).GetWorkOrder(pb.GetWorkOrderRequest(work_order_id=back.work_order_id), timeout=5)
        assert [h.action for h in full.work_order.history][-3:] == ["take_back", "accept", "assign"]
        assert work_orders(city, case_id)[0].updated_at == back.updated_at
    finally:
        city.stop(grace=0.5)


def test_a_countys_supervision_record_is_visible_at_the_city(city_and_county: tuple[Node, Node]) -> None:
    """督办 records are visible to the tiers above: the city lists the county's directive."""
    city, county = city_and_county
    case_id = submit(county)
    wait_until(lambda: work_orders(county, case_id), 10, "the county's work order")
    issued = (
        routing(county)
        .Supervise(
            pb.SuperviseRequest(
                case_id=case_id,
                actor="supervisor-9",
                level="supervise",
                demand="三日内书面报告处理结果",
                due_at=to_timestamp(datetime(2026, 12, 20, tzinfo=UTC)),
            ),
            timeout=5,
        )
        .supervision
    )

    def listed_at_city() -> list[pb.Supervision]:
        reply = routing(city).ListSupervisions(pb.ListSupervisionsRequest(case_id=case_id), timeout=5)
        return [s for s in reply.supervisions if s.supervision_id == issued.supervision_id]

    wait_until(listed_at_city, 15, "the county's supervision listed at the city")
    (seen,) = listed_at_city()
    assert seen.level == "supervise" and seen.demand == "三日内书面报告处理结果"
