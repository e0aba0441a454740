"""Exchange between real nodes in one process: county 511102 → city 511100 → province 510000 over real gRPC.

Each node runs all five services on its own port and its own database (SQLite files, or one
PostgreSQL database per node); the links are the real PushEvents/PullDown pumps with their
persisted cursors.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc

from services.common.events import envelope
from services.common.service import BusEvent, Subscription
from services.node import Node
from tests.support.exchange_nodes import Start, exchange, free_port, linked_nodes, replicas, submit
from tests.support.helpers import wait_until


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def converged(nodes: list[Node], subtree: str, expected: int) -> Callable[[], bool]:
    def check() -> bool:
        replies = [replicas(n, subtree) for n in nodes]
        # Routing may add events for a case (work order changes), so `expected` is a floor.
        return all(r.count >= expected for r in replies) and len({r.digest for r in replies}) == 1

    return check


def test_case_registered_at_county_is_visible_at_city_and_province(start: Start) -> None:
    province = start("510000")
    city = start("511100", province)
    county = start("511102", city)
    case_id = submit(county, "call-up-1")

    wait_until(converged([county, city, province], "511102", 2), 15, "registration and work order at 四川")
    held = replicas(province, case_id=case_id)
    # The placement is one work_order_created carrying 受理 and 交办, at the last of their versions 2-4
    # (the 受理 SMS's progress_notice_settled keeps the 受理's version, 3, as before).
    kinds = [(e.version, e.event_type) for e in held.entries]
    assert kinds[0] == (1, "case_registered") and (4, "work_order_created") in kinds
    assert [k for _, k in kinds].count("work_order_created") == 1 and "work_order_changed" not in [k for _, k in kinds]
    # The province numbered the case's events on its own up-log: once each, no gaps.
    assert sorted(e.case_sequence for e in held.entries) == list(range(1, held.count + 1))
    assert {e.origin_node for e in held.entries} == {"511102"}
    quarantined = exchange(province).ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5)
    assert list(quarantined.items) == []


def test_parent_republishes_replicas_on_its_bus_once(start: Start) -> None:
    city = start("511100")
    seen: list[str] = []
    city.bus.subscribe(Subscription("probe", "exchange", "case_registered", lambda e: seen.append(e.event_id)))
    county = start("511102", city)
    first = submit(county, "call-bus-1")
    wait_until(lambda: len(seen) == 1, 10, "the replica on the city's bus")
    # The child restarts and pushes again from its cursor: nothing is doubled at the parent.
    county.stop(grace=0.5)
    county = start("511102", city)
    submit(county, "call-bus-2")
    wait_until(lambda: len(seen) == 2, 10, "the second replica")
    # The first case's later events (its work order) may have been recorded after the restart, behind
    # the second case's registration: the city holds everything the county does once they crossed.
    wait_until(
        lambda: replicas(city, case_id=first).digest == replicas(county, case_id=first).digest,
        10,
        "the first case's events at the city",
    )
    assert len(set(seen)) == 2


def hand_off_event(case_id: str, *, to_node: str, epoch: int) -> BusEvent:
    from datetime import UTC, datetime

    env = envelope(
        payload_field="case_handed_off",
        payload=events_pb2.CaseHandedOff(
            from_node="510000",
            to_node=to_node,
            new_owner_epoch=epoch,
            kind="assign_down",
            reason="属地管理",
            case=common_pb2.Case(case_id=case_id, title="道路破损", region_code=to_node, category="城乡建设"),
        ),
        case_id=case_id,
        version=3,
        owner_node="510000",
        owner_epoch=epoch - 1,
        origin_node="510000",
        origin_service="routing",
        occurred_at=datetime.now(UTC),
    )
    return BusEvent(env.event_id, "routing", "case_handed_off", env.SerializeToString())


def test_hand_off_from_province_reaches_county_across_two_hops(start: Start) -> None:
    province = start("510000")
    city = start("511100", province)
    county = start("511102", city)
    arrived: list[events_pb2.EventEnvelope] = []

    def on_arrival(event: BusEvent) -> None:
        env = events_pb2.EventEnvelope()
        env.ParseFromString(event.body)
        arrived.append(env)

    county.bus.subscribe(Subscription("probe", "exchange", "case_handed_off", on_arrival))
    city_seen: list[str] = []
    city.bus.subscribe(Subscription("probe", "exchange", "case_handed_off", lambda e: city_seen.append(e.event_id)))

    # Routing at the province hands the case down (its event on the province's bus, as the relay would).
    event = hand_off_event("510000-20261122-000001", to_node="511102", epoch=2)
    province.bus.publish(event)
    province.bus.publish(event)  # redelivered: still one hand-off

    wait_until(lambda: len(arrived) == 1, 10, "the hand-off at 市中区")
    assert arrived[0].case_handed_off.to_node == "511102"
    assert arrived[0].case_handed_off.new_owner_epoch == 2
    # The city forwarded it and published it once on its own bus (its warehouse counts the case,
    # docs/stats.md); its routing leaves a hand-off addressed to another node alone.
    assert city_seen == [arrived[0].event_id]
    status = exchange(province).LinkStatus(exchange_pb2.LinkStatusRequest(peer_node="511100"), timeout=5)
    wait_until(
        lambda: (
            exchange(province)
            .LinkStatus(exchange_pb2.LinkStatusRequest(peer_node="511100"), timeout=5)
            .links[0]
            .lag_events
            == 0
        ),
        10,
        "the city to acknowledge",
    )
    assert status.links[0].direction == exchange_pb2.LINK_DIRECTION_DOWN


def test_county_cut_off_converges_after_reconnection(start: Start) -> None:
    port = free_port()
    city = start("511100", port=port)
    county = start("511102", city)
    submit(county, "call-p-1")
    wait_until(converged([county, city], "511102", 2), 10, "first case at the city")

    city.stop(grace=0.5)
    cases = [submit(county, f"call-p-{i}") for i in range(2, 6)]
    wait_until(
        lambda: (
            exchange(county).LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links[0].state
            == exchange_pb2.LINK_STATE_UNREACHABLE
        ),
        10,
        "the county to notice the partition",
    )
    wait_until(
        lambda: (
            exchange(county).LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links[0].lag_events
            >= 2 * len(cases)
        ),
        10,
        "the county to queue every event of the partition",
    )

    city = start("511100", port=port)
    submit_city_local = submit(city, "call-city-1", region="511100")
    wait_until(converged([county, city], "511102", 2 * (len(cases) + 1)), 30, "convergence after reconnection")
    # The city's own case reaches its up-log through its relay, which may still be handing the
    # county's backlog to the city's services when the county's events have all arrived.
    wait_until(lambda: replicas(city, case_id=submit_city_local).count >= 1, 10, "the city's own case on its up-log")
    assert replicas(county, case_id=submit_city_local).count == 0  # a child holds only its own subtree


def push(
    stub: exchange_grpc.ExchangeServiceStub, child: str, *items: tuple[bytes, int], first: int = 1
) -> exchange_pb2.PushEventsResponse:
    """Push (envelope, case sequence) items at consecutive positions from ``first``, as a child's link would."""
    reply: exchange_pb2.PushEventsResponse = stub.PushEvents(
        exchange_pb2.PushEventsRequest(
            child_node=child,
            items=[
                exchange_pb2.ExchangeItem(position=first + i, envelope=body, case_sequence=number)
                for i, (body, number) in enumerate(items)
            ],
        ),
        timeout=5,
    )
    return reply


def registered(
    case_id: str, *, version: int = 1, origin: str = "511102", owner: str = "511102", epoch: int = 1
) -> bytes:
    from datetime import UTC, datetime

    env = envelope(
        payload_field="case_registered" if version == 1 else "work_order_created",
        payload=events_pb2.CaseRegistered(case=common_pb2.Case(case_id=case_id))
        if version == 1
        else events_pb2.WorkOrderCreated(work_order_id=f"WO-{case_id}"),
        case_id=case_id,
        version=version,
        owner_node=owner,
        owner_epoch=epoch,
        origin_node=origin,
        origin_service="intake" if version == 1 else "routing",
        occurred_at=datetime.now(UTC),
    )
    return env.SerializeToString()


def test_bad_inbound_data_is_quarantined_with_reasons_and_valid_data_still_lands(start: Start) -> None:
    city = start("511100")
    stub = exchange(city)
    good = "511102-20261122-000001"
    reply = push(
        stub,
        "511102",
        (registered(good), 1),
        (registered("511111-20261122-000001", origin="511111", owner="511111"), 1),  # another county's case
        (registered("511102-20261122-000002", owner="511111"), 1),  # forged owner
        (b"\xff\x00not-a-protobuf", 1),
        (registered(good, version=3), 3),  # the link's #2 of the case is missing
        (registered(good, version=2, epoch=0), 2),  # stale owner
    )
    assert reply.acked_position == 6
    reasons = {r.position: r.reason for r in reply.rejections}
    assert reasons[2].startswith("out of subtree")
    assert reasons[3].startswith("forged owner")
    assert reasons[4].startswith("malformed payload")
    assert reasons[5].startswith("sequence gap")
    assert reasons[6].startswith("stale owner")
    assert 1 not in reasons

    # A node that is not a direct child is refused outright, as by PullDown: nothing is stored for it.
    with pytest.raises(grpc.RpcError) as refused:
        push(stub, "510100", (registered("510104-20261122-000001", origin="510104", owner="510104"), 1))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    listed = stub.ListQuarantine(exchange_pb2.ListQuarantineRequest(peer_node="511102"), timeout=5)
    assert [i.reason.split(":")[0] for i in listed.items] == [
        "out of subtree",
        "forged owner",
        "malformed payload",
        "sequence gap",
        "stale owner",
    ]
    assert "work_order_created 511102-20261122-000001 v3" in listed.items[3].payload_summary
    assert replicas(city, case_id=good).count == 1

    # The missing version arrives; replaying the gap item now applies it.
    push(stub, "511102", (registered(good, version=2), 2), first=7)
    result = stub.ReplayQuarantine(exchange_pb2.ReplayQuarantineRequest(ids=[listed.items[3].id]), timeout=5)
    assert result.results[0].applied, result.results[0].reason
    assert [e.version for e in replicas(city, case_id=good).entries] == [1, 2, 3]
    still = stub.ReplayQuarantine(exchange_pb2.ReplayQuarantineRequest(ids=[listed.items[1].id]), timeout=5)
    assert not still.results[0].applied and still.results[0].reason.startswith("forged owner")
    left = stub.ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5)
    assert len(left.items) == 4  # four from 511102 still refused

    with pytest.raises(grpc.RpcError) as error:
        stub.PullDown(exchange_pb2.PullDownRequest(child_node="510100"), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_link_figures_are_on_metrics_and_link_status(start: Start) -> None:
    city = start("511100")
    county = start("511102", city)
    submit(county, "call-m-1")
    wait_until(converged([county, city], "511102", 2), 10, "replication")
    push(exchange(city), "511102", (b"garbage", 1), first=10_000)

    def scrape(node: Node) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as page:
            text: str = page.read().decode()
        return text

    def county_link() -> exchange_pb2.Link:
        link: exchange_pb2.Link = exchange(county).LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links[0]
        return link

    wait_until(lambda: county_link().lag_events == 0, 10, "the county's link to catch up")
    status = county_link()
    assert status.peer_node == "511100" and status.state == exchange_pb2.LINK_STATE_HEALTHY
    assert status.acked_position >= 2
    at_city = exchange(city).LinkStatus(exchange_pb2.LinkStatusRequest(peer_node="511102"), timeout=5).links[0]
    assert at_city.quarantined == 1 and at_city.direction == exchange_pb2.LINK_DIRECTION_DOWN
    wait_until(lambda: 'lianxin_exchange_quarantined{peer="511102"} 1.0' in scrape(city), 10, "the gauge")
    text = scrape(county)
    assert 'lianxin_exchange_link_lag_events{peer="511100"}' in text
    assert 'lianxin_exchange_last_contact_timestamp_seconds{peer="511100"}' in text
    assert 'lianxin_exchange_link_lag_seconds{peer="511100"}' in text


def case_event(case_id: str, field: str, payload: Message, *, version: int, service: str) -> BusEvent:
    """An event of ``case_id`` as the emitting service of the county puts it on the bus."""
    from datetime import UTC, datetime

    env = envelope(
        payload_field=field,
        payload=payload,
        case_id=case_id,
        version=version,
        owner_node="511102",
        owner_epoch=1,
        origin_node="511102",
        origin_service=service,
        occurred_at=datetime.now(UTC),
    )
    return BusEvent(env.event_id, service, field, env.SerializeToString())


def quarantined(node: Node) -> list[str]:
    listed = exchange(node).ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5)
    return [item.reason for item in listed.items]


def test_a_visit_event_with_version_0_replicates_without_quarantine(start: Start) -> None:
    city = start("511100")
    county = start("511102", city)
    case_id = submit(county, "call-visit-1")
    visit = case_event(case_id, "visit_booked", events_pb2.VisitBooked(visit_id="V-1"), version=0, service="video")
    county.bus.publish(visit)

    wait_until(lambda: visit.event_id in {e.event_id for e in replicas(city, case_id=case_id).entries}, 10, "the visit")
    held = {e.event_id: e for e in replicas(city, case_id=case_id).entries}
    assert (held[visit.event_id].version, held[visit.event_id].event_type) == (0, "visit_booked")
    assert quarantined(city) == []


def test_two_services_events_with_one_version_both_replicate_in_up_log_order(start: Start) -> None:
    city = start("511100")
    county = start("511102", city)
    case_id = submit(county, "call-race-1")
    wait_until(lambda: replicas(city, case_id=case_id).count >= 2, 10, "registration and work order at the city")
    # intake and routing each chose "highest version seen + 1" at the same moment.
    rated = case_event(
        case_id,
        "case_evaluated",
        events_pb2.CaseEvaluated(satisfaction=common_pb2.SATISFACTION_SATISFIED),
        version=3,
        service="intake",
    )
    changed = case_event(
        case_id, "work_order_changed", events_pb2.WorkOrderChanged(action="remark"), version=3, service="routing"
    )
    county.bus.publish(rated)
    county.bus.publish(changed)

    wanted = {rated.event_id, changed.event_id}
    wait_until(
        lambda: wanted <= {e.event_id for e in replicas(city, case_id=case_id).entries}, 10, "both events at the city"
    )
    at_city = sorted(replicas(city, case_id=case_id).entries, key=lambda e: e.case_sequence)
    at_county = sorted(replicas(county, case_id=case_id).entries, key=lambda e: e.case_sequence)
    assert [e.event_id for e in at_city if e.event_id in wanted] == [rated.event_id, changed.event_id]
    # The city numbered them as the county's up-log ordered them (the county may have moved on since).
    assert [e.event_id for e in at_city] == [e.event_id for e in at_county[: len(at_city)]]
    assert {e.version for e in at_city if e.event_id in wanted} == {3}
    assert quarantined(city) == []
