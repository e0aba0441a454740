"""The work-order actions of this node's office and units: 受理/签收, 人工分派, objection arbitration,
extensions, 复查 decisions; each a step for ``act`` (load locked, apply, save and emit).
"""

from __future__ import annotations

from datetime import datetime

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.routing.domain import ArbitrationOutcome, State, WorkOrderEvent
from services.routing.handling.ports import Routing, StoredWorkOrder, UnitOfWorkFactory


def get_work_order(work_order_id: str, *, uow_factory: UnitOfWorkFactory) -> StoredWorkOrder:
    if not work_order_id:
        raise InvalidArgument("work_order_id", "must be set")
    with uow_factory() as uow:
        found = uow.get(work_order_id)
    if found is None:
        raise NotFound("work order", work_order_id)
    return found


def accept(stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, note: str) -> list[WorkOrderEvent]:
    """受理: the office accepts a queued registration; a unit accepts (签收) what was assigned to it."""
    if stored.order.state is State.REGISTERED:
        return stored.order.accept(at=at, actor=actor, rules=routing.rules, reason=note)
    if stored.order.state in (State.ASSIGNED, State.REOPENED):
        return stored.order.start(at=at, actor=actor, reason=note)
    raise FailedPrecondition(f"cannot accept a work order in state {stored.order.state.value}", stored.order.state)


def assign_manually(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, unit_id: str, reason: str
) -> list[WorkOrderEvent]:
    """人工分派: a clerk accepts a queued registration and assigns it to a unit of this node."""
    if unit_id not in routing.catalogue.units:
        raise InvalidArgument("unit_id", f"{unit_id!r} is not a unit of node {routing.node}")
    order = stored.order
    events: list[WorkOrderEvent] = []
    if order.state is State.REGISTERED:
        events += order.accept(at=at, actor=actor, rules=routing.rules, reason="受理 (人工分派)")
    events += order.assign(unit_id=unit_id, at=at, actor=actor, rules=routing.rules, reason=reason)
    stored.manual_reason = ""
    return events


def arbitrate(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, reassign: bool, unit_id: str, reason: str
) -> list[WorkOrderEvent]:
    if reassign and unit_id and unit_id not in routing.catalogue.units:
        raise InvalidArgument("new_unit_id", f"{unit_id} is not a unit of node {routing.node}")
    outcome = ArbitrationOutcome.REASSIGN if reassign else ArbitrationOutcome.UPHOLD
    return stored.order.arbitrate(
        outcome=outcome, at=at, actor=actor, rules=routing.rules, unit_id=unit_id or None, reason=reason
    )


def request_extension(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, days: int, reason: str
) -> list[WorkOrderEvent]:
    limit = routing.rules.policy.settle_extension_max_days
    if not 1 <= days <= limit:
        raise InvalidArgument("days", f"an extension is 1 to {limit} days, got {days}")
    events = stored.order.request_extension(at=at, actor=actor, reason=f"{reason} (+{days} days asked)")
    stored.requested_days = days
    return events


def decide_extension(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, approve: bool, reason: str
) -> list[WorkOrderEvent]:
    if approve:
        days = stored.requested_days or routing.rules.policy.settle_extension_max_days
        return stored.order.approve_extension(days=days, at=at, actor=actor, rules=routing.rules, reason=reason)
    return stored.order.reject_extension(at=at, actor=actor, reason=reason)


def review_decision(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, redo: bool, reason: str
) -> list[WorkOrderEvent]:
    """复查: a redo reopens the work order with the review-decision limit; upholding closes a replied one."""
    if not (reason or "").strip():
        raise InvalidArgument("reason", "the review opinion (复查意见) is required")
    if redo:
        return stored.order.review(at=at, actor=actor, rules=routing.rules, reason=reason)
    return stored.order.close(at=at, actor=actor, reason=f"复查维持: {reason}")
