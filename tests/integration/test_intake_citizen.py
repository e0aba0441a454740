"""The citizen's side over real gRPC: tracking code + phone, timeline fed by routing's events on the
node's bus, rating once per reply, review within 30 days of the reply, withdrawal; and the events
intake emits for them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.intake.v1 import intake_service_pb2 as pb
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.events import decode, envelope, to_bus_event
from services.common.service import BusEvent, NodeHooks, Subscription
from services.common.settings import Settings
from services.intake.app import NOTICE_TIMER
from services.intake.notice_sender import next_due
from services.node import Node
from tests.support.helpers import wait_until

NODE = "511102"
PHONE = "13912345678"


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 2, 9, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Harness:
    node: Node
    clock: Clock
    stub: intake_grpc.IntakeServiceStub
    emitted: list[BusEvent]
    # At each wake of the progress-notice sender: the earliest due notice it would find then (None: none).
    woken: list[datetime | None]
    version: dict[str, int] = field(default_factory=dict)

    def submit(self, ref: str, phone: str = PHONE) -> pb.SubmitCaseResponse:
        reply: pb.SubmitCaseResponse = self.stub.SubmitCase(
            pb.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_APP,
                channel_ref=ref,
                title=f"小区停车难 {ref}",
                body=f"小区车位不足，夜里车停满消防通道，事项{ref}。",
                category="城乡建设",
                region_code=NODE,
                complainant=common_pb2.Person(name="张三", phone=phone),
            ),
            timeout=5,
        )
        return reply

    def routing_says(self, case_id: str, action: str, to_state: int, **options: Any) -> BusEvent:
        """Publish ``routing_event(...)`` on the node's bus, as routing would."""
        event = self.routing_event(case_id, action, to_state, **options)
        self.node.bus.publish(event)
        return event

    def routing_event(
        self,
        case_id: str,
        action: str,
        to_state: int,
        *,
        reason: str = "内部备注：已电话沟通",
        version: int | None = None,
    ) -> BusEvent:
        """A hand-built WorkOrderChanged, as routing would publish it."""
        number = version if version is not None else self.version.get(case_id, 2) + 1
        self.version[case_id] = max(number, self.version.get(case_id, 2))
        env = envelope(
            payload_field="work_order_changed",
            payload=events_pb2.WorkOrderChanged(
                work_order_id=f"WO-{case_id}",
                unit_id=f"{NODE}:城乡建设",
                to_state=to_state,  # type: ignore[arg-type]
                action=action,
                actor="clerk-1",
                reason=reason,
            ),
            case_id=case_id,
            version=number,
            owner_node=NODE,
            owner_epoch=1,
            origin_node=NODE,
            origin_service="routing",
            occurred_at=self.clock(),
        )
        return to_bus_event(env)

    def emitted_of(self, event_type: str) -> list[events_pb2.EventEnvelope]:
        self.node.drain()
        return [decode(e) for e in self.emitted if e.event_type == event_type]


@pytest.fixture(params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    url = None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    # No safety pass of the notice sender within a test: a notice goes out only if its commit woke the sender.
    monkeypatch.setattr("services.intake.app.NOTICE_SAFETY_S", 3600.0)
    clock = Clock()
    settings = Settings(node=NODE, data_dir=tmp_path, database_url=url, relay_interval_s=0.05, metrics_port=None)
    woken: list[datetime | None] = []

    def wake_timer(name: str) -> None:
        factory = node.parts["intake"].session_factory
        if name == NOTICE_TIMER and factory is not None:
            woken.append(next_due(factory))  # what the sender's pass would read now
        if node.timer_loop is not None:
            node.timer_loop.wake(name)

    node = Node(settings, services=("intake",), clock=clock, hooks=NodeHooks(wake_timer=wake_timer))
    emitted: list[BusEvent] = []
    for kind in ("case_registered", "case_evaluated", "review_requested", "case_withdrawn"):
        node.bus.subscribe(Subscription("test", "intake", kind, emitted.append))
    node.start()
    with grpc.insecure_channel(node.address) as channel:
        yield Harness(node, clock, intake_grpc.IntakeServiceStub(channel), emitted, woken)
    node.stop(grace=0.2)


def _code(error: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return error.value.code()


def test_tracking_needs_the_code_and_the_phone_and_shows_public_milestones(harness: Harness) -> None:
    reply = harness.submit("t-1")
    code, case_id = reply.tracking_code, reply.case.case_id
    harness.routing_says(case_id, "accept", common_pb2.CASE_STATE_ACCEPTED)
    harness.routing_says(case_id, "reply", common_pb2.CASE_STATE_REPLIED)
    view = harness.stub.TrackCase(pb.TrackCaseRequest(tracking_code=code.lower().replace("-", ""), phone_last4="5678"))
    assert view.state == common_pb2.CASE_STATE_REPLIED
    assert [e.summary for e in view.timeline] == ["已登记 registered", "已受理 accepted", "已答复 replied"]
    assert all("内部" not in e.summary for e in view.timeline)  # internal notes never shown
    assert view.can_evaluate and view.can_request_review
    assert "张三" not in str(view) and PHONE not in str(view)
    for tracking, last4 in ((code, "0000"), ("22222-222222", "5678"), ("not-a-code", "5678")):
        with pytest.raises(grpc.RpcError) as caught:
            harness.stub.TrackCase(pb.TrackCaseRequest(tracking_code=tracking, phone_last4=last4))
        assert _code(caught) == grpc.StatusCode.NOT_FOUND


def test_repeated_failed_logins_lock_the_tracking_code(harness: Harness) -> None:
    code = harness.submit("t-2").tracking_code
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as caught:
            harness.stub.TrackCase(pb.TrackCaseRequest(tracking_code=code, phone_last4="1111"))
        assert _code(caught) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.TrackCase(pb.TrackCaseRequest(tracking_code=code, phone_last4="5678"))
    assert _code(caught) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_redelivered_and_old_routing_events_change_nothing(harness: Harness) -> None:
    reply = harness.submit("t-3")
    event = harness.routing_says(reply.case.case_id, "accept", common_pb2.CASE_STATE_ACCEPTED)
    harness.node.bus.publish(event)  # at-least-once delivery
    harness.routing_says(reply.case.case_id, "refuse", common_pb2.CASE_STATE_REFUSED, version=2)  # overtaken
    view = harness.stub.TrackCase(pb.TrackCaseRequest(tracking_code=reply.tracking_code, phone_last4="5678"))
    assert view.state == common_pb2.CASE_STATE_ACCEPTED
    assert [e.summary for e in view.timeline] == ["已登记 registered", "已受理 accepted"]


def test_rating_is_once_per_reply_and_emits_case_evaluated(harness: Harness) -> None:
    reply = harness.submit("t-4")
    code, case_id = reply.tracking_code, reply.case.case_id
    rate = pb.EvaluateCaseRequest(
        tracking_code=code, phone_last4="5678", satisfaction=common_pb2.SATISFACTION_UNSATISFIED, comment="没解决"
    )
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.EvaluateCase(rate)
    assert _code(caught) == grpc.StatusCode.FAILED_PRECONDITION  # nothing replied yet
    harness.routing_says(case_id, "reply", common_pb2.CASE_STATE_REPLIED)
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.EvaluateCase(
            pb.EvaluateCaseRequest(
                tracking_code=code, phone_last4="5678", satisfaction=common_pb2.SATISFACTION_UNSPECIFIED
            )
        )
    assert _code(caught) == grpc.StatusCode.INVALID_ARGUMENT and "satisfaction" in (caught.value.details() or "")
    first = harness.stub.EvaluateCase(rate)
    assert first.evaluation_id and not first.forwarded_to_owner
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.EvaluateCase(rate)
    assert _code(caught) == grpc.StatusCode.FAILED_PRECONDITION
    # Routing reopens and replies again: the new reply may be rated.
    harness.routing_says(case_id, "reopen", common_pb2.CASE_STATE_REOPENED)
    harness.routing_says(case_id, "reply", common_pb2.CASE_STATE_REPLIED)
    second = harness.stub.EvaluateCase(
        pb.EvaluateCaseRequest(tracking_code=code, phone_last4="5678", satisfaction=common_pb2.SATISFACTION_SATISFIED)
    )
    assert second.evaluation_id != first.evaluation_id
    view = harness.stub.TrackCase(pb.TrackCaseRequest(tracking_code=code, phone_last4="5678"))
    assert view.satisfaction == common_pb2.SATISFACTION_SATISFIED and not view.can_evaluate
    wait_until(lambda: len(harness.emitted_of("case_evaluated")) == 2, 10, "two CaseEvaluated events")
    events = harness.emitted_of("case_evaluated")
    assert [e.case_evaluated.satisfaction for e in events] == [
        common_pb2.SATISFACTION_UNSATISFIED,
        common_pb2.SATISFACTION_SATISFIED,
    ]
    assert events[0].case_evaluated.unit_id == f"{NODE}:城乡建设"
    assert events[0].case_evaluated.work_order_id == f"WO-{case_id}"
    # Each event is the case's next version after the highest intake has seen (routing's 3, then 5).
    assert [e.version for e in events] == [4, 6]


def test_review_only_within_30_days_of_the_reply_and_once(harness: Harness) -> None:
    early, late = harness.submit("t-5"), harness.submit("t-6", phone="13912340000")
    review = pb.RequestReviewRequest(tracking_code=early.tracking_code, phone_last4="5678", reason="答复不实")
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.RequestReview(review)
    assert _code(caught) == grpc.StatusCode.FAILED_PRECONDITION  # no reply yet
    harness.routing_says(early.case.case_id, "reply", common_pb2.CASE_STATE_REPLIED)
    harness.routing_says(late.case.case_id, "reply", common_pb2.CASE_STATE_REPLIED)
    harness.routing_says(late.case.case_id, "close", common_pb2.CASE_STATE_CLOSED)
    harness.clock.now += timedelta(days=30)  # the last day of the window
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.RequestReview(pb.RequestReviewRequest(tracking_code=early.tracking_code, phone_last4="5678"))
    assert _code(caught) == grpc.StatusCode.INVALID_ARGUMENT  # a reason is required
    accepted = harness.stub.RequestReview(review)
    assert accepted.decide_by.ToDatetime(tzinfo=UTC) == harness.clock.now + timedelta(days=30)
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.RequestReview(review)
    assert _code(caught) == grpc.StatusCode.FAILED_PRECONDITION  # once per reply
    harness.clock.now += timedelta(seconds=1)
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.RequestReview(
            pb.RequestReviewRequest(tracking_code=late.tracking_code, phone_last4="0000", reason="不服")
        )
    assert _code(caught) == grpc.StatusCode.FAILED_PRECONDITION
    assert "30 days" in (caught.value.details() or "")
    wait_until(lambda: len(harness.emitted_of("review_requested")) == 1, 10, "one ReviewRequested")
    assert harness.emitted_of("review_requested")[0].review_requested.reason == "答复不实"


def test_withdrawal_before_the_reply_only(harness: Harness) -> None:
    open_case, replied = harness.submit("t-7"), harness.submit("t-8", phone="13912341111")
    harness.routing_says(replied.case.case_id, "reply", common_pb2.CASE_STATE_REPLIED)
    withdrawn = harness.stub.WithdrawCase(
        pb.WithdrawCaseRequest(tracking_code=open_case.tracking_code, phone_last4="5678", reason="已自行解决")
    )
    assert withdrawn.state == common_pb2.CASE_STATE_WITHDRAWN
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.WithdrawCase(pb.WithdrawCaseRequest(tracking_code=open_case.tracking_code, phone_last4="5678"))
    assert _code(caught) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.WithdrawCase(pb.WithdrawCaseRequest(tracking_code=replied.tracking_code, phone_last4="1111"))
    assert _code(caught) == grpc.StatusCode.FAILED_PRECONDITION
    wait_until(lambda: len(harness.emitted_of("case_withdrawn")) == 1, 10, "one CaseWithdrawn")
    event = harness.emitted_of("case_withdrawn")[0]
    assert (event.case_id, event.case_withdrawn.reason) == (open_case.case.case_id, "已自行解决")
    # A withdrawn case is no longer open: the same person's next submission is not a repeat of it.
    assert harness.submit("t-9").case.repeat_of != open_case.case.case_id
    registered = harness.emitted_of("case_registered")
    assert registered and not registered[0].case_registered.case.complainant.phone  # no personal data in events


def test_the_notice_sender_is_woken_after_the_commit_that_queued_the_notice(harness: Harness) -> None:
    """A relay run hands intake routing's events in one transaction: the sender is woken once, after that
    commit, so its pass finds the acceptance notice (woken before it, the pass found nothing and the
    notice waited for the safety pass, here an hour away)."""
    reply = harness.submit("t-wake")
    case_id, code = reply.case.case_id, reply.tracking_code
    accepted = harness.routing_event(case_id, "accept", common_pb2.CASE_STATE_ACCEPTED)
    noted = harness.routing_event(case_id, "remark", common_pb2.CASE_STATE_ACCEPTED)
    harness.woken.clear()
    harness.node.bus.publish_batch([accepted, noted])
    assert harness.woken == [harness.clock.now]

    def notices() -> list[tuple[str, str]]:
        view = harness.stub.TrackCase(pb.TrackCaseRequest(tracking_code=code, phone_last4="5678"), timeout=5)
        return [(n.kind, n.state) for n in view.notices]

    wait_until(lambda: notices() == [("accepted", "sent")], 20, "the acceptance notice sent")
