"""并单 rules (services.routing.merging) and the merged work order's part (merge, follow, unmerge)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from services.routing.domain import FOLLOW_MAIN, State, WorkOrder, WorkOrderChanged
from services.routing.merging import MAX_MERGED, check_merge, check_merge_request, check_unmerge
from services.stats.domain import Aggregates, CaseEvent, compute
from tests.support.workorders import RULES, assigned_order, at, in_progress_order, new_order

MAIN, TWIN, THIRD = "511102-20260601-000001", "511102-20260601-000002", "511102-20260601-000003"


def order_of(case_id: str, base: WorkOrder | None = None) -> WorkOrder:
    order = base if base is not None else assigned_order()
    order.id, order.case_id = f"WO-{case_id}@511102", case_id
    return order


def test_the_request_names_the_field_it_gets_wrong() -> None:
    cases = [
        (("", [TWIN]), "main_case_id"),
        ((MAIN, []), "case_ids"),
        ((MAIN, [TWIN] * (MAX_MERGED + 1)), "case_ids"),
        ((MAIN, [TWIN, " "]), "case_ids[1]"),
        ((MAIN, [TWIN, MAIN]), "case_ids[1]"),
        ((MAIN, [TWIN, THIRD, TWIN]), "case_ids[2]"),
    ]
    for (main, ids), field in cases:
        with pytest.raises(InvalidArgument) as caught:
            check_merge_request(main, ids)
        assert caught.value.field == field
    assert check_merge_request(f" {MAIN} ", [f"{TWIN} "]) == (MAIN, [TWIN])


def test_only_cases_handled_here_and_not_replied_are_merged() -> None:
    main = order_of(MAIN)
    twin = order_of(TWIN, in_progress_order())
    check_merge(MAIN, [TWIN], main=main, merged={TWIN: twin}, node="511102")

    with pytest.raises(InvalidArgument, match="not handled at node 511102") as unknown:
        check_merge(MAIN, [TWIN], main=main, merged={TWIN: None}, node="511102")
    assert unknown.value.field == "case_ids[0]"
    gone = order_of(TWIN, new_order())
    gone.transfer(to_node="511100", at=at(6, 2), actor="c")
    with pytest.raises(InvalidArgument, match="handled by 511100 now") as moved:
        check_merge(MAIN, [TWIN], main=main, merged={TWIN: gone}, node="511102")
    assert moved.value.field == "case_ids[0]"

    replied = order_of(TWIN, in_progress_order())
    replied.reply(text="已处理", at=at(6, 5), actor="h", rules=RULES)
    with pytest.raises(FailedPrecondition, match=r"case_ids\[0\].*REPLIED"):
        check_merge(MAIN, [TWIN], main=main, merged={TWIN: replied}, node="511102")
    with pytest.raises(FailedPrecondition, match=r"main case .* REPLIED"):
        check_merge(TWIN, [MAIN], main=replied, merged={MAIN: main}, node="511102")
    merged_main = order_of(MAIN, assigned_order())
    merged_main.merge(into_case_id=THIRD, at=at(6, 3), actor="c")
    with pytest.raises(FailedPrecondition, match=f"merged into {THIRD}"):
        check_merge(MAIN, [TWIN], main=merged_main, merged={TWIN: twin}, node="511102")


def test_a_units_clerk_merges_only_its_units_cases() -> None:
    main = order_of(MAIN)
    other_unit = order_of(TWIN)
    other_unit.unit_id = "lszq-sthjj"
    check_merge(MAIN, [TWIN], main=main, merged={TWIN: other_unit}, node="511102")  # the office may
    with pytest.raises(PermissionDenied, match=r"case_ids\[0\].*not the work of unit lszq-zjj"):
        check_merge(MAIN, [TWIN], main=main, merged={TWIN: other_unit}, node="511102", acting_unit="lszq-zjj")


def test_merge_keeps_the_clocks_follows_the_main_case_and_undoes_to_the_state_before() -> None:
    main = order_of(MAIN, in_progress_order())
    twin = order_of(TWIN, in_progress_order())
    deadlines = dict(twin.deadlines)
    (merged,) = twin.merge(into_case_id=MAIN, at=at(6, 4), actor="clerk")
    assert isinstance(merged, WorkOrderChanged) and merged.main_case_id == MAIN
    assert twin.state is State.MERGED and twin.deadlines == deadlines

    reply = next(
        e for e in main.reply(text="已清理", at=at(6, 6), actor="h", rules=RULES) if isinstance(e, WorkOrderChanged)
    )
    (followed,) = twin.follow_main(reply)
    assert followed.action == f"{FOLLOW_MAIN}reply" and followed.to_state is State.REPLIED
    assert followed.reply_text == "已清理" and followed.main_case_id == MAIN and followed.case_id == TWIN
    assert twin.state is State.MERGED and twin.history[-1].action == "main:reply"
    assert twin.follow_main(dataclasses.replace(reply, case_id=THIRD)) == []  # not its main case

    with pytest.raises(FailedPrecondition, match=r"main case .* replied"):
        check_unmerge(twin, TWIN, main=main, node="511102")

    again = order_of(THIRD, in_progress_order())
    again.merge(into_case_id=MAIN, at=at(6, 4), actor="clerk")
    check_unmerge(again, THIRD, main=order_of(MAIN, assigned_order()), node="511102")
    with pytest.raises(InvalidArgument) as no_reason:
        again.unmerge(at=at(6, 5), actor="clerk", reason=" ")
    assert no_reason.value.field == "reason"
    (undone,) = again.unmerge(at=at(6, 5), actor="clerk", reason="不是同一事项")
    assert isinstance(undone, WorkOrderChanged)
    assert again.state is State.IN_PROGRESS and undone.to_state is State.IN_PROGRESS and again.merged_into is None
    with pytest.raises(FailedPrecondition, match="not merged"):
        check_unmerge(again, THIRD, main=None, node="511102")


def test_stats_count_the_matter_once_and_the_submissions_apart() -> None:
    agg = Aggregates(received=5, merged=2)
    assert (compute("received", agg).value, compute("merged", agg).value, compute("matters", agg).value) == (5, 2, 3)


def test_a_merged_case_following_its_main_case_keeps_its_fact_merged() -> None:
    from services.common.calendar import ChineseWorkingCalendar
    from services.stats.domain import CaseFact, StatsConfig, fold_case

    t = datetime(2026, 6, 1, 2, tzinfo=UTC)
    base = CaseFact(
        case_id=TWIN,
        province_code="510000",
        city_code="511100",
        county_code="511102",
        region_code="511102",
        registering_node="511102",
        channel="web",
        category="环境保护",
        state="REGISTERED",
        version=1,
        submitted_at=t,
        updated_at=t,
    )
    events = [
        CaseEvent(case_id=TWIN, version=2, kind="case_merged", occurred_at=t),
        CaseEvent(
            case_id=TWIN, version=3, kind="work_order_changed", occurred_at=t, to_state="REPLIED", action="main:reply"
        ),
    ]
    fact = fold_case(events, base=base, config=StatsConfig(), calendar=ChineseWorkingCalendar())
    assert fact is not None and fact.state == "MERGED" and fact.replied_at is None


def test_a_merged_citizen_may_withdraw_and_stops_following() -> None:
    main = order_of(MAIN, in_progress_order())
    twin = order_of(TWIN, in_progress_order())
    twin.merge(into_case_id=MAIN, at=at(6, 4), actor="clerk")
    twin.withdraw(at=at(6, 5), actor="citizen", reason="已自行解决")
    assert twin.state is State.WITHDRAWN
    reply = next(
        e for e in main.reply(text="已清理", at=at(6, 6), actor="h", rules=RULES) if isinstance(e, WorkOrderChanged)
    )
    assert twin.follow_main(reply) == []
