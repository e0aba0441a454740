"""The work order aggregate: its lifecycle, the transition table, objection, extension, reopen, history."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.regions import Tier
from services.common.timeutil import CHINA
from services.routing.domain import (
    TRANSITIONS,
    Action,
    ArbitrationOutcome,
    ReplyGiven,
    State,
    WorkOrder,
    WorkOrderChanged,
    WorkOrderCreated,
)
from services.routing.domain.timelimits import TimeLimitPolicy, TimeRules
from tests.support.workorders import RULES, K, assigned_order, at, eod, in_progress_order, new_order


def state_of(order: WorkOrder) -> State:
    # Read through a call so mypy does not keep an earlier assertion's narrowing after an action.
    return order.state


def test_register_starts_the_assign_and_notice_clocks() -> None:
    order, events = WorkOrder.register(
        id="wo-1",
        case_id="511102-20260601-000001",
        node="511102",
        tier=Tier.COUNTY,
        at=at(6, 1, 9),
        actor="clerk-1",
        rules=RULES,
        category="城乡建设",
    )
    assert state_of(order) is State.REGISTERED
    # County share: 4 working days (2-5 Jun); written notice: 15 days.
    assert order.deadlines == {K.ASSIGN: eod(6, 5), K.ACCEPT_NOTICE: eod(6, 16)}
    (created,) = events
    assert isinstance(created, WorkOrderCreated)
    assert created.deadlines == ((K.ACCEPT_NOTICE, eod(6, 16)), (K.ASSIGN, eod(6, 5)))
    assert order.history[0].action == "register" and order.history[0].to_state is State.REGISTERED


def test_hotline_orders_run_the_hotline_class_and_owe_no_written_notice() -> None:
    order = new_order(K.HOTLINE_COMPLAINT)
    assert set(order.deadlines) == {K.ASSIGN}
    order.accept(at=at(6, 1), actor="operator", rules=RULES)
    # 13 working days from Mon 1 Jun; 19 Jun (端午) is a holiday.
    assert order.deadlines[K.HOTLINE_COMPLAINT] == eod(6, 18)
    with pytest.raises(InvalidArgument):
        WorkOrder.register(
            id="x",
            case_id="c",
            node="511102",
            tier=Tier.COUNTY,
            at=at(6, 1),
            actor="a",
            rules=RULES,
            handling_kind=K.OBJECTION,
        )


def test_the_whole_lifecycle_with_extension_reopen_close_and_review() -> None:
    order = new_order()

    events = order.accept(at=at(6, 1), actor="clerk-1", rules=RULES)
    assert state_of(order) is State.ACCEPTED
    assert K.ACCEPT_NOTICE not in order.deadlines
    assert order.deadlines[K.SETTLE] == eod(7, 31)  # 60 days from 1 Jun
    (changed,) = events
    assert isinstance(changed, WorkOrderChanged)
    assert (changed.action, changed.from_state, changed.to_state, changed.actor) == (
        Action.ACCEPT,
        State.REGISTERED,
        State.ACCEPTED,
        "clerk-1",
    )
    assert dict(changed.deadlines)[K.SETTLE] == eod(7, 31)

    (changed,) = order.assign(unit_id="lszq-zjj", at=at(6, 2), actor="clerk-1", rules=RULES)
    assert isinstance(changed, WorkOrderChanged) and changed.target == "lszq-zjj"
    assert state_of(order) is State.ASSIGNED and order.unit_id == "lszq-zjj"
    assert K.ASSIGN not in order.deadlines
    assert order.windows[K.OBJECTION] == eod(6, 9)  # 5 working days from 2 Jun

    order.start(at=at(6, 3), actor="handler-1")
    assert state_of(order) is State.IN_PROGRESS

    order.request_extension(at=at(7, 20), actor="handler-1", reason="需要现场测绘")
    assert state_of(order) is State.IN_PROGRESS and order.extension_pending
    order.approve_extension(days=30, at=at(7, 21), actor="leader-1", rules=RULES)
    assert state_of(order) is State.EXTENDED
    assert order.deadlines[K.SETTLE] == eod(8, 31)  # 90 days = 30 Aug, a Sunday → Monday

    events = order.reply(
        text="已督促物业修复", attachments=["file:photo-1"], at=at(8, 20), actor="handler-1", rules=RULES
    )
    assert state_of(order) is State.REPLIED
    assert order.deadlines == {}
    assert order.windows == {K.REVIEW_REQUEST: eod(9, 20)}  # 19 Sep is a Saturday; 20 Sep a make-up workday
    changed, reply = events
    assert isinstance(changed, WorkOrderChanged) and isinstance(reply, ReplyGiven)
    assert reply.text == "已督促物业修复" and reply.attachments == ("file:photo-1",)

    order.reopen(at=at(8, 25), actor="citizen-eval", rules=RULES, reason="不满意：未修复")
    assert state_of(order) is State.REOPENED
    assert order.deadlines[K.SETTLE] == eod(10, 26)  # fresh 60 days: 24 Oct is a Saturday
    assert K.REVIEW_REQUEST not in order.windows

    order.start(at=at(8, 26), actor="handler-1")
    order.reply(text="已修复", at=at(9, 10), actor="handler-1", rules=RULES)
    with pytest.raises(FailedPrecondition, match="reopened only once") as caught:
        order.reopen(at=at(9, 11), actor="citizen-eval", rules=RULES, reason="仍不满意")
    assert caught.value.current_state == "REPLIED"

    order.close(at=at(9, 15), actor="clerk-1")
    assert state_of(order) is State.CLOSED
    assert order.windows[K.REVIEW_REQUEST] == eod(10, 10)  # 10 Oct: make-up Saturday

    order.review(at=at(9, 30), actor="citizen", rules=RULES, reason="申请复查")
    assert state_of(order) is State.REOPENED
    assert order.deadlines == {K.REVIEW_DECISION: eod(10, 30)}

    assert [(h.action, h.from_state, h.to_state) for h in order.history] == [
        ("register", None, State.REGISTERED),
        ("accept", State.REGISTERED, State.ACCEPTED),
        ("assign", State.ACCEPTED, State.ASSIGNED),
        ("start", State.ASSIGNED, State.IN_PROGRESS),
        ("request_extension", State.IN_PROGRESS, State.IN_PROGRESS),
        ("approve_extension", State.IN_PROGRESS, State.EXTENDED),
        ("reply", State.EXTENDED, State.REPLIED),
        ("reopen", State.REPLIED, State.REOPENED),
        ("start", State.REOPENED, State.IN_PROGRESS),
        ("reply", State.IN_PROGRESS, State.REPLIED),
        ("close", State.REPLIED, State.CLOSED),
        ("review", State.CLOSED, State.REOPENED),
    ]
    assert order.history[4].reason == "需要现场测绘" and order.history[4].actor == "handler-1"
    assert order.version == len(order.history)


def _calls() -> dict[Action, Callable[[WorkOrder], object]]:
    t = at(6, 2)
    return {
        Action.ACCEPT: lambda o: o.accept(at=t, actor="a", rules=RULES),
        Action.REFUSE: lambda o: o.refuse(at=t, actor="a", reason="不属于信访事项"),
        Action.ASSIGN: lambda o: o.assign(unit_id="u2", at=t, actor="a", rules=RULES),
        Action.START: lambda o: o.start(at=t, actor="a"),
        Action.OBJECT: lambda o: o.object(at=t, actor="a", reason="非本单位职责"),
        Action.ARBITRATE: lambda o: o.arbitrate(
            outcome=ArbitrationOutcome.REASSIGN, unit_id="u2", at=t, actor="a", rules=RULES
        ),
        Action.REQUEST_EXTENSION: lambda o: o.request_extension(at=t, actor="a", reason="复杂"),
        Action.APPROVE_EXTENSION: lambda o: o.approve_extension(days=30, at=t, actor="a", rules=RULES),
        Action.REJECT_EXTENSION: lambda o: o.reject_extension(at=t, actor="a"),
        Action.REPLY: lambda o: o.reply(text="答复", at=t, actor="a", rules=RULES),
        Action.CLOSE: lambda o: o.close(at=t, actor="a"),
        Action.REOPEN: lambda o: o.reopen(at=t, actor="a", rules=RULES, reason="不满意"),
        Action.REVIEW: lambda o: o.review(at=t, actor="a", rules=RULES),
        Action.WITHDRAW: lambda o: o.withdraw(at=t, actor="a"),
        Action.MERGE: lambda o: o.merge(into_case_id="other-case", at=t, actor="a"),
        Action.UNMERGE: lambda o: o.unmerge(at=t, actor="a", reason="并错了"),
        Action.TRANSFER: lambda o: o.transfer(to_node="511100", at=t, actor="a"),
        Action.TAKE_BACK: lambda o: o.take_back(at=t, actor="a", rules=RULES, reason="退回"),
        Action.PAUSE: lambda o: o.pause(at=t, actor="a", reason="等待补充材料"),
        Action.RESUME: lambda o: o.resume(at=t, actor="a", rules=RULES),
    }


ILLEGAL = sorted((s, a) for s in State for a in Action if (s, a) not in TRANSITIONS)


def test_every_action_has_a_method_and_the_table_is_not_trivial() -> None:
    assert set(_calls()) == set(Action)
    assert all(hasattr(WorkOrder, a.value) for a in Action)
    assert len(ILLEGAL) + len(TRANSITIONS) == len(State) * len(Action)
    assert len(ILLEGAL) > 150


@pytest.mark.parametrize(("state", "action"), ILLEGAL, ids=[f"{s.value}-{a.value}" for s, a in ILLEGAL])
def test_every_pair_outside_the_table_is_refused_naming_the_state(state: State, action: Action) -> None:
    order = WorkOrder(id="wo-1", case_id="c-1", node="511102", tier=Tier.COUNTY, state=state, unit_id="u1")
    with pytest.raises(FailedPrecondition) as caught:
        _calls()[action](order)
    assert f"cannot {action.value} a work order in state {state.value}" in str(caught.value)
    assert caught.value.current_state == state.value
    assert order.state is state and order.history == [] and order.version == 0


def test_reply_in_assigned_is_refused_with_a_readable_message() -> None:
    order = assigned_order()
    with pytest.raises(FailedPrecondition, match="cannot reply a work order in state ASSIGNED"):
        order.reply(text="x", at=at(6, 3), actor="h", rules=RULES)


def test_refusal_needs_a_reason_and_changes_nothing_without_one() -> None:
    order = new_order()
    with pytest.raises(InvalidArgument) as caught:
        order.refuse(at=at(6, 1), actor="clerk-1", reason="  ")
    assert caught.value.field == "reason"
    assert state_of(order) is State.REGISTERED and len(order.history) == 1
    order.refuse(at=at(6, 1), actor="clerk-1", reason="已经或者依法应当通过诉讼解决")
    assert state_of(order) is State.REFUSED and order.deadlines == {}
    assert order.history[-1].reason == "已经或者依法应当通过诉讼解决"


def test_objection_is_allowed_up_to_the_end_of_the_fifth_working_day_only() -> None:
    late = assigned_order()
    with pytest.raises(FailedPrecondition, match="objection window closed") as caught:
        late.object(at=datetime(2026, 6, 10, 0, 0, 1, tzinfo=CHINA), actor="lszq-zjj", reason="非本单位职责")
    assert caught.value.current_state == "ASSIGNED"
    assert state_of(late) is State.ASSIGNED

    on_time = assigned_order()
    on_time.start(at=at(6, 3), actor="lszq-zjj")
    on_time.object(at=eod(6, 9), actor="lszq-zjj", reason="非本单位职责")  # the very end of the window
    assert state_of(on_time) is State.OBJECTED


def test_an_objection_needs_a_reason() -> None:
    order = assigned_order()
    with pytest.raises(InvalidArgument) as caught:
        order.object(at=at(6, 3), actor="lszq-zjj", reason="")
    assert caught.value.field == "reason" and state_of(order) is State.ASSIGNED


def test_reassignment_opens_a_new_window_for_the_new_unit() -> None:
    order = assigned_order()
    order.object(at=at(6, 4), actor="lszq-zjj", reason="属交通部门职责")
    with pytest.raises(InvalidArgument, match="unit_id"):
        order.arbitrate(
            outcome=ArbitrationOutcome.REASSIGN, unit_id="lszq-zjj", at=at(6, 5), actor="office", rules=RULES
        )
    (changed,) = order.arbitrate(
        outcome=ArbitrationOutcome.REASSIGN, unit_id="lszq-jtj", at=at(6, 5), actor="office", rules=RULES
    )
    assert isinstance(changed, WorkOrderChanged)
    assert state_of(order) is State.ASSIGNED and order.unit_id == "lszq-jtj" and changed.unit_id == "lszq-jtj"
    assert order.windows[K.OBJECTION] == eod(6, 12)  # 5 working days from Fri 5 Jun
    order.object(at=at(6, 11), actor="lszq-jtj", reason="也不是我们")
    assert state_of(order) is State.OBJECTED


def test_after_an_upheld_arbitration_the_unit_may_not_object_again() -> None:
    order = assigned_order()
    order.object(at=at(6, 3), actor="lszq-zjj", reason="非本单位职责")
    order.arbitrate(outcome=ArbitrationOutcome.UPHOLD, at=at(6, 4), actor="office", rules=RULES)
    assert state_of(order) is State.ASSIGNED and order.unit_id == "lszq-zjj"
    assert order.history[-1].reason == "uphold"
    with pytest.raises(FailedPrecondition, match="may not object again") as caught:
        order.object(at=at(6, 4, 11), actor="lszq-zjj", reason="还是不归我们")
    assert caught.value.current_state == "ASSIGNED"
    order.start(at=at(6, 5), actor="lszq-zjj")
    with pytest.raises(FailedPrecondition, match="may not object again"):
        order.object(at=at(6, 5, 11), actor="lszq-zjj", reason="还是不归我们")


def test_an_extension_is_requested_once_and_bounded_by_policy() -> None:
    order = in_progress_order()
    with pytest.raises(FailedPrecondition, match="no extension request is pending"):
        order.approve_extension(days=10, at=at(7, 1), actor="leader", rules=RULES)
    order.request_extension(at=at(7, 1), actor="h", reason="需要鉴定")
    with pytest.raises(InvalidArgument) as caught:
        order.approve_extension(days=31, at=at(7, 2), actor="leader", rules=RULES)
    assert caught.value.field == "days"
    settle = order.deadlines[K.SETTLE]
    order.reject_extension(at=at(7, 2), actor="leader", reason="理由不充分")
    assert state_of(order) is State.IN_PROGRESS and order.deadlines[K.SETTLE] == settle
    with pytest.raises(FailedPrecondition, match="only once") as again:
        order.request_extension(at=at(7, 3), actor="h", reason="再次申请")
    assert again.value.current_state == "IN_PROGRESS"


def test_approved_extension_may_be_shorter_than_the_maximum() -> None:
    order = in_progress_order()
    order.request_extension(at=at(7, 1), actor="h", reason="需要鉴定")
    order.approve_extension(days=10, at=at(7, 2), actor="leader", rules=RULES)
    assert order.deadlines[K.SETTLE] == eod(8, 10)  # 70 days from 1 Jun


def test_review_must_come_within_thirty_days_of_the_reply_and_only_once() -> None:
    order = in_progress_order()
    order.reply(text="答复", at=at(6, 10), actor="h", rules=RULES)
    order.close(at=at(6, 11), actor="clerk")
    with pytest.raises(FailedPrecondition, match="review window closed") as caught:
        order.review(at=at(7, 11), actor="citizen", rules=RULES)
    assert caught.value.current_state == "CLOSED"
    order.review(at=eod(7, 10), actor="citizen", rules=RULES)
    assert state_of(order) is State.REOPENED


def test_pausing_moves_running_deadlines_on_resume() -> None:
    order = in_progress_order()
    assert order.deadlines[K.SETTLE] == eod(7, 31)
    order.pause(at=at(6, 10), actor="h", reason="等待信访人补充材料")
    with pytest.raises(FailedPrecondition, match="already paused"):
        order.pause(at=at(6, 11), actor="h", reason="again")
    order.resume(at=at(6, 20), actor="h", rules=RULES)
    assert order.pauses == [(at(6, 10), at(6, 20))]
    assert order.deadlines[K.SETTLE] == eod(8, 10)  # 10 calendar days given back
    with pytest.raises(FailedPrecondition, match="not paused"):
        order.resume(at=at(6, 21), actor="h", rules=RULES)


def test_a_reply_while_paused_closes_the_pause() -> None:
    order = in_progress_order()
    order.pause(at=at(6, 10), actor="h", reason="听证")
    order.reply(text="答复", at=at(6, 12), actor="h", rules=RULES)
    assert order.paused_since is None and order.pauses == [(at(6, 10), at(6, 12))]


def test_merge_transfer_and_withdraw_end_this_nodes_handling() -> None:
    merged = new_order()
    (changed,) = merged.merge(into_case_id="511102-20260520-000007", at=at(6, 1), actor="clerk")
    assert isinstance(changed, WorkOrderChanged) and changed.target == "511102-20260520-000007"
    assert state_of(merged) is State.MERGED and changed.main_case_id == "511102-20260520-000007"
    # Kept, not stopped (an undo goes back to them), and never swept: the state is terminal.
    assert merged.deadlines and merged.merged_from is State.REGISTERED
    with pytest.raises(InvalidArgument):
        new_order().merge(into_case_id="511102-20260601-000001", at=at(6, 1), actor="clerk")

    moved = new_order()
    moved.transfer(to_node="511100", at=at(6, 1), actor="clerk", reason="属市级职权")
    assert state_of(moved) is State.TRANSFERRED and moved.transferred_to == "511100"
    moved.take_back(at=at(6, 3), actor="system", rules=RULES, reason="上级退回")
    assert state_of(moved) is State.REGISTERED and moved.deadlines[K.ASSIGN] == eod(6, 9)

    gone = in_progress_order()
    gone.withdraw(at=at(6, 5), actor="citizen", reason="已自行解决")
    assert state_of(gone) is State.WITHDRAWN and gone.deadlines == {} and gone.windows == {}


def test_loading_the_calendar_records_each_moved_deadline_in_history_and_as_an_event() -> None:
    from pathlib import Path

    from services.routing.domain import RECOMPUTE_DEADLINES
    from services.routing.provisional import ProvisionalCalendar

    calendar = ProvisionalCalendar()
    rules = TimeRules(TimeLimitPolicy.default(), calendar)
    registered = datetime(2026, 12, 8, 10, tzinfo=CHINA)
    order, _ = WorkOrder.register(
        id="WO-1",
        case_id="511102-20261208-000001",
        node="511102",
        tier=Tier.COUNTY,
        at=registered,
        actor="c",
        rules=rules,
    )
    order.accept(at=registered, actor="c", rules=rules)
    order.assign(unit_id="unit-env", at=registered, actor="c", rules=rules)
    assert order.deadlines["settle"].date() == date(2027, 2, 8)  # Mon-Fri: Saturday 6 Feb → Monday 8 Feb
    calendar.official.load(Path(__file__).parent.parent / "fixtures" / "calendar_2027_fixture.yaml")
    version, entries = order.version, len(order.history)

    events = order.calendar_loaded(rules, at=registered, years=[2027], provisional=["settle"])

    assert order.deadlines["settle"].date() == date(2027, 2, 15)  # the fixture's 春节 runs to 12 Feb
    assert [e.reason for e in events] == ["settle due 2027-02-08 → 2027-02-15 (official calendar for 2027 loaded)"]
    assert [h.action for h in order.history[entries:]] == [RECOMPUTE_DEADLINES]
    assert events[0].action == RECOMPUTE_DEADLINES and events[0].from_state == events[0].to_state == order.state
    assert dict(events[0].deadlines)["settle"] == order.deadlines["settle"]
    assert order.version == version + 1
    # Counted again with nothing moving: one entry says the provisional dates stand.
    again = order.calendar_loaded(rules, at=registered, years=[2027], provisional=["settle"])
    assert [e.reason for e in again] == [
        "settle due 2027-02-15 unchanged, no longer provisional (official calendar for 2027 loaded)"
    ]


def test_a_remote_consultation_joins_the_history_and_keeps_the_state() -> None:
    order = in_progress_order()
    before, version = order.state, order.version
    booked = order.consulted(
        at=at(10, 9), actor="video", label="consultation_booked", note="远程会商 con-1 定于 2026-12-07 14:30–15:30"
    )
    held = order.consulted(
        at=at(11, 15), actor="video", label="consultation_held", note="远程会商 con-1 纪要：市局督导"
    )
    assert [e.action for e in booked + held] == ["consultation_booked", "consultation_held"]
    assert all(e.from_state == e.to_state == before for e in booked + held)
    assert order.state == before and order.version == version + 2
    assert [h.action for h in order.history[-2:]] == ["consultation_booked", "consultation_held"]
    with pytest.raises(ValueError):
        order.consulted(at=at(11, 16), actor="video", label="reply", note="not a consultation")
