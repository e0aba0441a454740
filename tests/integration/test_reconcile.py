"""`lianxin reconcile` on three real linked nodes: 0 divergences when every tier holds the same, and
the case named (exit 1) when an event of it is held in quarantine above."""

from __future__ import annotations

import re
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

from services.cli import main
from services.common.events import envelope, to_bus_event
from services.exchange.reconcile import reconcile
from services.node import Node
from tests.support.exchange_nodes import Start, exchange, linked_nodes, submit
from tests.support.helpers import wait_until


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def settled(*nodes: Node) -> bool:
    return all(
        link.lag_events == 0
        for node in nodes
        for link in exchange(node).LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links
    )


# The version differs too only while the city holds nothing of the case after the refused write:
# the settlement of the notice that write caused carries its version 90 and may be stored above.
EVENTS = re.compile(r"events (?P<below>\d+) vs (?P<above>\d+)")


def test_reconcile_reports_no_divergence_then_the_case_whose_event_is_quarantined_above(
    start: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    province = start("510000")
    city = start("511100", province)
    county = start("511102", city)
    clean, broken = submit(county, "reconcile-1"), submit(county, "reconcile-2")
    routing = routing_grpc.RoutingServiceStub(grpc.insecure_channel(county.address))

    def placed(case_id: str) -> bool:
        found = routing.ListWorkOrders(routing_pb2.ListWorkOrdersRequest(case_id=case_id), timeout=5).work_orders
        return bool(found)

    wait_until(lambda: placed(clean) and placed(broken), 15, "both cases placed at the county")
    below_and_above = [(county.address, [city.address, province.address]), (city.address, [province.address])]
    wait_until(lambda: not reconcile(below_and_above).divergences, 30, "every tier holding the same")
    report = reconcile(below_and_above)
    assert report.cases >= 2 * 3 and report.comparisons == 3  # both cases, at 511102→511100/510000 and 511100→510000
    assert main(["reconcile", county.address, city.address, province.address]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].endswith(" 0 divergences"), out

    # A write the city refuses (an owner epoch below the one it knows) stays in its quarantine.
    late = envelope(
        payload_field="work_order_changed",
        payload=events_pb2.WorkOrderChanged(
            work_order_id=f"WO-{broken}@511102",
            from_state=common_pb2.CASE_STATE_ASSIGNED,
            to_state=common_pb2.CASE_STATE_REPLIED,
            action="reply",
            actor="county-unit",
        ),
        case_id=broken,
        version=90,
        owner_node="511102",
        owner_epoch=0,
        origin_node="511102",
        origin_service="routing",
        occurred_at=datetime.now(UTC),
    )
    county.bus.publish(to_bus_event(late))
    quarantine = exchange(city)
    wait_until(
        lambda: any(
            broken in q.payload_summary and q.reason.startswith("stale owner")
            for q in quarantine.ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5).items
        ),
        15,
        "the county's stale write quarantined at the city",
    )
    wait_until(lambda: settled(county), 15, "the county's link drained")
    assert main(["reconcile", county.address, city.address, province.address]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    diverging = lines[:-1]
    assert diverging and all(broken in line for line in diverging), lines
    # The city lacks the refused write and whatever of the case came after it (held behind the
    # quarantine: a progress notice's settlement, when the sender got to it first), never more.
    at_city = [m for line in diverging if "511102 → 511100" in line and (m := EVENTS.search(line))]
    assert at_city and all(int(m["below"]) > int(m["above"]) for m in at_city), lines
    assert lines[-1].endswith(f" {len(diverging)} divergences")
    assert clean not in "\n".join(lines)
