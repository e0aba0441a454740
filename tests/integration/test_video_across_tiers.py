"""A video visit's events replicate up the tiers like the case's own, through the real BookVisit path.

Three real nodes (province 510000 ← city 511100 ← county 511102), all five services each, linked over
gRPC. A visit is booked with ``BookVisit`` at the node that owns the case (the county for a county
case, the city for a city case), and at the city for a case the city handed down to the county (a
city leader receiving a county's citizen). The visit's events must carry the case's current owner
and epoch, so the tiers above store them and the case's later events (reply, closing) behind them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.video.v1 import video_service_pb2 as video_pb2
from sqlalchemy import select

from services.node import Node
from services.video.models import outbox as video_outbox
from tests.support.exchange_nodes import three_tiers
from tests.support.helpers import wait_until
from tests.support.tiers import (
    Tiers,
    handed_down_by_the_city,
    held_types,
    intake,
    leader_at,
    quarantined,
    register,
    routing,
    video,
    work_order,
)
from tests.support.tiers import placed_by_hand as placed


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def tiers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiers]:
    admin_url = lambda: str(request.getfixturevalue("postgres_admin_url"))  # noqa: E731
    with three_tiers(request.param, tmp_path_factory.mktemp(f"video-{request.param}"), admin_url) as nodes:
        yield Tiers(*nodes)


def book_outcome_reply_close(node: Node, owner: Node, case_id: str, leader: str) -> video_pb2.Visit:
    """BookVisit at ``node``, then the owner's unit accepts, replies and closes the case."""
    visit: video_pb2.Visit = (
        video(node)
        .BookVisit(video_pb2.BookVisitRequest(case_id=case_id, actor="clerk", leader_id=leader), timeout=10)
        .visit
    )
    wo = placed(owner, case_id).work_order_id
    stub = routing(owner)
    stub.AcceptWorkOrder(routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="handler"), timeout=5)
    stub.ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(work_order_id=wo, actor="handler", text="已在视频接访中答复群众。"), timeout=5
    )
    stub.CloseWorkOrder(routing_pb2.CloseWorkOrderRequest(work_order_id=wo, actor="handler"), timeout=5)
    return visit


def closed_everywhere(case_id: str, *nodes: Node) -> None:
    """Every node holds the visit and the handling (accept, reply, closing), and none quarantined anything.

    Video's and routing's outboxes are relayed independently, so the visit may travel before or after
    the closing: what counts is that every tier ends up holding the same events of the case.
    """

    def arrived() -> bool:
        first = sorted(held_types(nodes[0], case_id))
        return (
            "visit_booked" in first
            and first.count("work_order_changed") >= 3
            and all(sorted(held_types(n, case_id)) == first for n in nodes[1:])
        )

    try:
        wait_until(arrived, 30, f"the visit and the case's later events at every tier ({case_id})")
    except AssertionError as late:
        held = {n.settings.node: held_types(n, case_id) for n in nodes}
        raise AssertionError(f"{late}: held {held}") from None
    finally:
        for n in nodes:
            assert quarantined(n, case_id) == [], n.settings.node


def owner_stamp(node: Node, case_id: str, event_type: str) -> tuple[str, int]:
    with node.engines["video"].connect() as conn:
        body = conn.execute(
            select(video_outbox.c.body).where(
                video_outbox.c.case_id == case_id, video_outbox.c.event_type == event_type
            )
        ).scalar_one()
    env = events_pb2.EventEnvelope.FromString(body)
    return env.owner_node, env.owner_epoch


def closing_state(node: Node, case_id: str) -> int:
    order = work_order(node, case_id)
    return -1 if order is None else int(order.state)


def test_a_visit_booked_at_the_county_for_its_own_case_replicates_with_everything_after_it(tiers: Tiers) -> None:
    leader_at(tiers.county, "county-leader")
    case = register(tiers.county, "511102")
    book_outcome_reply_close(tiers.county, tiers.county, case.case_id, "county-leader")

    closed_everywhere(case.case_id, tiers.county, tiers.city, tiers.province)
    assert owner_stamp(tiers.county, case.case_id, "visit_booked") == ("511102", 1)
    assert closing_state(tiers.county, case.case_id) == common_pb2.CASE_STATE_CLOSED


def test_a_visit_booked_at_the_city_for_its_own_case_replicates_to_the_province(tiers: Tiers) -> None:
    leader_at(tiers.city, "city-leader")
    case = register(tiers.city, "511100")
    book_outcome_reply_close(tiers.city, tiers.city, case.case_id, "city-leader")

    closed_everywhere(case.case_id, tiers.city, tiers.province)
    assert owner_stamp(tiers.city, case.case_id, "visit_booked") == ("511100", 1)


def test_a_visit_booked_at_the_city_for_a_case_it_handed_down_names_the_county_as_owner(tiers: Tiers) -> None:
    leader_at(tiers.city, "city-leader-2")
    case = handed_down_by_the_city(tiers)
    book_outcome_reply_close(tiers.city, tiers.county, case.case_id, "city-leader-2")

    closed_everywhere(case.case_id, tiers.city, tiers.province)
    assert owner_stamp(tiers.city, case.case_id, "visit_booked") == ("511102", 2)


def test_a_visits_outcome_joins_the_case_history_the_clerks_view_and_the_citizens_timeline(tiers: Tiers) -> None:
    leader_at(tiers.county, "county-leader-3")
    case = register(tiers.county, "511102")
    placed(tiers.county, case.case_id)
    booked = (
        video(tiers.county)
        .BookVisit(
            video_pb2.BookVisitRequest(case_id=case.case_id, actor="clerk", leader_id="county-leader-3"), timeout=10
        )
        .visit
    )
    video(tiers.county).RecordOutcome(
        video_pb2.RecordOutcomeRequest(
            visit_id=booked.visit_id, actor="leader", minutes="群众反映河道垃圾", decisions="责成区环保局一周内清理"
        ),
        timeout=5,
    )

    def history() -> list[str]:
        order = work_order(tiers.county, case.case_id)
        return [] if order is None else [f"{h.action}: {h.reason}" for h in order.history]

    wait_until(
        lambda: any(h.startswith("visit_outcome") for h in history()), 15, "the outcome in the work order history"
    )
    assert any("责成区环保局一周内清理" in h for h in history() if h.startswith("visit_outcome"))
    public = "已视频接访 video reception held"
    wait_until(lambda: public in [e.summary for e in case.track().timeline], 15, "the outcome in TrackCase")
    clerk = intake(tiers.county).GetCase(intake_pb2.GetCaseRequest(case_id=case.case_id), timeout=5)
    assert public in [e.summary for e in clerk.timeline]
    # Both the visit's own event and the history entry travel up, without quarantine.
    wait_until(
        lambda: (
            {"visit_outcome_recorded"} <= set(held_types(tiers.province, case.case_id))
            and len(held_types(tiers.province, case.case_id)) == len(held_types(tiers.county, case.case_id))
        ),
        30,
        "the outcome at the province",
    )
    assert quarantined(tiers.province, case.case_id) == [] and quarantined(tiers.city, case.case_id) == []


def test_an_outcome_recorded_at_the_city_reaches_the_county_that_handles_the_case(tiers: Tiers) -> None:
    """A city leader receives a citizen whose case the city handed down: the outcome goes to the county."""
    leader_at(tiers.city, "city-leader-4")
    case = handed_down_by_the_city(tiers)
    booked = (
        video(tiers.city)
        .BookVisit(
            video_pb2.BookVisitRequest(case_id=case.case_id, actor="clerk", leader_id="city-leader-4"), timeout=10
        )
        .visit
    )
    video(tiers.city).RecordOutcome(
        video_pb2.RecordOutcomeRequest(visit_id=booked.visit_id, actor="leader", decisions="市中区三日内上门核实"),
        timeout=5,
    )

    def county_history() -> list[str]:
        order = work_order(tiers.county, case.case_id)
        return [] if order is None else [h.reason for h in order.history if h.action == "visit_outcome"]

    wait_until(lambda: county_history(), 20, "the outcome in the county's work order history")
    assert "市中区三日内上门核实" in county_history()[0]
    # The city registered the case: its clerk and the citizen see the milestone there.
    public = "已视频接访 video reception held"
    wait_until(lambda: public in [e.summary for e in case.track().timeline], 20, "the outcome in TrackCase")
    for node in (tiers.county, tiers.city, tiers.province):
        assert quarantined(node, case.case_id) == [], node.settings.node
