"""Routing's event consumers on a real node: hand-offs arriving from exchange and the citizen's evaluation.

The envelopes are built by hand, as exchange and intake would send them, and published on the
node's in-process bus; a redelivery of the same envelope must change nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.routing.v1 import routing_service_pb2 as pb
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from sqlalchemy import select

from services.common.events import envelope, to_bus_event, unfolded
from services.common.settings import Settings
from services.node import Node
from services.routing import routing_outbox
from services.routing.handlers import work_order_id_for
from services.routing.models import outbox


def start_node(code: str, database_url: str, tmp_path: Path) -> Node:
    url = None if database_url.startswith("sqlite") else database_url
    # The relay stays idle (long interval): the tests read routing's outbox before anything is published.
    settings = Settings(node=code, data_dir=tmp_path, database_url=url, relay_interval_s=3600)
    return Node(settings).start()


@pytest.fixture()
def county(database_url: str, tmp_path: Path) -> Iterator[Node]:
    node = start_node("511102", database_url, tmp_path)
    yield node
    node.stop(grace=1.0)


def hand_off(case_id: str, *, to_node: str, region: str, from_node: str = "511100") -> events_pb2.EventEnvelope:
    """A case_handed_off as exchange delivers it: the case without personal data, the next epoch."""
    case = common_pb2.Case(
        case_id=case_id,
        region_code=region,
        category="环境保护",
        registering_node=from_node,
        channel=common_pb2.CHANNEL_WEB,
        title="夜间施工噪音",
    )
    payload = events_pb2.CaseHandedOff(
        from_node=from_node,
        to_node=to_node,
        new_owner_epoch=2,
        kind="assign_down",
        reason="交办",
        case=case,
        from_work_order_id=work_order_id_for(case_id, from_node),
    )
    return envelope(
        payload_field="case_handed_off",
        payload=payload,
        case_id=case_id,
        version=6,
        owner_node=from_node,
        owner_epoch=1,
        origin_node=from_node,
        origin_service="exchange",
        occurred_at=datetime.now(UTC),
    )


def evaluation(case_id: str, rating: common_pb2.Satisfaction.ValueType, comment: str) -> events_pb2.EventEnvelope:
    return envelope(
        payload_field="case_evaluated",
        payload=events_pb2.CaseEvaluated(satisfaction=rating, comment=comment),
        case_id=case_id,
        version=20,
        owner_node="511102",
        owner_epoch=2,
        origin_node="511102",
        origin_service="intake",
        occurred_at=datetime.now(UTC),
    )


def routing_events(node: Node, case_id: str) -> list[events_pb2.EventEnvelope]:
    """What routing put in its outbox for the case, in outbox order."""
    with node.engines["routing"].connect() as conn:
        rows = conn.execute(select(outbox.c.body).where(outbox.c.case_id == case_id).order_by(outbox.c.position))
        found = []
        for (body,) in rows:
            env = events_pb2.EventEnvelope()
            env.ParseFromString(body)
            found.append(env)
    return found


def work_orders(node: Node, case_id: str) -> list[pb.WorkOrder]:
    with grpc.insecure_channel(node.address) as ch:
        reply = routing_grpc.RoutingServiceStub(ch).ListWorkOrders(pb.ListWorkOrdersRequest(case_id=case_id), timeout=5)
    return list(reply.work_orders)


def test_hand_off_to_this_node_creates_one_work_order_for_a_unit(county: Node) -> None:
    case_id = "511100-20261122-000101"
    env = hand_off(case_id, to_node="511102", region="511102")
    county.bus.publish(to_bus_event(env))

    (wo,) = work_orders(county, case_id)
    assert wo.work_order_id == work_order_id_for(case_id, "511102")
    assert (wo.state, wo.unit_id) == (common_pb2.CASE_STATE_ASSIGNED, "lszq-sthjj")
    published = routing_events(county, case_id)
    created = published[0]
    assert created.WhichOneof("payload") == "work_order_created"
    assert (created.work_order_created.unit_id, created.work_order_created.manual_queue) == ("lszq-sthjj", False)
    # One event for the placement: 受理 and 交办 inside the creation (issue 21).
    assert [(s.action, s.unit_id) for s in created.work_order_created.placement] == [
        ("accept", ""),
        ("assign", "lszq-sthjj"),
    ]
    emitted = [one for env in published for one in unfolded(env)]
    # The case continues at this node from the hand-off's version, under the new owner epoch.
    assert [e.version for e in emitted] == list(range(7, 7 + len(emitted)))
    assert {(e.owner_node, e.owner_epoch) for e in emitted} == {("511102", 2)}

    county.bus.publish(to_bus_event(env))  # at-least-once delivery: the same envelope again
    assert len(work_orders(county, case_id)) == 1
    assert len(routing_events(county, case_id)) == len(published)


def test_a_placement_is_one_event_that_unfolds_into_the_three_it_was(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: the same hand-off placed with the three events published one by one (as before) and
    with one folded event: expanded, the folded outbox is the three events, payloads, versions,
    owners and times alike (only the steps' event ids are derived)."""
    node = start_node("511102", database_url, tmp_path)
    try:
        outboxes = []
        for fold, case_id in ((False, "511100-20261122-000111"), (True, "511100-20261122-000112")):
            monkeypatch.setattr(routing_outbox, "FOLD_PLACEMENT", fold)
            node.bus.publish(to_bus_event(hand_off(case_id, to_node="511102", region="511102")))
            outboxes.append(routing_events(node, case_id))
        three, one = outboxes
        assert [e.WhichOneof("payload") for e in three] == [
            "work_order_created",
            "work_order_changed",
            "work_order_changed",
        ]
        assert [e.WhichOneof("payload") for e in one] == ["work_order_created"]

        def seen(envs: list[events_pb2.EventEnvelope], case_id: str) -> list[tuple[object, ...]]:
            return [
                (
                    e.version,
                    e.owner_node,
                    e.owner_epoch,
                    e.origin_service,
                    e.occurred_at.seconds > 0,
                    e.SerializeToString(deterministic=True).count(case_id.encode()) > 0,
                    getattr(e, e.WhichOneof("payload") or "")
                    .SerializeToString(deterministic=True)
                    .replace(case_id.encode(), b"<case>"),
                )
                for e in envs
            ]

        assert seen([x for e in one for x in unfolded(e)], "511100-20261122-000112") == seen(
            three, "511100-20261122-000111"
        )
        assert one[0].version == three[-1].version == 9
    finally:
        node.stop(grace=1.0)


def test_hand_off_whose_region_lies_in_a_child_is_handed_further_down(database_url: str, tmp_path: Path) -> None:
    city = start_node("511100", database_url, tmp_path)
    try:
        case_id = "510000-20261122-000103"
        city.bus.publish(to_bus_event(hand_off(case_id, to_node="511100", region="511102", from_node="510000")))
        (wo,) = work_orders(city, case_id)
        assert wo.state == common_pb2.CASE_STATE_TRANSFERRED
        handed = [e for e in routing_events(city, case_id) if e.WhichOneof("payload") == "case_handed_off"]
        assert len(handed) == 1
        down = handed[0].case_handed_off
        assert (down.from_node, down.to_node, down.new_owner_epoch, down.kind) == ("511100", "511102", 3, "assign_down")
        assert down.case.case_id == case_id and down.from_work_order_id == wo.work_order_id
        # The hand-off event itself is still stamped with the epoch under which the city owned the case.
        assert (handed[0].origin_service, handed[0].owner_epoch) == ("routing", 2)
    finally:
        city.stop(grace=1.0)


def test_evaluation_reopens_once_then_goes_to_review_and_satisfied_closes(county: Node) -> None:
    case_id = "511100-20261122-000104"
    county.bus.publish(to_bus_event(hand_off(case_id, to_node="511102", region="511102")))
    wo = work_order_id_for(case_id, "511102")
    with grpc.insecure_channel(county.address) as ch:
        stub = routing_grpc.RoutingServiceStub(ch)

        def handle_and_reply(text: str) -> None:
            stub.AcceptWorkOrder(pb.AcceptWorkOrderRequest(work_order_id=wo, actor="u1"), timeout=5)
            replied = stub.ReplyWorkOrder(pb.ReplyWorkOrderRequest(work_order_id=wo, actor="u1", text=text), timeout=5)
            assert replied.work_order.state == common_pb2.CASE_STATE_REPLIED

        def evaluate(rating: common_pb2.Satisfaction.ValueType, comment: str) -> pb.WorkOrder:
            event = to_bus_event(evaluation(case_id, rating, comment))
            county.bus.publish(event)
            county.bus.publish(event)  # a redelivery is not a second evaluation
            got: pb.WorkOrder = stub.GetWorkOrder(pb.GetWorkOrderRequest(work_order_id=wo), timeout=5).work_order
            return got

        handle_and_reply("已责令夜间停工")
        first = evaluate(common_pb2.SATISFACTION_UNSATISFIED, "仍有噪音")
        assert (first.state, first.reopen_count) == (common_pb2.CASE_STATE_REOPENED, 1)
        assert first.history[-1].action == "reopen" and first.history[-1].reason.startswith("仍有噪音")

        handle_and_reply("已安装隔音屏")
        second = evaluate(common_pb2.SATISFACTION_UNSATISFIED, "")
        assert (second.state, second.reopen_count) == (common_pb2.CASE_STATE_REOPENED, 1)
        assert second.history[-1].action == "review" and "复查" in second.history[-1].reason

        handle_and_reply("复查后已整改")
        closed = evaluate(common_pb2.SATISFACTION_SATISFIED, "")
        assert closed.state == common_pb2.CASE_STATE_CLOSED
        assert [h.action for h in closed.history].count("close") == 1
        assert [h.action for h in closed.history].count("reopen") == 1
        assert [h.action for h in closed.history].count("review") == 1
