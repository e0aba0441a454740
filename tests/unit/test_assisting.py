"""主办/协办 rules on the work order: asking assisting units, their own deadline, late answers, the chase."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.common.calendar import ChineseWorkingCalendar
from services.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from services.routing import handlers
from services.routing.domain import ASSIST_LATE_ANSWER, State, sweep
from services.routing.domain.timelimits import DeadlineKind, TimeLimitPolicy, TimeRules
from services.routing.handlers import StoredWorkOrder
from tests.support.workorders import RULES, assigned_order, at, eod, in_progress_order, new_order


def test_the_lead_asks_assisting_units_each_with_its_own_shorter_deadline() -> None:
    order = in_progress_order()
    events = order.request_assist(
        ["lszq-jtj", "lszq-wjj"], at=at(6, 3), actor="lead", rules=RULES, request="请提供意见"
    )
    assert [e.assisting_unit_id for e in events] == ["lszq-jtj", "lszq-wjj"]
    assert {(e.action, e.unit_id) for e in events} == {("assist_request", "lszq-zjj")}  # unit_id stays the lead
    # 5 working days from Wed 2026-06-03: Wed 06-10, before the 60-day settlement.
    assert order.deadlines[DeadlineKind.ASSIST] == eod(6, 10)
    assert order.deadlines[DeadlineKind.ASSIST] < order.deadlines[DeadlineKind.SETTLE]
    assert order.state is State.IN_PROGRESS  # not a transition


@pytest.mark.parametrize(
    ("units", "field"),
    [([], "unit_ids"), ([" "], "unit_ids[0]"), (["lszq-zjj"], "unit_ids[0]"), (["a", "a"], "unit_ids[1]")],
)
def test_bad_assisting_units_name_the_field(units: list[str], field: str) -> None:
    order = assigned_order()  # lead lszq-zjj
    with pytest.raises(InvalidArgument) as caught:
        order.request_assist(units, at=at(6, 3), actor="lead", rules=RULES, request="x")
    assert caught.value.field == field and order.assists == {}


def test_asking_again_before_an_answer_and_outside_handling_is_refused() -> None:
    order = in_progress_order()
    order.request_assist(["u2"], at=at(6, 3), actor="lead", rules=RULES, request="x")
    with pytest.raises(InvalidArgument, match="already asked"):
        order.request_assist(["u2"], at=at(6, 4), actor="lead", rules=RULES, request="x")
    with pytest.raises(InvalidArgument) as unknown:
        order.answer_assist("u3", at=at(6, 4), actor="u3", rules=RULES, text="意见")
    assert unknown.value.field == "unit_id"
    order.reply(text="答复", at=at(6, 5), actor="lead", rules=RULES)
    assert DeadlineKind.ASSIST not in order.deadlines  # the reply ends the lead's duties
    with pytest.raises(FailedPrecondition):
        order.request_assist(["u4"], at=at(6, 6), actor="lead", rules=RULES, request="x")


def test_answers_move_the_deadline_to_the_next_unit_and_a_late_one_is_marked() -> None:
    order = in_progress_order()
    order.request_assist(["u2"], at=at(6, 3), actor="lead", rules=RULES, request="x")
    order.request_assist(["u3"], at=at(6, 5), actor="lead", rules=RULES, request="y")
    assert order.deadlines[DeadlineKind.ASSIST] == eod(6, 10)
    (on_time,) = order.answer_assist("u2", at=at(6, 9), actor="u2", rules=RULES, text="意见")
    assert on_time.action == "assist_answer" and order.deadlines[DeadlineKind.ASSIST] == eod(6, 12)
    (late,) = order.answer_assist("u3", at=at(6, 15), actor="u3", rules=RULES, text="迟到的意见")
    assert late.action == ASSIST_LATE_ANSWER and late.assisting_unit_id == "u3"
    assert order.assists["u3"].late and not order.assists["u2"].late
    assert DeadlineKind.ASSIST not in order.deadlines
    with pytest.raises(FailedPrecondition, match="already answered"):
        order.answer_assist("u3", at=at(6, 16), actor="u3", rules=RULES, text="again")


def test_the_sweep_chases_the_assisting_unit_and_names_it() -> None:
    order = in_progress_order()
    order.request_assist(["u2", "u3"], at=at(6, 3), actor="lead", rules=RULES, request="x")
    order.answer_assist("u2", at=at(6, 4), actor="u2", rules=RULES, text="ok")
    actions = [
        a for a in sweep([order], eod(6, 10) + timedelta(hours=2), RULES.policy, RULES.calendar) if a.kind == "assist"
    ]
    assert [a.stage.value for a in actions] == ["chase"]
    (reached,) = order.record_sweep(actions[0])
    assert reached.unit_ids == ("u3",)  # type: ignore[union-attr]
    assert order.assists["u3"].late  # chased: late whenever it answers
    (answer,) = order.answer_assist("u3", at=at(6, 11, 9), actor="u3", rules=RULES, text="意见")
    assert answer.action == ASSIST_LATE_ANSWER


def test_only_the_lead_unit_replies_to_the_citizen() -> None:
    order = in_progress_order()
    stored = StoredWorkOrder(order=order, created_at=at(6, 1), updated_at=at(6, 1))
    routing: Any = None  # never reached: the rule refuses first
    with pytest.raises(PermissionDenied, match="only the lead unit lszq-zjj replies"):
        handlers.reply(stored, at(6, 5), "h", routing, text="答复", attachments=(), acting_unit="lszq-jtj")
    with pytest.raises(PermissionDenied, match="cannot answer for assisting unit u2"):
        handlers.answer_assist(stored, at(6, 5), "h", routing, unit_id="u2", text="x", acting_unit="lszq-jtj")


@pytest.mark.parametrize(
    ("limits", "handling"),
    [
        ({"assist": "60 days"}, DeadlineKind.SETTLE),  # as long as the settlement: not shorter
        ({"assist": "45 working days", "settle": "60 days"}, DeadlineKind.SETTLE),  # longer on the calendar
        ({}, DeadlineKind.HOTLINE_EMERGENCY),  # 5 working days against a 24-hour 12345 emergency
    ],
)
def test_an_assist_limit_not_shorter_than_the_lead_s_is_refused_naming_the_field(
    limits: dict[str, str], handling: DeadlineKind
) -> None:
    rules = TimeRules(TimeLimitPolicy.from_dict({"limits": limits}), ChineseWorkingCalendar())
    order = new_order(handling)
    order.accept(at=at(6, 1), actor="clerk-1", rules=rules)
    order.assign(unit_id="lszq-zjj", at=at(6, 2), actor="clerk-1", rules=rules)
    with pytest.raises(InvalidArgument) as refused:
        order.request_assist(["lszq-jtj"], at=at(6, 3), actor="lead", rules=rules, request="请提供意见")
    assert refused.value.field == "unit_ids"
    assert "not shorter than the lead unit's" in refused.value.reason and handling.value in refused.value.reason
    assert order.assists == {} and DeadlineKind.ASSIST not in order.deadlines  # nobody was asked


def test_an_assist_limit_in_hours_under_the_emergency_limit_is_accepted() -> None:
    rules = TimeRules(TimeLimitPolicy.from_dict({"limits": {"assist": "8 hours"}}), ChineseWorkingCalendar())
    order = new_order(DeadlineKind.HOTLINE_EMERGENCY)
    order.accept(at=at(6, 1), actor="clerk-1", rules=rules)
    order.assign(unit_id="lszq-zjj", at=at(6, 2), actor="clerk-1", rules=rules)
    order.request_assist(["lszq-jtj"], at=at(6, 3), actor="lead", rules=rules, request="请提供意见")
    assert order.deadlines[DeadlineKind.ASSIST] == at(6, 3, 18)
