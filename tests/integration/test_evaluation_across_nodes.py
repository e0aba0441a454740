"""A citizen's evaluation at the node that registered the case, when a node below handles it.

Three real nodes (province 510000 ← city 511100 ← county 511102), all five services each, linked over
gRPC. The case is registered at the province (the citizen's tracking code is the province's) and handed
down by hand (交办) to the county, whose unit accepts and replies. The province's intake follows that
handling from the replicas exchange republishes on its bus (TrackCase shows the reply), records the
citizen's rating there and sends it, as an ``events.v1.Command``, to the county, whose routing applies it
as a local rating: unsatisfied with a first reply reopens the work order (退回重办). Redelivery of the
command (by the province's relay or the county's) does not apply it twice.

The same goes for the citizen's other requests at the registering node: a withdrawal (撤回) and a 复查
request reach the county's routing as commands and do what the local ``case_withdrawn`` and
``review_requested`` do there. A withdrawal at the node that owns the case withdraws its work order
directly. The three nodes are started once per backend and shared by the tests of this module.

When the owner is not on the path up from the registering node (a case the county registered and
escalated, 上报, to the city), replicas of the owner's handling never come down to it: the owner's
routing sends each work order event to the registering node as a ``Command.HandlingUpdate``, which
the county's intake follows as it would the replica. A case handed down stays without such commands.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

from services.common.events import decode
from services.common.service import BusEvent, Subscription
from services.intake.models import inbox as intake_inbox
from services.node import Node
from services.routing.models import inbox as routing_inbox
from services.routing.models import outbox as routing_outbox
from tests.support.exchange_nodes import exchange, three_tiers
from tests.support.helpers import wait_until
from tests.support.tiers import Registered, Tiers, intake, register, replica_types, routing, work_order


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def tiers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiers]:
    """Province 510000 ← city 511100 ← county 511102, linked; each test works on its own cases."""
    admin_url = lambda: str(request.getfixturevalue("postgres_admin_url"))  # noqa: E731
    with three_tiers(request.param, tmp_path_factory.mktemp(f"tiers-{request.param}"), admin_url) as nodes:
        yield Tiers(*nodes)


class Seen:
    """Bus events of one (source, type) on a node, in arrival order (redeliveries included)."""

    def __init__(self, node: Node, source: str, event_type: str) -> None:
        self.events: list[BusEvent] = []
        self._lock = threading.Lock()
        node.bus.subscribe(Subscription("probe", source, event_type, self._seen))

    def _seen(self, event: BusEvent) -> None:
        with self._lock:
            self.events.append(event)

    def ids(self) -> list[str]:
        with self._lock:
            return [e.event_id for e in self.events]

    def of_case(self, case_id: str) -> list[BusEvent]:
        """The events about ``case_id`` (the nodes are shared by the tests of the module)."""
        with self._lock:
            events = list(self.events)
        return [e for e in events if _case_of(e) == case_id]


def _case_of(event: BusEvent) -> str:
    if event.event_type == "command":
        command = events_pb2.Command()
        command.ParseFromString(event.body)
        return command.case_id
    return decode(event).case_id


def state_of(node: Node, case_id: str) -> int | None:
    found = work_order(node, case_id)
    return None if found is None else int(found.state)


def down_settled(node: Node) -> bool:
    links = exchange(node).LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links
    return all(link.lag_events == 0 for link in links)


def handed_down(tiers: Tiers) -> tuple[Registered, str]:
    """A case registered at the province, handed down (交办) to the county and placed with a unit there.

    Returns it and the county's work order id, once the province's intake knows the county owns it.
    """
    province, county = tiers.province, tiers.county
    case = register(province, "510000")
    case_id = case.case_id
    wait_until(lambda: work_order(province, case_id) is not None, 15, "the province's work order")
    routing(province).AssignManually(
        routing_pb2.AssignManuallyRequest(case_id=case_id, actor="prov-clerk", node="511102", reason="请市中区办理"),
        timeout=5,
    )
    wait_until(lambda: work_order(county, case_id) is not None, 20, "the county's work order")
    placed = (
        routing(county)
        .AssignManually(
            routing_pb2.AssignManuallyRequest(
                case_id=case_id, actor="county-clerk", unit_id="lszq-sthjj", reason="生态环境局办理"
            ),
            timeout=5,
        )
        .work_order
    )

    def owner() -> tuple[str, int]:
        known = intake(province).GetCase(intake_pb2.GetCaseRequest(case_id=case_id), timeout=5).case
        return known.owner_node, known.owner_epoch

    wait_until(lambda: owner() == ("511102", 2), 30, "the hand-off in the province's intake")
    return case, placed.work_order_id


def reply_at_county(tiers: Tiers, case: Registered, work_order_id: str) -> None:
    """The county's unit accepts and replies; returns once the citizen may rate the reply at the province."""
    county_stub = routing(tiers.county)
    county_stub.AcceptWorkOrder(
        routing_pb2.AcceptWorkOrderRequest(work_order_id=work_order_id, actor="lszq-sthjj-1"), timeout=5
    )
    county_stub.ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(
            work_order_id=work_order_id, actor="lszq-sthjj-1", text="已组织清理河道垃圾，并安排每周巡查。"
        ),
        timeout=5,
    )
    wait_until(lambda: case.track().can_evaluate, 30, "the county's reply in the province's TrackCase")


def inbox_count(node: Node, event_id: str) -> int:
    with node.engines["routing"].connect() as conn:
        count: int = conn.execute(
            sa.select(sa.func.count()).select_from(routing_inbox).where(routing_inbox.c.event_id == event_id)
        ).scalar_one()
    return count


def test_a_rating_at_the_registering_province_reaches_the_county_that_handles_the_case(tiers: Tiers) -> None:
    province, city, county = tiers.province, tiers.city, tiers.county
    issued_at_province = Seen(province, "intake", "command")
    delivered_at_county = Seen(county, "exchange", "command")

    case, placed_id = handed_down(tiers)
    case_id, code, last4 = case.case_id, case.code, case.last4
    track = case.track
    # The province follows the county's handling: the reply shows, and may be rated, where the citizen registered.
    reply_at_county(tiers, case, placed_id)
    tracked = track()
    assert tracked.state == common_pb2.CASE_STATE_REPLIED
    summaries = [entry.summary for entry in tracked.timeline]
    assert summaries[0] == "已登记 registered" and summaries[-1] == "已答复 replied"
    assert "已转送 transferred" in summaries
    known = intake(province).GetCase(intake_pb2.GetCaseRequest(case_id=case_id), timeout=5).case
    assert (known.owner_node, known.owner_epoch) == ("511102", 2)
    replied = work_order(county, case_id)
    assert replied is not None and replied.state == common_pb2.CASE_STATE_REPLIED and replied.reopen_count == 0

    rated = intake(province).EvaluateCase(
        intake_pb2.EvaluateCaseRequest(
            tracking_code=code, phone_last4=last4, satisfaction=common_pb2.SATISFACTION_UNSATISFIED, comment="垃圾还在"
        ),
        timeout=5,
    )
    assert rated.evaluation_id == f"{case_id}-E1"
    assert rated.forwarded_to_owner  # the citizen is told the rating went on to the handling node

    # At the county, routing does what it does with a local unsatisfied rating of a first reply: 退回重办.
    wait_until(lambda: state_of(county, case_id) == common_pb2.CASE_STATE_REOPENED, 30, "the reopen at the county")
    reopened = work_order(county, case_id)
    assert reopened is not None and reopened.reopen_count == 1
    last = reopened.history[-1]
    # (routing may add a note on provisional deadlines after the citizen's words)
    assert (last.actor, last.action) == ("citizen", "reopen") and last.reason.startswith("垃圾还在")
    (issued,) = issued_at_province.of_case(case_id)
    (delivered,) = delivered_at_county.of_case(case_id)
    command = events_pb2.Command()
    command.ParseFromString(delivered.body)
    assert delivered.event_id == issued.event_id == command.command_id
    assert (command.case_id, command.target_node, command.issuing_node, command.owner_epoch_seen) == (
        case_id,
        "511102",
        "510000",
        2,
    )
    assert command.evaluate.satisfaction == common_pb2.SATISFACTION_UNSATISFIED
    assert command.evaluate.comment == "垃圾还在"
    # The province's own (transferred) work order is not touched by the rating.
    province_order = work_order(province, case_id)
    assert province_order is not None and province_order.state == common_pb2.CASE_STATE_TRANSFERRED

    # Redelivered by the province's relay (exchange routes it once per leg) and by the county's (routing's
    # inbox keeps each command id once): the rating is not applied a second time.
    province.bus.publish(issued)
    county.bus.publish(delivered)
    wait_until(lambda: down_settled(province) and down_settled(city), 15, "the down links to drain")
    again = work_order(county, case_id)
    assert again is not None
    assert (again.version, again.reopen_count, len(again.history)) == (
        reopened.version,
        1,
        len(reopened.history),
    )
    # only the one republished here
    assert [e.event_id for e in delivered_at_county.of_case(case_id)] == [command.command_id, command.command_id]
    assert inbox_count(county, command.command_id) == 1  # routing's inbox: the command id, once

    # The reopen travels back up: the citizen sees it at the province, with the rating.
    wait_until(lambda: track().state == common_pb2.CASE_STATE_REOPENED, 30, "the reopen in the province's TrackCase")
    final = track()
    summaries = [entry.summary for entry in final.timeline]
    assert summaries[-2:] == ["已评价 rated", "重新办理 reopened"]
    assert final.satisfaction == common_pb2.SATISFACTION_UNSATISFIED and not final.can_evaluate
    assert all(
        not exchange(n).ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5).items
        for n in (province, city, county)
    )


def test_a_withdrawal_at_the_owning_county_withdraws_its_work_order(tiers: Tiers) -> None:
    county = tiers.county
    withdrawn_here = Seen(county, "intake", "case_withdrawn")
    case = register(county, "511102")
    wait_until(lambda: work_order(county, case.case_id) is not None, 15, "the county's work order")

    reply = intake(county).WithdrawCase(
        intake_pb2.WithdrawCaseRequest(tracking_code=case.code, phone_last4=case.last4, reason="已自行解决"),
        timeout=5,
    )
    assert reply.state == common_pb2.CASE_STATE_WITHDRAWN and not reply.forwarded_to_owner

    wait_until(lambda: state_of(county, case.case_id) == common_pb2.CASE_STATE_WITHDRAWN, 20, "the withdrawal")
    withdrawn = work_order(county, case.case_id)
    assert withdrawn is not None
    last = withdrawn.history[-1]
    assert (last.actor, last.action, last.reason) == ("citizen", "withdraw", "已自行解决")

    # Redelivered: routing's inbox keeps the event once and the (closed) work order is not touched again.
    wait_until(lambda: withdrawn_here.of_case(case.case_id), 10, "the case_withdrawn event on the bus")
    (event,) = withdrawn_here.of_case(case.case_id)
    county.bus.publish(event)
    wait_until(lambda: len(withdrawn_here.of_case(case.case_id)) == 2, 10, "the redelivery")
    wait_until(lambda: inbox_count(county, event.event_id) == 1, 10, "the withdrawal in routing's inbox")
    again = work_order(county, case.case_id)
    assert again is not None and (again.version, len(again.history)) == (withdrawn.version, len(withdrawn.history))


def test_a_withdrawal_at_the_registering_province_reaches_the_county_that_handles_the_case(tiers: Tiers) -> None:
    province, county = tiers.province, tiers.county
    withdrawn_at_province = Seen(province, "intake", "case_withdrawn")
    issued_at_province = Seen(province, "intake", "command")
    delivered_at_county = Seen(county, "exchange", "command")
    case, _ = handed_down(tiers)
    assert state_of(county, case.case_id) == common_pb2.CASE_STATE_ASSIGNED

    reply = intake(province).WithdrawCase(
        intake_pb2.WithdrawCaseRequest(tracking_code=case.code, phone_last4=case.last4, reason="问题已解决"),
        timeout=5,
    )
    assert reply.state == common_pb2.CASE_STATE_WITHDRAWN and reply.forwarded_to_owner

    wait_until(lambda: state_of(county, case.case_id) == common_pb2.CASE_STATE_WITHDRAWN, 30, "the county's withdrawal")
    withdrawn = work_order(county, case.case_id)
    assert withdrawn is not None
    last = withdrawn.history[-1]
    assert (last.actor, last.action, last.reason) == ("citizen", "withdraw", "问题已解决")
    wait_until(lambda: issued_at_province.of_case(case.case_id), 10, "the command on the province's bus")
    (issued,) = issued_at_province.of_case(case.case_id)
    command = events_pb2.Command()
    command.ParseFromString(issued.body)
    assert command.WhichOneof("body") == "withdraw" and command.withdraw.reason == "问题已解决"
    assert (command.target_node, command.issuing_node, command.owner_epoch_seen) == ("511102", "510000", 2)
    wait_until(lambda: inbox_count(county, command.command_id) == 1, 10, "the command in the county's inbox")

    # The province's own routing heard the local case_withdrawn too: its work order, handed on
    # (TRANSFERRED), cannot be withdrawn, so it stays as it is and the event is acknowledged, not retried.
    wait_until(lambda: withdrawn_at_province.of_case(case.case_id), 10, "the case_withdrawn event at the province")
    (local,) = withdrawn_at_province.of_case(case.case_id)
    wait_until(lambda: inbox_count(province, local.event_id) == 1, 10, "the province's routing to acknowledge it")
    province_order = work_order(province, case.case_id)
    assert province_order is not None and province_order.state == common_pb2.CASE_STATE_TRANSFERRED

    # Redelivered at the county: applied once.
    wait_until(lambda: delivered_at_county.of_case(case.case_id), 10, "the command on the county's bus")
    (delivered,) = delivered_at_county.of_case(case.case_id)
    county.bus.publish(delivered)
    wait_until(lambda: len(delivered_at_county.of_case(case.case_id)) == 2, 10, "the redelivery")
    again = work_order(county, case.case_id)
    assert again is not None and (again.version, len(again.history)) == (withdrawn.version, len(withdrawn.history))
    assert inbox_count(county, command.command_id) == 1

    # The withdrawal comes back up as the county's handling: the citizen's case stays withdrawn at the province.
    wait_until(lambda: case.track().state == common_pb2.CASE_STATE_WITHDRAWN, 10, "the province's TrackCase")
    summaries = [entry.summary for entry in case.track().timeline]
    assert summaries.count("已撤回 withdrawn") == 1


def test_a_review_request_at_the_registering_province_reaches_the_county_that_handles_the_case(tiers: Tiers) -> None:
    province, county = tiers.province, tiers.county
    issued_at_province = Seen(province, "intake", "command")
    case, placed_id = handed_down(tiers)
    reply_at_county(tiers, case, placed_id)

    rated = intake(province).EvaluateCase(
        intake_pb2.EvaluateCaseRequest(
            tracking_code=case.code, phone_last4=case.last4, satisfaction=common_pb2.SATISFACTION_SATISFIED
        ),
        timeout=5,
    )
    assert rated.forwarded_to_owner
    wait_until(lambda: state_of(county, case.case_id) == common_pb2.CASE_STATE_CLOSED, 30, "the close at the county")
    wait_until(lambda: case.track().can_request_review, 30, "the close in the province's TrackCase")

    asked = intake(province).RequestReview(
        intake_pb2.RequestReviewRequest(tracking_code=case.code, phone_last4=case.last4, reason="河道又有垃圾了"),
        timeout=5,
    )
    assert asked.forwarded_to_owner and asked.HasField("decide_by")

    # At the county, what a local review_requested does: 复查 reopens the closed work order, once.
    wait_until(lambda: state_of(county, case.case_id) == common_pb2.CASE_STATE_REOPENED, 30, "the review at the county")
    reviewed = work_order(county, case.case_id)
    assert reviewed is not None and reviewed.reopen_count == 0
    last = reviewed.history[-1]
    assert (last.actor, last.action) == ("citizen", "review") and last.reason.startswith("河道又有垃圾了")
    wait_until(lambda: len(issued_at_province.of_case(case.case_id)) == 2, 10, "both commands on the province's bus")
    kinds = []
    for event in issued_at_province.of_case(case.case_id):
        command = events_pb2.Command()
        command.ParseFromString(event.body)
        kinds.append(command.WhichOneof("body"))
    assert kinds == ["evaluate", "request_review"]
    province_order = work_order(province, case.case_id)
    assert province_order is not None and province_order.state == common_pb2.CASE_STATE_TRANSFERRED


def routing_outbox_of(node: Node, case_id: str) -> list[tuple[str, str, bytes]]:
    """(event type, event id, body) of what ``node``'s routing wrote to its outbox about ``case_id``, in order."""
    with node.engines["routing"].connect() as conn:
        rows = conn.execute(
            sa.select(routing_outbox.c.event_type, routing_outbox.c.event_id, routing_outbox.c.body)
            .where(routing_outbox.c.case_id == case_id)
            .order_by(routing_outbox.c.position)
        ).all()
    return [(r.event_type, r.event_id, bytes(r.body)) for r in rows]


def intake_inbox_count(node: Node, event_id: str) -> int:
    with node.engines["intake"].connect() as conn:
        count: int = conn.execute(
            sa.select(sa.func.count()).select_from(intake_inbox).where(intake_inbox.c.event_id == event_id)
        ).scalar_one()
    return count


def test_the_registering_county_follows_the_handling_of_the_city_it_escalated_to(tiers: Tiers) -> None:
    province, city, county = tiers.province, tiers.city, tiers.county
    delivered_at_county = Seen(county, "exchange", "command")
    rated_at_county = Seen(county, "intake", "command")
    case = register(county, "511102")
    case_id = case.case_id
    wait_until(lambda: state_of(county, case_id) == common_pb2.CASE_STATE_ASSIGNED, 15, "the county's work order")

    escalated = routing(county).EscalateCase(
        routing_pb2.EscalateCaseRequest(case_id=case_id, actor="county-clerk", reason="涉及跨区河道，县级无法处理"),
        timeout=5,
    )
    assert escalated.to_node == "511100"
    wait_until(lambda: state_of(city, case_id) == common_pb2.CASE_STATE_ASSIGNED, 30, "the city's work order")
    placed = work_order(city, case_id)
    assert placed is not None and placed.unit_id == "lsj-sthjj"
    city_stub = routing(city)
    city_stub.AcceptWorkOrder(
        routing_pb2.AcceptWorkOrderRequest(work_order_id=placed.work_order_id, actor="lsj-sthjj-1"), timeout=5
    )
    city_stub.ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(
            work_order_id=placed.work_order_id, actor="lsj-sthjj-1", text="已协调上下游清理河道，并建立联合巡查。"
        ),
        timeout=5,
    )

    # The county, where the citizen registered, shows the city's reply and lets the citizen rate it.
    wait_until(lambda: case.track().can_evaluate, 30, "the city's reply in the county's TrackCase")
    tracked = case.track()
    assert tracked.state == common_pb2.CASE_STATE_REPLIED
    summaries = [entry.summary for entry in tracked.timeline]
    assert summaries[0] == "已登记 registered" and summaries[-1] == "已答复 replied"
    known = intake(county).GetCase(intake_pb2.GetCaseRequest(case_id=case_id), timeout=5).case
    assert (known.owner_node, known.owner_epoch) == ("511100", escalated.new_owner_epoch)

    # Each of the city's work order events went out once, as a command to the county, in the same transaction.
    written = routing_outbox_of(city, case_id)
    handling = [(t, i, b) for t, i, b in written if t in ("work_order_created", "work_order_changed")]
    commands = [events_pb2.Command.FromString(b) for t, _, b in written if t == "command"]
    assert len(handling) >= 3 and len(commands) == len(handling)  # created, accepted, replied
    for (_, event_id, body), command in zip(handling, commands, strict=True):
        assert command.WhichOneof("body") == "handling" and command.handling.envelope == body
        assert (command.case_id, command.target_node, command.issuing_node) == (case_id, "511102", "511100")
        assert command.command_id == str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:handling:{event_id}"))
    # The county's own routing (it registered the case) sends none.
    assert not [t for t, _, _ in routing_outbox_of(county, case_id) if t == "command"]
    wait_until(
        lambda: {e.event_id for e in delivered_at_county.of_case(case_id)} >= {c.command_id for c in commands},
        15,
        "the handling updates delivered at the county",
    )

    # Redelivered at the county: intake's inbox keeps the command id once, the case is not touched again.
    last = next(e for e in delivered_at_county.of_case(case_id) if e.event_id == commands[-1].command_id)
    county.bus.publish(last)
    wait_until(
        lambda: sum(e.event_id == last.event_id for e in delivered_at_county.of_case(case_id)) == 2, 10, "redelivery"
    )
    wait_until(lambda: intake_inbox_count(county, last.event_id) == 1, 10, "the command in intake's inbox")
    again = case.track()
    assert (again.state, len(again.timeline)) == (tracked.state, len(tracked.timeline))

    # The rating given at the county goes on to the city, which closes the work order; the close comes back.
    rated = intake(county).EvaluateCase(
        intake_pb2.EvaluateCaseRequest(
            tracking_code=case.code, phone_last4=case.last4, satisfaction=common_pb2.SATISFACTION_SATISFIED
        ),
        timeout=5,
    )
    assert rated.forwarded_to_owner
    wait_until(lambda: state_of(city, case_id) == common_pb2.CASE_STATE_CLOSED, 30, "the close at the city")
    (issued,) = [e for e in rated_at_county.of_case(case_id)]
    rating = events_pb2.Command.FromString(issued.body)
    assert rating.WhichOneof("body") == "evaluate" and rating.target_node == "511100"
    wait_until(lambda: inbox_count(city, rating.command_id) == 1, 10, "the rating in the city's routing inbox")
    wait_until(lambda: case.track().state == common_pb2.CASE_STATE_CLOSED, 30, "the close in the county's TrackCase")
    closed = case.track()
    assert closed.can_request_review and [e.summary for e in closed.timeline][-2:] == ["已评价 rated", "已办结 closed"]
    # The county intake's case_evaluated names the city as owner (511100 is outside the county's subtree):
    # a citizen's request is judged by its origin, so it reaches the tiers above like any replica, and
    # nothing about this case is refused anywhere on the way.
    for n in (city, province):
        wait_until(
            lambda n=n: "case_evaluated" in replica_types(n, case_id), 30, f"the rating replica at {n.settings.node}"
        )
    for n in (province, city, county):
        items = exchange(n).ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5).items
        assert not [i for i in items if case_id in i.payload_summary], n.settings.node


def test_a_case_handed_down_sends_no_handling_updates(tiers: Tiers) -> None:
    # The province registered it and is above the county: the county's replicas reach it, no command is needed
    # (nor wanted: the same handling would be applied twice).
    case, placed_id = handed_down(tiers)
    reply_at_county(tiers, case, placed_id)
    for node in (tiers.province, tiers.city, tiers.county):
        written = routing_outbox_of(node, case.case_id)
        assert not [t for t, _, _ in written if t == "command"], node.settings.node
    assert [t for t, _, _ in routing_outbox_of(tiers.county, case.case_id)].count("work_order_changed") >= 2


def test_the_citizen_reads_the_county_reply_and_its_deadline_at_the_registering_province(tiers: Tiers) -> None:
    """TrackCase at the province shows the reply text the county wrote, the handling deadline, and each
    placement with a unit once (the work order's creation and its assignment were both listed 已交办)."""
    case, work_order_id = handed_down(tiers)
    county_order = work_order(tiers.county, case.case_id)
    assert county_order is not None
    settle = [d.due_at for d in county_order.deadlines if d.kind in ("settle", "hotline_complaint")]
    reply_at_county(tiers, case, work_order_id)
    seen = case.track()
    summaries = [entry.summary for entry in seen.timeline]
    # Placed with a unit twice (the province's, then, after 交办 down, the county's): 已交办 once each.
    assert sum("已交办" in s for s in summaries) == 2, summaries
    assert all(a != b for a, b in itertools.pairwise(summaries)), summaries
    assert seen.reply_text == "已组织清理河道垃圾，并安排每周巡查。"
    assert seen.HasField("replied_at")
    assert settle and seen.deadline == settle[0]
