"""Three linked nodes (province, city, county) and what tests ask of them.

Stubs, registering a case, work orders, replicas, figures.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from lianxin.video.v1 import video_service_pb2 as video_pb2
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc
from sqlalchemy import select

from services.node import Node
from services.routing.handlers import work_order_id_for
from services.video.models import CaseOwnerRow
from tests.support.exchange_nodes import exchange, phone_for, replicas
from tests.support.helpers import wait_until


@dataclass(frozen=True)
class Tiers:
    province: Node
    city: Node
    county: Node


def intake(node: Node) -> intake_grpc.IntakeServiceStub:
    return intake_grpc.IntakeServiceStub(grpc.insecure_channel(node.address))


def routing(node: Node) -> routing_grpc.RoutingServiceStub:
    return routing_grpc.RoutingServiceStub(grpc.insecure_channel(node.address))


def work_order(node: Node, case_id: str) -> routing_pb2.WorkOrder | None:
    wo_id = work_order_id_for(case_id, node.settings.node)
    try:
        found: routing_pb2.WorkOrder = (
            routing(node).GetWorkOrder(routing_pb2.GetWorkOrderRequest(work_order_id=wo_id), timeout=5).work_order
        )
        return found
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


@dataclass(frozen=True)
class Registered:
    """A case the citizen registered at ``node``, with what the citizen needs to act on it there."""

    node: Node
    case_id: str
    code: str
    last4: str

    def track(self) -> intake_pb2.TrackCaseResponse:
        reply: intake_pb2.TrackCaseResponse = intake(self.node).TrackCase(
            intake_pb2.TrackCaseRequest(tracking_code=self.code, phone_last4=self.last4), timeout=5
        )
        return reply


def register(node: Node, region: str) -> Registered:
    ref = f"eval-{uuid.uuid4().hex[:10]}"
    phone = phone_for(ref)
    submitted = intake(node).SubmitCase(
        intake_pb2.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_WEB,
            channel_ref=ref,
            title="河道漂浮垃圾长期无人清理",
            body="河道里漂浮垃圾长期无人清理，夏天气味很大，希望有关部门尽快处理。",
            category="环境保护",
            region_code=region,
            complainant=common_pb2.Person(name="王五", phone=phone),
        ),
        timeout=5,
    )
    return Registered(node, submitted.case.case_id, submitted.tracking_code, phone[-4:])


def replica_types(node: Node, case_id: str) -> list[str]:
    """Event types of the replicas ``node`` holds for ``case_id`` (from its subtree)."""
    held = exchange(node).ListReplicas(exchange_pb2.ListReplicasRequest(case_id=case_id, max_items=1000), timeout=5)
    return [entry.event_type for entry in held.entries]


def placed_with_unit(node: Node, case_id: str) -> routing_pb2.WorkOrder:
    found: list[routing_pb2.WorkOrder] = []

    def with_unit() -> bool:
        order = work_order(node, case_id)
        if order is not None and order.unit_id:
            found.append(order)
        return bool(found)

    wait_until(with_unit, 30, f"case {case_id} placed with a unit")
    return found[0]


def metrics(node: Node, region: str, names: list[str]) -> dict[str, int]:
    with grpc.insecure_channel(node.address) as channel:
        reply = stats_grpc.StatsServiceStub(channel).GetMetrics(
            stats_pb2.GetMetricsRequest(region_code=region, metrics=names), timeout=5
        )
    return {m.name: int(m.numerator) for m in reply.metrics}


def refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code() == code, caught.value.details()
    return str(caught.value.details())


def video(node: Node) -> video_grpc.VideoServiceStub:
    return video_grpc.VideoServiceStub(grpc.insecure_channel(node.address))


def leader_at(node: Node, leader: str) -> None:
    """A leader of ``node`` receiving every weekday morning in the node's own room."""
    code = node.settings.node
    stub = video(node)
    stub.RegisterRoom(video_pb2.RegisterRoomRequest(room=video_pb2.Room(room_id=f"{code}-R1", node=code)), timeout=5)
    stub.PublishSchedule(
        video_pb2.PublishScheduleRequest(
            actor="admin",
            schedule=video_pb2.Schedule(
                leader_id=leader,
                node=code,
                weekly_patterns=[
                    video_pb2.WeeklyPattern(weekday=day, start_time="09:00", end_time="12:00") for day in range(1, 6)
                ],
                slot_minutes=30,
                buffer_minutes=10,
                max_per_session=6,
                room_ids=[f"{code}-R1"],
            ),
        ),
        timeout=5,
    )


# Each node's unit for 环境保护 in its dispatch catalogue (services/routing/catalogues).
ENVIRONMENT_UNITS = {"511100": "lsj-sthjj", "511102": "lszq-sthjj"}
# The units and rooms of a consultation between the county and the city (远程会商).
COUNTY_UNIT, CITY_UNIT = "lszq-sthjj", "lsj-sthjj"
COUNTY_ROOM, CITY_ROOM = "511102-HS1", "511100-HS1"


def placed_by_hand(node: Node, case_id: str) -> routing_pb2.WorkOrder:
    """The case's work order at ``node``, with a unit (placed by hand when the catalogue left it queued)."""
    wait_until(lambda: work_order(node, case_id) is not None, 20, f"the work order at {node.settings.node}")
    order = work_order(node, case_id)
    assert order is not None
    if order.unit_id:
        return order
    unit = ENVIRONMENT_UNITS[node.settings.node]
    request = routing_pb2.AssignManuallyRequest(case_id=case_id, actor="clerk", unit_id=unit, reason="生态环境局办理")
    done: routing_pb2.WorkOrder = routing(node).AssignManually(request, timeout=5).work_order
    return done


def held_types(node: Node, case_id: str) -> list[str]:
    return [e.event_type for e in sorted(replicas(node, case_id=case_id).entries, key=lambda e: e.case_sequence)]


def quarantined(node: Node, case_id: str) -> list[str]:
    items = exchange(node).ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5).items
    return [f"{item.payload_summary}: {item.reason}" for item in items if case_id in item.payload_summary]


def connect(nodes: list[Node]) -> None:
    """Every node's video knows every other's address (as `lianxin up` sets LIANXIN_VIDEO_PEERS)."""
    for node in nodes:
        peers = node.hooks.video_peers
        peers.update({n.settings.node: n.address for n in nodes if n is not node})


def rooms(county: Node, city: Node, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    """Each node's consultation room, registered at its node; the county registers the city's too."""
    for node, room, owner in (
        (county, COUNTY_ROOM, "511102"),
        (county, CITY_ROOM, "511100"),
        (city, CITY_ROOM, "511100"),
    ):
        video(node).RegisterRoom(
            video_pb2.RegisterRoomRequest(room=video_pb2.Room(room_id=room, node=owner, name="会商室")),
            metadata=metadata,
            timeout=5,
        )


def participants() -> list[video_pb2.ConsultationParticipant]:
    return [
        video_pb2.ConsultationParticipant(node="511102", unit_id=COUNTY_UNIT, room_id=COUNTY_ROOM),
        video_pb2.ConsultationParticipant(node="511100", unit_id=CITY_UNIT, room_id=CITY_ROOM),
    ]


def known_owner(node: Node, case_id: str) -> tuple[str, int] | None:
    with node.engines["video"].connect() as conn:
        row = conn.execute(
            select(CaseOwnerRow.owner_node, CaseOwnerRow.owner_epoch).where(CaseOwnerRow.case_id == case_id)
        ).one_or_none()
    return None if row is None else (row[0], int(row[1]))


def handed_down_by_the_city(tiers: Tiers) -> Registered:
    """A case registered at the city and handed down (交办) to the county, once the city's video knows it."""
    case = register(tiers.city, "511100")
    wait_until(lambda: work_order(tiers.city, case.case_id) is not None, 20, "the city's work order")
    routing(tiers.city).AssignManually(
        routing_pb2.AssignManuallyRequest(case_id=case.case_id, actor="clerk", node="511102", reason="请市中区办理"),
        timeout=5,
    )
    placed_by_hand(tiers.county, case.case_id)
    # The city's video learns of the hand-off from its routing's event on the bus: wait for that.
    wait_until(lambda: known_owner(tiers.city, case.case_id) == ("511102", 2), 20, "the hand-off in the city's video")
    return case
