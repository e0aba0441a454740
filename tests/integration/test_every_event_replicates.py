"""Every event type replicates: generated from the event registry, each produced through the real path.

The registry is the contract itself: the ``payload`` oneof of ``events.v1.EventEnvelope``. For each
type a service emits, a producer below drives the real RPCs (RPC → store → outbox) at the county
511102 of a linked three-node chain (county → city 511100 → province 510000), and the test waits until
the event of that case is held at the city and the province, with nothing of the case quarantined.
A type added to the contract without a producer here fails ``test_the_producer_table_covers_the_registry``;
a type listed as not emitted fails as soon as a service's code names it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.video.v1 import video_service_pb2 as video_pb2

from services.common.service import utc_now
from services.common.timeutil import CHINA, from_timestamp, to_timestamp
from services.exchange.domain import UP_EVENT_TYPES
from services.node import Node
from tests.support.exchange_nodes import three_tiers
from tests.support.helpers import wait_until
from tests.support.tiers import (
    Registered,
    connect,
    held_types,
    intake,
    leader_at,
    quarantined,
    register,
    rooms,
    routing,
    video,
    work_order,
)
from tests.support.tiers import participants as consultation_participants
from tests.support.tiers import placed_by_hand as placed

REGISTRY = tuple(f.name for f in events_pb2.EventEnvelope.DESCRIPTOR.oneofs_by_name["payload"].fields)
SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"


class ShiftedClock:
    """The county's clock: now, or later by ``offset`` (deadline warnings and visit reminders)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return utc_now() + self.offset

    def set(self, moment: datetime) -> None:
        with self._lock:
            self.offset = max(timedelta(0), moment - utc_now())


@dataclass(frozen=True)
class Chain:
    province: Node
    city: Node
    county: Node
    clock: ShiftedClock


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def chain(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    admin_url = lambda: str(request.getfixturevalue("postgres_admin_url"))  # noqa: E731
    clock = ShiftedClock()
    tmp = tmp_path_factory.mktemp(f"registry-{request.param}")
    with three_tiers(request.param, tmp, admin_url, county_clock=clock) as (province, city, county):
        leader_at(county, "registry-leader")
        connect([province, city, county])
        rooms(county, city)
        yield Chain(province, city, county, clock)


def _replied(chain: Chain) -> Registered:
    case = register(chain.county, "511102")
    wo = placed(chain.county, case.case_id).work_order_id
    stub = routing(chain.county)
    stub.AcceptWorkOrder(routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="handler"), timeout=5)
    stub.ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(work_order_id=wo, actor="handler", text="已处理。"), timeout=5
    )
    wait_until(lambda: case.track().can_evaluate, 15, "the reply in TrackCase")
    return case


def _registered(chain: Chain) -> str:
    return register(chain.county, "511102").case_id


def _changed(chain: Chain) -> str:
    case_id = register(chain.county, "511102").case_id
    wo = placed(chain.county, case_id).work_order_id
    routing(chain.county).AcceptWorkOrder(routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="h"), timeout=5)
    return case_id


def _escalated(chain: Chain) -> str:
    case_id = register(chain.county, "511102").case_id
    placed(chain.county, case_id)
    routing(chain.county).EscalateCase(
        routing_pb2.EscalateCaseRequest(case_id=case_id, actor="office", reason="涉及跨区，请市里统筹"), timeout=5
    )
    return case_id


def _merged(chain: Chain) -> str:
    main, twin = (register(chain.county, "511102").case_id for _ in range(2))
    placed(chain.county, main)
    placed(chain.county, twin)
    routing(chain.county).MergeCases(
        routing_pb2.MergeCasesRequest(main_case_id=main, case_ids=[twin], actor="office", reason="同一事项"), timeout=5
    )
    return twin


def _supervised(chain: Chain) -> str:
    case_id = register(chain.county, "511102").case_id
    placed(chain.county, case_id)
    routing(chain.county).Supervise(
        routing_pb2.SuperviseRequest(
            case_id=case_id,
            actor="office",
            level="chase",
            demand="请三日内答复",
            due_at=to_timestamp(chain.clock() + timedelta(days=3)),
        ),
        timeout=5,
    )
    return case_id


def _evaluated(chain: Chain) -> str:
    case = _replied(chain)
    intake(chain.county).EvaluateCase(
        intake_pb2.EvaluateCaseRequest(
            tracking_code=case.code, phone_last4=case.last4, satisfaction=common_pb2.SATISFACTION_SATISFIED
        ),
        timeout=5,
    )
    return case.case_id


def _review(chain: Chain) -> str:
    case = _replied(chain)
    intake(chain.county).RequestReview(
        intake_pb2.RequestReviewRequest(tracking_code=case.code, phone_last4=case.last4, reason="答复没有解决问题"),
        timeout=5,
    )
    return case.case_id


def _withdrawn(chain: Chain) -> str:
    case = register(chain.county, "511102")
    placed(chain.county, case.case_id)
    intake(chain.county).WithdrawCase(
        intake_pb2.WithdrawCaseRequest(tracking_code=case.code, phone_last4=case.last4, reason="问题已自行解决"),
        timeout=5,
    )
    return case.case_id


def _notice_settled(chain: Chain) -> str:
    """办事进度推送: the county's reply makes notices, which its sender delivers (the embedded file channel)."""
    return _replied(chain).case_id


def _notices_set(chain: Chain) -> str:
    case = register(chain.county, "511102")
    intake(chain.county).SetProgressNotices(
        intake_pb2.SetProgressNoticesRequest(tracking_code=case.code, phone_last4=case.last4, enabled=False),
        timeout=5,
    )
    return case.case_id


def _visit(chain: Chain) -> tuple[str, video_pb2.Visit]:
    case_id = register(chain.county, "511102").case_id
    placed(chain.county, case_id)
    request = video_pb2.BookVisitRequest(case_id=case_id, actor="clerk", leader_id="registry-leader")
    return case_id, video(chain.county).BookVisit(request, timeout=10).visit


def _booked(chain: Chain) -> str:
    return _visit(chain)[0]


def _outcome(chain: Chain) -> str:
    case_id, visit = _visit(chain)
    video(chain.county).RecordOutcome(
        video_pb2.RecordOutcomeRequest(visit_id=visit.visit_id, actor="leader", decisions="责成相关部门处理"),
        timeout=5,
    )
    return case_id


def _cancelled(chain: Chain) -> str:
    case_id, visit = _visit(chain)
    video(chain.county).CancelVisit(
        video_pb2.CancelVisitRequest(visit_id=visit.visit_id, actor="clerk", reason="群众改约"), timeout=5
    )
    return case_id


def _consultation(chain: Chain) -> tuple[str, video_pb2.Consultation]:
    """A remote consultation (远程会商) the county hosts with the city's unit, at their earliest common slot."""
    case_id = register(chain.county, "511102").case_id
    placed(chain.county, case_id)
    request = video_pb2.BookConsultationRequest(
        case_id=case_id, actor="clerk", topic="跨层级会商", participants=consultation_participants()
    )
    return case_id, video(chain.county).BookConsultation(request, timeout=15).consultation


def _consultation_booked(chain: Chain) -> str:
    return _consultation(chain)[0]


def _consultation_held(chain: Chain) -> str:
    case_id, booked = _consultation(chain)
    video(chain.county).RecordConsultationMinutes(
        video_pb2.RecordConsultationMinutesRequest(consultation_id=booked.consultation_id, minutes="市县共同核查"),
        timeout=5,
    )
    return case_id


def _consultation_cancelled(chain: Chain) -> str:
    case_id, booked = _consultation(chain)
    video(chain.county).CancelConsultation(
        video_pb2.CancelConsultationRequest(consultation_id=booked.consultation_id, reason="改期"), timeout=10
    )
    return case_id


def _sweep(node: Node, service: str) -> None:
    for timer in node.parts[service].timers:
        timer.run()


def _sweep_before(chain: Chain, starts_at: Timestamp) -> None:
    """The county's video sweep half an hour before ``starts_at``: both reminders are due."""
    starts = from_timestamp(starts_at)
    assert starts is not None
    try:
        chain.clock.set(starts - timedelta(minutes=30))
        _sweep(chain.county, "video")
    finally:
        chain.clock.set(utc_now())


def _reminded(chain: Chain) -> str:
    case_id, visit = _visit(chain)
    _sweep_before(chain, visit.starts_at)
    return case_id


def _consultation_reminded(chain: Chain) -> str:
    case_id, booked = _consultation(chain)
    _sweep_before(chain, booked.starts_at)
    return case_id


def _warned(chain: Chain) -> str:
    case_id = register(chain.county, "511102").case_id
    order = placed(chain.county, case_id)
    # An hour before the last running deadline (the settlement): its warning is due, its chase not yet.
    due = max(from_timestamp(d.due_at) or utc_now() for d in order.deadlines)
    try:
        chain.clock.set(due - timedelta(hours=1))
        _sweep(chain.county, "routing")
    finally:
        chain.clock.set(utc_now())
    return case_id


def _sample(chain: Chain) -> list[routing_pb2.EvaluationItem]:
    """第三方评价: the county's sample of this month (every case it closed), drawn once per module."""
    stub = routing(chain.county)
    month = _month(chain)
    listed = routing_pb2.ListEvaluationSampleRequest(month=month)
    try:
        return list(stub.ListEvaluationSample(listed, timeout=5).items)
    except grpc.RpcError as error:
        if error.code() is not grpc.StatusCode.NOT_FOUND:
            raise
    case_id = _evaluated(chain)  # satisfied: the county closes it
    closed = common_pb2.CASE_STATE_CLOSED
    wait_until(lambda: getattr(work_order(chain.county, case_id), "state", None) == closed, 15, "the case closed")
    draw = routing_pb2.DrawEvaluationSampleRequest(month=month, seed="registry", percent=100, actor="supervisor")
    return list(stub.DrawEvaluationSample(draw, timeout=10).items)


def _sampled(chain: Chain) -> str:
    return _sample(chain)[0].case_id


def _rated(chain: Chain) -> str:
    item = next(i for i in _sample(chain) if not i.rating)
    routing(chain.county).RecordThirdPartyRating(
        routing_pb2.RecordThirdPartyRatingRequest(
            month=_month(chain),
            case_id=item.case_id,
            actor="evaluator",
            rating=common_pb2.SATISFACTION_SATISFIED,
        ),
        timeout=5,
    )
    return item.case_id


def _month(chain: Chain) -> str:
    return chain.clock().astimezone(CHINA).strftime("%Y-%m")


# Event type → what produces it at the county through the real RPCs (returns the case id), or why no
# service emits it (the test then checks that no service's code names it).
PRODUCERS: dict[str, Callable[[Chain], str] | str] = {
    "case_registered": _registered,
    "case_evaluated": _evaluated,
    "review_requested": _review,
    "case_withdrawn": _withdrawn,
    "work_order_created": _registered,
    "work_order_changed": _changed,
    "case_handed_off": _escalated,
    "case_escalated": "not emitted: an escalation (上报) travels as case_handed_off, kind escalate_up",
    "supervision_issued": _supervised,
    "deadline_warning": _warned,
    "visit_booked": _booked,
    "visit_outcome_recorded": _outcome,
    "case_merged": _merged,
    "visit_reminder": _reminded,
    "visit_cancelled": _cancelled,
    "consultation_booked": _consultation_booked,
    "consultation_held": _consultation_held,
    "consultation_cancelled": _consultation_cancelled,
    "consultation_reminder": _consultation_reminded,
    "case_sampled": _sampled,
    "third_party_rated": _rated,
    "progress_notice_settled": _notice_settled,
    "progress_notices_set": _notices_set,
}


def test_the_producer_table_covers_the_registry() -> None:
    assert sorted(PRODUCERS) == sorted(REGISTRY), "every event type of the contract needs a producer here"
    # and exchange carries every one of them up (a type it does not subscribe to would never replicate)
    assert sorted({t for types in UP_EVENT_TYPES.values() for t in types}) == sorted(REGISTRY)


@pytest.mark.parametrize("event_type", REGISTRY)
def test_every_event_type_reaches_the_city_and_the_province_without_quarantine(chain: Chain, event_type: str) -> None:
    producer = PRODUCERS.get(event_type)
    assert producer is not None, f"no producer for {event_type}: add one to PRODUCERS"
    if isinstance(producer, str):
        # The services whose case events travel up are the ones that emit (stats only consumes).
        emitters = [
            str(path.relative_to(SERVICES_DIR))
            for service in UP_EVENT_TYPES
            for path in (SERVICES_DIR / service).rglob("*.py")
            if f'"{event_type}"' in path.read_text(encoding="utf-8")
        ]
        assert emitters == [], f"{event_type} is named in {emitters}: give it a producer in PRODUCERS"
        return
    case_id = producer(chain)
    wait_until(
        lambda: all(event_type in held_types(n, case_id) for n in (chain.city, chain.province)),
        30,
        f"{event_type} of {case_id} at the city and the province",
    )
    for node in (chain.county, chain.city, chain.province):
        assert quarantined(node, case_id) == [], node.settings.node
