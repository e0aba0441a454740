"""What the case page offers: the transition table's actions for the state, less those the order's rules rule out."""

from __future__ import annotations

from datetime import timedelta

from services.routing.domain import TRANSITIONS, Action, State, allowed_actions
from tests.support.workorders import RULES, assigned_order, at


def test_an_assigned_order_offers_signing_for_it_objecting_and_escalating() -> None:
    order = assigned_order()
    offered = allowed_actions(order, at(6, 2))
    assert {Action.START, Action.OBJECT, Action.TRANSFER, Action.PAUSE} <= set(offered)
    assert Action.REPLY not in offered and Action.RESUME not in offered
    assert all((State.ASSIGNED, action) in TRANSITIONS for action in offered)


def test_objection_is_not_offered_once_its_window_has_closed() -> None:
    order = assigned_order()
    window = order.windows["objection"]
    assert Action.OBJECT in allowed_actions(order, window)
    assert Action.OBJECT not in allowed_actions(order, window + timedelta(seconds=1))


def test_a_paused_order_offers_resume_and_not_pause() -> None:
    order = assigned_order()
    order.pause(at=at(6, 2), actor="u", reason="等待补充材料")
    offered = allowed_actions(order, at(6, 3))
    assert Action.RESUME in offered and Action.PAUSE not in offered


def test_reopen_is_offered_once() -> None:
    order = assigned_order()
    order.start(at=at(6, 2), actor="u")
    order.reply(text="已处理", at=at(6, 3), actor="u", rules=RULES)
    assert Action.REOPEN in allowed_actions(order, at(6, 4))
    order.reopen(at=at(6, 4), actor="citizen", rules=RULES, reason="不满意")
    order.start(at=at(6, 5), actor="u")
    order.reply(text="再次处理", at=at(6, 6), actor="u", rules=RULES)
    assert Action.REOPEN not in allowed_actions(order, at(6, 7))


def test_an_extension_is_offered_for_request_once_then_for_decision() -> None:
    order = assigned_order()
    order.start(at=at(6, 2), actor="u")
    assert Action.REQUEST_EXTENSION in allowed_actions(order)
    assert Action.APPROVE_EXTENSION not in allowed_actions(order)
    order.request_extension(at=at(6, 3), actor="u", reason="需要现场勘查")
    offered = allowed_actions(order)
    assert Action.REQUEST_EXTENSION not in offered
    assert {Action.APPROVE_EXTENSION, Action.REJECT_EXTENSION} <= set(offered)
