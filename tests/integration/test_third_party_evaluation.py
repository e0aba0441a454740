"""第三方评价 on a real county 511102 under its city 511100 and province 510000, SQLite and PostgreSQL.

The county closes three cases of one unit this month and draws the month's sample with a recorded
seed (a third of the unit's closed cases, at least one: two of the three). An auditor recomputes the
two from the seed alone. The evaluation group lists the sample (the citizen's phone in the text is
masked) and rates each case once; the ratings travel up as events, and the county's and the
province's warehouses give the same 第三方评价满意率 (1 of 2) beside, not inside, the citizen's rate.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc

from services.common.service import utc_now
from services.common.timeutil import CHINA
from services.node import Node
from tests.support.exchange_nodes import phone_for, three_tiers
from tests.support.helpers import wait_until
from tests.support.tiers import intake, placed_with_unit, refused, routing

PHONE_IN_TEXT = "13987654321"
TP_METRICS = ["third_party_sampled", "third_party_satisfaction_rate", "satisfaction_rate"]


@pytest.fixture(params=["sqlite", "postgres"])
def tiers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, ...]]:
    admin_url = lambda: str(request.getfixturevalue("postgres_admin_url"))  # noqa: E731
    with three_tiers(request.param, tmp_path_factory.mktemp(f"tp-{request.param}"), admin_url) as nodes:
        yield nodes


def _closed_case(county: Node) -> str:
    ref = f"tp-{uuid.uuid4().hex[:10]}"
    case_id: str = (
        intake(county)
        .SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_WEB,
                channel_ref=ref,
                title="河道漂浮垃圾长期无人清理",
                body=f"河道里漂浮垃圾长期无人清理，请尽快处理。联系电话{PHONE_IN_TEXT}",
                category="环境保护",
                region_code="511102",
                complainant=common_pb2.Person(name="王五", phone=phone_for(ref)),
            ),
            timeout=5,
        )
        .case.case_id
    )
    wo = placed_with_unit(county, case_id).work_order_id
    stub = routing(county)
    stub.AcceptWorkOrder(routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="handler"), timeout=5)
    stub.ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(work_order_id=wo, actor="handler", text="已清理。"), timeout=5
    )
    stub.CloseWorkOrder(routing_pb2.CloseWorkOrderRequest(work_order_id=wo, actor="clerk"), timeout=5)
    return case_id


def _figures(node: Node, month: str) -> dict[str, tuple[int, int]]:
    with grpc.insecure_channel(node.address) as channel:
        reply = stats_grpc.StatsServiceStub(channel).GetMetrics(
            stats_pb2.GetMetricsRequest(region_code="511102", month=month, metrics=TP_METRICS), timeout=5
        )
    return {m.name: (int(m.numerator), int(m.denominator)) for m in reply.metrics}


def test_the_month_s_sample_is_reproducible_rated_once_and_counted_alike_at_county_and_province(
    tiers: tuple[Node, Node, Node],
) -> None:
    province, _city, county = tiers
    month = utc_now().astimezone(CHINA).strftime("%Y-%m")
    closed = [_closed_case(county) for _ in range(3)]
    stub = routing(county)

    def draw(**fields: object) -> routing_pb2.DrawEvaluationSampleResponse:
        request = routing_pb2.DrawEvaluationSampleRequest(actor="supervisor", **fields)  # type: ignore[arg-type]
        answer: routing_pb2.DrawEvaluationSampleResponse = stub.DrawEvaluationSample(request, timeout=10)
        return answer

    assert refused(lambda: draw(month="2026-13"), grpc.StatusCode.INVALID_ARGUMENT).startswith("month")
    assert refused(lambda: draw(month=month, percent=150), grpc.StatusCode.INVALID_ARGUMENT).startswith("percent")
    assert refused(lambda: draw(month=month, seed="种子"), grpc.StatusCode.INVALID_ARGUMENT).startswith("seed")
    drawn = draw(month=month, seed="audit-1", percent=34, minimum=1)
    assert (drawn.sample.seed, drawn.sample.percent, drawn.sample.minimum) == ("audit-1", 34, 1)
    assert [(u.unit_id, u.closed, u.sampled) for u in drawn.sample.units] == [("lszq-sthjj", 3, 2)]
    # The auditor's check: the two smallest sha256("seed|month|unit|case") of the unit's closed cases.
    key = lambda case_id: hashlib.sha256(f"audit-1|{month}|lszq-sthjj|{case_id}".encode()).hexdigest()  # noqa: E731
    sampled = [i.case_id for i in drawn.items]
    assert sampled == sorted(closed, key=key)[:2]
    assert "already drawn" in refused(lambda: draw(month=month, seed="again"), grpc.StatusCode.FAILED_PRECONDITION)

    listed = stub.ListEvaluationSample(routing_pb2.ListEvaluationSampleRequest(month=month), timeout=5)
    assert [i.case_id for i in listed.items] == sampled
    assert all(PHONE_IN_TEXT not in i.body and "*******4321" in i.body for i in listed.items), "phone masked"
    assert {i.reply_text for i in listed.items} == {"已清理。"}

    def rate(case_id: str, rating: common_pb2.Satisfaction.ValueType, comment: str = "") -> routing_pb2.EvaluationItem:
        request = routing_pb2.RecordThirdPartyRatingRequest(
            month=month, case_id=case_id, actor="expert-1", rating=rating, comment=comment
        )
        answer: routing_pb2.RecordThirdPartyRatingResponse = stub.RecordThirdPartyRating(request, timeout=5)
        return answer.item

    first, second = sampled
    unsampled = next(c for c in closed if c not in sampled)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert refused(lambda: rate(first, common_pb2.SATISFACTION_UNSPECIFIED), invalid).startswith("rating")
    assert refused(lambda: rate(first, common_pb2.SATISFACTION_UNSATISFIED), invalid).startswith("comment")
    refused(lambda: rate(unsampled, common_pb2.SATISFACTION_SATISFIED), grpc.StatusCode.NOT_FOUND)
    assert rate(first, common_pb2.SATISFACTION_SATISFIED).rated_by == "expert-1"
    assert rate(second, common_pb2.SATISFACTION_UNSATISFIED, "答复未说明整改时限").comment == "答复未说明整改时限"
    again = refused(
        lambda: rate(first, common_pb2.SATISFACTION_UNSATISFIED, "改评"), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "already rated" in again
    left = stub.ListEvaluationSample(routing_pb2.ListEvaluationSampleRequest(month=month, unrated_only=True), timeout=5)
    assert list(left.items) == [] and [u.rated for u in left.sample.units] == [2]

    expected = {"third_party_sampled": (2, 1), "third_party_satisfaction_rate": (1, 2)}
    for node in (county, province):
        wait_until(
            lambda n=node: {k: v for k, v in _figures(n, month).items() if k in expected} == expected,
            30,
            f"the third-party figures at {node.settings.node}",
        )
    # The citizen's own rate is apart: nobody rated these cases as a citizen.
    assert _figures(county, month)["satisfaction_rate"] == _figures(province, month)["satisfaction_rate"]
