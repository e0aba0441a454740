"""Commands and hand-offs routed between real linked nodes: they climb toward a target above, turn down
toward a target in another subtree, follow the case after a hand-off, and arrive exactly once.

Nodes run all five services with their own databases (SQLite files, or one PostgreSQL database per
node) and talk over the real PushEvents/PullDown links. A node's own service issues a command by
publishing ``events.v1.Command`` on its bus (event type ``command``), as intake does for a citizen's
evaluation of a case owned elsewhere.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.events import envelope
from services.common.service import BusEvent, Subscription
from services.common.settings import Settings
from services.common.timeutil import to_timestamp
from services.exchange.ports import COMMAND, Item
from services.exchange.store import ExchangeStore
from services.node import Node
from tests.support.exchange_nodes import Start, exchange, free_port, linked_nodes, submit
from tests.support.helpers import wait_until


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def command(case_id: str, *, target: str, issuer: str, epoch_seen: int = 1) -> events_pb2.Command:
    return events_pb2.Command(
        command_id=str(uuid.uuid4()),
        case_id=case_id,
        target_node=target,
        issuing_node=issuer,
        owner_epoch_seen=epoch_seen,
        issued_at=to_timestamp(datetime.now(UTC)),
        evaluate=events_pb2.Command.EvaluateCase(satisfaction=common_pb2.SATISFACTION_UNSATISFIED, comment="没解决"),
    )


def issue(node: Node, cmd: events_pb2.Command, *, service: str = "intake") -> None:
    """What a service of ``node`` does to send a command: put it on its bus (the relay may deliver it twice)."""
    node.bus.publish(BusEvent(cmd.command_id, service, "command", cmd.SerializeToString()))


class Arrivals:
    """Commands delivered on a node's bus (source exchange), in arrival order."""

    def __init__(self, node: Node) -> None:
        self.commands: list[events_pb2.Command] = []
        self._lock = threading.Lock()
        node.bus.subscribe(Subscription("probe", "exchange", "command", self._arrived))

    def _arrived(self, event: BusEvent) -> None:
        cmd = events_pb2.Command()
        cmd.ParseFromString(event.body)
        with self._lock:
            self.commands.append(cmd)

    def ids(self) -> list[str]:
        with self._lock:
            return [c.command_id for c in self.commands]


def quarantine(node: Node, peer: str = "") -> list[exchange_pb2.QuarantinedItem]:
    listed = exchange(node).ListQuarantine(exchange_pb2.ListQuarantineRequest(peer_node=peer), timeout=5)
    return list(listed.items)


def store_of(node: Node) -> ExchangeStore:
    stores: dict[str, ExchangeStore] = node.hooks.exchange_store
    return stores[node.code]


def settled(node: Node) -> bool:
    """The node's link to its parent has nothing left to push."""
    links = exchange(node).LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links
    return all(link.lag_events == 0 for link in links if link.direction == exchange_pb2.LINK_DIRECTION_UP)


def test_a_command_climbs_two_tiers_to_its_target_and_is_delivered_once(start: Start) -> None:
    province = start("510000")
    city = start("511100", province)
    county = start("511102", city)
    at_province, at_city = Arrivals(province), Arrivals(city)

    up_two = command("511102-20261122-000001", target="510000", issuer="511102")
    up_one = command("511102-20261122-000002", target="511100", issuer="511102")
    issue(county, up_two)
    issue(county, up_two)  # redelivered by the bus: still one command
    issue(county, up_one, service="routing")

    wait_until(lambda: up_two.command_id in at_province.ids(), 15, "the command at 四川")
    wait_until(lambda: up_one.command_id in at_city.ids(), 15, "the command at 乐山")
    wait_until(lambda: settled(county) and settled(city), 15, "both links to drain")
    assert at_province.ids() == [up_two.command_id]
    assert at_city.ids() == [up_one.command_id]  # the city only passed the other one on
    arrived = at_province.commands[0]
    assert (arrived.case_id, arrived.target_node, arrived.issuing_node) == (up_two.case_id, "510000", "511102")
    assert arrived.evaluate.comment == "没解决"
    assert [quarantine(n) for n in (province, city, county)] == [[], [], []]

    # The same command pushed again (a child's lost ack, a replay) is not delivered a second time.
    reply = exchange(province).PushEvents(
        exchange_pb2.PushEventsRequest(
            child_node="511100",
            items=[exchange_pb2.ExchangeItem(position=1_000_000, command=up_two.SerializeToString())],
        ),
        timeout=5,
    )
    assert reply.acked_position == 1_000_000 and list(reply.rejections) == []
    wait_until(lambda: settled(city), 10, "the city's link")
    assert at_province.ids() == [up_two.command_id]
    # Commands are not case events: they are not among the replicas a node holds.
    held = exchange(province).ListReplicas(exchange_pb2.ListReplicasRequest(max_items=100), timeout=5)
    assert up_two.case_id not in {e.case_id for e in held.entries}


def test_a_command_for_another_subtree_climbs_then_goes_down_to_it(start: Start) -> None:
    city = start("511100")
    shizhong = start("511102", city)
    shawan = start("511111", city)
    at_shawan, at_city = Arrivals(shawan), Arrivals(city)

    sideways = command("511111-20261122-000009", target="511111", issuer="511102")
    issue(shizhong, sideways)

    wait_until(lambda: sideways.command_id in at_shawan.ids(), 20, "the command at 沙湾区")
    wait_until(lambda: settled(shizhong), 10, "市中区's link")
    assert at_shawan.ids() == [sideways.command_id]
    assert at_city.ids() == []
    assert [quarantine(n) for n in (city, shizhong, shawan)] == [[], [], []]


def test_a_hand_off_between_two_counties_goes_up_and_down_to_its_target(start: Start) -> None:
    """转送 sideways: the hand-off travels up as a replica, and the city sends it down to the other county."""
    city = start("511100")
    shizhong = start("511102", city)
    shawan = start("511111", city)
    arrived: list[str] = []
    shawan.bus.subscribe(Subscription("probe", "exchange", "case_handed_off", lambda e: arrived.append(e.event_id)))

    case_id = "511102-20261122-000321"
    env = envelope(
        payload_field="case_handed_off",
        payload=events_pb2.CaseHandedOff(
            from_node="511102",
            to_node="511111",
            new_owner_epoch=2,
            kind="transfer",
            reason="属地管理: 事发地在沙湾区",
            case=common_pb2.Case(case_id=case_id, title="河道垃圾", region_code="511111", category="环境保护"),
        ),
        case_id=case_id,
        version=2,
        owner_node="511102",
        owner_epoch=1,
        origin_node="511102",
        origin_service="routing",
        occurred_at=datetime.now(UTC),
    )
    shizhong.bus.publish(BusEvent(env.event_id, "routing", "case_handed_off", env.SerializeToString()))

    wait_until(lambda: arrived == [env.event_id], 20, "the hand-off at 沙湾区")
    assert store_of(shawan).known_owner(case_id) == (2, "511111")
    assert [quarantine(n) for n in (city, shizhong, shawan)] == [[], [], []]


def routing_stub(node: Node) -> routing_grpc.RoutingServiceStub:
    return routing_grpc.RoutingServiceStub(grpc.insecure_channel(node.address))


def test_a_command_addressed_to_the_old_owner_follows_the_case_up_after_escalation(start: Start) -> None:
    city = start("511100")
    county = start("511102", city)
    at_city, at_county = Arrivals(city), Arrivals(county)
    case_id = submit(county, f"call-cmd-{uuid.uuid4().hex[:8]}")

    def county_work_orders() -> list[routing_pb2.WorkOrder]:
        reply = routing_stub(county).ListWorkOrders(routing_pb2.ListWorkOrdersRequest(case_id=case_id), timeout=5)
        return list(reply.work_orders)

    wait_until(county_work_orders, 15, "the county's work order")
    escalated = routing_stub(county).EscalateCase(
        routing_pb2.EscalateCaseRequest(case_id=case_id, actor="clerk-1", reason="涉及跨区企业"), timeout=5
    )
    wait_until(lambda: store_of(county).known_owner(case_id) is not None, 10, "the county's exchange to see 上报")

    # Issued at the county for the county (what it knew at the time): exchange retargets it to the owner.
    stale = command(case_id, target="511102", issuer="511102", epoch_seen=escalated.new_owner_epoch - 1)
    issue(county, stale)

    wait_until(lambda: stale.command_id in at_city.ids(), 20, "the command at the new owner")
    delivered = next(c for c in at_city.commands if c.command_id == stale.command_id)
    assert (delivered.target_node, delivered.owner_epoch_seen) == ("511100", escalated.new_owner_epoch)
    # The county hears only the city's handling updates for its citizen (body "handling"), never the command.
    assert stale.command_id not in at_county.ids()
    assert all(c.WhichOneof("body") == "handling" for c in at_county.commands)
    assert [quarantine(n) for n in (city, county)] == [[], []]


def test_commands_that_cannot_get_anywhere_are_quarantined_with_the_reason(start: Start) -> None:
    province = start("510000")
    city = start("511100", province)
    at_province = Arrivals(province)

    nowhere = command("511100-20261122-000001", target="999999", issuer="511100")
    issue(city, nowhere)
    good = command("511100-20261122-000002", target="510000", issuer="511100")
    issue(city, good)
    wait_until(lambda: good.command_id in at_province.ids(), 15, "the routable command at 四川")
    (local,) = quarantine(city, "local")
    assert local.reason.startswith("unknown node: command target 999999")
    assert local.payload_summary.startswith("command evaluate 511100-20261122-000001")

    # A parent handing down a command whose target is not below this node: refused, not bounced back up.
    misrouted = command("511300-20261122-000001", target="511302", issuer="510000")
    # As if pulled from the province (a cursor of its own, so the real link's is untouched).
    assert store_of(city).apply_down("510000", [store_item(misrouted)], cursor_kind="test_down") == 1
    (refused,) = quarantine(city, "510000")
    assert refused.reason.startswith("out of subtree: command target 511302 is not under 511100")

    # Once the operator fixes what was wrong, a replay routes it (here: the unknown target stays unknown).
    replay = exchange(city).ReplayQuarantine(exchange_pb2.ReplayQuarantineRequest(ids=[local.id]), timeout=5)
    assert not replay.results[0].applied and replay.results[0].reason.startswith("unknown node")


def store_item(cmd: events_pb2.Command) -> Item:
    return Item(1, COMMAND, cmd.SerializeToString())


@pytest.mark.parametrize("start", ["sqlite"], indirect=True)
def test_a_command_issued_while_the_parent_is_down_arrives_after_reconnection(start: Start, tmp_path: Path) -> None:
    port = free_port()
    city = start("511100", port=port)
    county = start("511102", city)
    city.stop(grace=0.5)
    queued = command("511102-20261122-000077", target="511100", issuer="511102")
    issue(county, queued)
    wait_until(
        lambda: exchange(county).LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links[0].lag_events >= 1,
        10,
        "the command waiting on the county's up-log",
    )
    # The city comes back on its data (listening on its bus before it starts, to see every arrival).
    city = Node(Settings(node="511100", data_dir=tmp_path, grpc_port=port, relay_interval_s=0.05, log_json=False))
    at_city = Arrivals(city)
    city.start()
    try:
        wait_until(lambda: queued.command_id in at_city.ids(), 20, "the command after reconnection")
        wait_until(lambda: settled(county), 10, "the county's link")
        assert at_city.ids() == [queued.command_id]
    finally:
        city.stop(grace=0.5)
