"""并单 (MergeCases / UnmergeCase) on a real county 511102 linked to its city 511100, SQLite and PostgreSQL.

Three citizens write about the same river; the county's clerk merges two of them into the first.
The merged citizens' TrackCase follows the main case (its reply reaches them and they rate it), one
merge is undone before the reply, and the merge events replicate to the city, whose warehouse counts
the submissions (received) and the matters (received less merged) the county's does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

from services.node import Node
from tests.support.exchange_nodes import Start, linked_nodes
from tests.support.helpers import wait_until
from tests.support.tiers import Registered, intake, metrics, refused, register, replica_types, routing, work_order
from tests.support.tiers import placed_with_unit as placed


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def test_merged_citizens_follow_the_main_case_rate_it_and_count_once_as_a_matter(start: Start) -> None:
    city = start("511100")
    county = start("511102", city)
    main, twin, other = (register(county, "511102") for _ in range(3))
    for case in (main, twin, other):
        placed(county, case.case_id)
    stub = routing(county)

    def merge(case_ids: list[str], reason: str = "同一河道垃圾问题") -> routing_pb2.MergeCasesResponse:
        request = routing_pb2.MergeCasesRequest(
            main_case_id=main.case_id, case_ids=case_ids, actor="clerk-1", reason=reason
        )
        answer: routing_pb2.MergeCasesResponse = stub.MergeCases(request, timeout=5)
        return answer

    # Bad input names the field and changes nothing.
    assert refused(lambda: merge([twin.case_id], reason=" "), grpc.StatusCode.INVALID_ARGUMENT).startswith("reason")
    assert "case_ids[0]" in refused(lambda: merge([main.case_id]), grpc.StatusCode.INVALID_ARGUMENT)
    unknown = "511102-20200101-999999"
    assert "case_ids[1]" in refused(lambda: merge([twin.case_id, unknown]), grpc.StatusCode.INVALID_ARGUMENT)
    assert "case_ids[1]" in refused(lambda: merge([twin.case_id, twin.case_id]), grpc.StatusCode.INVALID_ARGUMENT)
    assert work_order(county, twin.case_id).state == common_pb2.CASE_STATE_ASSIGNED  # type: ignore[union-attr]

    answer = merge([twin.case_id, other.case_id])
    assert [w.state for w in answer.merged_work_orders] == [common_pb2.CASE_STATE_MERGED] * 2
    assert "merge_in" in [h.action for h in answer.main_work_order.history]
    assert "unmerge" in answer.merged_work_orders[0].allowed_actions

    wait_until(lambda: twin.track().merged_into_case_id == main.case_id, 30, "the merge at the twin's TrackCase")
    assert any("已并单" in e.summary for e in twin.track().timeline)

    # Undone before the reply: the other case is handled on its own again, in the state it had.
    back = stub.UnmergeCase(
        routing_pb2.UnmergeCaseRequest(case_id=other.case_id, actor="clerk-1", reason="地点不同，分别办理"), timeout=5
    )
    assert back.work_order.state == common_pb2.CASE_STATE_ASSIGNED
    wait_until(lambda: other.track().merged_into_case_id == "", 30, "the undo at the other case's TrackCase")
    # A merged main case cannot be handed on: its merged citizens follow it here.
    assert "UnmergeCase" in refused(
        lambda: stub.EscalateCase(
            routing_pb2.EscalateCaseRequest(case_id=main.case_id, actor="clerk-1", reason="跨区"), timeout=5
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    reply = _reply(county, main)
    wait_until(lambda: twin.track().reply_text == reply, 30, "the main case's reply at the twin's TrackCase")
    seen = twin.track()
    assert seen.state == common_pb2.CASE_STATE_REPLIED and seen.can_evaluate
    assert any(f"主件 {main.case_id}" in e.summary and "已答复" in e.summary for e in seen.timeline)
    assert other.track().reply_text == ""
    # After the reply the merge stands.
    refused(
        lambda: stub.UnmergeCase(
            routing_pb2.UnmergeCaseRequest(case_id=twin.case_id, actor="clerk-1", reason="x"), timeout=5
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # The merged citizen rates the reply it read; its own work order stays MERGED.
    intake(county).EvaluateCase(
        intake_pb2.EvaluateCaseRequest(
            tracking_code=twin.code, phone_last4=twin.last4, satisfaction=common_pb2.SATISFACTION_SATISFIED
        ),
        timeout=5,
    )
    assert work_order(county, twin.case_id).state == common_pb2.CASE_STATE_MERGED  # type: ignore[union-attr]

    # The merge replicated to the city; both warehouses: three submissions, two matters, one merged,
    # the twin's rating counted, and the reply rate over matters (the main case's reply, not the twin's).
    wait_until(lambda: "case_merged" in replica_types(city, twin.case_id), 30, "case_merged at the city")
    wanted = {"received": 3, "merged": 1, "matters": 2, "satisfaction_rate": 1, "reply_rate": 1}
    for node in (county, city):
        wait_until(
            lambda n=node: metrics(n, "511102", list(wanted)) == wanted,
            30,
            f"submissions and matters at {node.settings.node}",
        )


def _reply(county: Node, case: Registered) -> str:
    text = "已组织清理河道垃圾，并安排每周巡查。"
    order = work_order(county, case.case_id)
    assert order is not None
    stub = routing(county)
    stub.AcceptWorkOrder(routing_pb2.AcceptWorkOrderRequest(work_order_id=order.work_order_id, actor="h"), timeout=5)
    stub.ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(work_order_id=order.work_order_id, actor="h", text=text), timeout=5
    )
    return text
