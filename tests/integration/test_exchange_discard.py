"""An operator discards a poison item from quarantine and the case's later events flow again.

Real nodes (city 511100 ← county 511102) on SQLite and on PostgreSQL. The county's bus carries an
event no fix will make pass (it names an owner outside the county); the city quarantines it and, as a
sequence gap, every later event of that case. Replaying answers the same reason; discarding it (with
the operator and the reason recorded) skips its place in the case's sequence and releases the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from lianxin.events.v1 import events_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from sqlalchemy import select

from services.common.events import envelope
from services.common.service import BusEvent
from services.exchange.models import quarantine, sequence_skip
from services.node import Node
from tests.support.exchange_nodes import Start, exchange, linked_nodes, replicas, submit
from tests.support.helpers import wait_until
from tests.support.tiers import placed_by_hand as placed
from tests.support.tiers import routing


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def poison(case_id: str) -> BusEvent:
    """A deadline warning naming 沙湾区 (not under 市中区) as owner: forged, whatever is replayed.

    (Only exchange follows routing's deadline warnings, so nothing else on the bus reacts to it.)"""
    env = envelope(
        payload_field="deadline_warning",
        payload=events_pb2.DeadlineWarning(work_order_id="wo-poison", deadline_kind="reply"),
        case_id=case_id,
        version=9,
        owner_node="511111",
        owner_epoch=1,
        origin_node="511102",
        origin_service="routing",
        occurred_at=datetime.now(UTC),
    )
    return BusEvent(env.event_id, "routing", "deadline_warning", env.SerializeToString())


def held(node: Node) -> list[exchange_pb2.QuarantinedItem]:
    for _ in range(3):  # a busy SQLite under a loaded machine answers UNAVAILABLE ("retry"): retry it
        try:
            return list(exchange(node).ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5).items)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
    raise AssertionError(f"ListQuarantine at {node.settings.node} stayed UNAVAILABLE")


def discard(
    node: Node, ids: list[str], reason: str = "forged owner from a broken relay; confirmed with 市中区"
) -> exchange_pb2.DiscardQuarantineResponse:
    request = exchange_pb2.DiscardQuarantineRequest(ids=ids, actor="ops-zhang", reason=reason)
    reply: exchange_pb2.DiscardQuarantineResponse = exchange(node).DiscardQuarantine(request, timeout=10)
    return reply


def test_discarding_a_poison_item_releases_the_later_events_of_its_case(start: Start) -> None:
    city = start("511100")
    county = start("511102", city)
    case_id = submit(county, "call-poison-1")
    order = placed(county, case_id)
    wait_until(lambda: replicas(city, case_id=case_id).count == replicas(county, case_id=case_id).count, 15, "sync")
    county.bus.publish(poison(case_id))
    wait_until(lambda: held(city), 15, "the poison item in the city's quarantine")
    # The county's unit goes on handling the case: each later event waits behind the poison item.
    wo = order.work_order_id
    routing(county).AcceptWorkOrder(routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="h"), timeout=5)
    routing(county).ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(work_order_id=wo, actor="h", text="已处理。"), timeout=5
    )

    def all_held_back() -> bool:
        # Every event of the case the county has beyond what the city stored is in the city's quarantine.
        behind = replicas(county, case_id=case_id).count - replicas(city, case_id=case_id).count
        return len(held(city)) >= 3 and len(held(city)) == behind

    wait_until(all_held_back, 15, "the later events quarantined as sequence gaps")
    items = held(city)
    first, later = items[0], items[1:]
    assert first.reason.startswith("forged owner") and all(i.reason.startswith("sequence gap") for i in later)

    replayed = exchange(city).ReplayQuarantine(exchange_pb2.ReplayQuarantineRequest(ids=[first.id]), timeout=5)
    assert replayed.results[0].reason.startswith("forged owner")  # no fix makes it pass
    with pytest.raises(grpc.RpcError) as no_reason:
        discard(city, [first.id], reason=" ")
    assert no_reason.value.code() == grpc.StatusCode.INVALID_ARGUMENT and no_reason.value.details().startswith("reason")
    early = discard(city, [later[0].id]).results[0]  # a later one first: it would jump over the poison item
    assert (
        not early.discarded
        and early.reason
        == f"#{first.payload_summary.split('#')[1]} of the case is still in quarantine: replay or discard it first"
    )

    done = discard(city, [first.id]).results[0]
    # Every later event held behind it is released (more may have arrived since the listing above).
    assert done.discarded and {i.id for i in later} <= set(done.released_ids) and not done.still_held_ids
    assert held(city) == []
    wait_until(lambda: all_but_one(city, county, case_id), 15, "everything but the poison item at the city")
    at_city = {e.event_id for e in replicas(city, case_id=case_id).entries}
    at_county = {e.event_id for e in replicas(county, case_id=case_id).entries}
    assert at_county - at_city == {decode_id(county, case_id)}
    with city.engines["exchange"].connect() as conn:
        record = conn.execute(
            select(quarantine.c.disposition, quarantine.c.resolved_by, quarantine.c.note).where(
                quarantine.c.id == int(first.id)
            )
        ).one()
        skips = conn.execute(select(sequence_skip.c.case_id, sequence_skip.c.quarantine_id)).all()
    assert tuple(record) == ("discarded", "ops-zhang", "forged owner from a broken relay; confirmed with 市中区")
    assert [tuple(s) for s in skips] == [(case_id, int(first.id))]
    # The case goes on as usual afterwards: the closing arrives without quarantine.
    before = replicas(county, case_id=case_id).count
    routing(county).CloseWorkOrder(routing_pb2.CloseWorkOrderRequest(work_order_id=wo, actor="h"), timeout=5)
    # (The closing may bring a progress notice's settlement with it: count what the county has now.)
    wait_until(
        lambda: replicas(county, case_id=case_id).count > before and all_but_one(city, county, case_id),
        15,
        "the closing at the city",
    )
    assert held(city) == []
    again = discard(city, [first.id]).results[0]
    assert not again.discarded and again.reason == "not in quarantine"


def all_but_one(city: Node, county: Node, case_id: str) -> bool:
    return replicas(city, case_id=case_id).count == replicas(county, case_id=case_id).count - 1


def decode_id(node: Node, case_id: str) -> str:
    """The event id of the poison item (the county's deadline warning with version 9)."""
    return next(e.event_id for e in replicas(node, case_id=case_id).entries if e.version == 9)
