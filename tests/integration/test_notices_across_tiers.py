"""办事进度推送 across two tiers: a case registered at the city 511100 and handed down (交办) to the county
511102, SQLite and PostgreSQL.

The city, where the citizen registered (and whose intake holds the phone), tells the citizen of each
step the county takes, from the replicas it follows for tracking: handed on, accepted, replied,
reopened (the citizen's unsatisfied rating). Its channel adapter fails the first attempt of every
message: the outbox retries, and every notice is delivered exactly once. A citizen who opted out at
submission gets nothing; one who opts out later with the tracking code gets nothing after that.

And the figures: notices a county sends, gives up and the opt-outs of its citizens are counted in its
own warehouse and, from the replicas, in the city's (docs/stats.md "办事进度推送").
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

from services.common.service import NodeHooks
from services.intake.notices import ChannelFailure, OutgoingMessage
from services.node import Node
from tests.support.exchange_nodes import Start, linked_nodes, phone_for
from tests.support.helpers import wait_until
from tests.support.tiers import Registered, intake, metrics, placed_by_hand, routing, work_order


class FailsFirst:
    """A gateway that refuses the first attempt of each message and takes the second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.delivered: list[OutgoingMessage] = []

    def send(self, message: OutgoingMessage) -> None:
        with self._lock:
            self.attempts[message.notice_id] = self.attempts.get(message.notice_id, 0) + 1
            if self.attempts[message.notice_id] == 1:
                raise ChannelFailure("gateway busy")
            self.delivered.append(message)

    def kinds(self, case_id: str) -> list[str]:
        with self._lock:
            return [m.text for m in self.delivered if m.notice_id.startswith(f"{case_id}/")]


class Unreachable:
    """A gateway that never takes the messages of the cases in ``refused`` (they are given up) and takes the rest."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.delivered: list[OutgoingMessage] = []

    def send(self, message: OutgoingMessage) -> None:
        if message.notice_id.rsplit("/", 1)[0] in self.refused:
            raise ChannelFailure("number not reachable")
        self.delivered.append(message)


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    monkeypatch.setenv("LIANXIN_NOTICE_RETRY", "4/0.2")
    monkeypatch.setenv("LIANXIN_NOTICE_INTERVAL_S", "0.1")
    # The sender's safety pass (every 30 s) never comes within these tests' waits: every notice here is
    # sent because the commit that queued it woke the sender (after that commit), or its retry fell due.
    monkeypatch.setattr("services.intake.app.NOTICE_SAFETY_S", 3600.0)
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def register(node: Node, *, opt_out: bool = False, region: str = "511100") -> Registered:
    ref = f"notice-{uuid.uuid4().hex[:10]}"
    phone = phone_for(ref)
    submitted = intake(node).SubmitCase(
        intake_pb2.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_WEB,
            channel_ref=ref,
            title="小区旁工地夜间施工噪音扰民",
            body="市中区某小区旁工地每晚施工到凌晨，噪音很大，希望有关部门尽快处理。",
            category="环境保护",
            region_code=region,
            complainant=common_pb2.Person(name="李四", phone=phone),
            no_progress_notices=opt_out,
        ),
        timeout=5,
    )
    return Registered(node, submitted.case.case_id, submitted.tracking_code, phone[-4:])


def hand_down_and_reply(city: Node, county: Node, case: Registered) -> str:
    """The city hands the case to the county, whose unit accepts and replies; returns the work order id."""
    wait_until(lambda: work_order(city, case.case_id) is not None, 15, "the city's work order")
    routing(city).AssignManually(
        routing_pb2.AssignManuallyRequest(
            case_id=case.case_id, actor="city-clerk", node="511102", reason="请市中区办理"
        ),
        timeout=5,
    )
    wait_until(lambda: work_order(county, case.case_id) is not None, 20, "the county's work order")
    stub = routing(county)
    wo: str = stub.AssignManually(
        routing_pb2.AssignManuallyRequest(
            case_id=case.case_id, actor="county-clerk", unit_id="lszq-sthjj", reason="办理"
        ),
        timeout=5,
    ).work_order.work_order_id
    stub.AcceptWorkOrder(routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="lszq-sthjj-1"), timeout=5)
    stub.ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(work_order_id=wo, actor="lszq-sthjj-1", text="已责令工地夜间停工。"),
        timeout=5,
    )
    wait_until(lambda: case.track().can_evaluate, 30, "the county's reply at the city")
    return wo


def notice_states(case: Registered) -> list[tuple[str, str]]:
    return [(n.kind, n.state) for n in case.track().notices]


def test_the_registering_city_tells_the_citizen_each_step_of_the_county_once_with_retries(start: Start) -> None:
    gateway = FailsFirst()
    city = start("511100", hooks=NodeHooks(intake_notice_channel=gateway))
    county = start("511102", city)
    case = register(city)
    quiet = register(city, opt_out=True)
    assert case.track().progress_notices and not quiet.track().progress_notices

    wo = hand_down_and_reply(city, county, case)
    hand_down_and_reply(city, county, quiet)
    # The city's office accepts (受理) and hands on; the county unit's 签收 is internal; the reply.
    steps = [("accepted", "sent"), ("handed_on", "sent"), ("replied", "sent")]
    wait_until(lambda: notice_states(case) == steps, 30, "the three notices sent")
    assert gateway.kinds(case.case_id) == [
        f"【连心】您反映的事项（编号{case.case_id}）已受理，我们将依法按时办理。",
        f"【连心】您反映的事项（编号{case.case_id}）已转交有权处理的单位办理。",
        f"【连心】您反映的事项（编号{case.case_id}）已答复，请凭查询码查看并评价。",
    ]
    delivered = [m for m in gateway.delivered if m.notice_id.startswith(f"{case.case_id}/")]
    assert all(gateway.attempts[m.notice_id] == 2 for m in delivered)  # each retried once
    assert {m.recipient[-4:] for m in delivered} == {case.last4} and {m.channel for m in delivered} == {"sms"}

    # Unsatisfied: the county reopens (退回重办) and the city tells the citizen.
    intake(city).EvaluateCase(
        intake_pb2.EvaluateCaseRequest(
            tracking_code=case.code, phone_last4=case.last4, satisfaction=common_pb2.SATISFACTION_UNSATISFIED
        ),
        timeout=5,
    )
    wait_until(lambda: ("reopened", "sent") in notice_states(case), 30, "the reopen notice")

    # The citizen opts out with the tracking code: the county's second reply is shown, but not notified.
    off = intake(city).SetProgressNotices(
        intake_pb2.SetProgressNoticesRequest(tracking_code=case.code, phone_last4=case.last4, enabled=False), timeout=5
    )
    assert not off.progress_notices and not case.track().progress_notices
    wait_until(
        lambda: getattr(work_order(county, case.case_id), "state", None) == common_pb2.CASE_STATE_REOPENED, 30, "reopen"
    )
    routing(county).AcceptWorkOrder(
        routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="lszq-sthjj-1"), timeout=5
    )
    routing(county).ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(work_order_id=wo, actor="lszq-sthjj-1", text="已复查，工地已停工。"),
        timeout=5,
    )
    wait_until(lambda: case.track().state == common_pb2.CASE_STATE_REPLIED, 30, "the second reply at the city")
    assert notice_states(case) == [*steps, ("reopened", "sent")]

    # Nothing twice: every delivered notice id once; the opted-out citizen got nothing at all.
    ids = [m.notice_id for m in gateway.delivered]
    assert len(ids) == len(set(ids)) == 4
    assert quiet.track().notices == [] and gateway.kinds(quiet.case_id) == []


NOTICE_FIGURES = ["notices_sent", "notices_failed", "notices_opted_out"]


def test_the_notices_a_county_sends_are_counted_in_its_warehouse_and_the_citys(start: Start) -> None:
    """The figures of 办事进度推送: the county registers and handles four cases; one citizen is told of the
    acceptance, one cannot be reached (the notice is given up after its retries), one opted out at
    submission and one later. The county counts them from its own events, the city from the replicas."""
    gateway = Unreachable()
    city = start("511100")
    county = start("511102", city, hooks=NodeHooks(intake_notice_channel=gateway))
    told, unreachable, quiet, later = (register(county, region="511102", opt_out=i == 2) for i in range(4))
    gateway.refused.add(unreachable.case_id)
    for case in (told, unreachable):
        order = placed_by_hand(county, case.case_id)
        accept = routing_pb2.AcceptWorkOrderRequest(work_order_id=order.work_order_id, actor="lszq-sthjj-1")
        routing(county).AcceptWorkOrder(accept, timeout=5)
    intake(county).SetProgressNotices(
        intake_pb2.SetProgressNoticesRequest(tracking_code=later.code, phone_last4=later.last4, enabled=False),
        timeout=5,
    )
    wait_until(lambda: notice_states(told) == [("accepted", "sent")], 20, "the acceptance notice sent")
    wait_until(lambda: notice_states(unreachable) == [("accepted", "given_up")], 20, "the notice given up")
    # The one who opted out later may have been told of the acceptance before (the county's office accepts
    # as it registers); nothing after. Wait until that notice, if any, has ended.
    wait_until(lambda: all(state != "pending" for _, state in notice_states(later)), 30, "later's notices ended")
    told_later = [kind for kind, state in notice_states(later) if state == "sent"]
    assert quiet.track().notices == [] and told_later in ([], ["accepted"])

    expected = {"notices_sent": 1 + len(told_later), "notices_failed": 1, "notices_opted_out": 2}
    for node in (county, city):
        wait_until(
            lambda node=node: metrics(node, "511102", NOTICE_FIGURES) == expected,  # type: ignore[misc]
            30,
            f"the notice figures at {node.settings.node}",
        )
    assert metrics(city, "511100", NOTICE_FIGURES) == expected  # the city's own figure: its county's
    assert sorted(m.notice_id.rsplit("/", 1)[0] for m in gateway.delivered) == sorted(
        [told.case_id, *([later.case_id] if told_later else [])]
    )


def test_an_opt_out_reaches_the_figures_when_it_commits_not_at_the_relays_next_poll(start: Start) -> None:
    """SetProgressNotices wakes the outbox relay as every other request that writes an event does: here the
    relay polls only every 10 minutes, so the opt-out is counted only if its commit woke it."""
    county = start("511102", relay_interval_s=600.0)
    case = register(county, region="511102")
    order = placed_by_hand(county, case.case_id)
    accept = routing_pb2.AcceptWorkOrderRequest(work_order_id=order.work_order_id, actor="lszq-sthjj-1")
    routing(county).AcceptWorkOrder(accept, timeout=5)
    wait_until(lambda: ("accepted", "sent") in notice_states(case), 20, "the acceptance notice sent")
    # Quiet: the notice's end is counted, nothing else is under way to wake the relay.
    wait_until(lambda: metrics(county, "511102", NOTICE_FIGURES)["notices_sent"] == 1, 20, "the notice counted")
    assert metrics(county, "511102", NOTICE_FIGURES)["notices_opted_out"] == 0

    intake(county).SetProgressNotices(
        intake_pb2.SetProgressNoticesRequest(tracking_code=case.code, phone_last4=case.last4, enabled=False),
        timeout=5,
    )
    wait_until(lambda: metrics(county, "511102", NOTICE_FIGURES)["notices_opted_out"] == 1, 20, "the opt-out counted")
